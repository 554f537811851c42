"""DelayProxy (robotclient.lab.netem) over a real TCP echo server and a real gRPC server on loopback."""

from __future__ import annotations

import os
import socket
import socketserver
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from robotclient.lab.netem import DelayProxy

DELAY_S = 0.05
MARGIN_S = 0.08  # scheduling on a loaded 2-core machine; far below another round trip of delay


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    server = EchoServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, name="echo", daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: str) -> Iterator[DelayProxy]:
    with DelayProxy(echo, DELAY_S) as started:
        yield started


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the other end closed (EOF or reset) within the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def round_trip(sock: socket.socket, message: bytes) -> float:
    started = time.perf_counter()
    sock.sendall(message)
    assert recv_exactly(sock, len(message)) == message
    return time.perf_counter() - started


def test_direct_echo_is_fast(echo: str) -> None:
    """The baseline: without the proxy a round trip is far below the delay the proxy adds."""
    with connect(int(echo.rpartition(":")[2])) as sock:
        assert min(round_trip(sock, b"ping") for _ in range(5)) < DELAY_S / 2


def test_round_trip_through_the_proxy_is_twice_the_delay(proxy: DelayProxy) -> None:
    assert proxy.target == f"127.0.0.1:{proxy.port}" and proxy.port > 0
    with connect(proxy.port) as sock:
        times = [round_trip(sock, f"ping {i}".encode()) for i in range(5)]
    assert min(times) >= 2 * DELAY_S, times
    assert statistics.median(times) < 2 * DELAY_S + MARGIN_S, times
    assert proxy.connections == 1


def test_a_large_payload_keeps_its_byte_order(proxy: DelayProxy) -> None:
    payload = os.urandom(1024 * 1024)
    received: list[bytes] = []
    with connect(proxy.port) as sock:
        sock.settimeout(10.0)
        reader = threading.Thread(target=lambda: received.append(recv_exactly(sock, len(payload))))
        reader.start()
        started = time.perf_counter()
        sock.sendall(payload)  # written in many chunks while the echo is read back concurrently
        reader.join(timeout=15.0)
        elapsed = time.perf_counter() - started
    assert not reader.is_alive()
    assert len(received[0]) == len(payload)
    assert received[0] == payload
    assert elapsed >= 2 * DELAY_S


def test_concurrent_connections_are_delayed_in_parallel_not_in_series(proxy: DelayProxy) -> None:
    n = 6
    times: dict[int, float] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def client(i: int) -> None:
        try:
            with connect(proxy.port) as sock:
                barrier.wait(timeout=5.0)
                message = f"client {i} ".encode() * (i + 1)
                times[i] = round_trip(sock, message)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10.0)
    wall = time.perf_counter() - started
    assert not errors, errors
    assert sorted(times) == list(range(n))
    assert min(times.values()) >= 2 * DELAY_S, times
    assert max(times.values()) < 2 * DELAY_S + MARGIN_S, times
    assert wall < n * 2 * DELAY_S  # in series the six would take 0.6 s
    assert proxy.connections == n


def test_stop_closes_the_listening_port_and_open_connections(echo: str) -> None:
    proxy = DelayProxy(echo, DELAY_S).start()
    port = proxy.port
    sock = connect(port)
    assert round_trip(sock, b"before stop") >= 2 * DELAY_S
    proxy.stop()
    with sock:
        sock.settimeout(5.0)
        assert closed_by_peer(sock), "an open connection must be closed by stop()"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2.0).close()
    proxy.stop()  # a second stop is harmless


def test_an_unreachable_upstream_closes_the_client_connection() -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with DelayProxy(f"127.0.0.1:{dead_port}", DELAY_S) as proxy, connect(proxy.port) as sock:
        assert closed_by_peer(sock)
        assert proxy.connections == 0


# ---------------------------------------------------------------- gRPC through the proxy


class QuickDetection(v1_grpc.ObjectDetectionServicer):
    def Detect(self, request: v1.DetectRequest, context: grpc.ServicerContext) -> v1.DetectResponse:
        return v1.DetectResponse(frame_number=request.frame.number, served_by=v1.ServedBy(service="quick"))


@pytest.fixture(scope="module")
def grpc_target() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    v1_grpc.add_ObjectDetectionServicer_to_server(QuickDetection(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=1.0).wait()


def timed_calls(target: str, count: int) -> list[float]:
    with grpc.insecure_channel(target) as channel:
        detect = v1_grpc.ObjectDetectionStub(channel).Detect
        detect(v1.DetectRequest(frame=v1.Frame(number=0)), timeout=5.0)  # connect (handshakes) outside the timing
        times = []
        for number in range(1, count + 1):
            started = time.perf_counter()
            reply = detect(v1.DetectRequest(frame=v1.Frame(number=number, jpeg=b"x" * 2000)), timeout=5.0)
            times.append(time.perf_counter() - started)
            assert (reply.frame_number, reply.served_by.service) == (number, "quick")
    return times


def test_grpc_through_the_proxy_adds_twice_the_delay_per_call(grpc_target: str) -> None:
    direct = statistics.median(timed_calls(grpc_target, 5))
    with DelayProxy(grpc_target, DELAY_S) as proxy:
        delayed = timed_calls(proxy.target, 5)
        assert proxy.connections == 1  # one HTTP/2 connection carries every call
    assert min(delayed) >= 2 * DELAY_S, delayed
    assert statistics.median(delayed) - direct == pytest.approx(2 * DELAY_S, abs=MARGIN_S / 2 + 0.01), (direct,
                                                                                                       delayed)
