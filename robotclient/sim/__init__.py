"""The closed-loop simulator: a world with people, a rendered camera, a simulated robot, scoring.

Built on the runtime; imports nothing from ``robotclient.lab``.
"""
