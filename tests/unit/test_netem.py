"""The emulated link (robotclient.lab.netem): DelayProxy and LinkProxy over real TCP servers and gRPC on loopback."""

from __future__ import annotations

import contextlib
import itertools
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
from robotclient.lab.netem import DelayProxy, LinkProfile, LinkProxy, Outage, main

DELAY_S = 0.05
MARGIN_S = 0.08  # scheduling on a loaded 2-core machine; far below another round trip of delay


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(ConnectionResetError):  # the link resets connections on stop() and outages
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


# ---------------------------------------------------------------- LinkProxy: jitter, cap, outages, handovers


class Sink(socketserver.ThreadingTCPServer):
    """Counts every byte it receives, with the arrival time of each read; sends ``reply_bytes`` on connect."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, reply_bytes: int = 0) -> None:
        self.reply_bytes = reply_bytes
        self.received = 0
        self.arrivals: list[tuple[float, bytes]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), SinkHandler)
        threading.Thread(target=self.serve_forever, name="sink", daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class SinkHandler(socketserver.BaseRequestHandler):
    server: Sink

    def handle(self) -> None:
        if self.server.reply_bytes:
            self.request.sendall(b"d" * self.server.reply_bytes)
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                with self.server.lock:
                    self.server.received += len(data)
                    self.server.arrivals.append((time.perf_counter(), data))
                self.request.sendall(data)  # echoes too


@pytest.fixture
def sinks() -> Iterator[tuple[Sink, Sink]]:
    first, second = Sink(), Sink()
    yield first, second
    first.close()
    second.close()


def dial_fails(port: int) -> bool:
    """True when a connection through the proxy breaks before a byte crosses: reset while or right after connecting."""
    try:
        sock = connect(port)
    except (ConnectionResetError, ConnectionRefusedError):
        return True
    with sock:
        sock.settimeout(2.0)
        with contextlib.suppress(OSError):
            sock.sendall(b"during the outage")
        return closed_by_peer(sock)


def test_link_profile_is_validated_and_its_delays_are_seeded() -> None:
    with pytest.raises(ValueError):
        LinkProfile(delay_ms=-1)
    with pytest.raises(ValueError):
        LinkProfile(mbps=float("nan"))
    profile = LinkProfile(delay_ms=20, jitter_ms=10, seed=7)
    first = list(itertools.islice(profile.one_way_delays(1, "up"), 1000))
    assert first == list(itertools.islice(LinkProfile(delay_ms=20, jitter_ms=10, seed=7).one_way_delays(1, "up"),
                                          1000))
    assert first != list(itertools.islice(LinkProfile(delay_ms=20, jitter_ms=10, seed=8).one_way_delays(1, "up"),
                                          1000))
    assert first != list(itertools.islice(profile.one_way_delays(1, "down"), 1000))
    assert 0.010 <= min(first) < 0.0105 and 0.0295 < max(first) <= 0.030
    assert statistics.pstdev(first) == pytest.approx(0.010 / 3**0.5, rel=0.1)  # uniform over +-10 ms
    assert LinkProfile(mbps=50).serialization_s(100_000) == pytest.approx(0.016)


def test_jitter_follows_the_seeded_delays_and_keeps_order(sinks: tuple[Sink, Sink]) -> None:
    """One-way delays measured at a real upstream match the profile's seeded sequence, message by message."""
    sink = sinks[0]
    profile = LinkProfile(delay_ms=20, jitter_ms=10, seed=3)
    n, gap = 30, 0.04  # the gap exceeds the jitter's 20 ms range: no message waits for the one before it
    sent: list[float] = []
    with LinkProxy(sink.target, profile) as link, connect(link.port) as sock:
        for i in range(n):
            sent.append(time.perf_counter())
            sock.sendall(f"{i:07d}\n".encode())
            time.sleep(gap)
        assert recv_exactly(sock, 8 * n) == b"".join(f"{i:07d}\n".encode() for i in range(n))  # echoed, in order
        stats = link.stats()
    arrived = {int(line): t for t, data in sink.arrivals for line in data.split()}
    assert sorted(arrived) == list(range(n))
    measured = [arrived[i] - sent[i] for i in range(n)]
    expected = list(itertools.islice(profile.one_way_delays(1, "up"), n))
    errors = sorted(abs(m - e) for m, e in zip(measured, expected, strict=True))
    assert errors[n // 2] < 0.003 and errors[-3] < 0.010, (measured, expected)
    assert statistics.pstdev(measured) == pytest.approx(statistics.pstdev(expected), abs=0.003)
    assert min(measured) >= 0.010 - 0.001
    assert (stats.connections, stats.chunks_up, stats.bytes_up, stats.bytes_down) == (1, n, 8 * n, 8 * n)


def test_heavy_jitter_never_reorders_bytes(echo: str) -> None:
    messages = [f"message {i};".encode() for i in range(300)]
    with LinkProxy(echo, LinkProfile(delay_ms=5, jitter_ms=5, seed=1)) as link, connect(link.port) as sock:
        for message in messages:  # 1 ms apart, 0 to 10 ms delays: without the order rule they would overtake
            sock.sendall(message)
            time.sleep(0.001)
        total = sum(map(len, messages))
        assert recv_exactly(sock, total) == b"".join(messages)
        assert link.stats().chunks_up > 10


@pytest.mark.parametrize("direction", ["up", "down"])
def test_the_cap_paces_a_transfer_at_the_rate(direction: str) -> None:
    nbytes, mbps = 3_000_000, 50.0
    expected = nbytes * 8 / (mbps * 1e6)  # 0.48 s
    sink = Sink(reply_bytes=nbytes if direction == "down" else 0)
    try:
        with LinkProxy(sink.target, LinkProfile(mbps=mbps)) as link, connect(link.port) as sock:
            sock.settimeout(10.0)
            started = time.perf_counter()
            if direction == "up":
                threading.Thread(target=sock.sendall, args=(b"u" * nbytes,), daemon=True).start()
                while sink.received < nbytes and time.perf_counter() - started < 5:
                    time.sleep(0.001)
                elapsed = sink.arrivals[-1][0] - started
            else:
                assert len(recv_exactly(sock, nbytes)) == nbytes
                elapsed = time.perf_counter() - started
            stats = link.stats()
    finally:
        sink.close()
    assert elapsed == pytest.approx(expected, rel=0.15), (elapsed, expected)
    assert getattr(stats, f"bytes_{direction}") == nbytes


def test_connections_share_the_capped_link(echo: str) -> None:
    nbytes, mbps, n = 500_000, 40.0, 3
    expected = n * 2 * nbytes * 8 / (mbps * 1e6)  # each echo crosses the up and the down link: 0.3 s each way
    times: list[float] = []

    def client(link: LinkProxy) -> None:
        with connect(link.port) as sock:
            sock.settimeout(10.0)
            threading.Thread(target=sock.sendall, args=(b"s" * nbytes,), daemon=True).start()
            assert len(recv_exactly(sock, nbytes)) == nbytes
            times.append(time.perf_counter())

    with LinkProxy(echo, LinkProfile(mbps=mbps)) as link:
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(link,)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
    wall = max(times) - started
    # up and down overlap (the echo streams), so the three together take the up link's time plus a tail
    assert len(times) == n
    assert expected / 2 * 0.85 < wall < expected / 2 * 1.3, (wall, expected / 2)


def test_an_outage_breaks_connections_refuses_new_ones_then_hands_over(sinks: tuple[Sink, Sink]) -> None:
    old, new = sinks
    with LinkProxy(old.target, LinkProfile(delay_ms=100)) as link, connect(link.port) as sock:
        assert round_trip(sock, b"hello") >= 0.2
        assert old.received == 5
        sock.sendall(b"x" * 1000)  # still inside the link (100 ms) when the outage begins
        time.sleep(0.02)
        began = time.perf_counter()
        link.outage(0.6, upstream=new.target)
        sock.settimeout(2.0)
        assert closed_by_peer(sock)
        broken_after = time.perf_counter() - began
        assert link.down and link.upstream == new.target
        refused_at = time.perf_counter()
        assert dial_fails(link.port)
        refused_after = time.perf_counter() - refused_at
        while link.down and time.perf_counter() - began < 1.0:  # the outage's clock starts inside outage()
            time.sleep(0.005)
        up_after = time.perf_counter() - began
        with connect(link.port) as after:
            assert round_trip(after, b"at the new site") >= 0.2
        time.sleep(0.15)
        stats = link.stats()
    assert broken_after < 0.05, broken_after
    assert refused_after < 0.05, refused_after
    assert 0.6 <= up_after < 0.7, up_after
    assert old.received == 5, "no byte may reach the old upstream once the outage began"
    assert new.received == len(b"at the new site")
    assert (stats.connections, stats.refused, stats.outages) == (2, 1, 1)


def test_a_scheduled_outage_runs_relative_to_start(sinks: tuple[Sink, Sink]) -> None:
    old, new = sinks
    schedule = [Outage(at_s=0.3, duration_s=0.3, upstream=new.target)]
    started = time.perf_counter()
    with LinkProxy(old.target, LinkProfile(), schedule=schedule) as link, connect(link.port) as sock:
        assert round_trip(sock, b"before") < 0.1
        sock.settimeout(2.0)
        assert closed_by_peer(sock)
        broken_at = time.perf_counter() - started
        while link.down or time.perf_counter() - started < 0.3:
            time.sleep(0.01)
        up_at = time.perf_counter() - started
        with connect(link.port) as after:
            assert round_trip(after, b"after") < 0.1
    assert 0.29 <= broken_at < 0.45, broken_at
    assert 0.59 <= up_at < 0.75, up_at
    assert (old.received, new.received) == (len(b"before"), len(b"after"))


def test_the_cli_parses_the_link_flags() -> None:
    with pytest.raises(SystemExit):
        main(["--upstream", "127.0.0.1:1", "--outage", "1"])


def test_the_cli_puts_a_link_in_front_of_the_server_only_when_asked(echo: str) -> None:
    from robotclient.__main__ import build_parser, link_in_front

    plain = build_parser().parse_args(["replay", "--server", echo])
    with link_in_front(echo, plain) as address:
        assert address == echo
    linked = build_parser().parse_args(["run", "--server", echo, "--link-delay-ms", "30", "--link-jitter-ms", "2",
                                        "--link-mbps", "100", "--link-seed", "4"])
    with link_in_front(echo, linked) as address, connect(int(address.rpartition(":")[2])) as sock:
        assert address != echo
        assert 0.056 <= round_trip(sock, b"through the link") < 0.064 + MARGIN_S
