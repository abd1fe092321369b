"""A TCP proxy that holds every chunk back a fixed time each way: the server across a network.

The REST benchmark's server runs on this machine, where a request's round trip costs nothing
but the server's work. A hospital's server is across a network: each request pays the round
trip again, and a client that overlaps its requests pays it once for several. `DelayProxy`
puts that back (`BENCH_LATENCY_MS`, one way), without limiting the bandwidth: chunks are
forwarded in order, each `delay` seconds after it arrived, however many are on the way.

    with DelayProxy("127.0.0.1", 8790, delay=0.010) as port:
        ...  # http://127.0.0.1:{port}/fhir is the server, 20 ms further away

The server writes its own address into its answers (next links, fullUrls): the proxy listens
on a port with as many digits as the server's and writes its own address there instead, byte
for byte as long, so that Content-Length holds and clients follow the links through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType


class DelayProxy:
    def __init__(self, host: str, port: int, *, delay: float) -> None:
        self.host, self.port, self.delay = host, port, delay
        self._theirs = f"{host}:{port}".encode()
        self._ours = b""
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Task[None]] = set()

    def __enter__(self) -> int:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        return started.result(timeout=10)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> int:
        for port in range(self.port + 1, 10 ** len(str(self.port))):
            try:
                self._server = await asyncio.start_server(self._connection, self.host, port)
            except OSError:
                continue
            self._ours = f"{self.host}:{port}".encode()
            return port
        raise RuntimeError(f"no free port above {self.port} with as many digits")

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._open:
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        task.add_done_callback(self._open.discard)
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self.port)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(
                self._pipe(client_r, server_w), self._pipe(server_r, client_w, rewrite=True)
            )
        finally:
            for writer in (client_w, server_w):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, rewrite: bool = False
    ) -> None:
        """Forward `reader` to `writer`, each chunk `delay` seconds after it arrived; with
        `rewrite`, the server's address replaced by the proxy's."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        held = b""
        try:
            while True:
                chunk = await reader.read(1 << 16)
                if rewrite and chunk:
                    chunk, held = self._rewritten(held + chunk)
                elif held:
                    chunk, held = held + chunk, b""
                if chunk:
                    queue.put_nowait((time.monotonic() + self.delay, chunk))
                if reader.at_eof() and not held:
                    queue.put_nowait((time.monotonic() + self.delay, b""))
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:  # also when the connection is cancelled: no task outlives the proxy's loop
            if not sender.done():
                sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender

    def _rewritten(self, data: bytes) -> tuple[bytes, bytes]:
        """`data` with the server's address replaced, and a tail held back that may be the
        start of an address the next chunk completes."""
        data = data.replace(self._theirs, self._ours)
        for keep in range(min(len(self._theirs) - 1, len(data)), 0, -1):
            if self._theirs.startswith(data[-keep:]):
                return data[:-keep], data[-keep:]
        return data, b""
