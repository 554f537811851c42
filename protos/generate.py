"""Generate the Python gRPC stubs from the .proto files beside this module.

Run by ``make protos`` and by the wheel build (``setup.py``), so generated
code is never edited or committed by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ("detection.proto", "detection_v1.proto")


def generate(out_root: Path | None = None) -> list[Path]:
    """Compile every .proto into ``<out_root>/protos``; returns the files written."""
    from grpc_tools import protoc  # build-time dependency only

    import_root = PROTO_DIR.parent
    out_root = Path(out_root) if out_root else import_root
    (out_root / "protos").mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{import_root}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"protos/{name}" for name in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    stems = [name.removesuffix(".proto") for name in PROTO_FILES]
    return [out_root / "protos" / f"{s}{suffix}" for s in stems for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else None):
        print(path)
