"""A fault-injecting HTTP proxy for the integration tests (issue 10, "Tests that prove it").

`FaultProxy(upstream)` listens on 127.0.0.1 (a free port), plain HTTP/1.1 with keep-alive, and
forwards every request to the FHIR server at `upstream`, rewriting absolute URLs in bodies and in
Location, Content-Location and Link from the upstream base to its own, so paging stays under the
base the adapter was given (it refuses foreign next links). A test tells it, per request pattern,
what to break:

```python
with FaultProxy("http://127.0.0.1:8765/fhir") as proxy:
    proxy.inject(Status(503, retry_after="1"), "PUT", r"Provenance/.*", nth=3)
    proxy.inject(LostResponse(), "PUT", r"ResearchSubject/.*", nth=(2, 5))
    ...  # the adapter talks to proxy.base_url
    proxy.exchanges  # what it saw: method, path, status, fault
```

Faults: `Status` (429/503 with Retry-After, or any status with the OperationOutcome text given,
answered without forwarding), `Delay` (forwarded late), `Hang` (no answer until the client gives
up), `ResetMidBody` (forwarded; half the body, then a TCP reset), `MalformedJson` (forwarded; the
body cut so it is no longer JSON), `LostResponse` (forwarded, so a write is applied; the
connection closed without an answer) and `Outage` (from the matching request on, for N seconds
every connection is refused, or every request answered 503).

A hostile server (issue 11), none of them forwarded: `HugeBody` (a body of any size, streamed,
with or without a Content-Length), `EndlessPages` (an empty searchset whose next link is a new
URL every time) and `Trickle` (one byte every interval; the exchange records how long the client
stayed, in `Exchange.seconds`).
`FaultProxy(..., update_create=False)` plays a server that declares `updateCreate: false`: its
CapabilityStatement says so and a PUT to an id that does not exist upstream is refused (405 with an
OperationOutcome).

Everything is bounded: idle connections close after `IDLE_SECONDS`, a hang after its `seconds`,
and `stop()` (or leaving the `with`) closes the listener and every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from faults import (
    Delay,
    EndlessPages,
    Exchange,
    Fault,
    Hang,
    Hostile,
    HugeBody,
    LostResponse,
    MalformedJson,
    Outage,
    ResetMidBody,
    Rule,
    Status,
    Trickle,
)

__all__ = [
    "Delay",
    "EndlessPages",
    "Exchange",
    "Fault",
    "FaultProxy",
    "Hang",
    "Hostile",
    "HugeBody",
    "LostResponse",
    "MalformedJson",
    "Outage",
    "ResetMidBody",
    "Rule",
    "Status",
    "Trickle",
]

IDLE_SECONDS = 30.0  # a keep-alive connection with no request for this long is closed
HEAD_LIMIT = 64 * 1024
# RFC 9110 7.6.1: hop-by-hop, never forwarded; lengths and encodings are the proxy's own.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "content-encoding",
    }
)
_URL_HEADERS = frozenset({"location", "content-location", "link"})
_BLANKS = b" " * 65536  # a HugeBody is sent in pieces of this size


@dataclass
class _State:
    rules: list[Rule] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    outage_until: float = 0.0
    outage_mode: str = ""
    refused_puts: int = 0
    endless_pages: int = 0


class _Request:
    def __init__(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


# -- the proxy -------------------------------------------------------------------------------------


class FaultProxy:
    """The proxy, its event loop in a daemon thread; control it from the test's thread."""

    def __init__(self, upstream: str, *, update_create: bool = True) -> None:
        self.upstream = upstream.rstrip("/")
        up = httpx.URL(self.upstream)
        self._base_path = up.path.rstrip("/")
        self._update_create = update_create
        self._lock = threading.Lock()
        self._state = _State()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._http: httpx.AsyncClient | None = None
        self.port = 0

    # control API (any thread)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self._base_path}"

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(
        self, fault: Fault, method: str, path: str, nth: int | Iterable[int] | None = 1
    ) -> Rule:
        """Break the `nth` request (1-based; several; None: every one) matching method and path."""
        wanted = frozenset([nth] if isinstance(nth, int) else nth) if nth is not None else None
        rule = Rule(fault, method.upper(), re.compile(path), wanted)
        with self._lock:
            self._state.rules.append(rule)
        return rule

    def clear(self) -> None:
        """No more faults: rules removed and any outage ended (the listener reopens)."""
        with self._lock:
            self._state.rules.clear()
            self._state.outage_until = 0.0
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)

    @property
    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._state.exchanges)

    @property
    def refused_puts(self) -> int:
        """PUTs refused for want of updateCreate (`update_create=False`)."""
        with self._lock:
            return self._state.refused_puts

    def writes(self, since: int = 0) -> list[Exchange]:
        """The exchanges from index `since` on that were writes (POST _search is a read)."""
        return [
            e
            for e in self.exchanges[since:]
            if e.method in ("POST", "PUT", "PATCH", "DELETE") and not e.path.endswith("_search")
        ]

    # the event loop's side

    async def _start(self) -> None:
        self._http = httpx.AsyncClient(timeout=60, follow_redirects=False)
        await self._listen()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        await self._close_listener()
        for writer in list(self._writers):
            writer.transport.abort()
        # Connection handlers and an outage's pending reopening end with the proxy.
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        if self._http is not None:
            await self._http.aclose()

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def _reopen_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        with self._lock:
            ended = time.monotonic() >= self._state.outage_until
        if ended:
            await self._listen()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                if not await self._answer(request, reader, writer):
                    return
        except (
            ConnectionError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            httpx.HTTPError,
        ):
            return  # a client that left, a request that is not HTTP, the server gone: hang up
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_SECONDS)
        except (TimeoutError, asyncio.IncompleteReadError):
            return None
        if len(head) > HEAD_LIMIT:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = [(k.strip(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:] if x)]
        request = _Request(method.upper(), target, headers, b"")
        length = request.header("content-length")
        if length is not None:
            request.body = await reader.readexactly(int(length))
        elif (request.header("transfer-encoding") or "").lower() == "chunked":
            request.body = await _read_chunked(reader)
        return request

    def _relative(self, target: str) -> str:
        path = target.split("?", 1)[0]
        return path.removeprefix(self._base_path).lstrip("/")

    async def _answer(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Handle one request; whether the connection stays open."""
        path = self._relative(request.target)
        with self._lock:
            fault = self._fault_for(request.method, path)
            in_outage = time.monotonic() < self._state.outage_until
            outage_mode = self._state.outage_mode
        name = type(fault).__name__ if fault is not None else None

        if isinstance(fault, Outage):
            with self._lock:
                self._state.outage_until = time.monotonic() + fault.seconds
                self._state.outage_mode = fault.mode
            in_outage, outage_mode = True, fault.mode
            if fault.mode == "refuse":
                await self._close_listener()
                for other in list(self._writers):
                    if other is not writer:
                        other.transport.abort()
                asyncio.get_running_loop().create_task(self._reopen_after(fault.seconds))
        if in_outage:
            self._log(request, path, None, name or f"Outage({outage_mode})")
            if outage_mode == "refuse":
                return False
            fault = Status(503)
        if isinstance(fault, Status):
            self._log(request, path, None, name)
            await self._respond(writer, fault.code, *_outcome(fault))
            return True
        if isinstance(fault, Hang):
            self._log(request, path, None, name)
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(1), fault.seconds)  # b"": the client left
            return False
        if isinstance(fault, Hostile):
            keep, seconds = await self._hostile(fault, path, reader, writer)
            self._log(request, path, None, name, seconds)
            return keep
        if not self._update_create and await self._refuses_put(request, path):
            self._log(request, path, None, "RefusedPutCreate")
            with self._lock:
                self._state.refused_puts += 1
            body = _outcome_body("updateCreate is false: PUT cannot create a resource")
            await self._respond(writer, 405, [("Content-Type", "application/fhir+json")], body)
            return True

        if isinstance(fault, Delay):
            await asyncio.sleep(fault.seconds)
        status, headers, body = await self._forward(request)
        self._log(request, path, status, name)
        if path == "metadata" and not self._update_create and status == 200:
            body = _without_update_create(body)
        if isinstance(fault, LostResponse):
            return False
        if isinstance(fault, MalformedJson):
            body = body[: max(1, len(body) // 2)] + b"\x00"
        if isinstance(fault, ResetMidBody):
            await self._respond(writer, status, headers, body, cut=fault.fraction)
            _reset(writer)
            return False
        await self._respond(writer, status, headers, body)
        return (request.header("connection") or "").lower() != "close"

    def _fault_for(self, method: str, path: str) -> Fault | None:
        found: Fault | None = None
        for rule in self._state.rules:  # every rule counts the request; the first fault wins
            if rule.hit(method, path) and found is None:
                found = rule.fault
        return found

    def _log(
        self,
        request: _Request,
        path: str,
        status: int | None,
        fault: str | None,
        seconds: float | None = None,
    ) -> None:
        with self._lock:
            self._state.exchanges.append(Exchange(request.method, path, status, fault, seconds))

    async def _hostile(
        self,
        fault: Hostile,
        path: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> tuple[bool, float | None]:
        """Answer as a hostile server would: whether the connection stays open, and for how
        long the client took the answer."""
        json_type = ("Content-Type", "application/fhir+json")
        if isinstance(fault, EndlessPages):
            with self._lock:
                self._state.endless_pages += 1
                page = self._state.endless_pages
            kind = path.split("/", 1)[0]
            next_url = f"{self.base_url}/{kind}?_endless={page}"
            bundle = {"resourceType": "Bundle", "type": "searchset", "entry": []}
            bundle["link"] = [{"relation": "next", "url": next_url}]
            await self._respond(writer, 200, [json_type], json.dumps(bundle).encode())
            return True, None
        started = time.monotonic()
        length = ("Content-Length", str(fault.size))
        if isinstance(fault, HugeBody):
            framing = length if fault.declared else ("Connection", "close")
            self._head(writer, 200, [json_type, framing])
            with contextlib.suppress(ConnectionError):
                for offset in range(0, fault.size, len(_BLANKS)):
                    writer.write(_BLANKS[: fault.size - offset])
                    await writer.drain()
            return False, time.monotonic() - started
        self._head(writer, 200, [json_type, length])
        with contextlib.suppress(ConnectionError):
            for _ in range(fault.size):
                writer.write(b" ")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), fault.interval) == b"":
                        break  # the client left
        return False, time.monotonic() - started

    async def _refuses_put(self, request: _Request, path: str) -> bool:
        """A PUT to `Type/id` (no condition) whose resource does not exist upstream."""
        if request.method != "PUT" or "?" in request.target or path.count("/") != 1:
            return False
        assert self._http is not None
        found = await self._http.get(f"{self.upstream}/{path}")
        return found.status_code in (404, 410)

    async def _forward(self, request: _Request) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self._http is not None
        proxy_base = self.base_url.encode()
        upstream = self.upstream.encode()
        headers = [
            (k, v.replace(self.base_url, self.upstream))
            for k, v in request.headers
            if k.lower() not in _HOP
        ]
        headers.append(("Accept-Encoding", "identity"))
        body = request.body.replace(proxy_base, upstream)
        url = httpx.URL(self.upstream).copy_with(raw_path=request.target.encode())
        response = await self._http.request(request.method, url, headers=headers, content=body)
        out = [
            (k, v.replace(self.upstream, self.base_url) if k.lower() in _URL_HEADERS else v)
            for k, v in response.headers.multi_items()
            if k.lower() not in _HOP
        ]
        return response.status_code, out, response.content.replace(upstream, proxy_base)

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        cut: float = 1.0,
    ) -> None:
        self._head(writer, status, [*headers, ("Content-Length", str(len(body)))])
        writer.write(body if cut >= 1 else body[: int(len(body) * cut)])
        await writer.drain()

    def _head(
        self, writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]]
    ) -> None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        head = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))


# -- helpers ---------------------------------------------------------------------------------------


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _outcome_body(text: str, code: str = "transient") -> bytes:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return json.dumps(outcome).encode()


def _outcome(fault: Status) -> tuple[list[tuple[str, str]], bytes]:
    headers = [("Content-Type", "application/fhir+json")]
    if fault.retry_after is not None:
        headers.append(("Retry-After", fault.retry_after))
    text = fault.diagnostics if fault.diagnostics is not None else f"injected HTTP {fault.code}"
    return headers, _outcome_body(text, fault.issue_code)


def _without_update_create(body: bytes) -> bytes:
    """The CapabilityStatement with `updateCreate: false` on every resource type."""
    statement = json.loads(body)
    for rest in statement.get("rest", []):
        for resource in rest.get("resource", []):
            resource["updateCreate"] = False
    return json.dumps(statement).encode()
