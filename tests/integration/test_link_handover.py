"""A real gRPC channel through the emulated link across an outage and a handover to a second site.

Two real gRPC servers on loopback (the standard health service), a LinkProxy in front of the first; the channel
uses the reconnect backoff recommended for the robot's OffloadClient (robotclient.runtime.offload.CHANNEL_OPTIONS
with both reconnect backoffs at 100 ms). Health checks are made every 20 ms without wait_for_ready, as the offload
client makes its calls: they must fail during the outage and succeed at the new site within 0.5 s after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from robotclient.lab.netem import LinkProfile, LinkProxy
from robotclient.runtime.offload import CHANNEL_OPTIONS

RECONNECT = {"grpc.initial_reconnect_backoff_ms": 100, "grpc.max_reconnect_backoff_ms": 100}
RECOMMENDED_OPTIONS = tuple((k, RECONNECT.get(k, v)) for k, v in CHANNEL_OPTIONS) + tuple(
    (k, v) for k, v in RECONNECT.items() if k not in dict(CHANNEL_OPTIONS))
OUTAGE_S = 1.0
CALL_EVERY_S = 0.02


class CountingHealth(health.HealthServicer):
    """The standard health service, counting the checks it answers."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0
        self.lock = threading.Lock()
        self.set("", health_pb2.HealthCheckResponse.SERVING)

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
              ) -> health_pb2.HealthCheckResponse:
        with self.lock:
            self.checks += 1
        return super().Check(request, context)


@pytest.fixture
def sites() -> Iterator[list[tuple[str, CountingHealth]]]:
    servers, found = [], []
    for _ in range(2):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = CountingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        found.append((f"127.0.0.1:{port}", servicer))
    yield found
    for server in servers:
        server.stop(grace=0.5).wait()


def test_grpc_comes_back_at_the_new_site_soon_after_the_outage(sites: list[tuple[str, CountingHealth]]) -> None:
    (old_target, old), (new_target, new) = sites
    with LinkProxy(old_target, LinkProfile(delay_ms=10, jitter_ms=2, seed=1)) as link, \
            grpc.insecure_channel(link.target, options=RECOMMENDED_OPTIONS) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        request = health_pb2.HealthCheckRequest(service="")
        assert check(request, timeout=5.0).status == health_pb2.HealthCheckResponse.SERVING
        before = old.checks
        began = time.perf_counter()
        link.outage(OUTAGE_S, upstream=new_target)
        old_at_outage = old.checks
        outcomes: list[tuple[float, bool]] = []
        while time.perf_counter() - began < OUTAGE_S + 2.0:
            called = time.perf_counter() - began
            try:
                check(request, timeout=0.25)
                outcomes.append((called, True))
                if called > OUTAGE_S:
                    break
            except grpc.RpcError as err:
                assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), err
                outcomes.append((called, False))
            time.sleep(CALL_EVERY_S)
        back = next((t for t, ok in outcomes if ok), None)
        stats = link.stats()
    print(f"first success {back} s after the outage began ({OUTAGE_S} s); {len(outcomes)} calls")
    assert before >= 1 and old_at_outage == before
    assert sum(1 for t, ok in outcomes if not ok and t < OUTAGE_S) >= 10, outcomes  # failing all through it
    assert all(not ok for t, ok in outcomes if t < OUTAGE_S), outcomes
    assert back is not None and OUTAGE_S <= back < OUTAGE_S + 0.5, outcomes
    assert old.checks == before, "no call may reach the old site after the outage began"
    assert new.checks == 1
    assert stats.connections == 2 and stats.refused >= 2 and stats.outages == 1
