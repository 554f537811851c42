"""The robot runtime: what runs on the robot (camera, offload client, session, drivers, outputs).

Imports nothing from ``robotclient.sim.scenario`` or ``robotclient.lab`` (runtime <- sim <- lab).
"""
