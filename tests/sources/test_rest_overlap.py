"""RestSource in batch mode (issue 15): the batches of one search overlap within the client's
`max_concurrent`, come out in batch order, and stop together; codes fetched already are sent as
`code:not` only where the server profile says the server honours it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from adapter.errors import HttpStatusError
from adapter.facts.model import Coding
from adapter.servers import GENERIC, TypeRules, load_profiles
from adapter.sources.base import Query
from adapter.sources.rest import RestSource, search_params
from tests.sources.test_rest_per_patient import (
    BASE,
    FakeFhir,
    fetch,
    patient,
    pending_tasks,
    profile,
    resource,
    using,
)

ICD10 = "http://hl7.org/fhir/sid/icd-10"
HCC, HCC_CM = Coding(ICD10, "C22.0"), Coding(ICD10 + "-cm", "C22.0")
MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
PEOPLE = [f"p{n}" for n in range(1, 7)]  # batches of 2: p1,p2 / p3,p4 / p5,p6
OBS = [resource("Observation", f"o-{p}", p) for p in PEOPLE]
PATIENTS = [patient(p) for p in PEOPLE]
NOT_SUPPORTED = GENERIC
HONOURS_NOT = profile("honours-not", "batch", Condition=TypeRules(not_modifier=True))


def batch_searches(server: FakeFhir) -> list[str]:
    """The `patient` value of each Observation search's first page, in the order they came."""
    return [p["patient"] for path, p in server.log if path == "Observation" and "_page" not in p]


async def _drain(stream: Any) -> list[Any]:
    return [item["id"] async for item in stream]


async def answered_once(source: RestSource) -> None:
    """A search naming several patients, answered: from then on batches are not held back."""
    await _drain(source.fetch(Query("Patient", patients=frozenset(PEOPLE))))


# ---- overlap, order, bound ----------------------------------------------------------------------


@respx.mock
def test_a_slow_first_batch_does_not_hold_back_the_next_ones_and_comes_out_first() -> None:
    """Batch p1,p2 answers only after the other two have been asked (and answered): all three
    are in flight together, yet p1's and p2's resources are yielded first."""
    server = FakeFhir(OBS + PATIENTS)
    server.mount()
    slow = server.gates["p1,p2"] = asyncio.Event()

    async def read(source: RestSource) -> list[str]:
        await answered_once(source)
        query = Query("Observation", patients=frozenset(PEOPLE))

        async def release() -> None:
            while len(batch_searches(server)) < 3:
                await asyncio.sleep(0.001)
            slow.set()

        releaser = asyncio.create_task(release())
        found = await _drain(source.fetch(query))
        await releaser
        return found

    found, _ = asyncio.run(using(read, batch_size=2))
    assert found == [f"o-{p}" for p in PEOPLE]
    assert batch_searches(server) == ["p1,p2", "p3,p4", "p5,p6"]


@respx.mock
def test_batches_stay_within_the_client_limit_and_the_window() -> None:
    """20 batches, 3 at a time: three searches in flight at once, never more, and no more tasks
    than that window (no task per batch up front)."""
    people = [f"p{n:02d}" for n in range(40)]
    server = FakeFhir([resource("Observation", f"o-{p}", p) for p in people], delay=0.01)
    server.mount()
    found, _ = fetch(
        Query("Observation", patients=frozenset(people)), batch_size=2, max_concurrent=3
    )
    assert found == [f"o-{p}" for p in people]
    assert server.most_in_flight == 3
    assert server.most_tasks <= 1 + 3  # the test's own task and the window


@respx.mock
def test_a_batch_pages_through_its_next_links_in_turn() -> None:
    """Pages of one batch are asked one after another, and the batch's results stay whole and
    in order; duplicates across batches are yielded once."""
    people = ["p1", "p2", "p3", "p4"]
    many = [resource("Observation", f"o-{p}-{n}", p) for p in people for n in range(3)]
    server = FakeFhir(many)
    server.mount()
    found, _ = fetch(Query("Observation", patients=frozenset(people)), batch_size=2, page_size=2)
    assert found == [r["id"] for r in many]


@respx.mock
def test_the_first_multi_patient_search_is_asked_alone() -> None:
    """Until a search naming several patients has been answered, the others wait: a server that
    refuses them is asked once (the fallback of issue 13), not once per batch in flight."""
    server = FakeFhir(OBS)
    server.mount()
    first = server.gates["p1,p2"] = asyncio.Event()

    async def read(source: RestSource) -> list[str]:
        async def release() -> None:
            while not batch_searches(server):
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.02)
            assert batch_searches(server) == ["p1,p2"]  # the others are held back
            first.set()

        releaser = asyncio.create_task(release())
        found = await _drain(source.fetch(Query("Observation", patients=frozenset(PEOPLE))))
        await releaser
        return found

    found, _ = asyncio.run(using(read, batch_size=2))
    assert found == [f"o-{p}" for p in PEOPLE]


# ---- failure and early close -------------------------------------------------------------------


@respx.mock
def test_a_failing_batch_cancels_the_others_and_raises() -> None:
    """Batch p3,p4 answers 403 while p1,p2 and p5,p6 wait: the error raises, the others are
    cancelled, and no task is left behind."""
    server = FakeFhir(OBS + PATIENTS)
    server.mount()
    server.gates["p1,p2"] = server.gates["p5,p6"] = asyncio.Event()  # never set
    server.fail["p3,p4"] = 403

    async def main() -> set[asyncio.Task[Any]]:
        async def read(source: RestSource) -> None:
            await answered_once(source)
            await _drain(source.fetch(Query("Observation", patients=frozenset(PEOPLE))))

        with pytest.raises(HttpStatusError, match="HTTP 403"):
            await using(read, batch_size=2)
        return pending_tasks()

    assert asyncio.run(main()) == set()
    assert sorted(server.cancelled) == ["p1,p2", "p5,p6"]


@respx.mock
def test_closing_the_fetch_early_cancels_the_batches_still_running() -> None:
    """The caller stops after the first resource: the batches still waiting are cancelled."""
    server = FakeFhir(OBS + PATIENTS)
    server.mount()
    server.gates["p3,p4"] = server.gates["p5,p6"] = asyncio.Event()  # never set

    async def first(source: RestSource) -> str:
        await answered_once(source)
        stream: Any = source.fetch(Query("Observation", patients=frozenset(PEOPLE)))
        found = await anext(stream)
        await stream.aclose()
        return str(found["id"])

    async def main() -> tuple[str, set[asyncio.Task[Any]]]:
        found, _ = await using(first, batch_size=2)
        return found, pending_tasks()

    assert asyncio.run(main()) == ("o-p1", set())
    assert sorted(server.cancelled) == ["p3,p4", "p5,p6"]


# ---- code:not ----------------------------------------------------------------------------------


def condition_read(**fields: Any) -> Query:
    """Every Condition of two patients, the cohort's codes already fetched."""
    return Query("Condition", patients=frozenset({"p1", "p2"}), **fields)


def sent(route: respx.Route) -> list[list[tuple[str, str]]]:
    return [list(call.request.url.params.multi_items()) for call in route.calls]


def mock_conditions() -> respx.Route:
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
    return respx.get(f"{BASE}/Condition").mock(return_value=httpx.Response(200, json=empty))


@respx.mock
def test_codes_fetched_already_go_as_one_code_not_each_where_the_profile_allows() -> None:
    """`code:not` once per token (repeated parameters are ANDed), next to the patients."""
    route = mock_conditions()
    fetch(condition_read(exclude_codes=frozenset({HCC, HCC_CM})), profile=HONOURS_NOT)
    assert sent(route) == [
        [
            ("patient", "p1,p2"),
            ("code:not", f"{ICD10}-cm|C22.0"),  # sorted
            ("code:not", f"{ICD10}|C22.0"),
            ("_count", "1000"),
        ]
    ]


@respx.mock
def test_no_code_not_without_the_profile_flag() -> None:
    """The generic profile: a server need not support `:not`, so nothing extra is sent (the
    caller drops what comes twice)."""
    route = mock_conditions()
    fetch(condition_read(exclude_codes=frozenset({HCC})), profile=NOT_SUPPORTED)
    assert sent(route) == [[("patient", "p1,p2"), ("_count", "1000")]]


@respx.mock
def test_code_not_goes_on_per_patient_searches_too() -> None:
    route = mock_conditions()
    per_patient = profile("per-patient-not", Condition=TypeRules(not_modifier=True))
    fetch(condition_read(exclude_codes=frozenset({HCC})), profile=per_patient)
    assert sorted(sent(route)) == [
        [("patient", p), ("code:not", f"{ICD10}|C22.0"), ("_count", "1000")] for p in ("p1", "p2")
    ]


@pytest.mark.parametrize(
    "rules",
    [
        TypeRules(not_modifier=True, post_filters=frozenset({"code"})),
        TypeRules(not_modifier=True, unsupported=frozenset({"code"})),
    ],
)
def test_no_code_not_where_code_is_no_filter(rules: TypeRules) -> None:
    """A server that filters `code` after paging, or has none, gets no `code:not` either."""
    query = condition_read(exclude_codes=frozenset({HCC}))
    params = search_params(
        query, batch_size=100, page_size=10, profile=profile("x", "batch", Condition=rules)
    )
    assert params == [[("patient", "p1,p2"), ("_count", "10")]]


def test_no_code_not_on_a_search_by_code() -> None:
    """A query with codes of its own is not narrowed further."""
    query = Query("Condition", codes=frozenset({HCC_CM}), exclude_codes=frozenset({HCC}))
    params = search_params(query, batch_size=100, page_size=10, profile=HONOURS_NOT)
    assert params == [[("code", f"{ICD10}-cm|C22.0"), ("_count", "10")]]


def test_the_hapi_profile_sends_code_not_on_conditions_and_the_generic_one_does_not() -> None:
    profiles = load_profiles(MAPPINGS)
    assert profiles["hapi"].rules("Condition").not_modifier
    assert not profiles["generic"].rules("Condition").not_modifier
    assert "searches.Condition.not_modifier" in profiles["hapi"].sources
