"""RestSource falls back to per-patient reads when a server refuses multi-patient searches (issue
13); servers that need a patient; `group()` and `patients_by_identifier()`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
import respx

from adapter.errors import ConfigError, ExitCode, HttpStatusError, TemporaryHttpError, UsageError
from adapter.facts.model import Coding
from adapter.servers import GENERIC
from adapter.sources.base import Query
from adapter.sources.per_patient import SWITCH_MESSAGE
from adapter.sources.rest import RestSource
from tests.sources.test_rest_per_patient import (
    BASE,
    EPICLIKE,
    HGB,
    OBSERVATIONS,
    PATIENTS,
    FakeFhir,
    by_patient,
    fetch,
    outcome,
    patient,
    profile,
    rules,
    using,
)

EVERYONE = frozenset({"p1", "p2", "p3", "p4"})


def refuse_many(status: int, code: str) -> Any:
    """A `refuse` for FakeFhir: `status` with an issue `code` for a search naming two or more."""

    def refuse(params: dict[str, str]) -> httpx.Response | None:
        if "," in params.get("patient", "") or "," in params.get("identifier", ""):
            return httpx.Response(status, json=outcome(code))
        return None

    return refuse


REFUSALS = [(400, "invalid"), (422, "not-supported"), (403, "not-supported")]


@pytest.mark.parametrize(("status", "code"), REFUSALS)
@respx.mock
def test_a_refused_multi_patient_search_switches_to_per_patient_for_the_rest_of_the_run(
    status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 400, or a `not-supported` outcome, to `patient=a,b`: that search is made again one
    patient at a time, and so is every later one; said once at warning."""
    server = FakeFhir(OBSERVATIONS + PATIENTS, refuse=refuse_many(status, code))
    server.mount()

    async def run(source: RestSource) -> list[list[str]]:
        labs = Query("Observation", codes=frozenset({HGB}), patients=EVERYONE)
        first = [r["id"] async for r in source.fetch(labs)]
        again = [r["id"] async for r in source.fetch(Query("Patient", patients=EVERYONE))]
        return [first, again]

    with caplog.at_level(logging.WARNING):
        (observations, patients), source = asyncio.run(using(run, batch_size=2))
    assert observations == ["o1", "o3", "o5", "o6"]
    assert patients == ["p1", "p2", "p4"]
    assert (source.reads.mode, source.reads.switched) == ("per-patient", True)
    assert [r.getMessage() for r in caplog.records] == [SWITCH_MESSAGE]
    searches = server.searches()
    assert searches[0]["patient"] == "p1,p2"  # the refused one
    assert all("," not in p.get("patient", "") for p in searches[1:])
    # Patients afterwards: read one by one, no `_id` list tried first.
    assert sorted(path for path, _ in server.log if path.startswith("Patient")) == [
        f"Patient/{p}" for p in sorted(EVERYONE)
    ]


@respx.mock
def test_batches_before_the_refusal_are_kept_and_nothing_comes_twice() -> None:
    """A refusal of the second code search of a batch: the batch is read again per patient,
    yet what the first code search gave is not yielded again."""
    refuse_b = refuse_many(400, "invalid")

    def refuse(params: dict[str, str]) -> httpx.Response | None:
        return refuse_b(params) if params.get("code", "").endswith("|b") else None

    data: list[dict[str, Any]] = [
        {
            "resourceType": "Observation",
            "id": f"{p}-{c}",
            "subject": {"reference": f"Patient/{p}"},
            "code": {"coding": [{"system": "s", "code": c}]},
        }
        for p in ("p1", "p2", "p3")
        for c in ("a", "b")
    ]
    server = FakeFhir(data, refuse=refuse)
    server.mount()
    single = profile("single-code", "batch", Observation=rules(single_valued=["code"]))
    query = Query(
        "Observation",
        codes=frozenset({Coding("s", "a"), Coding("s", "b")}),
        patients=frozenset({"p1", "p2", "p3"}),
    )
    found, source = fetch(query, profile=single, batch_size=3)
    assert sorted(found) == sorted(r["id"] for r in data)
    assert len(found) == len(set(found))
    assert found[:3] == ["p1-a", "p2-a", "p3-a"]  # before the refusal
    assert source.reads.switched


@respx.mock
def test_a_400_to_a_single_patient_search_is_an_error() -> None:
    """One patient answered 400: a real error, no switch."""
    server = FakeFhir(OBSERVATIONS, refuse=lambda _: httpx.Response(400, json=outcome("invalid")))
    server.mount()

    async def run(source: RestSource) -> None:
        with pytest.raises(HttpStatusError, match="HTTP 400"):
            [r async for r in source.fetch(Query("Observation", patients=frozenset({"p1"})))]

    _, source = asyncio.run(using(run))
    assert (source.reads.mode, source.reads.switched) == ("batch", False)


@respx.mock
def test_a_temporary_error_is_not_a_refusal() -> None:
    """A 503 to a multi-patient search says nothing of its form: it raises, no switch."""
    server = FakeFhir(OBSERVATIONS, refuse=refuse_many(503, "not-supported"))
    server.mount()

    async def run(source: RestSource) -> None:
        with pytest.raises(TemporaryHttpError):
            [r async for r in source.fetch(Query("Observation", patients=EVERYONE))]

    _, source = asyncio.run(using(run))
    assert not source.reads.switched


@respx.mock
def test_a_server_wide_search_where_a_patient_is_required_is_a_config_error() -> None:
    """The cohort's Condition search on an Epic-like server: one clear line, exit 2, no request."""
    codes = frozenset({Coding("http://snomed.info/sct", "1")})
    with pytest.raises(ConfigError) as caught:
        fetch(Query("Condition", codes=codes), profile=EPICLIKE)
    assert str(caught.value) == (
        "epic-like servers need a patient on every Condition search: "
        "use --cohort group:ID or --cohort file:PATH"
    )
    assert caught.value.exit_code == ExitCode.USAGE
    assert not respx.calls


@respx.mock
def test_a_server_wide_search_stays_one_search_in_per_patient_mode() -> None:
    """Where the profile requires no patient, `--read per-patient` keeps the cohort search."""
    server = FakeFhir(OBSERVATIONS)
    server.mount()
    found, _ = fetch(Query("Observation", codes=frozenset({HGB})), read="per-patient")
    assert server.searches() == [{"code": "http://loinc.org|718-7", "_count": "1000"}]
    assert found == ["o1", "o3", "o5", "o6"]


# ---- group() ----------------------------------------------------------------------------------


GROUP = {
    "resourceType": "Group",
    "id": "g1",
    "type": "person",
    "actual": True,
    "member": [
        {"entity": {"reference": f"{BASE}/Patient/p1"}},
        {"entity": {"reference": "Patient/p2"}, "inactive": True},
        {"entity": {"reference": "http://other.test/fhir/Patient/p9"}},
    ],
}


@respx.mock
def test_group_is_read_whole_with_references_made_relative() -> None:
    route = respx.get(f"{BASE}/Group/g1").respond(200, json=GROUP)
    found, _ = asyncio.run(using(lambda s: s.group("g1")))
    assert route.called
    assert found is not None
    assert [m["entity"]["reference"] for m in found["member"]] == [
        "Patient/p1",
        "Patient/p2",
        "http://other.test/fhir/Patient/p9",
    ]


@pytest.mark.parametrize("status", [404, 410])
@respx.mock
def test_a_group_the_server_has_not_is_none(status: int) -> None:
    respx.get(f"{BASE}/Group/g1").respond(status, json=outcome("not-found"))
    found, _ = asyncio.run(using(lambda s: s.group("g1")))
    assert found is None


@respx.mock
def test_a_group_id_that_is_not_a_fhir_id_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="not a valid FHIR id"):
        asyncio.run(using(lambda s: s.group("../Patient")))
    assert not respx.calls


# ---- patients_by_identifier() -----------------------------------------------------------------

MRN = "urn:oid:1.2.3"
PEOPLE = [
    patient("p1", (MRN, "100")),
    patient("p2", (MRN, "200"), ("", "x|1")),
    patient("p3", (MRN, "300")),
]
TOKENS = [(MRN, "300"), (MRN, "100"), ("", "x|1"), (MRN, "200"), (MRN, "999"), (MRN, "100")]


def by_identifier(**options: Any) -> tuple[list[str], RestSource]:
    async def run(source: RestSource) -> list[str]:
        return [r["id"] async for r in source.patients_by_identifier(TOKENS)]

    return asyncio.run(using(run, **options))


@respx.mock
def test_identifiers_are_searched_comma_joined_in_batches() -> None:
    """Batch mode: `identifier=system|value,...` in batches, escaped, `|value` without a system;
    each Patient once (p2 carries two of the identifiers)."""
    server = FakeFhir(PEOPLE)
    server.mount()
    found, _ = by_identifier(batch_size=3)
    assert server.searches() == [
        {"identifier": f"{MRN}|300,{MRN}|100,|x\\|1", "_count": "1000"},
        {"identifier": f"{MRN}|200,{MRN}|999", "_count": "1000"},
    ]
    assert found == ["p1", "p2", "p3"]  # the first batch in the server's order, then none new


@respx.mock
def test_an_identifier_without_a_system_is_searched_as_bar_value() -> None:
    """`("", "x|1")` is `identifier=|x\\|1`: an identifier with no system, `|` escaped."""
    server = FakeFhir(PEOPLE)
    server.mount()

    async def run(source: RestSource) -> list[str]:
        return [r["id"] async for r in source.patients_by_identifier([("", "x|1")])]

    found, _ = asyncio.run(using(run))
    assert server.searches() == [{"identifier": "|x\\|1", "_count": "1000"}]
    assert found == ["p2"]


@pytest.mark.parametrize(
    "options",
    [
        {"read": "per-patient"},
        {
            "profile": profile(
                "single-identifier", "batch", Patient=rules(single_valued=["identifier"])
            )
        },
    ],
)
@respx.mock
def test_identifiers_are_searched_one_each_in_per_patient_mode_or_where_single_valued(
    options: dict[str, Any],
) -> None:
    """One search per identifier, in the tokens' order whatever the answers' order."""
    server = FakeFhir(PEOPLE, delay=0.001)
    server.mount()
    found, _ = by_identifier(**options)
    assert sorted(p["identifier"] for p in server.searches()) == sorted(
        [f"{MRN}|300", f"{MRN}|100", "|x\\|1", f"{MRN}|200", f"{MRN}|999"]
    )
    assert found == ["p3", "p1", "p2"]


@respx.mock
def test_a_refused_identifier_list_falls_back_to_one_identifier_each() -> None:
    server = FakeFhir(PEOPLE, refuse=refuse_many(400, "invalid"))
    server.mount()
    found, source = by_identifier(profile=GENERIC)
    assert found == ["p3", "p1", "p2"]
    assert source.reads.switched
    assert by_patient(server.searches())[-1]["identifier"].count(",") == 0
