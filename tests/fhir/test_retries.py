"""Talking to a busy server: retries (stamina), Retry-After, concurrency and rate limits."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
import stamina

from adapter.config import ServerConfig
from adapter.errors import CertificateError, HttpStatusError, TemporaryHttpError, TransportError
from adapter.fhir.client import FhirClient, is_idempotent
from adapter.fhir.limits import Limiter, Limits, RetryPolicy, retry_after_seconds

BASE = "http://fhir.test/fhir"
BUNDLE = {"resourceType": "Bundle", "type": "searchset", "total": 0}
DATE = "Wed, 03 Jun 2026 02:00:00 GMT"


@pytest.fixture(autouse=True)
def instant_retries() -> Iterator[None]:
    """stamina's test mode: no waits, and the policy's own number of attempts (at most 100)."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Real backoffs (test mode off), with asyncio.sleep recording the waits instead of waiting."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def record(delay: float, result: Any = None) -> Any:
        waits.append(delay)
        return await real_sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", record)
    with stamina.set_testing(False):
        yield waits


def run(call: Callable[[FhirClient], Awaitable[Any]], **options: Any) -> Any:
    """Run `call(client)` on a FhirClient over a fresh AsyncClient, with `options`."""

    async def main() -> Any:
        async with httpx.AsyncClient() as http:
            return await call(FhirClient(http, BASE, **options))

    return asyncio.run(main())


def busy(status: int = 503, **headers: str) -> httpx.Response:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "busy"}]}
    return httpx.Response(status, json=outcome, headers=headers)


@respx.mock
def test_a_503_then_a_200_is_retried_to_success() -> None:
    """A temporary 503 is retried; the caller only sees the 200."""
    route = respx.get(f"{BASE}/Patient").mock(
        side_effect=[busy(503), httpx.Response(200, json=BUNDLE)]
    )
    assert run(lambda c: c.get_json("Patient")) == BUNDLE
    assert route.call_count == 2


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
@respx.mock
def test_every_temporary_status_is_retried_up_to_the_attempts(status: int) -> None:
    """Each temporary status is retried `attempts` times, then raises with the outcome text."""
    route = respx.get(f"{BASE}/Patient").mock(return_value=busy(status))
    with pytest.raises(TemporaryHttpError) as caught:
        run(lambda c: c.get_json("Patient"), retry=RetryPolicy(attempts=3))
    assert route.call_count == 3
    assert (caught.value.status, caught.value.detail) == (status, "busy")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 412, 422])
@respx.mock
def test_fatal_statuses_are_not_retried(status: int) -> None:
    """A 4xx other than 408 and 429 is raised at once, after one request."""
    route = respx.get(f"{BASE}/Patient").mock(return_value=busy(status))
    with pytest.raises(HttpStatusError) as caught:
        run(lambda c: c.get_json("Patient"))
    assert route.call_count == 1
    assert not caught.value.temporary


@respx.mock
def test_connection_errors_are_retried_then_give_up_with_transport_error() -> None:
    """No answer N times is a TransportError (its httpx cause kept) after exactly N attempts."""
    route = respx.get(f"{BASE}/Patient").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransportError) as caught:
        run(lambda c: c.get_json("Patient", {"_id": "secret-id"}), retry=RetryPolicy(attempts=4))
    assert route.call_count == 4
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert caught.value.url == f"{BASE}/Patient"


@respx.mock
def test_one_attempt_means_no_retries() -> None:
    """RetryPolicy(attempts=1) sends once."""
    route = respx.get(f"{BASE}/Patient").mock(return_value=busy(503))
    with pytest.raises(TemporaryHttpError):
        run(lambda c: c.get_json("Patient"), retry=RetryPolicy(attempts=1))
    assert route.call_count == 1


@respx.mock
def test_a_plain_post_create_is_not_retried() -> None:
    """A lost answer to a POST create may hide a created resource: one attempt only."""
    route = respx.post(f"{BASE}/ResearchSubject").mock(return_value=busy(503))
    with pytest.raises(TemporaryHttpError):
        run(lambda c: c.request("POST", "ResearchSubject", json={"resourceType": "X"}))
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("PUT", "ResearchSubject/s1", {}),
        ("GET", "ResearchSubject/s1", {}),
        ("POST", "ResearchSubject", {"If-None-Exist": "identifier=x|1"}),
        ("POST", "Observation/_search", {}),
    ],
)
@respx.mock
def test_idempotent_requests_are_retried(method: str, path: str, headers: dict[str, str]) -> None:
    """PUT, GET, a conditional create and POST _search are retried after a 503."""
    route = respx.route(method=method, url=f"{BASE}/{path}").mock(
        side_effect=[busy(503), httpx.Response(200, json={})]
    )
    run(lambda c: c.request(method, path, json={}, headers=headers))
    assert route.call_count == 2


@respx.mock
def test_post_form_search_is_retried() -> None:
    """POST [type]/_search is a read, so it is retried like a GET."""
    route = respx.post(f"{BASE}/Observation/_search").mock(
        side_effect=[httpx.ConnectError("reset"), httpx.Response(200, json=BUNDLE)]
    )
    assert run(lambda c: c.post_form_search("Observation", [("patient", "1")])) == BUNDLE
    assert route.call_count == 2


@respx.mock
def test_a_write_whose_answer_was_lost_is_checked_before_it_is_sent_again() -> None:
    """A PUT applied but unanswered: `applied` is asked before the retry, and its answer stands."""
    put = respx.put(f"{BASE}/ResearchSubject/s1").mock(side_effect=httpx.ReadTimeout("lost"))
    held = httpx.Response(200, json={"resourceType": "ResearchSubject", "id": "s1"})
    asked: list[int] = []

    async def applied() -> httpx.Response | None:
        asked.append(1)
        return held

    got = run(lambda c: c.request("PUT", "ResearchSubject/s1", json={}, applied=applied))
    assert got is held
    assert (put.call_count, len(asked)) == (1, 1)


@respx.mock
def test_a_write_not_applied_is_sent_again_and_an_error_status_is_not_checked() -> None:
    """`applied` answering None sends the write again; an HTTP error status (not applied) never
    asks it."""
    put = respx.put(f"{BASE}/ResearchSubject/s1").mock(
        side_effect=[httpx.ConnectError("down"), busy(503), httpx.Response(201, json={})]
    )
    asked: list[int] = []

    async def applied() -> httpx.Response | None:
        asked.append(1)
        return None

    got = run(lambda c: c.request("PUT", "ResearchSubject/s1", json={}, applied=applied))
    assert got.status_code == 201
    assert (put.call_count, len(asked)) == (3, 1)


@respx.mock
def test_idempotent_false_turns_retries_off() -> None:
    """request(idempotent=False) sends once even for a PUT."""
    route = respx.put(f"{BASE}/Basic/1").mock(return_value=busy(503))
    with pytest.raises(TemporaryHttpError):
        run(lambda c: c.request("PUT", "Basic/1", json={}, idempotent=False))
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("method", "url", "headers", "expected"),
    [
        ("GET", f"{BASE}/Patient", {}, True),
        ("get", f"{BASE}/Patient", {}, True),
        ("HEAD", f"{BASE}/Patient", {}, True),
        ("PUT", f"{BASE}/Patient/1", {}, True),
        ("DELETE", f"{BASE}/Patient/1", {}, True),
        ("POST", f"{BASE}/Patient/_search", {}, True),
        ("POST", f"{BASE}/Patient", {"if-none-exist": "identifier=a|b"}, True),
        ("POST", f"{BASE}/Patient", {}, False),
        ("POST", f"{BASE}/", {}, False),
        ("POST", f"{BASE}/_search_x", {}, False),
        ("PATCH", f"{BASE}/Patient/1", {}, False),
    ],
)
def test_is_idempotent(method: str, url: str, headers: dict[str, str], expected: bool) -> None:
    """Only requests whose repetition is harmless are retried (RFC 9110 9.2.2)."""
    assert is_idempotent(method, url, headers) is expected


@respx.mock
def test_retry_after_seconds_is_honoured(slept: list[float]) -> None:
    """A 429 with Retry-After: 2 waits 2 seconds, not the exponential backoff."""
    respx.get(f"{BASE}/Patient").mock(
        side_effect=[busy(429, **{"Retry-After": "2"}), httpx.Response(200, json=BUNDLE)]
    )
    run(lambda c: c.get_json("Patient"))
    assert slept == [2.0]


@pytest.mark.parametrize(
    ("retry_after", "policy", "wait"),
    [
        ("9999", RetryPolicy(), 120.0),
        ("9999", RetryPolicy(max_wait=30.0), 30.0),
        ("Wed, 03 Jun 2026 02:00:07 GMT", RetryPolicy(), 7.0),
        ("Wed, 03 Jun 2026 05:00:00 GMT", RetryPolicy(), 120.0),
        ("Wed, 03 Jun 2026 01:00:00 GMT", RetryPolicy(), 0.0),
    ],
)
@respx.mock
def test_retry_after_is_capped_and_dates_are_read_against_the_server_date(
    slept: list[float], retry_after: str, policy: RetryPolicy, wait: float
) -> None:
    """A long Retry-After waits max_wait; an HTTP-date counts from the response's Date header."""
    respx.get(f"{BASE}/Patient").mock(
        side_effect=[
            busy(503, **{"Retry-After": retry_after, "Date": DATE}),
            httpx.Response(200, json=BUNDLE),
        ]
    )
    run(lambda c: c.get_json("Patient"), retry=policy)
    assert slept == [wait]


@respx.mock
def test_without_retry_after_the_backoff_grows_exponentially_with_jitter(
    slept: list[float],
) -> None:
    """Waits start at wait_initial, double each time, and add at most wait_jitter."""
    respx.get(f"{BASE}/Patient").mock(return_value=busy(502))
    policy = RetryPolicy(attempts=4, wait_initial=1.0, wait_jitter=0.5)
    with pytest.raises(TemporaryHttpError):
        run(lambda c: c.get_json("Patient"), retry=policy)
    assert len(slept) == 3
    for wait, floor in zip(slept, [1.0, 2.0, 4.0], strict=True):
        assert floor <= wait <= floor + 0.5


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("Wed, 03 Jun 2026 02:01:00 GMT", 60.0),
        ("Wednesday, 03-Jun-26 02:01:00 GMT", 60.0),
        ("Wed, 03 Jun 2026 01:59:00 GMT", 0.0),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_seconds_reads_delay_seconds_and_http_dates(
    value: str | None, seconds: float | None
) -> None:
    """Delay-seconds or an HTTP-date (RFC 9110 10.2.3); anything else is no Retry-After."""
    now = datetime(2026, 6, 3, 2, 0, tzinfo=UTC)
    assert retry_after_seconds(value, now=now) == seconds


@pytest.mark.parametrize(
    "options",
    [
        {"attempts": 0},
        {"max_wait": -1.0},
        {"wait_jitter": -0.1},
        {"timeout_total": 0.0},
    ],
)
def test_retry_policy_refuses_impossible_values(options: dict[str, Any]) -> None:
    """RetryPolicy validates itself when it is made."""
    with pytest.raises(ValueError, match=r"attempts|negative|timeout_total"):
        RetryPolicy(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"max_concurrent": 0},
        {"burst": 0},
        {"requests_per_second": 0.0},
        {"requests_per_second": -1},
    ],
)
def test_limits_refuse_impossible_values(options: dict[str, Any]) -> None:
    """Limits validates itself when it is made."""
    with pytest.raises(ValueError, match=r"at least 1|positive"):
        Limits(**options)


def in_flight_recorder() -> tuple[Callable[[httpx.Request], Awaitable[httpx.Response]], list[int]]:
    """An async respx side effect that yields to the loop mid-request and records concurrency."""
    now = [0]
    peak = [0]

    async def handle(request: httpx.Request) -> httpx.Response:
        now[0] += 1
        peak[0] = max(peak[0], now[0])
        for _ in range(5):
            await asyncio.sleep(0)
        now[0] -= 1
        return httpx.Response(200, json=BUNDLE)

    return handle, peak


@pytest.mark.parametrize("limit", [1, 2, 4])
@respx.mock
def test_no_more_than_max_concurrent_requests_are_in_flight(limit: int) -> None:
    """Twelve concurrent searches never have more than `max_concurrent` requests in flight."""
    handle, peak = in_flight_recorder()
    respx.get(f"{BASE}/Patient").mock(side_effect=handle)

    async def twelve(client: FhirClient) -> None:
        await asyncio.gather(*(client.get_json("Patient") for _ in range(12)))

    run(twelve, limits=Limits(max_concurrent=limit))
    assert peak[0] == limit


@respx.mock
def test_a_shared_limiter_bounds_two_clients_together() -> None:
    """Two clients of one server given the same Limiter share its slots."""
    handle, peak = in_flight_recorder()
    respx.get(f"{BASE}/Patient").mock(side_effect=handle)

    async def main() -> None:
        limiter = Limiter(Limits(max_concurrent=2))
        async with httpx.AsyncClient() as http:
            a = FhirClient(http, BASE, limits=limiter)
            b = FhirClient(http, BASE, limits=limiter)
            await asyncio.gather(*(c.get_json("Patient") for c in (a, b, a, b, a, b)))

    asyncio.run(main())
    assert peak[0] == 2


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("limits", "times"),
    [
        (Limits(requests_per_second=2), [0.0, 0.5, 1.0, 1.5, 2.0]),
        (Limits(requests_per_second=2, burst=3), [0.0, 0.0, 0.0, 0.5, 1.0]),
        (Limits(requests_per_second=0.1), [0.0, 10.0, 20.0, 30.0, 40.0]),
    ],
)
@respx.mock
def test_the_request_rate_is_limited_by_a_token_bucket(limits: Limits, times: list[float]) -> None:
    """Requests leave no faster than requests_per_second, after a first `burst` at once."""
    clock = FakeClock()
    sent: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(round(clock.now, 6))
        return httpx.Response(200, json=BUNDLE)

    respx.get(f"{BASE}/Patient").mock(side_effect=handle)

    async def five(client: FhirClient) -> None:
        for _ in range(5):
            await client.get_json("Patient")

    run(five, limits=Limiter(limits, clock=clock, sleep=clock.sleep))
    assert sent == times


@respx.mock
def test_without_a_rate_limit_nothing_waits() -> None:
    """The default Limits has no rate limit: the clock never moves."""
    clock = FakeClock()
    respx.get(f"{BASE}/Patient").respond(200, json=BUNDLE)

    async def five(client: FhirClient) -> None:
        for _ in range(5):
            await client.get_json("Patient")

    run(five, limits=Limiter(Limits(), clock=clock, sleep=clock.sleep))
    assert clock.now == 0.0


@respx.mock
def test_retries_go_through_the_limiter_again() -> None:
    """Each attempt takes a rate token, so retries never exceed the request rate."""
    clock = FakeClock()
    sent: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now)
        return busy(503) if len(sent) < 3 else httpx.Response(200, json=BUNDLE)

    respx.get(f"{BASE}/Patient").mock(side_effect=handle)
    limiter = Limiter(Limits(requests_per_second=1), clock=clock, sleep=clock.sleep)
    run(lambda c: c.get_json("Patient"), limits=limiter)
    assert sent == [0.0, 1.0, 2.0]


def retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "retry"]


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (busy(503, **{"Retry-After": "2"}), "HTTP 503"),
        (busy(429, **{"Retry-After": "2"}), "HTTP 429"),
        (httpx.ConnectError("refused"), "ConnectError"),
        (httpx.ReadTimeout("slow"), "ReadTimeout"),
    ],
)
@respx.mock
def test_each_retry_is_logged_with_method_path_reason_attempt_and_wait(
    slept: list[float], caplog: pytest.LogCaptureFixture, failure: Any, reason: str
) -> None:
    """One warning per retry: method, path without query, reason, attempt of attempts, wait."""
    respx.get(f"{BASE}/Observation").mock(side_effect=[failure, httpx.Response(200, json=BUNDLE)])
    policy = RetryPolicy(attempts=3, wait_initial=2.0, wait_jitter=0.0)
    with caplog.at_level(logging.WARNING, logger="adapter"):
        run(lambda c: c.get_json("Observation", {"patient": "secret-id"}), retry=policy)
    (record,) = retry_records(caplog)
    assert record.levelno == logging.WARNING
    fields = {k: getattr(record, k) for k in ("method", "path", "reason", "attempt", "attempts")}
    assert fields == {
        "method": "GET",
        "path": "/fhir/Observation",
        "reason": reason,
        "attempt": 1,
        "attempts": 3,
    }
    assert record.wait == 2.0  # type: ignore[attr-defined]
    assert (
        record.getMessage()
        == f"GET /fhir/Observation: {reason} on attempt 1 of 3, retrying in 2.0 s"
    )
    assert "secret-id" not in caplog.text
    assert slept == [2.0]


@respx.mock
def test_the_last_failure_is_not_logged_as_a_retry(caplog: pytest.LogCaptureFixture) -> None:
    """Three attempts give two retry lines: none promises a fourth attempt."""
    respx.put(f"{BASE}/ResearchSubject/s1").mock(return_value=busy(503))
    with caplog.at_level(logging.WARNING, logger="adapter"), pytest.raises(TemporaryHttpError):
        run(
            lambda c: c.request("PUT", "ResearchSubject/s1", json={}), retry=RetryPolicy(attempts=3)
        )
    assert [(r.method, r.attempt) for r in retry_records(caplog)] == [("PUT", 1), ("PUT", 2)]  # type: ignore[attr-defined]


def outage(
    clock: FakeClock, seconds: float, sent: list[float]
) -> Callable[[httpx.Request], httpx.Response]:
    """A server that refuses connections for its first `seconds` (on `clock`), then answers."""

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now)
        if clock.now < seconds:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json=BUNDLE)

    return handle


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """A simulated clock: stamina's real waits (test mode off) move it instead of passing."""
    clock = FakeClock()

    async def sleep(delay: float, result: Any = None) -> Any:
        clock.now += delay
        return result

    monkeypatch.setattr(asyncio, "sleep", sleep)
    with stamina.set_testing(False):
        yield clock


@respx.mock
def test_the_default_policy_outlasts_a_one_minute_outage(fake_time: FakeClock) -> None:
    """Connections refused for 60 s: the default retries are still going, and succeed after it."""
    sent: list[float] = []
    respx.get(f"{BASE}/Patient").mock(side_effect=outage(fake_time, 60.0, sent))
    body = run(lambda c: c.get_json("Patient"), clock=fake_time, jitter=lambda: 0.5)
    assert body == BUNDLE
    assert sent[-1] >= 60.0
    # 1, 2, 4, ... s apart (plus half the jitter): the first attempt after the outage succeeds.
    assert sent == [0.0, 1.5, 4.0, 8.5, 17.0, 33.5, 66.0]


@pytest.mark.parametrize(
    ("budget", "attempts_made"),
    [
        (10.0, 4),  # 0, 1, 3, 7: the next wait (8 s) would start after 15 s
        (30.0, 5),
        (None, 10),  # no budget: the attempts decide
    ],
)
@respx.mock
def test_no_retry_starts_after_the_budget(
    fake_time: FakeClock, budget: float | None, attempts_made: int
) -> None:
    """timeout_total bounds the time spent retrying one request; then its error is raised."""
    sent: list[float] = []
    respx.get(f"{BASE}/Patient").mock(side_effect=outage(fake_time, 10_000.0, sent))
    policy = RetryPolicy(attempts=10, timeout_total=budget, wait_jitter=0.0)
    with pytest.raises(TransportError):
        run(lambda c: c.get_json("Patient"), retry=policy, clock=fake_time)
    assert len(sent) == attempts_made
    if budget is not None:
        assert sent[-1] <= budget


@respx.mock
def test_a_retry_after_beyond_the_budget_is_not_waited_for(fake_time: FakeClock) -> None:
    """A 503 asking for 60 s with 30 s of budget left ends the retries at once."""
    route = respx.get(f"{BASE}/Patient").mock(return_value=busy(503, **{"Retry-After": "60"}))
    with pytest.raises(TemporaryHttpError):
        run(lambda c: c.get_json("Patient"), retry=RetryPolicy(timeout_total=30.0), clock=fake_time)
    assert route.call_count == 1
    assert fake_time.now == 0.0


def test_the_site_configuration_sets_attempts_waits_and_budget() -> None:
    """retry_attempts, retry_max_wait and retry_budget_seconds make the RetryPolicy."""
    config = ServerConfig(retry_attempts=3, retry_max_wait=5.0, retry_budget_seconds=12.0)
    policy = config.retry()
    assert (policy.attempts, policy.max_wait, policy.timeout_total) == (3, 5.0, 12.0)
    assert ServerConfig().retry().timeout_total == 300.0


def test_a_refused_tls_certificate_is_final_and_says_so() -> None:
    """A certificate verification failure is a CertificateError: one attempt, a clear message."""
    refused = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]")
    refused.verify_message = "certificate has expired"
    calls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        # As httpx raises it: from httpcore's ConnectError, itself raised from the ssl error.
        raise httpx.ConnectError("handshake failed") from refused

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
            await FhirClient(http, BASE).get_json("metadata")

    with pytest.raises(CertificateError) as caught:
        asyncio.run(main())
    assert len(calls) == 1
    assert not caught.value.temporary
    assert caught.value.exit_code == 1
    assert "TLS certificate of the FHIR server was refused: certificate has expired" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"{BASE}/ResearchSubject/ta-7710abc", "/fhir/ResearchSubject/{id}"),
        (f"{BASE}/Provenance/ta-1/_history/3", "/fhir/Provenance/{id}/_history/{vid}"),
        (f"{BASE}/Observation?patient=demo-01", "/fhir/Observation"),
        (f"{BASE}/Observation/_search", "/fhir/Observation/_search"),
        (f"{BASE}/Patient/$export", "/fhir/Patient/$export"),
        ("https://files.example/export/1.ndjson", "/{other}"),
    ],
)
def test_logged_paths_hold_no_query_and_no_resource_id(url: str, shown: str) -> None:
    """A deterministic id maps back to its patient: logs show `{id}`, never the id (issue 11)."""
    client = FhirClient(httpx.AsyncClient(), BASE)
    assert client.log_path(url) == shown
