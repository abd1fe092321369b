"""A hostile or broken server cannot exhaust the machine (issue 11, item 2): every cap, on respx."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx
import stamina

from adapter.config import ServerConfig
from adapter.errors import (
    HttpStatusError,
    InvalidResponseError,
    LimitExceededError,
    TransportError,
)
from adapter.fhir.bodies import MIB, describe
from adapter.fhir.client import FhirClient
from adapter.fhir.limits import Limits, RetryPolicy, SearchLimits
from adapter.fhir.paging import iter_bundle

BASE = "http://fhir.test/fhir"
KIB = 1024


@pytest.fixture(autouse=True)
def instant_retries() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


def run(call: Any, **options: Any) -> Any:
    async def main() -> Any:
        async with httpx.AsyncClient() as http:
            return await call(FhirClient(http, BASE, **options))

    return asyncio.run(main())


class Pieces(httpx.AsyncByteStream):
    """A body sent in `pieces`, each after `delay` seconds, counting how many were taken."""

    def __init__(self, pieces: list[bytes], delay: float = 0.0) -> None:
        self.pieces, self.delay = pieces, delay
        self.taken = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.taken += 1
            yield piece


def chunks(count: int, size: int = KIB, delay: float = 0.0) -> Pieces:
    return Pieces([b" " * size] * count, delay)


# -- the size of a response ------------------------------------------------------------------------


@respx.mock
def test_a_content_length_over_the_limit_is_refused_before_the_body_is_read() -> None:
    """The header alone decides: not one chunk of the body is taken, and nothing is retried."""
    body = chunks(64)
    route = respx.get(f"{BASE}/Patient").mock(
        return_value=httpx.Response(200, headers={"Content-Length": str(64 * KIB)}, stream=body)
    )
    with pytest.raises(LimitExceededError) as caught:
        run(lambda c: c.get_json("Patient"), max_response_bytes=16 * KIB)
    assert str(caught.value) == f"response larger than the 16384 bytes limit ({BASE}/Patient)"
    assert isinstance(caught.value, InvalidResponseError)
    assert not caught.value.temporary
    assert body.taken == 0
    assert route.call_count == 1


@respx.mock
def test_a_body_without_a_length_is_counted_and_cut_just_past_the_limit() -> None:
    """Chunked, no Content-Length: reading stops at the first chunk past the limit."""
    body = chunks(2000)
    respx.get(f"{BASE}/Patient").mock(return_value=httpx.Response(200, stream=body))
    with pytest.raises(LimitExceededError, match="larger than the 1 MiB limit"):
        run(lambda c: c.get_json("Patient"), max_response_bytes=MIB)
    assert body.taken == 1025  # 1 MiB and one chunk more: never the whole body


@respx.mock
def test_a_compressed_body_is_counted_as_it_unpacks() -> None:
    """A gzip bomb: 5 MiB of spaces in a few KiB, refused under a 1 MiB limit."""
    packed = gzip.compress(b" " * (5 * MIB))
    assert len(packed) < 64 * KIB
    respx.get(f"{BASE}/Patient").respond(200, content=packed, headers={"Content-Encoding": "gzip"})
    with pytest.raises(LimitExceededError):
        run(lambda c: c.get_json("Patient"), max_response_bytes=MIB)


@pytest.mark.parametrize("size", [0, 1000, 4 * KIB])
@respx.mock
def test_a_body_within_the_limit_is_read_whole(size: int) -> None:
    """At the limit exactly, or below: read as before, decoded, as JSON."""
    text = b'{"resourceType": "Patient", "x": "' + b"a" * size + b'"}'
    respx.get(f"{BASE}/Patient").respond(200, content=text)
    limit = len(text)
    found = run(lambda c: c.get_json("Patient"), max_response_bytes=limit)
    assert found["x"] == "a" * size


@respx.mock
def test_an_error_body_is_bounded_too() -> None:
    """A 500 whose body is too large is a LimitExceededError, never read whole nor retried."""
    body = chunks(100)
    route = respx.get(f"{BASE}/Patient").mock(return_value=httpx.Response(500, stream=body))
    with pytest.raises(LimitExceededError):
        run(lambda c: c.get_json("Patient"), max_response_bytes=10 * KIB)
    assert route.call_count == 1


def test_the_limit_is_described_in_mib() -> None:
    assert [describe(n) for n in (256 * MIB, MIB + MIB // 2, 512)] == [
        "256 MiB",
        "1.5 MiB",
        "512 bytes",
    ]


def test_the_site_limits_default_to_256_mib_10000_pages_and_an_hour() -> None:
    """ServerConfig's defaults, and the value objects it makes."""
    config = ServerConfig()
    assert config.max_response_bytes() == 256 * MIB
    assert config.search_limits() == SearchLimits(max_pages=10_000, seconds=3600.0)
    assert FhirClient(httpx.AsyncClient(), BASE).max_response_bytes == 256 * MIB


# -- the deadline of an attempt --------------------------------------------------------------------


@respx.mock
def test_a_trickle_ends_at_the_deadline_not_at_the_last_byte() -> None:
    """One byte every 50 ms resets every read timeout; the deadline ends the attempt (and each
    retry) after 0.2 s: a TransportError that says so, retried as any no-answer."""
    streams: list[Pieces] = []

    def trickle(request: httpx.Request) -> httpx.Response:
        streams.append(chunks(200, size=1, delay=0.05))
        return httpx.Response(200, stream=streams[-1])

    route = respx.get(f"{BASE}/Patient").mock(side_effect=trickle)
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        run(lambda c: c.get_json("Patient"), deadline=0.2, retry=RetryPolicy(attempts=2))
    assert time.monotonic() - started < 2.0  # the whole body would take 10 s per attempt
    assert str(caught.value) == f"the FHIR server did not answer in time ({BASE}/Patient)"
    assert caught.value.temporary
    assert route.call_count == 2
    assert all(s.taken < 10 for s in streams)


@respx.mock
def test_a_slow_answer_within_the_deadline_is_read() -> None:
    """Byte by byte, but done within the deadline: read as one body."""
    body = b'{"resourceType": "Patient"}'
    pieces = Pieces([body[i : i + 1] for i in range(len(body))], delay=0.001)
    respx.get(f"{BASE}/Patient").mock(return_value=httpx.Response(200, stream=pieces))
    assert run(lambda c: c.get_json("Patient"), deadline=5.0) == {"resourceType": "Patient"}


def test_the_deadline_defaults_to_the_injected_clients_read_timeout() -> None:
    """`timeout` (and `--timeout`) is the deadline, as connect passes it; alone, the client's."""
    assert FhirClient(httpx.AsyncClient(timeout=7.0), BASE).deadline == 7.0
    assert FhirClient(httpx.AsyncClient(timeout=7.0), BASE, deadline=2.0).deadline == 2.0


@respx.mock
def test_waiting_for_a_slot_is_not_counted_against_the_deadline() -> None:
    """Two requests, one slot: the second waits 0.15 s for the first, within a 0.2 s deadline
    of its own."""

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.15)
        return httpx.Response(200, json={"resourceType": "Patient"})

    respx.get(f"{BASE}/Patient").mock(side_effect=slow)

    async def both(client: FhirClient) -> list[Any]:
        return await asyncio.gather(client.get_json("Patient"), client.get_json("Patient"))

    found = run(both, deadline=0.2, limits=Limits(max_concurrent=1), retry=RetryPolicy(attempts=1))
    assert len(found) == 2


# -- pages and time of a search --------------------------------------------------------------------


def endless(request: httpx.Request) -> httpx.Response:
    """A searchset whose next link is always a new page: distinct, so no loop is seen.

    It does end after 100 pages, so that a missing limit fails the test instead of hanging it.
    """
    page = int(request.url.params.get("page", "0"))
    links = [{"relation": "next", "url": f"{BASE}/Observation?page={page + 1}"}]
    return httpx.Response(
        200,
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "link": links if page < 100 else [],
            "entry": [{"resource": {"resourceType": "Observation", "id": f"o{page}"}}],
        },
    )


async def drain(client: FhirClient, seen: list[str]) -> None:
    async for resource in iter_bundle(client, "Observation"):
        seen.append(resource["id"])


@respx.mock
def test_endless_distinct_next_links_stop_at_the_page_limit() -> None:
    """Five pages are read, the sixth is never asked for; the error names the limit."""
    route = respx.get(f"{BASE}/Observation").mock(side_effect=endless)
    seen: list[str] = []
    with pytest.raises(LimitExceededError) as caught:
        run(lambda c: drain(c, seen), search_limits=SearchLimits(max_pages=5))
    assert route.call_count == 5
    assert seen == ["o0", "o1", "o2", "o3", "o4"]
    assert str(caught.value) == (
        "the search has more than 5 pages, the site's limit (max_pages_per_search) "
        f"({BASE}/Observation)"
    )
    assert not caught.value.temporary


@respx.mock
def test_a_search_of_exactly_the_page_limit_completes() -> None:
    def three_pages(request: httpx.Request) -> httpx.Response:
        response = endless(request)
        if request.url.params.get("page") == "2":
            return httpx.Response(
                200, json={"resourceType": "Bundle", "type": "searchset", "entry": []}
            )
        return response

    respx.get(f"{BASE}/Observation").mock(side_effect=three_pages)
    seen: list[str] = []
    run(lambda c: drain(c, seen), search_limits=SearchLimits(max_pages=3))
    assert seen == ["o0", "o1"]


class Clock:
    """Monotonic seconds that move only when a page is served."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@respx.mock
def test_a_search_past_its_time_stops_before_the_next_page() -> None:
    """Each page takes 10 s on the clock; a 25 s search reads three pages and asks no fourth."""
    clock = Clock()

    def slow_endless(request: httpx.Request) -> httpx.Response:
        clock.now += 10
        return endless(request)

    route = respx.get(f"{BASE}/Observation").mock(side_effect=slow_endless)
    with pytest.raises(LimitExceededError, match=r"took longer than 25 s, the site's limit"):
        run(lambda c: drain(c, []), search_limits=SearchLimits(seconds=25), clock=clock)
    assert route.call_count == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_pages": 0}, "max_pages"),
        ({"seconds": 0.0}, "seconds"),
        ({"seconds": float("inf")}, "seconds"),
        ({"seconds": float("nan")}, "seconds"),
    ],
)
def test_search_limits_must_be_positive_and_finite(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchLimits(**options)


@respx.mock
def test_a_status_error_is_still_classified_after_a_streamed_read() -> None:
    """Streaming changed nothing for error statuses: 404 is an HttpStatusError with its codes."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-found"}],
    }
    respx.get(f"{BASE}/Patient/p1").respond(404, json=outcome)
    with pytest.raises(HttpStatusError, match="HTTP 404: error/not-found"):
        run(lambda c: c.get_json("Patient/p1"))
