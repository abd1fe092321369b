"""RestSource on a real server (issue 15): `code:not` leaves out the codes fetched already where
the profile says the server honours it (sekmet-fhir does, as HAPI does), and overlapping batches
give the same resources, in the same order, as batches read one at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import own_server
import pytest

from adapter.facts.model import Coding
from adapter.fhir.client import FhirClient
from adapter.fhir.limits import NO_RETRIES, Limits
from adapter.servers import GENERIC, load_profiles
from adapter.sources.base import Query
from adapter.sources.rest import RestSource

# The module's own server (tests/integration/own_server.py) in place of the session's.
fhir_base_url = own_server.fhir_base_url
fhir = own_server.fhir

ICD10, SNOMED = "http://hl7.org/fhir/sid/icd-10", "http://snomed.info/sct"
HCC, OTHER = Coding(ICD10, "C22.0"), Coding(SNOMED, "38341003")
PEOPLE = [f"overlap-{n:02d}" for n in range(12)]
HAPI = load_profiles(Path(__file__).resolve().parents[2] / "mappings")["hapi"]


def condition(rid: str, pid: str, *codes: Coding) -> dict[str, Any]:
    coding = [{"system": c.system, "code": c.code} for c in codes]
    return {
        "resourceType": "Condition",
        "id": rid,
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": coding},
    }


@pytest.fixture(scope="module")
def loaded(fhir: httpx.Client) -> dict[str, set[str]]:
    """Per patient an HCC Condition, one coded HCC and other, and one other: ids by kind."""
    resources: list[dict[str, Any]] = []
    kinds: dict[str, set[str]] = {"hcc": set(), "both": set(), "other": set()}
    for pid in PEOPLE:
        resources.append({"resourceType": "Patient", "id": pid})
        for kind, codes in (("hcc", (HCC,)), ("both", (OTHER, HCC)), ("other", (OTHER,))):
            rid = f"{pid}-{kind}"
            resources.append(condition(rid, pid, *codes))
            kinds[kind].add(rid)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }
    fhir.post("", json=bundle).raise_for_status()
    return kinds


def read(base: str, query: Query, **options: Any) -> tuple[list[str], list[httpx.URL]]:
    """The ids the source yields for `query`, in order, and the URLs it asked."""
    asked: list[httpx.URL] = []

    async def go() -> list[str]:
        async def note(request: httpx.Request) -> None:
            asked.append(request.url)

        async with httpx.AsyncClient(event_hooks={"request": [note]}) as http:
            limits = Limits(max_concurrent=options.pop("max_concurrent", 4))
            client = FhirClient(http, base, limits=limits, retry=NO_RETRIES)
            source = RestSource(client, **options)
            return [r["id"] async for r in source.fetch(query)]

    return asyncio.run(go()), asked


def test_code_not_leaves_out_every_condition_holding_a_cohort_code(
    fhir_base_url: str, loaded: dict[str, set[str]]
) -> None:
    """Under the hapi profile the Condition read sends `code:not`, and the server leaves out
    the Conditions holding the code, whatever else they hold; under generic it sends none."""
    query = Query("Condition", patients=frozenset(PEOPLE), exclude_codes=frozenset({HCC}))
    narrowed, asked = read(fhir_base_url, query, profile=HAPI, batch_size=5)
    assert set(narrowed) == loaded["other"]
    assert all("code%3Anot" in str(url) or "code:not" in str(url) for url in asked)
    everything, asked = read(fhir_base_url, query, profile=GENERIC, batch_size=5)
    assert set(everything) == loaded["hcc"] | loaded["both"] | loaded["other"]
    assert not any("code" in url.params for url in asked)


def test_overlapping_batches_give_what_one_at_a_time_gives(
    fhir_base_url: str, loaded: dict[str, set[str]]
) -> None:
    """Batches of 2 patients, 4 at a time, paged by 2: the same ids in the same order as one
    batch at a time."""
    query = Query("Condition", patients=frozenset(PEOPLE))
    overlapped, _ = read(fhir_base_url, query, batch_size=2, page_size=2, max_concurrent=4)
    in_turn, _ = read(fhir_base_url, query, batch_size=2, page_size=2, max_concurrent=1)
    assert overlapped == in_turn
    assert set(overlapped) == loaded["hcc"] | loaded["both"] | loaded["other"]
