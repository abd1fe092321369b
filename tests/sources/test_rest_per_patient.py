"""RestSource per-patient reads (issue 13): URL shapes per profile, concurrency, order."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from adapter.errors import FhirError, HttpStatusError
from adapter.facts.model import Coding
from adapter.fhir.capability import ElementsSupport, ServerCapabilities
from adapter.fhir.client import FhirClient
from adapter.fhir.limits import NO_RETRIES, Limits
from adapter.servers import GENERIC, ReadMode, ServerProfile, TypeRules
from adapter.sources.base import Query
from adapter.sources.ordered import ordered_map
from adapter.sources.rest import RestSource, search_params

BASE = "http://fhir.test/fhir"
LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
HGB, ALT, PULSE = Coding(LOINC, "718-7"), Coding(LOINC, "1742-6"), Coding(LOINC, "8867-4")
T = TypeVar("T")


# ---- a FHIR server in a respx side effect ------------------------------------------------------


def resource(kind: str, rid: str, patient: str, code: Coding | None = None, *cats: str) -> Any:
    """A resource of `patient` with one coding and the given category codes."""
    out: dict[str, Any] = {"resourceType": kind, "id": rid}
    out["subject"] = {"reference": f"{BASE}/Patient/{patient}"}
    if code is not None:
        out["code"] = {"coding": [{"system": code.system, "code": code.code}]}
    if cats:
        out["category"] = [{"coding": [{"system": CATEGORY, "code": c}]} for c in cats]
    return out


def patient(rid: str, *identifiers: tuple[str, str]) -> Any:
    ids = [{"system": s, "value": v} if s else {"value": v} for s, v in identifiers]
    return {"resourceType": "Patient", "id": rid, "identifier": ids}


def sent_params(request: httpx.Request) -> dict[str, str]:
    """The search parameters of a request, from its query or its form body."""
    if request.method == "POST":
        return dict(parse_qsl(request.content.decode()))
    return dict(request.url.params)


def split(text: str, sep: str) -> list[str]:
    """`text` split at each `sep` not escaped with a backslash, then unescaped (R4 search)."""
    parts = re.split(rf"(?<!\\){re.escape(sep)}", text)
    return [re.sub(r"\\(.)", r"\1", p) for p in parts] if sep == "|" else parts


def _token_matches(token: str, codings: Iterable[Any]) -> bool:
    *system, code = split(token, "|")
    return any(
        c.get("code") == code and (not system or (c.get("system") or "") == system[0])
        for c in codings
    )


def _codings(node: Any) -> list[Any]:
    concepts = node if isinstance(node, list) else [node] if node else []
    return [c for concept in concepts for c in concept.get("coding", [])]


class FakeFhir:
    """A FHIR server over `resources`, mounted on every URL under BASE.

    Reads (`GET Patient/{id}`, `GET Group/{id}`: 404 when absent) and searches by `_id`,
    `identifier`, `patient`, `code` and `category` (comma lists OR'ed), paged by `_count` with
    next links. `post_filter`: the types whose `code` the server applies after paging (Epic's
    Observation): pages are cut from the unfiltered results, and `total` counts those.
    `refuse`: answers a search (its parameters) with an error response instead, or None.
    `gates`: patient id -> an Event each search naming only that patient waits for.
    `fail`: patient id -> the status its searches and reads answer with.
    """

    def __init__(
        self,
        resources: list[Any],
        *,
        post_filter: frozenset[str] = frozenset(),
        refuse: Callable[[dict[str, str]], httpx.Response | None] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.resources = resources
        self.post_filter = post_filter
        self.refuse = refuse
        self.delay = delay
        self.gates: dict[str, asyncio.Event] = {}
        self.fail: dict[str, int] = {}
        self.log: list[tuple[str, dict[str, str]]] = []
        self.cancelled: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.most_tasks = 0
        self._pages: dict[str, httpx.Response] = {}
        self._ids = itertools.count()

    def mount(self) -> respx.Route:
        return respx.route(url__startswith=BASE).mock(side_effect=self)

    def searches(self) -> list[dict[str, str]]:
        """The parameters of each first page of a search, in the order they came."""
        return [
            p
            for path, p in self.log
            if "/" not in path.removesuffix("/_search") and "_page" not in p
        ]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        params = sent_params(request)
        path = request.url.path.removeprefix("/fhir").strip("/")
        self.log.append((path, params))
        if "_page" in params:
            return self._pages.pop(params["_page"])
        who = path.split("/")[1] if path.startswith("Patient/") else params.get("patient", "")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.most_tasks = max(self.most_tasks, len(asyncio.all_tasks()))
        try:
            await asyncio.sleep(self.delay)
            if who in self.gates:
                await self.gates[who].wait()
            if who in self.fail:
                return httpx.Response(self.fail[who], json=outcome("forbidden"))
            return self._answer(path, params)
        except asyncio.CancelledError:
            self.cancelled.append(who)
            raise
        finally:
            self.in_flight -= 1

    def _answer(self, path: str, params: dict[str, str]) -> httpx.Response:
        parts = path.removesuffix("/_search").split("/")
        if len(parts) == 2:
            found = [r for r in self.resources if (r["resourceType"], r["id"]) == tuple(parts)]
            return httpx.Response(200, json=found[0]) if found else httpx.Response(404)
        refused = self.refuse(params) if self.refuse else None
        if refused is not None:
            return refused
        kind = parts[0]
        matches = [r for r in self.resources if r["resourceType"] == kind]
        for name, value in params.items():
            if name == "code" and kind in self.post_filter:
                continue
            matches = [r for r in matches if _matches(r, name, split(value, ","))]
        return self._page(kind, matches, params, int(params.get("_count", "1000")))

    def _page(
        self, kind: str, matches: list[Any], params: dict[str, str], size: int
    ) -> httpx.Response:
        shown = matches[:size]
        if kind in self.post_filter and "code" in params:
            shown = [r for r in shown if _matches(r, "code", split(params["code"], ","))]
        page: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in shown],
        }
        if len(matches) > size:
            token = str(next(self._ids))
            page["link"] = [{"relation": "next", "url": f"{BASE}?_page={token}"}]
            rest = self._page(kind, matches[size:], params, size)
            rest_body = rest.json()
            rest_body["total"] = len(matches)
            self._pages[token] = httpx.Response(200, json=rest_body)
        return httpx.Response(200, json=page)


def _matches(res: Any, name: str, values: list[str]) -> bool:
    if name.startswith("_"):
        return name != "_id" or res["id"] in values
    if name == "patient":
        return res["subject"]["reference"].rsplit("/", 1)[1] in values
    if name == "code":
        return any(_token_matches(v, _codings(res.get("code"))) for v in values)
    if name == "category":
        return any(_token_matches(v, _codings(res.get("category"))) for v in values)
    if name == "identifier":
        wanted = [split(v, "|") for v in values]
        have = [[i.get("system", ""), i["value"]] for i in res.get("identifier", [])]
        return any(w in have for w in wanted)
    raise AssertionError(f"the fake server has no parameter {name}")


def outcome(code: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code}]}


async def using(
    action: Callable[[RestSource], Awaitable[T]],
    *,
    profile: ServerProfile = GENERIC,
    read: ReadMode | None = None,
    max_concurrent: int = 4,
    **options: Any,
) -> tuple[T, RestSource]:
    """`action` on a RestSource over a fresh client (no retries, no counts unless asked)."""
    options.setdefault("count_first", False)
    async with httpx.AsyncClient() as http:
        limits = Limits(max_concurrent=max_concurrent)
        client = FhirClient(http, BASE, limits=limits, retry=NO_RETRIES)
        source = RestSource(client, profile=profile, read=read, **options)
        return await action(source), source


def fetch(query: Query, **options: Any) -> tuple[list[str], RestSource]:
    """The ids `fetch(query)` yields, in order, and the source."""

    async def ids(source: RestSource) -> list[str]:
        return [r["id"] async for r in source.fetch(query)]

    return asyncio.run(using(ids, **options))


def profile(name: str, read: ReadMode = "per-patient", **searches: TypeRules) -> ServerProfile:
    return ServerProfile(name=name, read=read, searches=searches)


def rules(**fields: Any) -> TypeRules:
    """TypeRules with frozensets from lists (`rules(post_filters=["code"])`)."""
    sets = {k: frozenset(fields.get(k, ())) for k in ("required", "single_valued", "post_filters")}
    unsupported = frozenset(fields.get("unsupported", ()))
    categories = tuple(fields.get("categories", ()))
    return TypeRules(**sets, unsupported=unsupported, categories=categories)


# Epic-like: patient required and single-valued; Observation `code` a post-filter; Condition
# requires a category from the profile's list.
EPICLIKE = profile(
    "epic-like",
    Observation=rules(required=["patient"], single_valued=["patient"], post_filters=["code"]),
    Condition=rules(
        required=["patient", "category"],
        single_valued=["patient"],
        post_filters=["code"],
        categories=("problem-list-item", "encounter-diagnosis"),
    ),
    Procedure=rules(required=["patient"], single_valued=["patient"]),
)
PER_PATIENT = profile("per-patient-generic")

OBSERVATIONS = [
    resource("Observation", "o1", "p1", HGB, "laboratory"),
    resource("Observation", "o2", "p1", PULSE, "vital-signs"),
    resource("Observation", "o3", "p2", HGB),  # no category: out of a category search's reach
    resource("Observation", "o4", "p2", ALT, "laboratory"),
    resource("Observation", "o5", "p4", HGB, "laboratory"),
    resource("Observation", "o6", "p4", HGB, "laboratory", "vital-signs"),
]
CONDITIONS = [
    resource("Condition", "c1", "p1", None, "problem-list-item"),
    resource("Condition", "c2", "p2", None, "encounter-diagnosis"),
    resource("Condition", "c3", "p2", None, "health-concern"),
]
PATIENTS = [patient("p1"), patient("p2"), patient("p4")]
EVERYONE = frozenset({"p1", "p2", "p3", "p4"})
LABS = Query(
    "Observation",
    codes=frozenset({HGB, ALT}),
    patients=EVERYONE,
    categories=frozenset({"laboratory"}),
    uncategorised=frozenset({"ammonia"}),
)
LAB_NOTES = [
    "Observations without one of the searched categories (laboratory) are not reached in this mode",
    "analyte ammonia names no Observation category: not reached in this mode",
]


def by_patient(searches: list[dict[str, str]]) -> list[dict[str, str]]:
    """Searches sorted by patient: concurrent searches come in any order."""
    return sorted(searches, key=lambda p: (p.get("patient", ""), sorted(p.items())))


# ---- URL shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("gone", [404, 410])
@respx.mock
def test_patients_are_read_by_id_and_a_missing_one_is_absent(gone: int) -> None:
    """Per-patient mode reads `GET Patient/{id}`; a 404 or 410 leaves the patient out."""
    server = FakeFhir(PATIENTS)
    server.fail["p3"] = gone
    server.mount()
    found, source = fetch(Query("Patient", patients=EVERYONE), profile=PER_PATIENT)
    assert found == ["p1", "p2", "p4"]
    assert sorted(path for path, _ in server.log) == [f"Patient/{p}" for p in sorted(EVERYONE)]
    assert source.reads.mode == "per-patient"
    assert source.reads.profile == "per-patient-generic"


@respx.mock
def test_a_patient_read_failing_otherwise_raises() -> None:
    """A read answered 403 is a failure, not an absent patient."""
    server = FakeFhir(PATIENTS)
    server.fail["p2"] = 403
    server.mount()
    with pytest.raises(HttpStatusError, match="HTTP 403"):
        fetch(Query("Patient", patients=EVERYONE), profile=PER_PATIENT)


@respx.mock
def test_observations_are_searched_by_code_where_the_server_filters_by_it() -> None:
    """Where `code` is honoured, one search per patient with the codes and no category."""
    server = FakeFhir(OBSERVATIONS)
    server.mount()
    found, source = fetch(LABS, profile=PER_PATIENT)
    codes = f"{LOINC}|1742-6,{LOINC}|718-7"
    assert by_patient(server.searches()) == [
        {"patient": p, "code": codes, "_count": "1000"} for p in sorted(EVERYONE)
    ]
    assert found == ["o1", "o3", "o4", "o5", "o6"]
    assert source.reads.unreached == []


@respx.mock
def test_observations_are_searched_by_category_where_code_is_a_post_filter() -> None:
    """Epic-like: `patient` and the analytes' categories, no `code`; what no category names is
    listed as unreached, once, whatever the number of fetches."""
    server = FakeFhir(OBSERVATIONS, post_filter=frozenset({"Observation"}))
    server.mount()
    query = Query(
        "Observation",
        codes=LABS.codes,
        patients=EVERYONE,
        categories=frozenset({"laboratory", "vital-signs"}),
        uncategorised=frozenset({"ammonia"}),
    )

    async def twice(source: RestSource) -> list[str]:
        first = [r["id"] async for r in source.fetch(query)]
        assert first == [r["id"] async for r in source.fetch(query)]
        return first

    found, source = asyncio.run(using(twice, profile=EPICLIKE))
    assert by_patient(server.searches()) == [
        {"patient": p, "category": "laboratory,vital-signs", "_count": "1000"}
        for p in sorted(EVERYONE)
        for _ in ("first fetch", "second fetch")
    ]
    # o3 has no category: not reached; o2 (a pulse) comes too, the sweep drops its code.
    assert found == ["o1", "o2", "o4", "o5", "o6"]
    assert source.reads.unreached == [
        "Observations without one of the searched categories (laboratory, vital-signs) are not "
        "reached in this mode",
        "analyte ammonia names no Observation category: not reached in this mode",
    ]


@respx.mock
def test_a_single_valued_category_makes_one_search_per_category() -> None:
    """`category` single-valued: a search per patient and category, each resource once."""
    server = FakeFhir(OBSERVATIONS, post_filter=frozenset({"Observation"}))
    server.mount()
    single = profile(
        "single-category",
        Observation=rules(post_filters=["code"], single_valued=["patient", "category"]),
    )
    query = Query(
        "Observation",
        codes=LABS.codes,
        patients=frozenset({"p4"}),
        categories=frozenset({"vital-signs", "laboratory"}),
    )
    found, _ = fetch(query, profile=single)
    assert server.searches() == [
        {"patient": "p4", "category": "laboratory", "_count": "1000"},
        {"patient": "p4", "category": "vital-signs", "_count": "1000"},
    ]
    assert found == ["o5", "o6"]


@pytest.mark.parametrize("categories", [None, frozenset()])
@respx.mock
def test_without_categories_a_post_filtered_code_leaves_the_patient_alone(
    categories: frozenset[str] | None,
) -> None:
    """No category known and `code` no filter: everything of the patient, nothing unreached."""
    server = FakeFhir(OBSERVATIONS, post_filter=frozenset({"Observation"}))
    server.mount()
    query = Query(
        "Observation", codes=LABS.codes, patients=frozenset({"p2"}), categories=categories
    )
    found, source = fetch(query, profile=EPICLIKE)
    assert server.searches() == [{"patient": "p2", "_count": "1000"}]
    assert found == ["o3", "o4"]
    assert source.reads.unreached == []


@respx.mock
def test_conditions_carry_the_categories_the_profile_requires() -> None:
    """Condition: `patient` and the profile's categories; Conditions outside them unreached."""
    server = FakeFhir(CONDITIONS)
    server.mount()
    found, source = fetch(Query("Condition", patients=frozenset({"p1", "p2"})), profile=EPICLIKE)
    assert by_patient(server.searches()) == [
        {"patient": p, "category": "encounter-diagnosis,problem-list-item", "_count": "1000"}
        for p in ("p1", "p2")
    ]
    assert found == ["c1", "c2"]
    assert source.reads.unreached == [
        "Conditions without one of the searched categories (encounter-diagnosis, "
        "problem-list-item) are not reached in this mode"
    ]


@respx.mock
def test_required_categories_go_on_batch_searches_too() -> None:
    """A profile that requires `category` without requiring one patient: batch searches carry
    its categories, and say what they cannot reach."""
    server = FakeFhir(CONDITIONS)
    server.mount()
    cats = profile(
        "categories",
        "batch",
        Condition=rules(required=["category"], categories=("health-concern",)),
    )
    found, source = fetch(Query("Condition", patients=frozenset({"p1", "p2"})), profile=cats)
    assert server.searches() == [
        {"patient": "p1,p2", "category": "health-concern", "_count": "1000"}
    ]
    assert found == ["c3"]
    assert source.reads.unreached == [
        "Conditions without one of the searched categories (health-concern) are not reached in "
        "this mode"
    ]


@pytest.mark.parametrize(
    ("condition", "sent"),
    [
        (rules(), {"patient": "p1", "code": f"{LOINC}|1", "_count": "1000"}),
        (rules(post_filters=["code"]), {"patient": "p1", "_count": "1000"}),
        (rules(unsupported=["code"]), {"patient": "p1", "_count": "1000"}),
    ],
)
@respx.mock
def test_condition_codes_go_only_where_the_server_filters_by_them(
    condition: TypeRules, sent: dict[str, str]
) -> None:
    """Per patient, `code` is sent where honoured; elsewhere the sweep checks codes itself."""
    server = FakeFhir(CONDITIONS)
    server.mount()
    query = Query("Condition", codes=frozenset({Coding(LOINC, "1")}), patients=frozenset({"p1"}))
    fetch(query, profile=profile("p", Condition=condition))
    assert server.searches() == [sent]


@respx.mock
def test_procedures_name_one_patient_each() -> None:
    server = FakeFhir([resource("Procedure", "x1", "p2")])
    server.mount()
    found, _ = fetch(Query("Procedure", patients=frozenset({"p2", "p1"})), profile=EPICLIKE)
    assert [p["patient"] for p in server.searches()] == ["p1", "p2"]
    assert found == ["x1"]


@respx.mock
def test_a_single_valued_code_makes_one_search_per_code_in_batch_mode() -> None:
    """Batch mode stays batched by patient but sends one code per search."""
    server = FakeFhir(OBSERVATIONS)
    server.mount()
    single = profile("single-code", "batch", Observation=rules(single_valued=["code"]))
    query = Query("Observation", codes=frozenset({HGB, ALT}), patients=frozenset({"p1", "p2"}))
    found, source = fetch(query, profile=single)
    assert server.searches() == [
        {"patient": "p1,p2", "code": f"{LOINC}|1742-6", "_count": "1000"},
        {"patient": "p1,p2", "code": f"{LOINC}|718-7", "_count": "1000"},
    ]
    assert sorted(found) == ["o1", "o3", "o4"]
    assert source.reads.mode == "batch"
    assert search_params(query, batch_size=10, page_size=10, profile=single) == [
        [("patient", "p1,p2"), ("code", f"{LOINC}|1742-6"), ("_count", "10")],
        [("patient", "p1,p2"), ("code", f"{LOINC}|718-7"), ("_count", "10")],
    ]


@respx.mock
def test_a_single_valued_patient_makes_batch_mode_search_one_patient_each() -> None:
    """`patient` single-valued for a type: that type is read per patient even in batch mode."""
    server = FakeFhir(OBSERVATIONS + PATIENTS)
    server.mount()
    mixed = profile("mixed", "batch", Observation=rules(single_valued=["patient"]))
    fetch(Query("Observation", patients=frozenset({"p1", "p2"})), profile=mixed)
    fetch(Query("Patient", patients=frozenset({"p1", "p2"})), profile=mixed)
    assert by_patient(server.searches()) == [
        {"_id": "p1,p2", "_count": "1000"},
        {"patient": "p1", "_count": "1000"},
        {"patient": "p2", "_count": "1000"},
    ]


@respx.mock
def test_a_search_too_long_for_a_url_is_posted_per_patient_too() -> None:
    """A patient's long code list goes as POST [type]/_search."""
    server = FakeFhir(OBSERVATIONS)
    route = server.mount()
    codes = frozenset(Coding(LOINC, f"{n}-{n % 10}") for n in range(10000, 10100)) | {HGB}
    found, _ = fetch(
        Query("Observation", codes=codes, patients=frozenset({"p1", "p4"})), profile=PER_PATIENT
    )
    assert {call.request.method for call in route.calls} == {"POST"}
    assert found == ["o1", "o5", "o6"]


@respx.mock
def test_page_size_and_elements_follow_the_profile() -> None:
    """`_count` is lowered to the profile's largest; `_elements` only where the profile allows
    it and the probe saw it honoured."""
    server = FakeFhir(OBSERVATIONS)
    server.mount()
    caps = ServerCapabilities(elements=ElementsSupport.HONOURED)
    elements = {"Observation": ["subject", "code"]}
    query = Query("Observation", patients=frozenset({"p1"}))
    small = ServerProfile(name="small", max_count=50)
    fetch(query, profile=small, page_size=200, capabilities=caps, elements=elements)
    no_elements = ServerProfile(name="plain", elements=False)
    fetch(query, profile=no_elements, capabilities=caps, elements=elements)
    assert server.searches() == [
        {"patient": "p1", "_count": "50", "_elements": "subject,code"},
        {"patient": "p1", "_count": "1000"},
    ]


@respx.mock
def test_a_post_filtered_total_is_not_taken_as_a_cut() -> None:
    """`code` applied after paging: short pages and a larger total are the server's way, so the
    search is neither split nor counted, and every match comes."""
    many = [resource("Observation", f"x{n}", "p1", HGB if n % 3 == 0 else PULSE) for n in range(30)]
    server = FakeFhir(many, post_filter=frozenset({"Observation"}))
    server.mount()
    posted = profile("post", "batch", Observation=rules(post_filters=["code"]))
    query = Query("Observation", codes=frozenset({HGB}), patients=frozenset({"p1", "p2"}))
    found, _ = fetch(query, profile=posted, page_size=7, count_first=True, result_cap=20)
    assert found == [f"x{n}" for n in range(0, 30, 3)]
    first, *pages = server.log
    assert first[1] == {"patient": "p1,p2", "code": f"{LOINC}|718-7", "_count": "7"}
    assert [p for _, p in pages] == [{"_page": str(n)} for n in range(4)]


@respx.mock
def test_without_a_total_a_post_filtered_search_at_the_cap_is_still_a_cut() -> None:
    """No total: a result set that reaches the cap may be cut, post-filter or not."""
    many = [resource("Observation", f"x{n}", "p1", HGB) for n in range(3)]
    page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in many],
    }
    respx.get(f"{BASE}/Observation").respond(200, json=page)
    posted = profile("post", "batch", Observation=rules(post_filters=["code"]))
    query = Query("Observation", codes=frozenset({HGB}), patients=frozenset({"p1"}))
    with pytest.raises(FhirError, match="stopped at the result cap of 3"):
        fetch(query, profile=posted, result_cap=3)


# ---- the same answer in every mode ------------------------------------------------------------


@respx.mock
def test_both_modes_yield_the_same_resources() -> None:
    """Where `code` is honoured, batch and per-patient reads yield the same resources; where it
    is a post-filter, the same once the codes are checked as the sweep does."""
    server = FakeFhir(OBSERVATIONS + CONDITIONS + PATIENTS)
    server.mount()
    queries = [LABS, Query("Condition", patients=EVERYONE), Query("Patient", patients=EVERYONE)]
    for query in queries:
        batch, _ = fetch(query, profile=GENERIC)
        one_each, _ = fetch(query, profile=GENERIC, read="per-patient", batch_size=2)
        assert sorted(batch) == sorted(one_each)
        assert batch

    server.post_filter = frozenset({"Observation"})
    labs = Query(
        "Observation",
        codes=LABS.codes,
        patients=EVERYONE,
        categories=frozenset({"laboratory", "vital-signs"}),
    )
    code_of = {r["id"]: r["code"]["coding"][0]["code"] for r in OBSERVATIONS}
    batch, _ = fetch(
        labs, profile=profile("post", "batch", Observation=rules(post_filters=["code"]))
    )
    epic, source = fetch(labs, profile=EPICLIKE)
    checked = {rid for rid in epic if code_of[rid] in {"718-7", "1742-6"}}
    # o3 has no category: a category search cannot reach it, and says so.
    assert checked == set(batch) - {"o3"}
    assert source.reads.unreached


# ---- concurrency, order, cancellation ---------------------------------------------------------


@respx.mock
def test_patients_are_searched_concurrently_within_the_client_limit() -> None:
    """40 patients, 3 at a time: three searches in flight at once, never more, and no more
    tasks than that window (no task per patient up front)."""
    people = [f"p{n:02d}" for n in range(40)]
    server = FakeFhir([resource("Observation", f"o{p}", p) for p in people], delay=0.01)
    server.mount()
    found, _ = fetch(
        Query("Observation", patients=frozenset(people)), profile=PER_PATIENT, max_concurrent=3
    )
    assert found == [f"o{p}" for p in people]
    assert server.most_in_flight == 3
    assert server.most_tasks <= 1 + 3  # the test's own task and the window


@respx.mock
def test_results_come_in_patient_order_whatever_order_the_answers_come_in() -> None:
    """p1's answer comes last, after p2's and p3's, yet p1's resources are yielded first."""
    server = FakeFhir([resource("Observation", f"o-{p}", p) for p in ("p3", "p2", "p1")])
    server.mount()
    last = asyncio.Event()
    server.gates["p1"] = last
    seen: list[str] = []

    async def read(source: RestSource) -> list[str]:
        async for res in source.fetch(Query("Observation", patients=frozenset({"p1", "p2", "p3"}))):
            seen.append(res["id"])
        return seen

    async def main() -> list[str]:
        async def release() -> None:
            while len([p for p, q in server.log if q.get("patient") in ("p2", "p3")]) < 2:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.01)
            last.set()

        releaser = asyncio.create_task(release())
        found, _ = await using(read, profile=PER_PATIENT)
        await releaser
        return found

    assert asyncio.run(main()) == ["o-p1", "o-p2", "o-p3"]


def pending_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


@respx.mock
def test_a_failure_cancels_the_other_patients_searches_and_raises() -> None:
    """p2 answers 403 while p1 and p3 wait: the error raises, their searches are cancelled."""
    server = FakeFhir(OBSERVATIONS)
    server.mount()
    server.gates["p1"] = server.gates["p3"] = asyncio.Event()  # never set
    server.fail["p2"] = 403

    async def main() -> set[asyncio.Task[Any]]:
        query = Query("Observation", patients=frozenset({"p1", "p2", "p3"}))
        with pytest.raises(HttpStatusError, match="HTTP 403"):
            await using(lambda s: _drain(s.fetch(query)), profile=PER_PATIENT)
        return pending_tasks()

    assert asyncio.run(main()) == set()
    assert sorted(server.cancelled) == ["p1", "p3"]


async def _drain(stream: Any) -> list[Any]:
    return [item async for item in stream]


@respx.mock
def test_closing_the_fetch_early_cancels_the_searches_still_running() -> None:
    """The caller stops after p1's first resource: p2's and p3's searches are cancelled cleanly."""
    server = FakeFhir(OBSERVATIONS)
    server.mount()
    server.gates["p2"] = server.gates["p4"] = asyncio.Event()  # never set

    async def first(source: RestSource) -> str:
        query = Query("Observation", patients=frozenset({"p1", "p2", "p4"}))
        stream: Any = source.fetch(query)  # an async generator, so it has aclose
        found = await anext(stream)
        await stream.aclose()
        return str(found["id"])

    async def main() -> tuple[str, set[asyncio.Task[Any]]]:
        found, _ = await using(first, profile=PER_PATIENT)
        return found, pending_tasks()

    assert asyncio.run(main()) == ("o1", set())
    assert sorted(server.cancelled) == ["p2", "p4"]


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_ordered_map_keeps_the_order_and_the_window(limit: int) -> None:
    """At most `limit` calls run at once; results in the items' order."""
    running = 0
    most = 0

    async def slow(n: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * ((7 * n) % 5))
        running -= 1
        return n * n

    async def main() -> list[int]:
        return [r async for r in ordered_map(slow, range(12), limit=limit)]

    assert asyncio.run(main()) == [n * n for n in range(12)]
    assert most == limit


def test_ordered_map_refuses_an_empty_window() -> None:
    async def main() -> None:
        async for _ in ordered_map(asyncio.sleep, [1.0], limit=0):
            pass

    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(main())
