"""Wire protocol: .proto sources, the Python stubs generated from them, and the hand-written contract modules.

The stubs (``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``) are build output:
run ``python -m protos.generate`` (``make protos``) after editing a .proto.
``timings`` (the keys of ``timings_ms``) and ``deadline`` (a frame's deadline, carried as the gRPC
timeout) are hand-written: the parts of the contract that both the services and the robot client
need in code. ``liveview`` is the other thing they share: the browser-facing live view (MJPEG pages,
``/healthz``) that the robot client and the aggregator both serve, written once; it lives here because
``protos`` is the only package both may import (services and robotclient never import each other).
"""
