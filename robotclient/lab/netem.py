"""An emulated link on loopback: a TCP proxy adding delay, jitter, a bandwidth cap, outages and handovers.

There is no kernel ``netem`` here (DESIGN.md section 4), so the link lives in user space: a TCP proxy in its own
thread with its own asyncio loop. gRPC over it sees the added delay, the jitter, the cap and the broken
connections, and nothing else (no loss, no reordering: TCP would hide them as delay anyway).

API
---
``LinkProfile(delay_ms=0, jitter_ms=0, mbps=0, seed=0)`` (frozen), per direction:

- ``delay_ms``: one-way delay added to every chunk.
- ``jitter_ms``: each chunk's one-way delay is drawn uniformly from ``[delay - jitter, delay + jitter]`` (netem's
  default distribution; floored at 0) by a ``random.Random`` seeded with ``(seed, connection number, direction)``:
  the same seed gives the same delays (``profile.one_way_delays(n, "up")`` lists them). Byte order is kept: a
  chunk is never released before the previous one of its direction.
- ``mbps``: bandwidth cap, 0 = none. Each direction is one link shared by every connection through the proxy; a
  chunk of n bytes occupies it for ``n * 8 / (mbps * 1e6)`` seconds after the chunks before it (a 100 kB JPEG at
  50 Mbit/s: 16 ms), then travels ``delay`` (a token bucket about 2 ms of the rate deep, so that the proxy's
  oversleeping does not slow the link). The proxy reads no faster than the link drains, so the sender's socket
  buffer is the queue (gRPC's flow control sees a slow link, not a proxy swallowing megabytes).

``LinkProxy(upstream, profile, *, listen_host="127.0.0.1", listen_port=0, clock=time.monotonic, schedule=())``:

- ``start()`` (returns the proxy), ``stop()`` (idempotent), or ``with LinkProxy(...) as link:``.
- ``target``: the "host:port" to dial; ``port``; ``upstream``: the "host:port" new connections go to.
- ``stats()``: a ``LinkStats`` snapshot (connections, refused, upstream_failures, open, bytes and chunks each way
  as delivered: ``up`` is client to upstream, outages); ``connections`` is the number forwarded so far.
- ``outage(duration_s, upstream=None, profile=None)``, callable from any thread: at once resets (TCP RST) every open
  connection on both sides, so gRPC sees the connection break at once and no queued byte reaches the old upstream;
  for ``duration_s`` every new connection is accepted and reset at once (a dial fails within a loopback round
  trip: gRPC goes to TRANSIENT_FAILURE and retries on its reconnect backoff, not on its 20 s connect timeout as a
  black hole would make it); afterwards new connections go to ``upstream`` (the handover) with ``profile`` (the
  new site's link) when given. ``handover(upstream, gap_s=0, profile=None)`` is the same call.
- ``schedule``: ``Outage(at_s, duration_s, upstream=None, profile=None)`` items, run by the proxy's own loop at
  ``at_s`` seconds after ``start()``.
- ``down``: True during an outage.

How fast gRPC comes back after an outage is set by the client channel's reconnect backoff: with
``grpc.initial_reconnect_backoff_ms`` = ``grpc.max_reconnect_backoff_ms`` = 100 a refused channel retries every
80 to 120 ms (gRPC adds +-20 % jitter), so it is connected again about 0.1 s after the outage ends; with a 1000 ms
maximum it can take up to 1.2 s.

``clock`` must tick in real seconds (the proxy sleeps ``due - clock()``); it stamps every release time and the
outage windows. ``DelayProxy(upstream, delay_s)`` is the fixed-delay proxy of old: a LinkProxy with
``LinkProfile(delay_ms=delay_s * 1000)``.

    python -m robotclient.lab.netem --listen 127.0.0.1:6000 --upstream 127.0.0.1:50051 --delay-ms 40 \\
        --jitter-ms 5 --mbps 50 --seed 1 --outage 10,2,127.0.0.1:50052
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

DIRECTIONS = ("up", "down")  # up: client -> upstream; down: upstream -> client
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class LinkProfile:
    """One direction's impairments, the same both ways; see the module docstring."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    mbps: float = 0.0  # 0 = no cap
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "mbps"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"LinkProfile.{name} must be a finite number >= 0, not {value!r}")

    def one_way_delays(self, connection: int, direction: str) -> Iterator[float]:
        """Seconds each successive chunk of one direction of one connection is held (before the order rule)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction is one of {DIRECTIONS}, not {direction!r}")
        base, spread = self.delay_ms / 1000.0, self.jitter_ms / 1000.0
        rng = random.Random(f"{self.seed}:{connection}:{direction}")
        while True:
            yield max(0.0, base + rng.uniform(-spread, spread)) if spread else base

    def serialization_s(self, nbytes: int) -> float:
        """Seconds ``nbytes`` occupy the capped link."""
        return nbytes * 8.0 / (self.mbps * 1e6) if self.mbps else 0.0

    @property
    def read_size(self) -> int:
        """Bytes read at once: about 2 ms of the cap (so the cap is smooth), 1500 to 64 KiB."""
        if not self.mbps:
            return 65536
        return max(1500, min(65536, int(self.mbps * 1e6 / 8.0 * 0.002)))

    def describe(self) -> str:
        cap = f"{self.mbps:g} Mbit/s" if self.mbps else "no cap"
        return f"+{self.delay_ms:g} ms +-{self.jitter_ms:g} ms each way, {cap}, seed {self.seed}"


@dataclass(frozen=True)
class Outage:
    """A scheduled outage: ``at_s`` after ``start()``, for ``duration_s``; then ``upstream``/``profile`` if given."""

    at_s: float
    duration_s: float
    upstream: str | None = None
    profile: LinkProfile | None = None


@dataclass(frozen=True)
class LinkStats:
    connections: int  # forwarded to an upstream
    refused: int  # reset during an outage
    upstream_failures: int  # the upstream could not be dialled
    open: int
    bytes_up: int  # delivered to the upstream
    bytes_down: int  # delivered to the client
    chunks_up: int
    chunks_down: int
    outages: int


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST: the peer sees the connection break now, and nothing still buffered is sent."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


class _Lane:
    """One direction of the capped link, shared by all connections: when it is next free."""

    def __init__(self) -> None:
        self.free_at = float("-inf")


class _Connection:
    def __init__(self, number: int, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.number = number
        self.writers = (client, upstream)
        self.tasks: set[asyncio.Task[None]] = set()

    def reset(self) -> None:
        for writer in self.writers:
            _reset(writer)
        for task in self.tasks:
            task.cancel()


class LinkProxy:
    """An emulated link in front of ``upstream``; runs in its own thread with its own event loop."""

    def __init__(
        self,
        upstream: str,
        profile: LinkProfile,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        schedule: Sequence[Outage] = (),
    ) -> None:
        self._upstream = parse_address(upstream)
        self.profile = profile
        self.listen = (listen_host, listen_port)
        self.port = 0
        self.schedule = tuple(schedule)
        self._clock = clock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="link-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.Task[None]] = set()
        self._open: set[_Connection] = set()
        self._lanes = {direction: _Lane() for direction in DIRECTIONS}
        self._epoch = 0  # bumped by every outage: a dial begun before it is dropped
        self._down_until = float("-inf")
        self._counts = dict.fromkeys(
            ("connections", "refused", "upstream_failures", "bytes_up", "bytes_down", "chunks_up", "chunks_down",
             "outages"), 0)

    # ------------------------------------------------------------------ control, from any thread

    @property
    def target(self) -> str:
        return f"{self.listen[0]}:{self.port}"

    @property
    def upstream(self) -> str:
        return f"{self._upstream[0]}:{self._upstream[1]}"

    @property
    def connections(self) -> int:
        return self._counts["connections"]

    @property
    def down(self) -> bool:
        return self._clock() < self._down_until

    def stats(self) -> LinkStats:
        return LinkStats(open=len(self._open), **self._counts)

    def start(self) -> LinkProxy:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> LinkProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def outage(self, duration_s: float, upstream: str | None = None, profile: LinkProfile | None = None) -> None:
        """Break every open connection now; refuse new ones for ``duration_s``; then forward to ``upstream``."""
        if duration_s < 0:
            raise ValueError("an outage lasts 0 s or more")
        target = parse_address(upstream) if upstream else None

        async def begin() -> None:
            self._begin_outage(duration_s, target, profile)

        asyncio.run_coroutine_threadsafe(begin(), self._loop).result(timeout=10)

    def handover(self, upstream: str, gap_s: float = 0.0, profile: LinkProfile | None = None) -> None:
        """Move to another site: ``outage(gap_s, upstream, profile)``."""
        self.outage(gap_s, upstream, profile)

    # ------------------------------------------------------------------ the loop's side

    def _begin_outage(self, duration_s: float, upstream: tuple[str, int] | None, profile: LinkProfile | None) -> None:
        self._epoch += 1
        self._counts["outages"] += 1
        self._down_until = max(self._down_until, self._clock() + duration_s)
        if upstream is not None:
            self._upstream = upstream
        if profile is not None:
            self.profile = profile
        for connection in self._open:
            connection.reset()
        self._open.clear()

    async def _serve(self) -> int:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        started = self._clock()
        for item in self.schedule:
            timer = asyncio.create_task(self._scheduled(started, item))
            self._timers.add(timer)
            timer.add_done_callback(self._timers.discard)
        return self._server.sockets[0].getsockname()[1]

    async def _scheduled(self, started: float, item: Outage) -> None:
        await asyncio.sleep(max(0.0, started + item.at_s - self._clock()))
        self._begin_outage(item.duration_s, parse_address(item.upstream) if item.upstream else None, item.profile)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in self._open:
            connection.reset()
        self._open.clear()
        for task in (*self._timers, *self._handlers):
            task.cancel()
        await asyncio.gather(*self._timers, *self._handlers, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._forward(client_reader, client_writer)
        except asyncio.CancelledError:  # stop(): the connection is already reset; end the handler quietly
            pass
        finally:
            self._handlers.discard(handler)

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.down:
            self._counts["refused"] += 1
            _reset(client_writer)
            return
        epoch, profile = self._epoch, self.profile
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            self._counts["upstream_failures"] += 1
            client_writer.close()
            return
        if epoch != self._epoch:  # an outage began while dialling: this connection is one of those it breaks
            self._counts["refused"] += 1
            _reset(upstream_writer)
            _reset(client_writer)
            return
        self._counts["connections"] += 1
        connection = _Connection(self._counts["connections"], client_writer, upstream_writer)
        self._open.add(connection)
        for reader, writer, direction in ((client_reader, upstream_writer, "up"),
                                          (upstream_reader, client_writer, "down")):
            task = asyncio.create_task(self._pipe(connection, reader, writer, direction, profile))
            connection.tasks.add(task)
        try:
            await asyncio.gather(*connection.tasks, return_exceptions=True)
        finally:
            self._open.discard(connection)

    async def _pipe(self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str, profile: LinkProfile) -> None:
        """Read as the link drains; release each chunk after its delay, never before the one ahead of it."""
        clock, lane = self._clock, self._lanes[direction]
        delays = profile.one_way_delays(connection.number, direction)
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    break
                self._counts[f"bytes_{direction}"] += len(chunk)  # counted first: the peer may read it at once
                self._counts[f"chunks_{direction}"] += 1
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        released = float("-inf")
        try:
            while True:
                chunk = await reader.read(profile.read_size)
                now = clock()
                sent = now
                if profile.mbps:  # a token bucket one read deep: oversleeping a tick does not slow the link
                    start = max(lane.free_at, now - profile.serialization_s(profile.read_size))
                    lane.free_at = start + profile.serialization_s(len(chunk))
                    sent = max(now, lane.free_at)
                released = max(released, sent + next(delays))
                queue.put_nowait((released, chunk))
                if not chunk:
                    break
                if sent > now:  # the link is busy until then: leave the rest in the sender's socket buffer
                    await asyncio.sleep(sent - clock())
            await sender
        except (ConnectionError, asyncio.CancelledError):
            sender.cancel()
        finally:
            with contextlib.suppress(Exception):
                writer.close()


class DelayProxy(LinkProxy):
    """The fixed-delay proxy: ``LinkProxy(upstream, LinkProfile(delay_ms=delay_s * 1000))``."""

    def __init__(self, upstream: str, delay_s: float, listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        super().__init__(upstream, LinkProfile(delay_ms=delay_s * 1000.0), listen_host=listen_host,
                         listen_port=listen_port)
        self.delay_s = delay_s


def _outage_arg(text: str) -> Outage:
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"--outage takes AT_S,DURATION_S[,HOST:PORT], not {text!r}")
    try:
        return Outage(float(parts[0]), float(parts[1]), parts[2] if len(parts) == 3 else None)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robotclient.lab.netem", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:6000", help="HOST:PORT to listen on")
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=40.0, help="one-way delay added in each direction")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="one-way delay varies uniformly by +- this")
    parser.add_argument("--mbps", type=float, default=0.0, help="bandwidth cap per direction, Mbit/s (0 = none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    parser.add_argument("--outage", type=_outage_arg, action="append", default=[], metavar="AT,DURATION[,UPSTREAM]",
                        help="seconds after start, seconds down, and the upstream afterwards (repeatable)")
    args = parser.parse_args(argv)
    host, port = parse_address(args.listen)
    profile = LinkProfile(delay_ms=args.delay_ms, jitter_ms=args.jitter_ms, mbps=args.mbps, seed=args.seed)
    proxy = LinkProxy(args.upstream, profile, listen_host=host, listen_port=port, schedule=args.outage).start()
    print(f"{proxy.target} -> {args.upstream}, {profile.describe()}; Ctrl-C stops", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
