"""``make demo``: the three services on loopback, real images and a stretch of the sample clip through them.

Starts ``python -m services`` as a child process (the robot client never
imports the services), sends the astronaut and Messi images and frames of
``vtest.avi`` to ``objectdetection`` over the v1 API, prints what was found
with latencies, then stops the services with SIGINT (a clean drain).
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import grpc
import numpy as np

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from robotclient import sampledata


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_services(ports: tuple[int, int, int], log_dir: Path, timeout_s: float = 120.0) -> subprocess.Popen:
    aggregator, face, yolo = ports
    process = subprocess.Popen(
        [sys.executable, "-m", "services", "--port", str(aggregator), "--face-port", str(face),
         "--yolo-port", str(yolo), "--log-dir", str(log_dir)],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    for line in process.stdout:
        print(f"  services | {line.rstrip()}")
        if line.startswith("all SERVING"):
            return process
        if time.monotonic() > deadline:
            break
    process.kill()
    raise RuntimeError("the services did not start; see the lines above")


def stop_services(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)
    assert process.stdout is not None
    for line in process.stdout:
        print(f"  services | {line.rstrip()}")
    return process.wait(timeout=30)


def jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def describe(reply: v1.DetectResponse) -> str:
    counts = Counter(d.class_name for d in reply.detections)
    found = ", ".join(f"{n} {name}" for name, n in counts.most_common()) or "nothing"
    statuses = " ".join(f"{v1.Engine.Name(s.engine).removeprefix('ENGINE_').lower()}={s.code_name}"
                        for s in reply.detector_status)
    t = reply.timings_ms
    return (f"{found:38s} server {t['total']:6.1f} ms (face {t.get('face', 0):5.1f}, yolo {t.get('yolo', 0):5.1f})"
            f"  [{statuses}]")


def detect(stub: v1_grpc.ObjectDetectionStub, number: int, image_jpeg: bytes) -> tuple[v1.DetectResponse, float]:
    started = time.perf_counter()
    request = v1.DetectRequest(frame=v1.Frame(number=number, capture_timestamp_us=time.time_ns() // 1000,
                                              jpeg=image_jpeg))
    reply = stub.Detect(request, timeout=1.0)  # the robot's per-frame deadline
    return reply, (time.perf_counter() - started) * 1000.0


def run_client(target: str, data_dir: Path, clip_frames: int, quality: int) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = v1_grpc.ObjectDetectionStub(channel)
        print("\nsample images:")
        for number, name in enumerate(("astronaut.png", "messi5.jpg"), start=1):
            reply, rtt = detect(stub, number, jpeg(cv2.imread(str(data_dir / name)), quality))
            print(f"  {name:14s} rtt {rtt:6.1f} ms  {describe(reply)}")
            for d in reply.detections:
                b = d.box
                print(f"      {d.class_name:10s} {d.confidence:.2f}  box x={b.x} y={b.y} w={b.width} h={b.height}")
        clip = data_dir / sampledata.SAMPLE_CLIP
        print(f"\nsample clip {clip.name}, {clip_frames} frames:")
        capture = cv2.VideoCapture(str(clip))
        rtts, persons = [], []
        try:
            for number in range(clip_frames):
                ok, frame = capture.read()
                if not ok:
                    break
                reply, rtt = detect(stub, number, jpeg(frame, quality))
                rtts.append(rtt)
                persons.append(sum(d.class_name == "person" for d in reply.detections))
                if number % 10 == 0:
                    print(f"  frame {number:4d} rtt {rtt:6.1f} ms  {describe(reply)}  served by "
                          f"{reply.served_by.hostname}/{reply.served_by.ipv4}")
        finally:
            capture.release()
        if rtts:
            rtts_sorted = sorted(rtts)
            p95 = rtts_sorted[min(len(rtts) - 1, int(0.95 * len(rtts)))]
            print(f"\n  {len(rtts)} frames: rtt p50 {statistics.median(rtts):.1f} ms, p95 {p95:.1f} ms, "
                  f"{len(rtts) / (sum(rtts) / 1000.0):.1f} frames/s sequential, "
                  f"{statistics.mean(persons):.2f} persons per frame")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robotclient demo", description="Local end-to-end demo.")
    parser.add_argument("--frames", type=int, default=100, help="frames of the sample clip to send")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()) / "robomesh-demo-logs",
                        help="where the services' JSON logs go")
    args = parser.parse_args(argv)
    data_dir = sampledata.fetch()
    ports = (_free_port(), _free_port(), _free_port())
    print(f"starting the services on loopback (objectdetection 127.0.0.1:{ports[0]}; logs in {args.log_dir})")
    services = start_services(ports, args.log_dir)
    try:
        run_client(f"127.0.0.1:{ports[0]}", data_dir, args.frames, args.quality)
    finally:
        print("\nstopping the services (SIGINT, graceful drain)")
        code = stop_services(services)
    return code


if __name__ == "__main__":
    sys.exit(main())
