"""RestSource: search parameters, patient batching, POST for long searches, de-duplication."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
import respx
import stamina

from adapter.errors import FhirError, HttpStatusError, PatientError
from adapter.facts.extract import FactBuilder, condition_fact, patient_info, procedure_fact
from adapter.facts.model import Coding
from adapter.fhir.capability import ElementsSupport, ServerCapabilities
from adapter.fhir.client import FhirClient
from adapter.fhir.limits import Limits
from adapter.sources.base import Query, patient_id_of
from adapter.sources.rest import FACT_ELEMENTS, RestSource, code_token, search_params
from adapter.trials import load_trial

BASE = "http://fhir.test/fhir"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


@pytest.fixture(autouse=True)
def instant_retries() -> Iterator[None]:
    """stamina's test mode: no waits, and the policy's own number of attempts (at most 100)."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


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
    """Everything RestSource yields for `query`, with a fresh injected AsyncClient.

    Count queries are off unless asked for: the tests of the result cap turn them on.
    """
    options.setdefault("count_first", False)
    limits = options.pop("limits", None)

    async def main() -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as http:
            source = RestSource(FhirClient(http, BASE, limits=limits), **options)
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
def test_another_servers_patient_is_left_out_and_counted() -> None:
    """Issue 10: `http://other-hospital.example/fhir/Patient/p1` is not our p1, even when a
    server matches ids loosely; nor is a patient under another base path of the same host."""
    foreign = obs("2")
    foreign["subject"] = {"reference": "http://other-hospital.example/fhir/Patient/p1"}
    sibling = obs("3")
    sibling["subject"] = {"reference": "http://fhir.test/other/Patient/p1"}
    respx.get(f"{BASE}/Observation").respond(200, json=bundle([obs("1"), foreign, sibling]))

    async def main() -> tuple[list[str], dict[str, int]]:
        async with httpx.AsyncClient() as http:
            source = RestSource(FhirClient(http, BASE), count_first=False)
            query = Query("Observation", patients=frozenset({"p1"}))
            found = [r["id"] async for r in source.fetch(query)]
            return found, dict(source.foreign)

    assert asyncio.run(main()) == (["1"], {"Observation": 2})


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
    """A 400 with an OperationOutcome surfaces, coded; no partial result is returned."""
    respx.get(f"{BASE}/Observation").respond(
        400,
        json={"resourceType": "OperationOutcome", "issue": [{"diagnostics": "bad code"}]},
    )
    with pytest.raises(HttpStatusError, match="HTTP 400") as caught:
        fetch(Query("Observation", patients=frozenset({"p1"})))
    # The server's words can name a patient: kept for the owner-only results, never in messages.
    assert "bad code" not in str(caught.value)
    assert caught.value.detail == "bad code"


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


class Server:
    """A FHIR server in a respx side effect: searches, `_summary=count`, and next-link paging.

    `counts` is each (patient, code) pair's number of matching resources ("" for a search with
    no patients or no codes). A search serves them in pages of `_count`, shaped like HAPI's:
    a searchset Bundle with `total` (unless `totals` is False) and, while more remain, an
    absolute next link on the same base (`?_getpages=...&_getpagesoffset=...`). `capped_at`
    cuts a search like HAPI's public server: at that many entries, no next link and no total.
    `refuses_counts` answers `_summary=count` with a 400. `log` records (kind, patients, codes)
    per request, kind being "search" (a first page), "count" or "page" (a next link).
    """

    def __init__(
        self,
        counts: dict[tuple[str, str], int],
        *,
        totals: bool = True,
        capped_at: int | None = None,
        refuses_counts: bool = False,
    ) -> None:
        self.counts = counts
        self.totals = totals
        self.capped_at = capped_at
        self.refuses_counts = refuses_counts
        self.log: list[tuple[str, str, str]] = []
        self.methods: list[str] = []
        self._results: list[tuple[str, str, list[dict[str, Any]], int | None]] = []

    def mount(self) -> respx.Route:
        """Serve every request under BASE: searches by GET or POST, counts and next pages."""
        return respx.route(url__startswith=BASE).mock(side_effect=self)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.methods.append(request.method)
        params = sent_params(Call(request))
        if "_getpages" in params:
            return self._page(params)
        kind = request.url.path.split("/")[2]  # /fhir/Observation or /fhir/Observation/_search
        who, what = params.get("patient", ""), params.get("code", "")
        pairs = [(p, c) for p in who.split(",") for c in what.split(",") if (p, c) in self.counts]
        if params.get("_summary") == "count":
            self.log.append(("count", who, what))
            if self.refuses_counts:
                outcome = {"resourceType": "OperationOutcome", "issue": [{"code": "not-supported"}]}
                return httpx.Response(400, json=outcome)
            total = sum(self.counts[pair] for pair in pairs)
            return httpx.Response(
                200, json={"resourceType": "Bundle", "type": "searchset", "total": total}
            )
        self.log.append(("search", who, what))
        found = [
            resource(kind, f"{p}-{c}-{n}", p) for p, c in pairs for n in range(self.counts[(p, c)])
        ]
        total: int | None = len(found) if self.totals else None
        if self.capped_at is not None and len(found) >= self.capped_at:
            found, total = found[: self.capped_at], None
        self._results.append((who, what, found, total))
        key = str(len(self._results) - 1)
        return self._serve(key, 0, int(params["_count"]))

    def _page(self, params: dict[str, str]) -> httpx.Response:
        key = params["_getpages"]
        who, what, _, _ = self._results[int(key)]
        self.log.append(("page", who, what))
        return self._serve(key, int(params["_getpagesoffset"]), int(params["_count"]))

    def _serve(self, key: str, offset: int, size: int) -> httpx.Response:
        _, _, found, total = self._results[int(key)]
        more = offset + size < len(found)
        next_url = (
            f"{BASE}?_getpages={key}&_getpagesoffset={offset + size}&_count={size}"
            "&_bundletype=searchset"
            if more
            else None
        )
        page = bundle(found[offset : offset + size], next_url=next_url)
        if total is None:
            del page["total"]
        else:
            page["total"] = total
        return httpx.Response(200, json=page)


def resource(kind: str, rid: str, patient: str) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": kind, "id": rid}
    if patient:
        out["subject"] = {"reference": f"Patient/{patient}"}
    return out


class Call:
    """The shape `sent_params` reads, for a request seen inside a side effect."""

    def __init__(self, request: httpx.Request) -> None:
        self.request = request


def codes_of(*names: str) -> frozenset[Coding]:
    return frozenset(Coding("", name) for name in names)


def ids_of(counts: dict[tuple[str, str], int]) -> list[str]:
    """Every id a `Server` with these counts holds, sorted."""
    return sorted(f"{p}-{c}-{n}" for (p, c), many in counts.items() for n in range(many))


EIGHT = "p1,p2,p3,p4,p5,p6,p7,p8"


@pytest.mark.parametrize(
    ("totals", "log"),
    [
        # Each first page's total decides: 1,400 and 1,200 are over the cap of 1,000, so those
        # first pages are dropped (their next links never followed); 600 and 200 are paged on.
        (
            True,
            [
                ("search", EIGHT, "c"),
                ("search", "p1,p2,p3,p4", "c"),
                ("search", "p1,p2", "c"),
                ("page", "p1,p2", "c"),
                ("page", "p1,p2", "c"),
                ("search", "p3,p4", "c"),
                ("page", "p3,p4", "c"),
                ("page", "p3,p4", "c"),
                ("search", "p5,p6,p7,p8", "c"),
            ],
        ),
        # Without totals, a first page with a next link is counted; one without (200) is not.
        (
            False,
            [
                ("search", EIGHT, "c"),
                ("count", EIGHT, "c"),
                ("search", "p1,p2,p3,p4", "c"),
                ("count", "p1,p2,p3,p4", "c"),
                ("search", "p1,p2", "c"),
                ("count", "p1,p2", "c"),
                ("page", "p1,p2", "c"),
                ("page", "p1,p2", "c"),
                ("search", "p3,p4", "c"),
                ("count", "p3,p4", "c"),
                ("page", "p3,p4", "c"),
                ("page", "p3,p4", "c"),
                ("search", "p5,p6,p7,p8", "c"),
            ],
        ),
    ],
)
@respx.mock
def test_a_batch_over_the_cap_is_split_in_halves_until_each_is_under_it(
    totals: bool, log: list[tuple[str, str, str]]
) -> None:
    """8 patients (1,400) split 4 + 4, the first 4 (1,200) again 2 + 2 (600); nothing lost."""
    counts = {(f"p{n}", "c"): 300 if n <= 4 else 50 for n in range(1, 9)}
    server = Server(counts, totals=totals)
    server.mount()
    query = Query("Observation", codes=codes_of("c"), patients=frozenset(p for p, _ in counts))
    found = fetch(query, count_first=True, result_cap=1000, batch_size=8, page_size=200)
    assert sorted(r["id"] for r in found) == ids_of(counts)
    assert len(found) == 1400
    assert server.log == log


@pytest.mark.parametrize(
    ("totals", "page_size", "kinds"),
    [
        (True, 1000, ["search"]),  # a total and no next link: one request in all
        (True, 20, ["search", "page", "page"]),  # a total: no count, whatever the pages
        (False, 1000, ["search"]),  # no total, but no next link: that page is all there is
        (False, 20, ["search", "count", "page", "page"]),  # no total, a next link: one count
    ],
)
@respx.mock
def test_a_batch_under_the_cap_is_counted_only_when_its_first_page_cannot_tell(
    totals: bool, page_size: int, kinds: list[str]
) -> None:
    """The first page's total settles the cap; its next links are followed, it is not re-asked."""
    counts = {("p1", "c"): 20, ("p2", "c"): 30}
    server = Server(counts, totals=totals)
    server.mount()
    query = Query("Observation", codes=codes_of("c"), patients=frozenset({"p1", "p2"}))
    found = fetch(query, count_first=True, page_size=page_size)
    assert sorted(r["id"] for r in found) == ids_of(counts)
    assert len(found) == 50
    assert server.log == [(kind, "p1,p2", "c") for kind in kinds]


@pytest.mark.parametrize(
    ("totals", "kinds"),
    [(True, ["search", "search"]), (False, ["search", "count", "search", "count"])],
)
@respx.mock
def test_one_patient_over_the_cap_is_split_by_code_then_refused_naming_the_count(
    totals: bool, kinds: list[str]
) -> None:
    """A single patient and code over the cap raises FhirError with the count, not the id."""
    server = Server({("secret-id", "a"): 12_345, ("secret-id", "b"): 10}, totals=totals)
    server.mount()
    query = Query("Observation", codes=codes_of("a", "b"), patients=frozenset({"secret-id"}))
    with pytest.raises(FhirError) as caught:
        fetch(query, count_first=True)
    message = str(caught.value)
    assert "12,345" in message
    assert "for 1 patient and 1 code" in message
    assert "cannot be split" in message
    assert "secret-id" not in message
    codes = ["a,b", "a,b", "a", "a"] if not totals else ["a,b", "a"]
    assert server.log == [
        (kind, "secret-id", code) for kind, code in zip(kinds, codes, strict=True)
    ]


@respx.mock
def test_a_cohort_search_over_the_cap_is_split_by_code() -> None:
    """Without patients, the codes are halved instead."""
    counts = {("", "a"): 60, ("", "b"): 60}
    server = Server(counts)
    server.mount()
    found = fetch(
        Query("Condition", codes=codes_of("a", "b")), count_first=True, result_cap=100, page_size=50
    )
    assert sorted(r["id"] for r in found) == ids_of(counts)
    assert {r["resourceType"] for r in found} == {"Condition"}
    assert server.log == [
        ("search", "", "a,b"),
        ("search", "", "a"),
        ("page", "", "a"),
        ("search", "", "b"),
        ("page", "", "b"),
    ]


@respx.mock
def test_a_result_set_that_reaches_the_cap_without_a_next_link_is_split() -> None:
    """A search cut at the cap is searched again in halves; nothing is lost, nothing repeated."""
    pairs = {("p1", "a"): 1, ("p1", "b"): 1, ("p2", "a"): 1, ("p2", "b"): 1}
    server = Server(pairs, capped_at=3)
    server.mount()
    query = Query("Observation", codes=codes_of("a", "b"), patients=frozenset({"p1", "p2"}))
    found = fetch(query, result_cap=3)
    assert sorted(r["id"] for r in found) == ["p1-a-0", "p1-b-0", "p2-a-0", "p2-b-0"]
    assert len(found) == 4
    assert server.log == [
        ("search", "p1,p2", "a,b"),
        ("search", "p1", "a,b"),
        ("search", "p2", "a,b"),
    ]


@respx.mock
def test_a_total_above_what_was_returned_splits_the_search() -> None:
    """A search whose pages end before its Bundle.total is searched again in halves."""
    short = bundle([obs("1", "p1")])
    short["total"] = 3
    first = respx.get(f"{BASE}/Observation", params={"patient": "p1,p2"}).respond(200, json=short)
    respx.get(f"{BASE}/Observation", params={"patient": "p1"}).respond(
        200, json=bundle([obs("1", "p1"), obs("2", "p1")])
    )
    respx.get(f"{BASE}/Observation", params={"patient": "p2"}).respond(
        200, json=bundle([obs("3", "p2")])
    )
    found = fetch(Query("Observation", patients=frozenset({"p1", "p2"})))
    assert [r["id"] for r in found] == ["1", "2", "3"]
    assert first.call_count == 1


@respx.mock
def test_a_single_patient_search_that_stops_at_the_cap_raises() -> None:
    """One patient, no codes, cut at the cap without a total: an error, never a short result."""
    page = bundle([obs("1"), obs("2")])
    del page["total"]
    respx.get(f"{BASE}/Observation").respond(200, json=page)
    with pytest.raises(FhirError, match=r"stopped at the result cap of 2 \(2 resources, no total"):
        fetch(Query("Observation", patients=frozenset({"p1"})), result_cap=2)


@respx.mock
def test_a_single_patient_search_short_of_its_total_raises() -> None:
    """One patient whose pages end before Bundle.total: an error naming both numbers."""
    page = bundle([obs("1")])
    page["total"] = 3
    respx.get(f"{BASE}/Observation").respond(200, json=page)
    with pytest.raises(FhirError, match="returned 1 of the 3 resources it announced"):
        fetch(Query("Observation", patients=frozenset({"p1"})))


@respx.mock
def test_a_total_that_confirms_the_results_overrides_the_cap() -> None:
    """At the cap, with a total saying that was everything (offset repeats included), no split."""
    next1 = f"{BASE}?_getpages=abc&_getpagesoffset=2&_count=2&_bundletype=searchset"
    first = bundle([obs("1"), obs("2")], next_url=next1)
    first["total"] = 3
    route = respx.get(f"{BASE}/Observation").respond(200, json=first)
    respx.get(BASE, params={"_getpagesoffset": "2"}).respond(200, json=bundle([obs("2"), obs("3")]))
    found = fetch(Query("Observation", patients=frozenset({"p1", "p2"})), result_cap=3)
    assert [r["id"] for r in found] == ["1", "2", "3"]
    assert route.call_count == 1


@respx.mock
def test_a_server_that_refuses_summary_count_is_not_asked_again() -> None:
    """A 400 to the count query turns counting off; the search pages on from its first page.

    One request at a time, so that the second batch starts after the refusal (batches that
    overlap it may have asked already)."""
    counts = {("p1", ""): 3, ("p2", ""): 3}
    server = Server(counts, totals=False, refuses_counts=True)
    server.mount()
    query = Query("Observation", patients=frozenset({"p1", "p2"}))
    found = fetch(
        query, count_first=True, batch_size=1, page_size=2, limits=Limits(max_concurrent=1)
    )
    assert sorted(r["id"] for r in found) == ids_of(counts)
    assert server.log == [
        ("search", "p1", ""),
        ("count", "p1", ""),
        ("page", "p1", ""),
        ("search", "p2", ""),
        ("page", "p2", ""),
    ]


@respx.mock
def test_a_count_too_long_for_a_url_is_posted_like_its_search() -> None:
    """The count query of a long search goes as POST [type]/_search with _summary=count."""
    codes = frozenset(Coding(LOINC, f"{n}-{n % 10}") for n in range(10000, 10100))
    counts = {("p1", f"{LOINC}|10000-0"): 2}
    server = Server(counts, totals=False)
    route = server.mount()
    query = Query("Observation", codes=codes, patients=frozenset({"p1"}))
    found = fetch(query, count_first=True, page_size=1)
    assert sorted(r["id"] for r in found) == ids_of(counts)
    assert [kind for kind, _, _ in server.log] == ["search", "count", "page"]
    assert server.methods == ["POST", "POST", "GET"]
    search, count, _ = (sent_params(call) for call in route.calls)
    assert route.calls[1].request.url == f"{BASE}/Observation/_search"
    assert (count["_summary"], "_count" in count) == ("count", False)
    assert (search["_count"], "_summary" in search) == ("1", False)
    assert count["code"] == search["code"]


@pytest.mark.parametrize(
    ("elements", "sent"),
    [
        (ElementsSupport.HONOURED, "meta,subject,status,code"),
        (ElementsSupport.IGNORED, None),
        (ElementsSupport.UNKNOWN, None),
        (None, None),
    ],
)
@respx.mock
def test_elements_are_asked_for_only_where_the_probe_saw_them_honoured(
    elements: ElementsSupport | None, sent: str | None
) -> None:
    """_elements goes on searches (not counts) only when capabilities say it is honoured."""
    server = Server({("p1", ""): 2}, totals=False)
    route = server.mount()
    caps = None if elements is None else ServerCapabilities(elements=elements)
    fetch(
        Query("Observation", patients=frozenset({"p1"})),
        count_first=True,
        page_size=1,
        capabilities=caps,
        elements={"Observation": ["meta", "subject", "status", "code"], "Patient": ["gender"]},
    )
    assert [kind for kind, _, _ in server.log] == ["search", "count", "page"]
    search, count, _ = (sent_params(call) for call in route.calls)
    assert "_elements" not in count
    assert search.get("_elements") == sent


@pytest.mark.parametrize(
    "elements", [{"Observation": "status"}, {"Observation": ["valueQuantity.value"]}]
)
def test_element_names_are_checked_when_the_source_is_made(elements: Any) -> None:
    """A string instead of a list, or a path instead of a base element name, is a ValueError."""
    with pytest.raises(ValueError, match="element names"):
        fetch(Query("Observation"), elements=elements)


def subset(resource: dict[str, Any], names: tuple[str, ...], *, base_names: bool) -> dict[str, Any]:
    """What a server honouring `_elements=names` sends.

    With `base_names` (R4, HAPI) `effective` keeps `effectiveDateTime`; without (sekmet-fhir) only
    the exact JSON names are kept.
    """

    def kept(key: str) -> bool:
        return key in ("resourceType", "id", *names) or (
            base_names
            and any(key.startswith(n) and key[len(n) : len(n) + 1].isupper() for n in names)
        )

    return {k: v for k, v in resource.items() if kept(k)}


def whole_and_cut(
    shared_data: Path, *, base_names: bool
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(type, resource, resource cut to FACT_ELEMENTS) from Synthea and the HL7 examples."""
    for kind in ("Patient", "Condition", "Procedure", "Observation"):
        names = FACT_ELEMENTS[kind]
        with (shared_data / "synthea-r4-100" / f"{kind}.ndjson").open("rb") as lines:
            for line in islice(lines, 3000):
                resource = orjson.loads(line)
                yield kind, resource, subset(resource, names, base_names=base_names)
        # The HL7 examples carry what Synthea lacks: stages, reference ranges, versionIds.
        for path in sorted((shared_data / "hl7-examples").glob(f"{kind}-*.json")):
            resource = orjson.loads(path.read_bytes())
            yield kind, resource, subset(resource, names, base_names=base_names)


@pytest.mark.parametrize("base_names", [True, False])
@pytest.mark.data
def test_fact_elements_keep_everything_the_facts_are_read_from(
    shared_data: Path, base_names: bool
) -> None:
    """Facts read from resources cut to FACT_ELEMENTS equal those read from whole ones."""
    trial = load_trial("hcc-ablation-lenvatinib-pd1")
    builder = FactBuilder(trial.analytes, trial.units, frozenset(trial.analytes))
    readers = {
        "Patient": patient_info,
        "Condition": condition_fact,
        "Procedure": procedure_fact,
        "Observation": builder.observation,
    }
    for kind, whole, cut in whole_and_cut(shared_data, base_names=base_names):
        where = f"{kind}/{whole.get('id')}"
        assert readers[kind](cut) == readers[kind](whole), where
        assert patient_id_of(cut) == patient_id_of(whole), where
