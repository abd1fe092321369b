"""RestSource: search parameters, patient batching, POST for long searches, de-duplication."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from adapter.errors import HttpStatusError, PatientError
from adapter.facts.model import Coding
from adapter.fhir.client import FhirClient
from adapter.sources.base import Query
from adapter.sources.rest import RestSource, code_token, search_params

BASE = "http://fhir.test/fhir"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def bundle(resources: list[dict[str, Any]], *, next_url: str | None = None) -> dict[str, Any]:
    """A HAPI-shaped searchset page."""
    links = [{"relation": "self", "url": f"{BASE}/Observation"}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": links,
        "entry": [
            {
                "fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def obs(rid: str, patient: str = "p1") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "subject": {"reference": f"Patient/{patient}"},
    }


def fetch(query: Query, **options: Any) -> list[dict[str, Any]]:
    """Everything RestSource yields for `query`, with a fresh injected AsyncClient."""

    async def main() -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as http:
            source = RestSource(FhirClient(http, BASE), **options)
            try:
                return [r async for r in source.fetch(query)]
            finally:
                await source.aclose()

    return asyncio.run(main())


def sent_params(call: Any) -> dict[str, str]:
    """The search parameters of a recorded call, from its query or its form body."""
    request = call.request
    if request.method == "POST":
        return dict(parse_qsl(request.content.decode()))
    return dict(request.url.params)


@respx.mock
def test_cohort_query_ors_sorted_code_tokens_without_patient_param() -> None:
    """The cohort search sends `code=` with every token sorted and no patient parameter."""
    route = respx.get(f"{BASE}/Condition").respond(200, json=bundle([]))
    codes = frozenset(
        {Coding(SNOMED, "254637007"), Coding("http://hl7.org/fhir/sid/icd-10-cm", "C34.1")}
    )
    fetch(Query("Condition", codes=codes), page_size=50)
    assert sent_params(route.calls.last) == {
        "code": f"http://hl7.org/fhir/sid/icd-10-cm|C34.1,{SNOMED}|254637007",
        "_count": "50",
    }


@respx.mock
def test_patients_are_batched_with_sorted_ids() -> None:
    """250 patients with batch size 100 make 3 searches of sorted, comma-joined bare ids."""
    route = respx.get(f"{BASE}/Observation").respond(200, json=bundle([]))
    patients = frozenset(f"p{n:03d}" for n in range(250))
    fetch(Query("Observation", patients=patients), batch_size=100)
    batches = [sent_params(call)["patient"].split(",") for call in route.calls]
    assert [len(b) for b in batches] == [100, 100, 50]
    assert [pid for b in batches for pid in b] == sorted(patients)
    assert all("code" not in sent_params(call) for call in route.calls)


@respx.mock
def test_patient_query_searches_by_id() -> None:
    """Patients are fetched with `_id`, and only Patient resources are yielded."""
    route = respx.get(f"{BASE}/Patient").respond(
        200,
        json=bundle(
            [{"resourceType": "Patient", "id": "b"}, {"resourceType": "Patient", "id": "a"}]
        ),
    )
    found = fetch(Query("Patient", patients=frozenset({"b", "a"})), page_size=200)
    assert sent_params(route.calls.last) == {"_id": "a,b", "_count": "200"}
    assert [p["id"] for p in found] == ["b", "a"]


def test_search_params_are_pure_and_reproducible() -> None:
    """The same query always gives the same parameter lists, without a server."""
    query = Query(
        "Procedure",
        codes=frozenset({Coding(SNOMED, "2"), Coding(SNOMED, "1")}),
        patients=frozenset({"z", "y", "x"}),
    )
    assert search_params(query, batch_size=2, page_size=10) == [
        [("patient", "x,y"), ("code", f"{SNOMED}|1,{SNOMED}|2"), ("_count", "10")],
        [("patient", "z"), ("code", f"{SNOMED}|1,{SNOMED}|2"), ("_count", "10")],
    ]


@pytest.mark.parametrize(
    "query",
    [
        Query("Observation", patients=frozenset()),
        Query("Observation", codes=frozenset(), patients=frozenset({"p1"})),
    ],
)
@respx.mock
def test_empty_patient_or_code_set_sends_nothing(query: Query) -> None:
    """An empty set of patients or codes matches nothing, so no search is sent."""
    assert fetch(query) == []
    assert not respx.calls


@pytest.mark.parametrize(
    ("coding", "token"),
    [
        (Coding(LOINC, "718-7"), "http://loinc.org|718-7"),
        (Coding("urn:local", "a,b|c$d\\e"), "urn:local|a\\,b\\|c\\$d\\\\e"),
        (Coding("", "718-7"), "718-7"),
    ],
)
def test_code_tokens_escape_search_specials(coding: Coding, token: str) -> None:
    """`,`, `|`, `$` and `\\` in a code are escaped; a code without system matches any system."""
    assert code_token(coding) == token


@respx.mock
def test_paging_runs_to_the_end_and_duplicates_are_dropped() -> None:
    """Entries repeated across offset pages are yielded once; all three pages are read."""
    next1 = f"{BASE}?_getpages=abc&_getpagesoffset=2&_count=2&_bundletype=searchset"
    next2 = f"{BASE}?_getpages=abc&_getpagesoffset=4&_count=2&_bundletype=searchset"
    respx.get(f"{BASE}/Observation").respond(200, json=bundle([obs("1"), obs("2")], next_url=next1))
    respx.get(BASE, params={"_getpagesoffset": "2"}).respond(
        200, json=bundle([obs("2"), obs("3")], next_url=next2)
    )
    respx.get(BASE, params={"_getpagesoffset": "4"}).respond(200, json=bundle([obs("3"), obs("4")]))
    found = fetch(Query("Observation", patients=frozenset({"p1"})), page_size=2)
    assert [r["id"] for r in found] == ["1", "2", "3", "4"]
    assert len(respx.calls) == 3


@respx.mock
def test_only_the_queried_type_is_yielded() -> None:
    """Included Patients and search.mode=outcome OperationOutcomes are dropped."""
    page = bundle([obs("1"), {"resourceType": "Patient", "id": "p1"}])
    page["entry"].append(
        {
            "resource": {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "note"}]},
            "search": {"mode": "outcome"},
        }
    )
    respx.get(f"{BASE}/Observation").respond(200, json=page)
    found = fetch(Query("Observation", patients=frozenset({"p1"})))
    assert [(r["resourceType"], r["id"]) for r in found] == [("Observation", "1")]


@respx.mock
def test_absolute_references_to_the_base_are_made_relative() -> None:
    """`http://fhir.test/fhir/Patient/p1` becomes `Patient/p1`; other servers' stay absolute."""
    resource = obs("1")
    resource["subject"] = {"reference": f"{BASE}/Patient/p1"}
    resource["performer"] = [{"reference": "http://other.test/fhir/Practitioner/9"}]
    respx.get(f"{BASE}/Observation").respond(200, json=bundle([resource]))
    (found,) = fetch(Query("Observation", patients=frozenset({"p1"})))
    assert found["subject"] == {"reference": "Patient/p1"}
    assert found["performer"] == [{"reference": "http://other.test/fhir/Practitioner/9"}]


@respx.mock
def test_search_too_long_for_a_url_is_posted_as_a_form() -> None:
    """Past max_url_length the same parameters go as POST [type]/_search, paging still followed."""
    next1 = f"{BASE}?_getpages=abc&_getpagesoffset=1&_count=1&_bundletype=searchset"
    get_route = respx.get(f"{BASE}/Observation").respond(200, json=bundle([]))
    post_route = respx.post(f"{BASE}/Observation/_search").respond(
        200, json=bundle([obs("1")], next_url=next1)
    )
    respx.get(BASE, params={"_getpagesoffset": "1"}).respond(200, json=bundle([obs("2")]))
    codes = frozenset(Coding(LOINC, f"{n}-{n % 10}") for n in range(10000, 10100))
    query = Query("Observation", codes=codes, patients=frozenset({"p1", "p2"}))
    found = fetch(query, page_size=1)
    assert not get_route.called
    params = sent_params(post_route.calls.last)
    assert params["patient"] == "p1,p2"
    assert params["code"].split(",") == sorted(code_token(c) for c in codes)
    assert params["_count"] == "1"
    assert [r["id"] for r in found] == ["1", "2"]


@respx.mock
def test_short_search_stays_a_get() -> None:
    """A search within max_url_length is a plain GET."""
    route = respx.get(f"{BASE}/Observation").respond(200, json=bundle([]))
    fetch(
        Query("Observation", codes=frozenset({Coding(LOINC, "718-7")}), patients=frozenset({"p1"}))
    )
    assert route.called


@pytest.mark.parametrize("bad", ["p 1", "../Patient", "a" * 65, "1&_id=2", "", "é"])
@respx.mock
def test_invalid_patient_id_is_refused_before_any_request(bad: str) -> None:
    """An id that is not a FHIR id raises PatientError and never reaches a URL."""
    with pytest.raises(PatientError) as caught:
        fetch(Query("Observation", patients=frozenset({"ok", bad})))
    assert not respx.calls
    if bad:
        assert bad not in str(caught.value)


@pytest.mark.parametrize(
    "query",
    [Query("MedicationRequest"), Query("Patient", codes=frozenset({Coding(LOINC, "1")}))],
)
def test_unsupported_queries_are_programming_errors(query: Query) -> None:
    """A type without a known patient parameter, or codes on Patient, is a ValueError."""
    with pytest.raises(ValueError, match=r"cannot search|no codes"):
        fetch(query)


@respx.mock
def test_server_error_stops_the_fetch() -> None:
    """A 400 with an OperationOutcome surfaces; no partial result is returned."""
    respx.get(f"{BASE}/Observation").respond(
        400,
        json={"resourceType": "OperationOutcome", "issue": [{"diagnostics": "bad code"}]},
    )
    with pytest.raises(HttpStatusError, match="bad code"):
        fetch(Query("Observation", patients=frozenset({"p1"})))


@respx.mock
def test_aclose_leaves_the_injected_client_open() -> None:
    """The caller owns the httpx client: aclose does not close it."""
    respx.get(f"{BASE}/Patient").respond(200, json=bundle([]))

    async def main() -> bool:
        async with httpx.AsyncClient() as http:
            source = RestSource(FhirClient(http, BASE))
            await source.aclose()
            await http.get(f"{BASE}/Patient")
            return http.is_closed

    assert asyncio.run(main()) is False
