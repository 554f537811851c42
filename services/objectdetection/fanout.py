"""Parallel fan-out of one frame to the detectors, with deadlines derived from the caller's."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from protos.deadline import Deadline
from services.common.server import grpc_options
from services.common.tls import ClientTls, channel

# Time kept back from the caller's deadline for merging and sending the reply. It must also cover
# scheduling jitter on a busy node and the reply's trip back: the server's deadline starts when the
# call arrives, so the caller's expires about one network transit earlier. With 5 ms, partial replies
# arrived within a millisecond of the deadline and were lost (DEADLINE_EXCEEDED) on a loaded 2-core host.
REPLY_MARGIN_S = 0.05
# A detector that restarts (a pod rescheduled, a process killed) is reached again within about a second:
# grpc's default reconnect backoff grows to 120 s, so a detector down for a minute would stay unused long
# after it came back. Calls fail fast (UNAVAILABLE, a partial reply) while the channel is down.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                     ("grpc.max_reconnect_backoff_ms", 1000)]


@dataclass
class DetectorOutcome:
    engine: int
    reply: v1.DetectResponse | None
    code: grpc.StatusCode
    message: str
    latency_s: float


class DetectorClient:
    """One long-lived channel per detector (channels are reused for every frame)."""

    def __init__(self, engine: int, target: str, max_message_bytes: int, tls: ClientTls | None = None) -> None:
        self.engine = engine
        self.target = target
        self.channel = channel(target, tls, grpc_options(max_message_bytes) + RECONNECT_OPTIONS)
        stub_class = v1_grpc.FaceDetectionStub if engine == v1.ENGINE_FACE else v1_grpc.YoloDetectionStub
        self.detect = stub_class(self.channel).Detect

    def close(self) -> None:
        self.channel.close()


class FanOut:
    def __init__(
        self,
        clients: Sequence[DetectorClient],
        default_timeout_s: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.clients = {c.engine: c for c in clients}
        self.default_timeout_s = default_timeout_s
        self.clock = clock

    @property
    def engines(self) -> list[int]:
        return list(self.clients)

    def timeout_for(self, deadline: Deadline, now: float) -> float:
        """The detectors must answer before the caller gives up (its deadline less the reply margin);
        never longer than the default (``--detector-timeout``), which is all a caller without one gets."""
        return deadline.for_call(now, REPLY_MARGIN_S, cap=self.default_timeout_s)

    def run(
        self,
        request: v1.DetectRequest,
        engines: Sequence[int],
        timeout_s: float,
        metadata: Sequence[tuple[str, str | bytes]],
    ) -> list[DetectorOutcome]:
        """Starts every call before waiting on any: the frame takes as long as the slowest detector."""
        started = self.clock()
        done_at: dict[int, float] = {}
        lock = threading.Lock()

        def stamp(engine: int) -> Callable[[grpc.Future], None]:
            def on_done(_future: grpc.Future) -> None:
                with lock:
                    done_at[engine] = self.clock()
            return on_done

        calls = []
        for engine in engines:
            sub_request = v1.DetectRequest(frame=request.frame, engines=[engine], max_results=request.max_results)
            future = self.clients[engine].detect.future(sub_request, timeout=timeout_s, metadata=tuple(metadata))
            future.add_done_callback(stamp(engine))
            calls.append((engine, future))
        outcomes = []
        for engine, future in calls:
            try:
                reply = future.result()
                code, message = grpc.StatusCode.OK, ""
            except grpc.RpcError as err:
                reply, code, message = None, err.code(), err.details() or ""
            with lock:
                finished = done_at.get(engine, self.clock())
            outcomes.append(DetectorOutcome(engine, reply, code, message, finished - started))
        return outcomes

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
