"""The lab harness: traffic-shifting experiments, Envoy generation and processes, link emulation, local meshes.

Built on the runtime and the simulator; the robot never needs it.
"""
