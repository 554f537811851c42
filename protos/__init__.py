"""Wire protocol: .proto sources and the Python stubs generated from them.

The stubs (``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``) are build output:
run ``python -m protos.generate`` (``make protos``) after editing a .proto.
"""
