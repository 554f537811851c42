"""Pipelined offload client: frames go out, detections come back, the newest frame always wins.

Up to ``max_in_flight`` requests travel at once so the link's round trip is
overlapped with the server's compute. A frame waiting for a free slot is
replaced by any newer frame (stale frames are dropped, never queued), and a
frame whose deadline (measured from capture) has passed is never sent.

With pacing on (``pace`` > 0), a second request is not sent before the server can have
finished the previous one (the server-reported processing time, smoothed):
it then arrives as the server frees up instead of waiting in its queue, so
pipelining raises frames/s without making detections older.

When the server goes away, calls fail fast (no ``wait_for_ready``) and sending
backs off exponentially with jitter; gRPC reconnects the channel underneath
(every 50 ms at most: ``CHANNEL_OPTIONS``), and the moment the channel is
READY again the backoff is cleared, so the first frame goes out at once: after
a handover (the address the robot dials now reaches another site) the loop
gets fresh answers about one reconnect interval after the link is back.
"""

from __future__ import annotations

import collections
import functools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from protos import timings as stage
from protos.deadline import Deadline
from robotclient.runtime.model import CapturedFrame, DetectionResult, FailedFrame
from robotclient.runtime.wire import DIALECTS, EncodedFrame, FrameEncoder, RequestOptions

# Failures that mean "the server is not there or will not take more now": back off before the next try.
BACKOFF_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNKNOWN})

# A frame with no more than this left of its deadline is not sent: its answer could not come back in time.
SEND_MARGIN_S = 0.005

# No "grpc.min_reconnect_backoff_ms": gRPC core takes it as the minimum connect timeout; at 100 ms, connection
# attempts over a link with a longer round trip timed out before the HTTP/2 handshake (UNAVAILABLE frames).
# Reconnect every 50 ms (+-20 % jitter) however long the link was down: a refused dial costs a loopback or Wi-Fi
# round trip, and a 1000 ms maximum let a 300 ms handover outage cost up to 1.2 s without answers (100 ms left
# 0.5-0.83 s gaps after a 300 ms outage in the simulator under load; 50 ms takes ~50 ms off the worst).
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 50),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.enable_retries", 0),
)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter between failed attempts."""

    initial_s: float = 0.1
    maximum_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, failures: int, rng: random.Random) -> float:
        base = min(self.maximum_s, self.initial_s * self.multiplier ** max(0, failures - 1))
        return base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))


@dataclass(frozen=True)
class OffloadConfig:
    target: str
    dialect: str = "v1"
    max_in_flight: int = 2
    deadline_s: float = 1.0  # per frame, from its capture
    pace: float = 1.1  # min gap between sends, in units of the server's bottleneck time; 0 = send when a slot frees
    encoder: FrameEncoder = field(default_factory=FrameEncoder)
    request: RequestOptions = field(default_factory=RequestOptions)
    backoff: Backoff = field(default_factory=Backoff)
    credentials: grpc.ChannelCredentials | None = None  # TLS (runtime.tls) when talking straight to a server
    server_name: str | None = None  # the name the server certificate carries, when the target is an IP

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise ValueError(f"unknown protocol {self.dialect!r}; choose from {sorted(DIALECTS)}")
        if self.max_in_flight < 1:
            raise ValueError(f"max in flight must be at least 1, got {self.max_in_flight}")
        if self.deadline_s <= 0:
            raise ValueError(f"deadline must be positive, got {self.deadline_s}")

    def deadline_of(self, frame: CapturedFrame) -> Deadline:
        """The frame's deadline: ``deadline_s`` after its capture, on the clock that stamped it."""
        return Deadline.after(self.deadline_s, frame.captured_at)


@dataclass
class OffloadStats:
    """Counters since start; read a copy with :meth:`OffloadClient.stats`."""

    offered: int = 0
    sent: int = 0
    completed: int = 0
    replaced: int = 0
    expired: int = 0
    out_of_order: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    consecutive_failures: int = 0
    handovers: int = 0
    edge: str = ""
    last_error: str = ""
    in_flight: int = 0
    service_ms: float = 0.0


def bottleneck_ms(timings_ms: dict[str, float]) -> float:
    """The server's slowest detector's compute for one frame, queueing excluded: the pace it can sustain.

    The aggregator reports each detector's stages (``protos.timings``: ``yolo.dnn``, ``face.total``...);
    queueing (``wait``) is not work, so it is left out, and counts (``batch``) are not times. A detector
    without a ``total`` counts the sum of its stages. Falls back to the server's own ``total`` for servers
    that report no detector stages, and 0 when nothing is known.
    """
    not_work = stage.QUEUEING | stage.COUNTS
    per_detector = [
        s[stage.TOTAL] - sum(s.get(k, 0.0) for k in stage.QUEUEING) if stage.TOTAL in s
        else sum(ms for k, ms in s.items() if k not in not_work)
        for s in stage.by_detector(timings_ms).values()
    ]
    return max(per_detector, default=timings_ms.get(stage.TOTAL, 0.0))


class OffloadClient:
    """Sends frames to ``objectdetection`` and collects the answers; thread-safe."""

    def __init__(
        self,
        config: OffloadConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._dialect = DIALECTS[config.dialect]()
        self._own_channel = channel is None
        if channel is None:
            if config.credentials is not None:
                name = (("grpc.ssl_target_name_override", config.server_name),) if config.server_name else ()
                channel = grpc.secure_channel(config.target, config.credentials, options=CHANNEL_OPTIONS + name)
            else:
                channel = grpc.insecure_channel(config.target, options=CHANNEL_OPTIONS)
        self._channel = channel
        self._call = self._dialect.callable(channel)
        self._metadata = (("x-robot-id", str(config.request.user_id)),)
        self._cond = threading.Condition()
        self._pending: CapturedFrame | None = None
        self._results: collections.deque[DetectionResult] = collections.deque()
        self._failures: collections.deque[FailedFrame] = collections.deque(maxlen=1000)
        self._stats = OffloadStats()
        self._closed = False
        self._last_number = -1
        self._last_sent_at = float("-inf")
        self._backoff_until = float("-inf")
        self._sender = threading.Thread(target=self._send_loop, name="offload-sender", daemon=True)
        self._sender.start()
        self._channel.subscribe(self._on_connectivity)

    # -- caller side -------------------------------------------------------------------------------

    def offer(self, frame: CapturedFrame) -> None:
        """Hand over the newest frame; one still waiting for a slot is dropped."""
        with self._cond:
            if self._closed:
                raise RuntimeError("offload client is closed")
            self._stats.offered += 1
            if self._pending is not None:
                self._stats.replaced += 1
            self._pending = frame
            self._cond.notify_all()

    def ready(self) -> bool:
        """Whether a frame offered now would be sent at once (for clips read as fast as the mesh allows)."""
        with self._cond:
            return self._can_send_now()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._can_send_now():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                blocked = self._pending is not None or self._stats.in_flight >= self.config.max_in_flight
                self._cond.wait(remaining if blocked else min(remaining, max(self._send_delay(), 0.001)))
            return True

    def take_results(self) -> list[DetectionResult]:
        with self._cond:
            results = list(self._results)
            self._results.clear()
            return results

    def take_failures(self) -> list[FailedFrame]:
        """Frames sent or due to be sent that got no answer (kept up to the last 1000)."""
        with self._cond:
            failures = list(self._failures)
            self._failures.clear()
            return failures

    def wait_results(self, timeout: float) -> list[DetectionResult]:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._results) or self._closed, timeout)
            results = list(self._results)
            self._results.clear()
            return results

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending or in flight; True when drained."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and self._stats.in_flight == 0, timeout)

    def stats(self) -> OffloadStats:
        with self._cond:
            copy = OffloadStats(**{k: getattr(self._stats, k) for k in self._stats.__dataclass_fields__})
            copy.failed = dict(self._stats.failed)
            return copy

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        self._channel.unsubscribe(self._on_connectivity)
        self._sender.join(timeout=2.0)
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> OffloadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending -----------------------------------------------------------------------------------

    def _on_connectivity(self, state: grpc.ChannelConnectivity) -> None:
        """The channel is connected (again): the backoff waited for the link, which is back, so send now."""
        if state is not grpc.ChannelConnectivity.READY:
            return
        with self._cond:
            self._backoff_until = float("-inf")
            self._cond.notify_all()

    def _send_delay(self) -> float:
        """Seconds before the next send is allowed (backoff, pacing); caller holds the lock."""
        now = self._clock()
        allowed = self._backoff_until
        if self.config.pace > 0 and self._stats.in_flight > 0 and self._stats.service_ms > 0:
            allowed = max(allowed, self._last_sent_at + self.config.pace * self._stats.service_ms / 1000.0)
        return allowed - now

    def _can_send_now(self) -> bool:
        return (
            not self._closed
            and self._pending is None
            and self._stats.in_flight < self.config.max_in_flight
            and self._send_delay() <= 0
        )

    def _next_frame(self) -> CapturedFrame | None:
        with self._cond:
            while not self._closed:
                if self._pending is not None and self._stats.in_flight < self.config.max_in_flight:
                    delay = self._send_delay()
                    if delay <= 0:
                        frame, self._pending = self._pending, None
                        self._stats.in_flight += 1
                        self._last_sent_at = self._clock()
                        self._cond.notify_all()  # a caller waiting in wait_ready() may offer the next frame now
                        return frame
                    self._cond.wait(delay)
                else:
                    self._cond.wait()
            return None

    def _send_loop(self) -> None:
        while (frame := self._next_frame()) is not None:
            deadline = self.config.deadline_of(frame)
            now = self._clock()
            if deadline.expired(now, SEND_MARGIN_S):
                self._finish(frame=frame, expired=True)
                continue
            try:
                encoded = self.config.encoder.encode(frame)
                request = self._dialect.request(frame, encoded, self.config.request)
                sent_at = self._clock()
                future = self._call.future(request, timeout=deadline.for_call(sent_at), metadata=self._metadata)
            except Exception as exc:  # a bad frame must not kill the sender
                self._finish(frame=frame, error=f"frame {frame.number}: {exc}", code="CLIENT")
                continue
            with self._cond:
                self._stats.sent += 1
            future.add_done_callback(functools.partial(self._on_done, frame, encoded, sent_at))

    def _on_done(self, frame: CapturedFrame, encoded: EncodedFrame, sent_at: float, future: grpc.Future) -> None:
        received_at = self._clock()
        try:
            response = future.result()
            reply = self._dialect.reply(response, encoded)
        except grpc.RpcError as exc:
            code = exc.code()
            self._finish(frame=frame, error=f"{code.name}: {exc.details()}", code=code.name,
                         back_off=code in BACKOFF_CODES)
            return
        except Exception as exc:  # a reply we cannot read counts as a failure, not a crash
            self._finish(frame=frame, error=f"unreadable reply: {exc}", code="CLIENT")
            return
        result = DetectionResult(
            frame=frame,
            sent_at=sent_at,
            received_at=received_at,
            detections=reply.detections,
            served_by=reply.served_by,
            timings_ms=reply.timings_ms,
            detector_errors=reply.detector_errors,
        )
        self._finish(frame=frame, result=result)

    def _finish(
        self,
        *,
        frame: CapturedFrame,
        result: DetectionResult | None = None,
        error: str = "",
        code: str = "",
        back_off: bool = False,
        expired: bool = False,
    ) -> None:
        with self._cond:
            stats = self._stats
            stats.in_flight -= 1
            if expired:
                stats.expired += 1
                self._failures.append(FailedFrame(frame, self._clock(), "EXPIRED", "deadline passed before sending"))
            elif result is not None:
                stats.completed += 1
                stats.consecutive_failures = 0
                self._backoff_until = float("-inf")
                busy = bottleneck_ms(result.timings_ms)
                if busy > 0:
                    stats.service_ms = busy if stats.service_ms == 0 else 0.7 * stats.service_ms + 0.3 * busy
                edge = result.served_by.edge
                if edge and stats.edge and edge != stats.edge:
                    stats.handovers += 1
                if edge:
                    stats.edge = edge
                if result.frame.number <= self._last_number:
                    stats.out_of_order += 1
                else:
                    self._last_number = result.frame.number
                    self._results.append(result)
            else:
                stats.failed[code] = stats.failed.get(code, 0) + 1
                stats.consecutive_failures += 1
                stats.last_error = error
                self._failures.append(FailedFrame(frame, self._clock(), code, error))
                if back_off:
                    delay = self.config.backoff.delay(stats.consecutive_failures, self._rng)
                    self._backoff_until = self._clock() + delay
            self._cond.notify_all()
