"""bench/latency.py: the REST benchmark's network stand-in holds bytes back, and writes its own
address where the server wrote the server's, byte for byte as long, even across chunks."""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import httpx

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _latency() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_latency", BENCH / "latency.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


latency = _latency()


def test_an_address_split_between_chunks_is_still_rewritten() -> None:
    proxy = latency.DelayProxy("127.0.0.1", 8791, delay=0)
    proxy._ours = b"127.0.0.1:8792"
    first, held = proxy._rewritten(b'{"url":"http://127.0.0.1:87')
    assert held == b"127.0.0.1:87"
    second, held = proxy._rewritten(held + b'91/fhir/Patient"}')
    assert first + second == b'{"url":"http://127.0.0.1:8792/fhir/Patient"}'
    assert held == b""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_answers_come_later_and_name_the_proxy() -> None:
    port = _free_port()
    body = f'{{"link":[{{"url":"http://127.0.0.1:{port}/fhir/Patient?page=2"}}]}}'.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with latency.DelayProxy("127.0.0.1", port, delay=0.05) as proxy_port:
            assert len(str(proxy_port)) == len(str(port))
            with httpx.Client() as client:
                started = time.perf_counter()
                answer = client.get(f"http://127.0.0.1:{proxy_port}/fhir/Patient")
                took = time.perf_counter() - started
        assert answer.json()["link"][0]["url"] == (
            f"http://127.0.0.1:{proxy_port}/fhir/Patient?page=2"
        )
        assert took >= 0.1  # there and back
    finally:
        server.shutdown()
        server.server_close()
