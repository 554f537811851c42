"""Build-time self-test of an image, run by its Dockerfile in the final stage as the runtime user.

A failed import, a missing shared library, an unreadable model or an engine that would try to
write beside the model fails the *build*, not the first pod. Each check is real work, kept cheap:

- ``facedetection``: the service module imports, the default Haar cascade loads.
- ``objectdetection``: the service module and both generated gRPC stub modules import.
- ``yolodetection --engine auto``: the reference frames load and the start-up engine choice runs (INT8
  checked against them), as the server would on this CPU.
- ``yolodetection --engine E [--precision P ...]``: the model files named by ``YOLO_CFG``,
  ``YOLO_WEIGHTS``, ``YOLO_NAMES`` are readable; engine E opens them on the CPU and runs one
  forward pass per precision. For onnxruntime/openvino that goes through ``ensure_onnx``, which
  rebuilds the cached ONNX when it is missing or stale: with ``--read-only-models`` the model folder
  must not be writable by this user, so a stale cache fails here instead of at start-up
  (the images run with a read-only root file system).
- ``--providers NAME ...``: ONNX Runtime was built with these execution providers
  (``CUDAExecutionProvider`` in the CUDA image: compiled in, checkable without a GPU).
- ``--linked PKG/REL.so ...``: ``ldd`` finds every library a shared object of an installed package
  needs (the CUDA image: ONNX Runtime's CUDA provider against the base image's CUDA and cuDNN,
  checkable without a GPU; ``libcuda.so.1`` comes from the driver at run time and is not required).
- ``robotclient [--picamera2]``: the client imports, ``robotclient --help`` and every subcommand's ``--help``
  run (each a process of its own), and picamera2 imports from the system packages.

Also run by tests/deploy/test_docker.py against this checkout's virtualenv.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path


def _say(message: str) -> None:
    print(f"selftest: {message}", flush=True)


def check_face() -> None:
    importlib.import_module("services.facedetection.__main__")
    import cv2

    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    if cascade.empty():
        raise RuntimeError("the default Haar cascade did not load")
    _say(f"facedetection: cv2 {cv2.__version__}, Haar cascade loaded")


def check_objectdetection() -> None:
    importlib.import_module("services.objectdetection.__main__")
    for name in ("protos.detection_pb2_grpc", "protos.detection_v1_pb2_grpc"):
        importlib.import_module(name)
    _say("objectdetection: service and gRPC stubs import")


def _model_files() -> tuple[Path, Path, Path]:
    paths = []
    for var in ("YOLO_CFG", "YOLO_WEIGHTS", "YOLO_NAMES"):
        value = os.environ.get(var)
        if not value:
            raise RuntimeError(f"{var} is not set")
        path = Path(value)
        with path.open("rb") as f:  # readable by this user
            f.read(1)
        paths.append(path)
    return paths[0], paths[1], paths[2]


def check_yolo(engine: str, precisions: list[str], read_only_models: bool) -> None:
    import numpy as np

    from services.yolodetection.detector import read_class_names
    from services.yolodetection.engines import EngineRequest, ModelFiles, open_engine
    from services.yolodetection.modeltools.darknet import cfg_input_size

    cfg, weights, names = _model_files()
    classes = read_class_names(names)
    if read_only_models and os.access(weights.parent, os.W_OK):
        raise RuntimeError(f"{weights.parent} is writable by uid {os.getuid()}: expected a read-only model folder")
    size = cfg_input_size(cfg)
    model = ModelFiles(cfg, weights, size)
    if engine == "auto":
        from services.yolodetection.engine_choice import choose_engine, load_reference

        reference, why = load_reference(model)
        if reference is None:
            raise RuntimeError(f"--engine auto cannot check INT8: {why}")
        started = time.perf_counter()
        choice = choose_engine(model, EngineRequest(engine="auto", device="cpu", precision="auto"))
        chosen = choice.engine
        checked = choice.agreement.summary() if choice.agreement else "not checked"
        _say(f"yolodetection: auto serves {chosen.name}:{chosen.device}:{chosen.precision} on this CPU ({checked}; "
             f"passed over: {'; '.join(choice.skipped) or 'none'}) in {time.perf_counter() - started:.2f} s")
        return
    for precision in precisions:
        started = time.perf_counter()
        runner = open_engine(model, EngineRequest(engine=engine, device="cpu", precision=precision))
        heads = runner.infer(np.full((1, 3, size[1], size[0]), 0.5, np.float32))
        if not heads:
            raise RuntimeError(f"{engine} {precision}: no output heads")
        _say(f"yolodetection: {engine}:{runner.device}:{runner.precision} {size[0]}x{size[1]}, {len(classes)} "
             f"classes, heads {[tuple(h.shape) for h in heads]} in {time.perf_counter() - started:.2f} s")


def check_providers(wanted: list[str]) -> None:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    missing = [p for p in wanted if p not in available]
    if missing:
        raise RuntimeError(f"onnxruntime {onnxruntime.__version__} lacks {missing}; has {available}")
    _say(f"onnxruntime {onnxruntime.__version__} providers {available}")


def check_linked(objects: list[str]) -> None:
    import importlib.util
    import subprocess

    for spec_text in objects:
        package, _, relative = spec_text.partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{package} is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if not path.is_file():
            raise RuntimeError(f"{path} does not exist")
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True).stdout
        missing = [line.split()[0] for line in out.splitlines()
                   if "not found" in line and not line.strip().startswith("libcuda.so")]
        if missing:
            raise RuntimeError(f"{path.name} needs {missing}, not found in this image")
        _say(f"{path.name}: every needed library found")


def robotclient_commands() -> list[str]:
    """The subcommands the real parser offers (what `robotclient --help` lists)."""
    import argparse

    from robotclient.__main__ import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def check_robotclient(picamera2: bool) -> None:
    import subprocess

    for name in ("robotclient.__main__", "robotclient.runtime.offload", "robotclient.runtime.tracker",
                 "robotclient.runtime.drivers.safety"):
        importlib.import_module(name)
    # The real CLI, as a user runs it: `robotclient --help` and every subcommand's --help, each in a
    # process of its own (a subcommand whose parser imports what this image lacks fails here).
    commands = robotclient_commands()
    for argv in ([], *([command] for command in commands)):
        done = subprocess.run([sys.executable, "-m", "robotclient", *argv, "--help"], capture_output=True,
                              text=True, timeout=120)
        usage = " ".join(["usage: robotclient", *argv])
        if done.returncode != 0 or not done.stdout.startswith(usage):
            raise RuntimeError(f"robotclient {' '.join([*argv, '--help'])} exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[-800:]}")
        if not argv and not all(command in done.stdout for command in commands):
            raise RuntimeError(f"robotclient --help does not list all of {commands}")
    _say(f"robotclient --help and {len(commands)} subcommands' --help: {', '.join(commands)}")
    if picamera2:
        module = importlib.import_module("picamera2")
        _say(f"picamera2 from {Path(module.__file__).parent}")
    _say("robotclient imports")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", choices=["facedetection", "objectdetection", "yolodetection", "robotclient"])
    parser.add_argument("--engine", default="opencv", help="yolodetection: engine to open on the CPU")
    parser.add_argument("--precision", nargs="+", default=["fp32"], help="yolodetection: precisions to run")
    parser.add_argument("--read-only-models", action="store_true",
                        help="yolodetection: fail if this user could write into the model folder")
    parser.add_argument("--providers", nargs="*", default=[], help="ONNX Runtime execution providers required")
    parser.add_argument("--linked", nargs="*", default=[], metavar="PKG/REL.so",
                        help="shared objects of installed packages whose libraries must all be found")
    parser.add_argument("--picamera2", action="store_true", help="robotclient: picamera2 must import")
    args = parser.parse_args(argv)
    try:
        if args.image == "facedetection":
            check_face()
        elif args.image == "objectdetection":
            check_objectdetection()
        elif args.image == "yolodetection":
            check_yolo(args.engine, args.precision, args.read_only_models)
        else:
            check_robotclient(args.picamera2)
        if args.providers:
            check_providers(args.providers)
        if args.linked:
            check_linked(args.linked)
    except Exception as exc:
        print(f"selftest: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    _say("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
