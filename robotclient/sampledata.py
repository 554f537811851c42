"""Real sample images and clips, fetched once through the ordinary package clients and hash-checked.

- ``vtest.avi`` (pedestrians), ``Megamind.avi`` (a face), ``messi5.jpg``: from
  Debian's ``opencv-doc`` package (``apt-get download`` + ``dpkg-deb``; nothing is installed).
- ``astronaut.png`` (one face): from the scikit-image wheel on PyPI (``pip download``; not installed).

Run ``python -m robotclient.sampledata`` (``make data``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

DEB_PACKAGE = "opencv-doc"
DEB_DATA_DIR = "./usr/share/doc/opencv-doc/examples/data/"
DEB_FILES = {
    "vtest.avi": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
    "Megamind.avi": "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5",
    "messi5.jpg": "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9",
}
WHEEL = "scikit-image==0.26.0"
WHEEL_FILES = {
    "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
}
SAMPLE_CLIP = "vtest.avi"


def data_dir() -> Path:
    root = os.environ.get("ROBOMESH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "robomesh")
    return Path(root) / "data"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _missing(directory: Path, files: dict[str, str]) -> list[str]:
    return [n for n, h in files.items() if not (directory / n).is_file() or _sha256(directory / n) != h]


def _store(directory: Path, name: str, data: bytes, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise RuntimeError(f"{name}: sha256 {actual} does not match the expected {expected}")
    partial = directory / f"{name}.part"
    partial.write_bytes(data)
    partial.replace(directory / name)


def _apt_download(package: str, into: Path) -> Path:
    """``apt-get download`` (no install); refreshes the package lists once if they are empty or stale."""
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"apt-get is needed to fetch {package}; place the files in {data_dir()} by hand")

    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", package], cwd=into, capture_output=True, text=True)

    result = attempt()
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        result = attempt()
    if result.returncode != 0:
        raise RuntimeError(f"apt-get download {package} failed: {result.stderr.strip()}")
    (deb,) = into.glob(f"{package}_*.deb")
    return deb


def _fetch_deb_files(directory: Path, names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        deb = _apt_download(DEB_PACKAGE, Path(tmp))
        dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        assert dpkg.stdout is not None
        with tarfile.open(fileobj=dpkg.stdout, mode="r|*") as tar:
            for member in tar:
                name = member.name.removeprefix(DEB_DATA_DIR)
                if member.name.startswith(DEB_DATA_DIR) and name in names:
                    source = tar.extractfile(member)
                    if source is not None:
                        _store(directory, name, source.read(), DEB_FILES[name])
        dpkg.stdout.close()
        if dpkg.wait() != 0:
            raise RuntimeError(f"dpkg-deb could not read {deb.name}")


def _fetch_wheel_files(directory: Path, names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", WHEEL, "-d", tmp,
             "--quiet"],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name in names:
                _store(directory, name, archive.read(f"skimage/data/{name}"), WHEEL_FILES[name])


def fetch(directory: Path | None = None) -> Path:
    """Makes every sample file present and verified in ``directory``; idempotent."""
    directory = directory or data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    if missing := _missing(directory, DEB_FILES):
        _fetch_deb_files(directory, missing)
    if missing := _missing(directory, WHEEL_FILES):
        _fetch_wheel_files(directory, missing)
    still_missing = _missing(directory, DEB_FILES) + _missing(directory, WHEEL_FILES)
    if still_missing:
        raise RuntimeError(f"could not fetch: {', '.join(still_missing)}")
    return directory


def read_frames(path: Path, count: int | None = None, start: int = 0) -> list[np.ndarray]:
    """Up to ``count`` decoded frames (all when None) from frame ``start`` of a clip, for tests and benchmarks."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    try:
        if start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        frames: list[np.ndarray] = []
        while count is None or len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch the real sample images and clips.")
    parser.add_argument("--dir", type=Path, default=None, help="target folder (default: $ROBOMESH_CACHE/data)")
    directory = fetch(parser.parse_args(argv).dir)
    for name in [*DEB_FILES, *WHEEL_FILES]:
        print(directory / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
