"""A TCP proxy that adds a fixed one-way delay in each direction: a Wi-Fi, 5G or distant-cloud link on loopback.

There is no kernel ``netem`` here; this delays every chunk by the same amount
while keeping byte order, so gRPC over it sees the added round trip (2 x
delay) and nothing else. Bandwidth is not limited.

    python -m robotclient.lab.netem --listen 127.0.0.1:6000 --upstream 127.0.0.1:50051 --delay-ms 40
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
from collections.abc import Sequence


class DelayProxy:
    """Runs in its own thread with its own event loop; ``start()`` returns the listening port."""

    def __init__(self, upstream: str, delay_s: float, listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host.strip("[]") or "127.0.0.1", int(port))
        self.delay_s = delay_s
        self.listen = (listen_host, listen_port)
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def target(self) -> str:
        return f"{self.listen[0]}:{self.port}"

    def start(self) -> DelayProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        self.port = future.result(timeout=10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> int:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        return self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        self.connections += 1
        for reader, writer in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read as data arrives; deliver each chunk ``delay_s`` after it arrived, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((loop.time() + self.delay_s, chunk))
            queue.put_nowait((loop.time() + self.delay_s, b""))
            await sender
        except (ConnectionError, asyncio.CancelledError):
            sender.cancel()
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robotclient.lab.netem", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:6000", help="HOST:PORT to listen on")
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=40.0, help="one-way delay added in each direction")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    proxy = DelayProxy(args.upstream, args.delay_ms / 1000.0, host or "127.0.0.1", int(port)).start()
    print(f"{proxy.target} -> {args.upstream}, +{args.delay_ms:g} ms each way; Ctrl-C stops", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
