"""Shared fixtures: the real model and the real sample images and clips, fetched once and cached."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from robotclient import sampledata
from services.yolodetection.modeltools import model


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return sampledata.fetch()


@pytest.fixture(scope="session")
def model_paths() -> model.ModelPaths:
    return model.fetch()


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union else 0.0


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def read_frames(path: Path, count: int, start: int = 0) -> list[np.ndarray]:
    frames = sampledata.read_frames(path, count, start)
    assert len(frames) == count, f"{path} has fewer than {start + count} frames"
    return frames


@pytest.fixture(scope="session")
def astronaut_jpeg(data_dir: Path) -> bytes:
    return encode_jpeg(cv2.imread(str(data_dir / "astronaut.png")))


@pytest.fixture(scope="session")
def messi_jpeg(data_dir: Path) -> bytes:
    return (data_dir / "messi5.jpg").read_bytes()


@pytest.fixture(scope="session")
def vtest_frames(data_dir: Path) -> list[np.ndarray]:
    return read_frames(data_dir / "vtest.avi", 10, start=100)


@pytest.fixture(scope="session")
def vtest_jpegs(vtest_frames: list[np.ndarray]) -> list[bytes]:
    return [encode_jpeg(f) for f in vtest_frames]


@pytest.fixture()
def taken_port() -> Iterator[int]:
    """A port some other program listens on, on every IPv4 address."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]
