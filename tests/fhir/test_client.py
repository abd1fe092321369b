"""FhirClient: URL trust, redirects and error classification, against respx."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
import stamina

from adapter.errors import (
    ConfigError,
    HttpStatusError,
    InvalidResponseError,
    TemporaryHttpError,
    TransportError,
    UntrustedUrlError,
)
from adapter.fhir.client import FhirClient
from adapter.fhir.limits import Limits
from adapter.fhir.outcome import outcome_text
from adapter.fhir.urls import ServerBase, is_trusted

BASE = "http://fhir.test/fhir"


@pytest.fixture(autouse=True)
def instant_retries() -> Iterator[None]:
    """stamina's test mode: no waits, and the policy's own number of attempts (at most 100)."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


def run(call: Any) -> Any:
    """Run `call(client)` with a fresh injected AsyncClient on BASE."""

    async def main() -> Any:
        async with httpx.AsyncClient() as http:
            return await call(FhirClient(http, BASE))

    return asyncio.run(main())


def operation_outcome(*diagnostics: str) -> dict[str, Any]:
    issues = [{"severity": "error", "code": "processing", "diagnostics": d} for d in diagnostics]
    return {"resourceType": "OperationOutcome", "issue": issues}


@pytest.mark.parametrize(
    ("url", "trusted"),
    [
        ("http://fhir.test/fhir", True),
        ("http://fhir.test/fhir/", True),
        ("http://fhir.test/fhir/Observation?_getpages=abc&_getpagesoffset=20", True),
        ("http://FHIR.Test/fhir/Patient/1", True),
        ("http://fhir.test:80/fhir/Patient/1", True),
        ("http://fhir.test/fhir/a/../Patient", True),
        ("https://fhir.test/fhir/Patient", False),
        ("http://fhir.test:8080/fhir/Patient", False),
        ("http://evil.test/fhir/Patient", False),
        ("http://fhir.test.evil.test/fhir/Patient", False),
        ("http://fhir.test/fhir2/Patient", False),
        ("http://fhir.test/fhir-other/Patient", False),
        ("http://fhir.test/other/fhir/Patient", False),
        ("http://fhir.test/", False),
        ("http://fhir.test/fhir/../admin", False),
        ("http://fhir.test/fhir/%2e%2e/admin", False),
        ("http://fhir.test@evil.test/fhir/Patient", False),
        ("http://user:pw@fhir.test/fhir/Patient", False),
        ("ftp://fhir.test/fhir/Patient", False),
        ("Patient/1", False),
        ("http://evil.test/?next=http://fhir.test/fhir/", False),
    ],
)
def test_is_trusted_compares_parsed_origin_and_base_path(url: str, trusted: bool) -> None:
    """Trust is scheme, host, explicit port and base path segment by segment, never a substring."""
    assert is_trusted(url, BASE) is trusted


@pytest.mark.parametrize(
    ("url", "base", "trusted"),
    [
        ("https://fhir.test:443/r4/Patient", "https://fhir.test/r4/", True),
        ("https://fhir.test/r4/Patient", "https://fhir.test:443/r4", True),
        ("http://fhir.test/anything", "http://fhir.test", True),
        ("http://[::1]:8080/fhir/Patient", "http://[::1]:8080/fhir", True),
        ("http://[::1]:8081/fhir/Patient", "http://[::1]:8080/fhir", False),
    ],
)
def test_is_trusted_makes_default_ports_explicit(url: str, base: str, trusted: bool) -> None:
    """Default ports compare equal to explicit ones; a root base trusts the whole origin."""
    assert is_trusted(url, base) is trusted


def test_extra_trusted_origins_trust_any_path_on_that_origin() -> None:
    """An extra origin (e.g. a file store) is trusted on every path, other origins are not."""
    extra = ["https://files.test"]
    assert is_trusted("https://files.test/export/1.ndjson", BASE, extra)
    assert not is_trusted("http://files.test/export/1.ndjson", BASE, extra)


@pytest.mark.parametrize(
    "base", ["fhir.test/fhir", "ftp://fhir.test/fhir", "http://fhir.test/fhir?x=1", "http:///fhir"]
)
def test_unusable_base_url_is_a_config_error(base: str) -> None:
    """A base without http(s) scheme and host, or with a query, is refused at construction."""
    with pytest.raises(ConfigError):
        ServerBase.parse(base)


def test_base_url_gets_one_trailing_slash() -> None:
    """The base is normalised to end with exactly one slash."""
    assert ServerBase.parse(BASE).url == "http://fhir.test/fhir/"
    assert ServerBase.parse(BASE + "/").url == "http://fhir.test/fhir/"


@respx.mock
def test_relative_path_is_joined_to_base_with_fhir_accept_header() -> None:
    """A relative path lands below the base and asks for FHIR JSON."""
    route = respx.get(f"{BASE}/Patient/1").respond(200, json={"resourceType": "Patient", "id": "1"})
    body = run(lambda c: c.get_json("Patient/1"))
    assert body["id"] == "1"
    assert route.calls.last.request.headers["Accept"] == "application/fhir+json"


@respx.mock
def test_params_are_added_to_the_query() -> None:
    """Params are encoded onto the URL, in order."""
    route = respx.get(f"{BASE}/Observation").respond(200, json={"resourceType": "Bundle"})
    run(lambda c: c.get_json("Observation", [("patient", "1,2"), ("_count", "5")]))
    assert route.calls.last.request.url.params.multi_items() == [
        ("patient", "1,2"),
        ("_count", "5"),
    ]


@pytest.mark.parametrize(
    "target", ["http://evil.test/fhir/Patient?_id=123", "//evil.test/fhir/Patient", "/../admin"]
)
@respx.mock
def test_url_outside_the_base_is_refused_before_sending(target: str) -> None:
    """An absolute, scheme-relative or escaping URL raises UntrustedUrlError; nothing is sent."""
    with pytest.raises(UntrustedUrlError):
        run(lambda c: c.get_json(target))
    assert not respx.calls


@respx.mock
def test_a_status_error_names_the_coded_issues_and_keeps_the_text_in_detail() -> None:
    """A 400 names the status, the issues' codes and the URL without its query; the
    diagnostics are only in `detail`."""
    outcome = operation_outcome('HAPI-0524: Unknown search parameter "foo"', "second issue")
    respx.get(f"{BASE}/Observation").respond(400, json=outcome)
    with pytest.raises(HttpStatusError) as caught:
        run(lambda c: c.get_json("Observation", {"patient": "secret-id", "foo": "1"}))
    error = caught.value
    assert not isinstance(error, TemporaryHttpError)
    assert error.status == 400
    assert str(error) == f"HTTP 400: error/processing; error/processing ({BASE}/Observation)"
    assert error.detail == 'HAPI-0524: Unknown search parameter "foo"; second issue'
    assert "secret-id" not in str(error)


def test_outcome_text_falls_back_to_details_text_and_redacts_urls() -> None:
    """Issues without diagnostics use details.text; URLs in the text lose their query."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "details": {"text": "Not allowed"}},
            {"severity": "error", "diagnostics": f"Failed: {BASE}/Patient?_id=secret-id"},
        ],
    }
    assert outcome_text(body) == f"Not allowed; Failed: {BASE}/Patient"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
@respx.mock
def test_temporary_statuses_raise_temporary_http_error(status: int) -> None:
    """408, 429 and 5xx gateway statuses are temporary, with the outcome text kept in detail."""
    respx.get(f"{BASE}/Patient").respond(status, json=operation_outcome("busy"))
    with pytest.raises(TemporaryHttpError) as caught:
        run(lambda c: c.get_json("Patient"))
    assert caught.value.temporary
    assert caught.value.detail == "busy"


@respx.mock
def test_error_status_without_operation_outcome_has_empty_outcome() -> None:
    """A plain-text 404 is an HttpStatusError with no issues and no detail."""
    respx.get(f"{BASE}/Patient/1").respond(404, text="Not Found")
    with pytest.raises(HttpStatusError) as caught:
        run(lambda c: c.get_json("Patient/1"))
    error = caught.value
    assert (error.status, error.summary, error.detail) == (404, "", "")
    assert str(error) == f"HTTP 404 ({BASE}/Patient/{{id}})"


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow")]
)
@respx.mock
def test_no_answer_is_a_temporary_transport_error(exc: Exception) -> None:
    """Connection failures and timeouts become TransportError, the URL without query."""
    respx.get(f"{BASE}/Patient").mock(side_effect=exc)
    with pytest.raises(TransportError) as caught:
        run(lambda c: c.get_json("Patient", {"_id": "secret-id"}))
    assert caught.value.temporary
    assert caught.value.url == f"{BASE}/Patient"


@pytest.mark.parametrize("body", [b"<html>login</html>", b"[1, 2]", b""])
@respx.mock
def test_2xx_body_that_is_not_a_json_object_is_invalid(body: bytes) -> None:
    """HTML, a JSON array or an empty body on a 200 is an InvalidResponseError."""
    respx.get(f"{BASE}/Patient").respond(200, content=body)
    with pytest.raises(InvalidResponseError):
        run(lambda c: c.get_json("Patient"))


@respx.mock
def test_redirect_to_another_host_is_refused_and_not_followed() -> None:
    """A Location on a foreign origin raises UntrustedUrlError; the foreign host gets no request."""
    respx.get(f"{BASE}/Patient").respond(302, headers={"Location": "http://evil.test/steal"})
    foreign = respx.get("http://evil.test/steal").respond(200, json={})
    with pytest.raises(UntrustedUrlError) as caught:
        run(lambda c: c.get_json("Patient"))
    assert not foreign.called
    assert "http://evil.test/steal" in str(caught.value)


@respx.mock
def test_the_redirect_check_stands_on_its_own() -> None:
    """The first URL passes url(); only the redirect check sees the Location. A redirect leaving
    the base for the same host's other path is refused, though the host is the server's."""
    respx.get(f"{BASE}/Patient").respond(307, headers={"Location": "/admin/dump"})
    other = respx.get("http://fhir.test/admin/dump").respond(200, json={})
    with pytest.raises(UntrustedUrlError, match="leaves the configured FHIR server"):
        run(lambda c: c.get_json("Patient"))
    assert not other.called


@respx.mock
def test_the_url_check_stands_on_its_own() -> None:
    """request() (the sinks' door) refuses a URL off the base before anything is sent, with no
    paging or redirect involved."""
    with pytest.raises(UntrustedUrlError, match="outside the configured FHIR server"):
        run(lambda c: c.request("PUT", "http://evil.test/fhir/ResearchSubject/x", json={}))
    assert not respx.calls


@respx.mock
def test_redirect_within_the_base_is_followed_with_credentials() -> None:
    """A relative Location below the base is followed, keeping the client's auth."""
    respx.get(f"{BASE}/Patient").respond(301, headers={"Location": "/fhir/Patient/"})
    target = respx.get(f"{BASE}/Patient/").respond(200, json={"resourceType": "Bundle"})

    async def main() -> Any:
        async with httpx.AsyncClient(headers={"Authorization": "Bearer t"}) as http:
            return await FhirClient(http, BASE).get_json("Patient")

    assert asyncio.run(main()) == {"resourceType": "Bundle"}
    assert target.calls.last.request.headers["Authorization"] == "Bearer t"


@respx.mock
def test_redirect_loop_stops_after_a_few_hops() -> None:
    """A redirect loop on the server is an InvalidResponseError, not an endless loop."""
    respx.get(f"{BASE}/a").respond(302, headers={"Location": f"{BASE}/b"})
    respx.get(f"{BASE}/b").respond(302, headers={"Location": f"{BASE}/a"})
    with pytest.raises(InvalidResponseError, match="redirects"):
        run(lambda c: c.get_json("a"))


@respx.mock
def test_post_form_search_sends_a_form_body_to_type_search() -> None:
    """POST [type]/_search carries the params as application/x-www-form-urlencoded."""
    route = respx.post(f"{BASE}/Observation/_search").respond(200, json={"resourceType": "Bundle"})
    run(lambda c: c.post_form_search("Observation", [("code", "http://loinc.org|1-8")]))
    request = route.calls.last.request
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.content == b"code=http%3A%2F%2Floinc.org%7C1-8"
    assert request.url.query == b""


def test_post_form_search_refuses_a_path_as_resource_type() -> None:
    """The resource type must be a plain type name, never a path."""
    with pytest.raises(ValueError, match="resource type"):
        run(lambda c: c.post_form_search("../admin", []))


@respx.mock
def test_request_sends_fhir_json_and_returns_the_response() -> None:
    """request() serialises `json` as FHIR JSON and returns the httpx response."""
    route = respx.put(f"{BASE}/ResearchStudy/s1").respond(201, json={"id": "s1"})
    study = {"resourceType": "ResearchStudy", "id": "s1"}
    response = run(lambda c: c.request("PUT", "ResearchStudy/s1", json=study))
    assert response.status_code == 201
    request = route.calls.last.request
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert request.headers["Accept"] == "application/fhir+json"


@respx.mock
def test_request_raises_on_error_status() -> None:
    """request() classifies error statuses like every other call."""
    respx.put(f"{BASE}/ResearchStudy/s1").respond(412, json=operation_outcome("version conflict"))
    with pytest.raises(HttpStatusError, match="HTTP 412: error/processing") as caught:
        run(lambda c: c.request("PUT", "ResearchStudy/s1", json={}))
    assert caught.value.detail == "version conflict"


@respx.mock
def test_a_request_waiting_for_the_slot_leaves_before_the_last_answer_is_handled() -> None:
    """With one slot, the second search is sent as soon as the first answer is read, before the
    first caller handles it: the server works while this side parses (issue 15)."""
    events: list[str] = []

    def answer(name: str) -> Any:
        def respond(request: httpx.Request) -> httpx.Response:
            events.append(f"{name} sent")
            return httpx.Response(200, json={"resourceType": "Bundle"})

        return respond

    respx.get(f"{BASE}/Patient").mock(side_effect=answer("Patient"))
    respx.get(f"{BASE}/Condition").mock(side_effect=answer("Condition"))

    async def search(client: FhirClient, kind: str) -> None:
        await client.get_json(kind)
        events.append(f"{kind} handled")

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            client = FhirClient(http, BASE, limits=Limits(max_concurrent=1))
            async with asyncio.TaskGroup() as group:
                group.create_task(search(client, "Patient"))
                group.create_task(search(client, "Condition"))

    asyncio.run(main())
    assert events == ["Patient sent", "Condition sent", "Patient handled", "Condition handled"]
