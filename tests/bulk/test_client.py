"""The Bulk Data protocol (IG v2): capability check, kick-off, status polling and job deletion."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
import respx

from adapter.bulk.client import (
    MAX_FAILED_POLLS,
    BulkJobFailedError,
    BulkJobGoneError,
    BulkKickOffError,
    BulkKickOffLostError,
    BulkUnsupportedError,
    check_export,
    delete_job,
    kick_off,
    poll,
    shown_progress,
)
from adapter.bulk.model import ExportRequest, Manifest, OutputFile
from adapter.errors import (
    HttpStatusError,
    InvalidResponseError,
    LimitExceededError,
    TemporaryHttpError,
    TransportError,
    UntrustedUrlError,
    UsageError,
)
from adapter.fhir.capability import ResourceCapabilities, ServerCapabilities
from adapter.fhir.client import FhirClient
from adapter.fhir.limits import NO_RETRIES

BASE = "https://ehr.test/fhir"
STATUS = f"{BASE}/$export-poll-status?_jobId=job-1"
DATE = "Wed, 03 Jun 2026 02:00:00 GMT"
OO_SYSTEM = "http://terminology.hl7.org/CodeSystem/operation-outcome"
LOINC_FILTER = "Observation?code=http://loinc.org|1751-7,http://loinc.org|2345-7"
MANIFEST: dict[str, Any] = {
    "transactionTime": "2026-06-03T02:00:00Z",
    "request": f"{BASE}/$export",
    "requiresAccessToken": True,
    "output": [{"type": "Patient", "url": f"{BASE}/output/1.ndjson", "count": 2}],
    "error": [],
}
EXPECTED = Manifest(
    transaction_time="2026-06-03T02:00:00Z",
    requires_access_token=True,
    output=(OutputFile("Patient", f"{BASE}/output/1.ndjson", 2),),
    request=f"{BASE}/$export",
)


def run(call: Callable[[FhirClient], Awaitable[Any]], **options: Any) -> Any:
    """Run `call(client)` on a FhirClient over a fresh AsyncClient on BASE."""

    async def main() -> Any:
        async with httpx.AsyncClient() as http:
            return await call(FhirClient(http, BASE, **options))

    return asyncio.run(main())


def outcome(code: str = "processing", text: str = "Patient Jane Doe: job broke") -> dict[str, Any]:
    issue = {
        "severity": "error",
        "code": code,
        "details": {"coding": [{"system": OO_SYSTEM, "code": "MSG_X"}]},
        "diagnostics": text,
    }
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def accepted(location: str | None = STATUS, **headers: str) -> httpx.Response:
    if location is not None:
        headers["Content-Location"] = location
    return httpx.Response(202, headers=headers)


def in_progress(**headers: str) -> httpx.Response:
    return httpx.Response(202, headers={k.replace("_", "-"): v for k, v in headers.items()})


def done() -> httpx.Response:
    return httpx.Response(200, json=MANIFEST)


class FakeTime:
    """A clock that moves only when `sleep` is awaited; `waits` records each sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def polled(
    time: FakeTime,
    *,
    max_wait: float = 60.0,
    deadline: float = 3600.0,
    shown: list[str | None] | None = None,
    **options: Any,
) -> Any:
    """Run `poll` on STATUS with the fake time; `shown` collects what goes to the display."""
    progress = shown.append if shown is not None else None
    return run(
        lambda c: poll(
            c,
            STATUS,
            max_wait=max_wait,
            deadline_seconds=deadline,
            progress=progress,
            sleep=time.sleep,
            clock=time.clock,
        ),
        **options,
    )


def params_of(request: httpx.Request) -> list[tuple[str, str]]:
    return list(request.url.params.multi_items())


# --- check_export -------------------------------------------------------------------------


def caps(system: bool = False, *types: str) -> ServerCapabilities:
    return ServerCapabilities(
        operations=frozenset({"export"} if system else set()),
        resources=tuple(ResourceCapabilities(t, operations=frozenset({"export"})) for t in types),
    )


@pytest.mark.parametrize(
    ("capabilities", "level"),
    [
        (caps(True), "system"),
        (caps(False, "Patient"), "patient"),
        (caps(True, "Patient", "Group"), "group"),
    ],
)
def test_a_level_the_capability_statement_offers_passes(
    capabilities: ServerCapabilities, level: Any
) -> None:
    check_export(capabilities, ExportRequest(level, ("Patient",), group_id="g1"))


@pytest.mark.parametrize(
    ("capabilities", "level", "message"),
    [
        (
            caps(False, "Group"),
            "system",
            "the server's CapabilityStatement offers no $export (system level); it offers: Group",
        ),
        (
            caps(True, "Group"),
            "patient",
            "offers no $export (patient level); it offers: system, Group",
        ),
        (caps(), "group", "offers no $export (group level); it offers: none"),
    ],
)
def test_a_level_the_capability_statement_lacks_fails_in_one_line(
    capabilities: ServerCapabilities, level: Any, message: str
) -> None:
    """Exit 1 (a FhirError) before any request, with what the server does offer."""
    with pytest.raises(BulkUnsupportedError) as caught:
        check_export(capabilities, ExportRequest(level, ("Patient",), group_id="g1"))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_profile_claim_does_not_outweigh_the_capability_statement() -> None:
    """The CapabilityStatement is the server's own word; the profile's claim is only named."""
    with pytest.raises(BulkUnsupportedError, match="server profile claims group-level"):
        check_export(
            caps(True),
            ExportRequest("group", ("Patient",), group_id="g1"),
            profile_levels=("system", "group"),
        )


# --- kick_off -----------------------------------------------------------------------------


@respx.mock
def test_the_kick_off_is_a_get_with_the_bulk_parameters_and_headers() -> None:
    """_type comma-joined, each _typeFilter its own parameter, _since, NDJSON; respond-async."""
    route = respx.get(f"{BASE}/Patient/$export").mock(return_value=accepted())
    request = ExportRequest(
        "patient",
        ("Patient", "Observation", "Condition"),
        type_filters=(LOINC_FILTER, "Condition?code=http://snomed.info/sct|44054006"),
        since="2026-05-01T00:00:00+02:00",
    )
    assert run(lambda c: kick_off(c, request)) == STATUS
    sent = route.calls.last.request
    assert params_of(sent) == [
        ("_outputFormat", "application/fhir+ndjson"),
        ("_type", "Patient,Observation,Condition"),
        ("_typeFilter", LOINC_FILTER),
        ("_typeFilter", "Condition?code=http://snomed.info/sct|44054006"),
        ("_since", "2026-05-01T00:00:00+02:00"),
    ]
    assert "%2B02%3A00" in str(sent.url)  # a `+` in the query would read as a space
    assert sent.headers["Accept"] == "application/fhir+json"
    assert sent.headers["Prefer"] == "respond-async, handling=lenient"


@respx.mock
def test_system_and_group_kick_offs_go_to_their_paths() -> None:
    system = respx.get(f"{BASE}/$export").mock(return_value=accepted())
    group = respx.get(f"{BASE}/Group/onc-2026/$export").mock(return_value=accepted())
    run(lambda c: kick_off(c, ExportRequest("system", ("Patient",))))
    run(lambda c: kick_off(c, ExportRequest("group", ("Patient",), group_id="onc-2026")))
    assert system.called
    assert group.called
    assert ("_since", "") not in params_of(system.calls.last.request)


@pytest.mark.parametrize("group_id", [None, "", "a/b", "x?y=1", "a" * 65])
def test_a_group_export_needs_a_fhir_id(group_id: str | None) -> None:
    with pytest.raises(UsageError):
        run(lambda c: kick_off(c, ExportRequest("group", ("Patient",), group_id=group_id)))


@respx.mock
def test_a_kick_off_past_1900_characters_is_a_post_of_parameters() -> None:
    """IG v2: POST of a Parameters resource; _since is an instant, _typeFilter repeats."""
    filters = tuple(f"Observation?code=http://loinc.org|{n}-{n % 10}" for n in range(1000, 1060))
    route = respx.post(f"{BASE}/$export").mock(return_value=accepted())
    request = ExportRequest(
        "system", ("Observation",), type_filters=filters, since="2026-05-01T00:00:00Z"
    )
    assert run(lambda c: kick_off(c, request)) == STATUS
    sent = route.calls.last.request
    assert not sent.url.query
    assert sent.headers["Content-Type"] == "application/fhir+json"
    assert sent.headers["Prefer"] == "respond-async, handling=lenient"
    assert orjson.loads(sent.content) == {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
            {"name": "_type", "valueString": "Observation"},
            *({"name": "_typeFilter", "valueString": f} for f in filters),
            {"name": "_since", "valueInstant": "2026-05-01T00:00:00Z"},
        ],
    }


@respx.mock
def test_a_relative_content_location_is_read_against_the_kick_off() -> None:
    respx.get(f"{BASE}/$export").mock(return_value=accepted("/fhir/bulk-status/7"))
    assert run(lambda c: kick_off(c, ExportRequest("system", ()))) == f"{BASE}/bulk-status/7"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (accepted(None), "202 without a Content-Location"),
        (httpx.Response(200, json={"resourceType": "Bundle"}), "HTTP 200, not 202"),
    ],
)
@respx.mock
def test_a_kick_off_answer_without_a_status_url_is_invalid(
    response: httpx.Response, message: str
) -> None:
    respx.get(f"{BASE}/$export").mock(return_value=response)
    with pytest.raises(InvalidResponseError, match=message):
        run(lambda c: kick_off(c, ExportRequest("system", ("Patient",))))


@pytest.mark.parametrize(
    "location",
    [
        "https://evil.test/fhir/$export-poll-status?_jobId=1",
        "http://ehr.test/fhir/$export-poll-status",
        "https://ehr.test/other/status/1",
    ],
)
@respx.mock
def test_a_status_url_off_the_server_is_refused(location: str) -> None:
    """Polling sends the token: the status URL must be the server's own (or a trusted origin)."""
    respx.get(f"{BASE}/$export").mock(return_value=accepted(location))
    with pytest.raises(UntrustedUrlError):
        run(lambda c: kick_off(c, ExportRequest("system", ("Patient",))))


@respx.mock
def test_a_status_url_on_a_trusted_origin_is_accepted() -> None:
    location = "https://bulk.ehr.test/jobs/1"
    respx.get(f"{BASE}/$export").mock(return_value=accepted(location))
    got = run(
        lambda c: kick_off(c, ExportRequest("system", ("Patient",))),
        extra_trusted_origins=["https://bulk.ehr.test"],
    )
    assert got == location


@respx.mock
def test_a_400_to_a_kick_off_with_type_filter_is_asked_again_once_without(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Which parameter a 400 is about is only in free text; _typeFilter is the optional one."""
    route = respx.get(f"{BASE}/Patient/$export").mock(
        side_effect=[httpx.Response(400, json=outcome("not-supported")), accepted()]
    )
    request = ExportRequest("patient", ("Observation",), type_filters=(LOINC_FILTER,))
    with caplog.at_level(logging.INFO, logger="adapter.bulk.client"):
        assert run(lambda c: kick_off(c, request)) == STATUS
    first, second = (call.request for call in route.calls)
    assert ("_typeFilter", LOINC_FILTER) in params_of(first)
    assert [name for name, _ in params_of(second)] == ["_outputFormat", "_type"]
    assert "without it" in caplog.text
    assert "loinc" not in caplog.text
    assert "Jane" not in caplog.text


@respx.mock
def test_a_second_400_fails_with_coded_issues_and_the_text_only_in_detail() -> None:
    route = respx.get(f"{BASE}/Patient/$export").mock(
        return_value=httpx.Response(400, json=outcome("invalid"))
    )
    request = ExportRequest("patient", ("Observation",), type_filters=(LOINC_FILTER,))
    with pytest.raises(BulkKickOffError) as caught:
        run(lambda c: kick_off(c, request))
    assert route.call_count == 2
    error = caught.value
    assert error.status == 400
    assert str(error) == (
        f"the $export kick-off was refused: HTTP 400: error/invalid ({OO_SYSTEM}|MSG_X) "
        f"({BASE}/Patient/$export)"
    )
    assert "Jane Doe" in error.detail


@respx.mock
def test_a_400_without_type_filter_is_not_asked_again() -> None:
    route = respx.get(f"{BASE}/$export").mock(return_value=httpx.Response(400, json=outcome()))
    with pytest.raises(BulkKickOffError):
        run(lambda c: kick_off(c, ExportRequest("system", ("Patient",))))
    assert route.call_count == 1


@respx.mock
def test_a_post_refused_with_405_goes_again_as_a_get_without_type_filter() -> None:
    """POST is a MAY in IG v2; without the filters the kick-off fits in a URL."""
    filters = tuple(f"Observation?code=http://loinc.org|{n}-1" for n in range(1000, 1080))
    post = respx.post(f"{BASE}/$export").mock(return_value=httpx.Response(405))
    get = respx.get(f"{BASE}/$export").mock(return_value=accepted())
    request = ExportRequest("system", ("Observation",), type_filters=filters)
    assert run(lambda c: kick_off(c, request)) == STATUS
    assert post.call_count == 1
    assert get.call_count == 1


@respx.mock
def test_a_429_with_retry_after_is_asked_again() -> None:
    """IG v2: a server busy with another export answers 429 + Retry-After; no job was started."""
    route = respx.get(f"{BASE}/$export").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "30"}), accepted()]
    )
    assert run(lambda c: kick_off(c, ExportRequest("system", ("Patient",)))) == STATUS
    assert route.call_count == 2


@pytest.mark.parametrize("method", ["GET", "POST"])
@respx.mock
def test_a_lost_kick_off_answer_is_not_sent_again(method: str) -> None:
    """The server may have started the job: a second kick-off would start a second export."""
    count = 1 if method == "GET" else 80
    filters = tuple(f"Observation?code=http://loinc.org|{n}-1" for n in range(1000, 1000 + count))
    route = respx.route(method=method, url=f"{BASE}/$export").mock(
        side_effect=httpx.ReadTimeout("lost")
    )
    with pytest.raises(BulkKickOffLostError) as caught:
        run(lambda c: kick_off(c, ExportRequest("system", ("Observation",), type_filters=filters)))
    assert route.call_count == 1
    assert not caught.value.temporary
    assert "_type" not in str(caught.value)


# --- poll ---------------------------------------------------------------------------------


@respx.mock
def test_poll_waits_as_retry_after_says_shows_progress_and_returns_the_manifest() -> None:
    """Seconds, an HTTP-date (against the response's Date) and a huge value clamped to max_wait."""
    route = respx.get(STATUS).mock(
        side_effect=[
            in_progress(Retry_After="5", X_Progress="10% complete"),
            in_progress(Retry_After="Wed, 03 Jun 2026 02:00:30 GMT", Date=DATE),
            in_progress(Retry_After="86400", X_Progress="90%\x1b[31m done\r\nsoon"),
            done(),
        ]
    )
    time, shown = FakeTime(), list[str | None]()
    assert polled(time, max_wait=120, shown=shown) == EXPECTED
    assert time.waits == [5, 30, 120]
    assert shown == ["10% complete", None, "90% [31m done soon"]
    assert all(call.request.headers["Accept"] == "application/json" for call in route.calls)


@respx.mock
def test_without_retry_after_polls_back_off_up_to_max_wait() -> None:
    respx.get(STATUS).mock(side_effect=[in_progress()] * 5 + [done()])
    time = FakeTime()
    assert polled(time, max_wait=4) == EXPECTED
    assert time.waits == [1, 2, 4, 4, 4]


@pytest.mark.parametrize("value", ["0", "Wed, 03 Jun 2026 01:00:00 GMT", "soon"])
@respx.mock
def test_a_zero_past_or_unreadable_retry_after_waits_at_least_a_second(value: str) -> None:
    respx.get(STATUS).mock(side_effect=[in_progress(Retry_After=value, Date=DATE), done()])
    time = FakeTime()
    polled(time)
    assert time.waits == [1]


def test_x_progress_is_cut_to_100_printable_characters() -> None:
    assert shown_progress("x" * 500) == "x" * 100
    assert shown_progress(" \t ") is None
    assert shown_progress(None) is None


@respx.mock
def test_a_429_on_poll_waits_as_asked_and_polling_goes_on() -> None:
    """Polling too often earns a 429 + Retry-After (IG v2): FhirClient waits and asks again."""
    route = respx.get(STATUS).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "10"}), in_progress(), done()]
    )
    assert polled(FakeTime()) == EXPECTED
    assert route.call_count == 3


@respx.mock
def test_polling_outlasts_failed_polls_after_the_clients_own_retries() -> None:
    """A poll that fails with a temporary error is polled again later, up to MAX_FAILED_POLLS."""
    busy = httpx.Response(503)
    respx.get(STATUS).mock(side_effect=[busy, httpx.ConnectError("down"), busy, done()])
    time = FakeTime()
    with pytest.raises(TemporaryHttpError):
        polled(time, retry=NO_RETRIES)
    assert len(time.waits) == MAX_FAILED_POLLS - 1
    respx.get(STATUS).mock(side_effect=[busy, httpx.ConnectError("down"), done()])
    assert polled(FakeTime(), retry=NO_RETRIES) == EXPECTED


@pytest.mark.parametrize("status", [404, 410])
@respx.mock
def test_a_job_gone_from_the_status_url_is_bulk_job_gone(status: int) -> None:
    """Expired or deleted: the orchestrator starts a new export."""
    respx.get(STATUS).mock(return_value=httpx.Response(status, json=outcome("not-found")))
    with pytest.raises(BulkJobGoneError) as caught:
        polled(FakeTime())
    assert caught.value.status == status
    assert "_jobId" not in str(caught.value)


@respx.mock
def test_polling_stops_at_the_deadline_naming_the_limit() -> None:
    route = respx.get(STATUS).mock(return_value=in_progress(Retry_After="60"))
    time = FakeTime()
    with pytest.raises(LimitExceededError, match=r"within 300 s, the site's limit \(deadline_"):
        polled(time, deadline=300, max_wait=60)
    assert sum(time.waits) == 300
    assert route.call_count == 6


@respx.mock
def test_a_500_with_an_operation_outcome_is_the_jobs_failure() -> None:
    """IG v2's failed job: 500 + OperationOutcome; coded issues in the message, text in detail."""
    respx.get(STATUS).mock(return_value=httpx.Response(500, json=outcome("processing")))
    with pytest.raises(BulkJobFailedError) as caught:
        polled(FakeTime())
    message = str(caught.value)
    assert message.startswith(
        f"the export job failed: HTTP 500: error/processing ({OO_SYSTEM}|MSG_X)"
    )
    assert "Jane" not in message
    assert "_jobId" not in message
    assert "Jane Doe" in caught.value.detail


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(500, json=outcome("transient")),
        httpx.Response(500, json=outcome("timeout")),
        httpx.Response(500, text="<html>proxy error</html>"),
        httpx.Response(502),
    ],
)
@respx.mock
def test_a_passing_server_error_is_polled_through(response: httpx.Response) -> None:
    """A transient issue code (IG v2) or an error with no OperationOutcome: the job goes on."""
    respx.get(STATUS).mock(side_effect=[response, done()])
    assert polled(FakeTime(), retry=NO_RETRIES) == EXPECTED


@pytest.mark.parametrize(("status", "error"), [(400, BulkJobFailedError), (401, HttpStatusError)])
@respx.mock
def test_other_error_statuses_fail_the_poll(status: int, error: type[Exception]) -> None:
    """A 4xx fails the job; 401/403 raise as they are, since a later run may resume the job."""
    respx.get(STATUS).mock(return_value=httpx.Response(status, json=outcome("invalid")))
    with pytest.raises(error) as caught:
        polled(FakeTime())
    if status == 401:
        assert not isinstance(caught.value, BulkJobFailedError)


@respx.mock
def test_a_status_url_off_the_server_is_never_polled() -> None:
    async def call(client: FhirClient) -> Manifest:
        return await poll(
            client,
            "https://evil.test/status",
            max_wait=10,
            deadline_seconds=100,
            sleep=FakeTime().sleep,
        )

    with pytest.raises(UntrustedUrlError):
        run(call)
    assert not respx.calls


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(200, text="not json"), "manifest is not JSON"),
        (httpx.Response(200, json={"output": []}), "no transactionTime"),
        (
            httpx.Response(200, json=outcome("processing")),
            f"200 with an OperationOutcome, not a manifest: error/processing \\({OO_SYSTEM}",
        ),
        (httpx.Response(204), "answered HTTP 204"),
    ],
)
@respx.mock
def test_a_completion_that_is_not_a_manifest_is_invalid(
    response: httpx.Response, message: str
) -> None:
    respx.get(STATUS).mock(return_value=response)
    with pytest.raises(InvalidResponseError, match=message) as caught:
        polled(FakeTime())
    assert "Jane" not in str(caught.value)


# --- delete_job ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 204, 404, 410])
@respx.mock
def test_deleting_a_job_accepts_success_and_already_gone(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    route = respx.delete(STATUS).mock(return_value=httpx.Response(status))
    run(lambda c: delete_job(c, STATUS))
    assert route.call_count == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(400, json=outcome("invalid")), f"HTTP 400: error/invalid ({OO_SYSTEM}"),
        (httpx.Response(500, json=outcome("exception")), "HTTP 500: error/exception"),
        (httpx.ConnectError("refused"), "ConnectError"),
    ],
)
@respx.mock
def test_a_failed_delete_is_a_coded_warning_never_an_error(
    response: httpx.Response | Exception, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The sweep's work is done; the server expires the files. No free text, no job id."""
    respx.delete(STATUS).mock(side_effect=[response] * 20)
    with caplog.at_level(logging.WARNING):
        run(lambda c: delete_job(c, STATUS), retry=NO_RETRIES)
    warnings = [r.getMessage() for r in caplog.records if r.name == "adapter.bulk.client"]
    assert len(warnings) == 1
    assert reason in warnings[0]
    assert "Jane" not in warnings[0]
    assert "job-1" not in warnings[0]


def test_deleting_an_untrusted_status_url_sends_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with respx.mock(assert_all_called=False) as mock, caplog.at_level(logging.WARNING):
        run(lambda c: delete_job(c, "https://evil.test/status/1"))
        assert not mock.calls
    assert "UntrustedUrlError" in caplog.text


def test_the_lost_kick_off_error_is_a_fhir_error_but_not_a_transport_error() -> None:
    """An outer retry of temporary errors must not resend a kick-off."""
    assert not issubclass(BulkKickOffLostError, TransportError)
