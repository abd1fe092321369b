"""The Provenance the server sink writes for each ResearchSubject creation or change."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.provenance import Provenance
from test_server_sink import (
    CLOCK,
    FIRST_DAY,
    PATHS,
    SEARCH_ALL,
    SOURCE,
    STUDY,
    TRIAL_HASH,
    WRITE_TYPES,
    FakeServer,
    only_subject,
    write,
)

from adapter.criteria.results import Status
from adapter.sinks.server import WriteOutcome

ENTITIES = (
    "Observation/obs-alt/_history/3",
    "Condition/hcc/_history/1",
    "Procedure/rfa",  # a source without versions
    "Patient/pat-1/_history/2",
)
MRN = ("urn:oid:1.2.36.146.595.217.0.1", "MRN-4471")


def spec_provenance_id(patient_id: str, version: str) -> str:
    """trial-spec: ta- + sha256 of the subject identifier `system|value` and the version."""
    text = f"urn:trial-adapter:research-subject|{STUDY.trial_id}/{patient_id}|{version}"
    return "ta-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def provenances(server: FakeServer) -> dict[str, dict[str, Any]]:
    return server.of_type("Provenance")


def the_provenance(server: FakeServer, patient_id: str, version: str) -> dict[str, Any]:
    return server.body(f"Provenance/{spec_provenance_id(patient_id, version)}")


@pytest.mark.parametrize(("options", "searchable"), PATHS.values(), ids=PATHS.keys())
def test_a_created_subject_gets_a_complete_provenance(
    options: dict[str, Any], searchable: frozenset[str]
) -> None:
    """Versioned target, recorded, Device agent, versioned entities, policy with the hash."""
    server = FakeServer(searchable=searchable)
    write(server, "pat-1", Status.CANDIDATE, FIRST_DAY, entities=ENTITIES, **options)
    subject_path, version, _ = only_subject(server)
    (device_path,) = server.of_type("Device")
    prov = the_provenance(server, "pat-1", "1")
    Provenance.model_validate(prov)
    assert prov["target"] == [{"reference": f"{subject_path}/_history/{version}"}]
    assert prov["recorded"] == CLOCK.isoformat() == "2026-06-15T02:30:00+08:00"
    assert [a["who"] for a in prov["agent"]] == [{"reference": device_path}]
    assert [e["what"] for e in prov["entity"]] == [{"reference": ref} for ref in ENTITIES]
    assert {e["role"] for e in prov["entity"]} == {"source"}
    assert prov["policy"] == [f"urn:trial-adapter:trial:{STUDY.trial_id}#sha256:{TRIAL_HASH}"]
    assert {"system": "urn:trial-adapter", "code": "pre-screen"} in prov["meta"]["tag"]


def test_the_provenance_is_put_on_its_deterministic_id() -> None:
    """PUT Provenance/<hash of identifier and version>: a replay rewrites, never duplicates."""
    server = FakeServer()
    write(server, "pat-1", Status.CANDIDATE, entities=ENTITIES)
    (put,) = [r for r in server.writes() if "/Provenance/" in r.url.path]
    assert put.method == "PUT"
    assert put.url.path == f"/fhir/Provenance/{spec_provenance_id('pat-1', '1')}"
    assert orjson.loads(put.content)["id"] == spec_provenance_id("pat-1", "1")


def test_the_conditional_path_cites_the_ids_the_server_assigned() -> None:
    """With server-assigned ids the target and agent cite them, from Location and ETag."""
    server = FakeServer(searchable=frozenset(WRITE_TYPES), return_minimal=True)
    write(server, "pat-1", Status.CANDIDATE, entities=ENTITIES, capabilities=SEARCH_ALL)
    subject_path, _, _ = only_subject(server)
    (device_path,) = server.of_type("Device")
    assert not subject_path.split("/")[1].startswith("ta-")
    prov = the_provenance(server, "pat-1", "1")
    assert prov["target"] == [{"reference": f"{subject_path}/_history/1"}]
    assert prov["agent"][0]["who"] == {"reference": device_path}


@pytest.mark.parametrize(("options", "searchable"), PATHS.values(), ids=PATHS.keys())
def test_an_update_gets_its_own_provenance_and_a_rerun_none(
    options: dict[str, Any], searchable: frozenset[str]
) -> None:
    """potential -> candidate: a second Provenance for version 2; reruns add nothing."""
    server = FakeServer(searchable=searchable)
    write(server, "pat-1", Status.POTENTIAL_CANDIDATE, FIRST_DAY, **options)
    first = the_provenance(server, "pat-1", "1")
    write(server, "pat-1", Status.CANDIDATE, entities=ENTITIES[:1], **options)
    subject_path, version, _ = only_subject(server)
    assert version == 2
    second = the_provenance(server, "pat-1", "2")
    assert second["target"] == [{"reference": f"{subject_path}/_history/2"}]
    assert [e["what"] for e in second["entity"]] == [{"reference": ENTITIES[0]}]
    assert the_provenance(server, "pat-1", "1") == first
    server.requests.clear()
    assert write(server, "pat-1", Status.CANDIDATE, **options) is WriteOutcome.UNCHANGED
    assert server.writes() == []
    assert len(provenances(server)) == 2


def test_logical_references_point_at_the_source_server() -> None:
    """Sink apart from the source: entities by identifier (source base + reference), no display."""
    server = FakeServer()
    write(
        server,
        "pat-1",
        Status.CANDIDATE,
        entities=ENTITIES,
        identifier=MRN,
        logical_references=True,
        source_base=SOURCE,
    )
    prov = the_provenance(server, "pat-1", "1")
    Provenance.model_validate(prov)
    assert [e["what"] for e in prov["entity"]] == [
        {
            "type": "Observation",
            "identifier": {"system": SOURCE, "value": "Observation/obs-alt/_history/3"},
        },
        {
            "type": "Condition",
            "identifier": {"system": SOURCE, "value": "Condition/hcc/_history/1"},
        },
        {"type": "Procedure", "identifier": {"system": SOURCE, "value": "Procedure/rfa"}},
        {"type": "Patient", "identifier": {"system": MRN[0], "value": MRN[1]}},
    ]
    assert "display" not in orjson.dumps(prov).decode()
    assert "reference" not in orjson.dumps(prov["entity"]).decode()


def test_nothing_found_writes_no_provenance() -> None:
    """Outcomes that write nothing (kept, no longer qualifies) write no Provenance either."""
    server = FakeServer()
    write(server, "pat-1", Status.CANDIDATE, FIRST_DAY)
    assert write(server, "pat-1", Status.POTENTIAL_CANDIDATE) is WriteOutcome.NO_LONGER_QUALIFIES
    assert len(provenances(server)) == 1
