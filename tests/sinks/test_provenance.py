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
    capabilities,
    dry_run,
    only_subject,
    run,
    write,
)

from adapter.criteria.results import Status
from adapter.errors import PatientError, TransportError
from adapter.sinks.server import ServerSink, SubjectInput, WriteOutcome

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


# -- trial-spec v2: a run always checks the stored subject version's Provenance (issue 10) ---------

PUT_REFUSED = {
    "If-None-Exist on target": (capabilities("Provenance", put_creates=False), "POST", True),
    "plain POST, no target search": (capabilities(put_creates=False), "POST", False),
}


def targeting(server: FakeServer, path: str, version: int) -> list[dict[str, Any]]:
    """The Provenance of one subject version, wherever its id came from."""
    target = {"reference": f"{path}/_history/{version}"}
    return [body for body in provenances(server).values() if body["target"] == [target]]


def written_types(server: FakeServer) -> list[tuple[str, str]]:
    return [(r.method, r.url.path.removeprefix("/fhir/").split("/")[0]) for r in server.writes()]


@pytest.mark.parametrize(("options", "searchable"), PATHS.values(), ids=PATHS.keys())
def test_a_provenance_lost_after_the_subject_write_is_written_by_the_next_run(
    options: dict[str, Any], searchable: frozenset[str]
) -> None:
    """Killed between the two writes: the rerun finds the subject unchanged and writes the
    Provenance of its version, once; the run after that only reads."""
    server = FakeServer(searchable=searchable)
    write(server, "pat-1", Status.CANDIDATE, FIRST_DAY, entities=ENTITIES, **options)
    for path in provenances(server):
        del server.stored[path]  # as if SIGKILL came before the Provenance write
    server.requests.clear()
    result = write(server, "pat-1", Status.CANDIDATE, entities=ENTITIES, **options)
    assert result is WriteOutcome.UNCHANGED
    assert written_types(server) == [("PUT", "Provenance")]
    subject_path, version, _ = only_subject(server)
    prov = the_provenance(server, "pat-1", "1")
    assert prov["target"] == [{"reference": f"{subject_path}/_history/{version}"}]
    assert [e["what"] for e in prov["entity"]] == [{"reference": ref} for ref in ENTITIES]
    server.requests.clear()
    assert write(server, "pat-1", Status.CANDIDATE, **options) is WriteOutcome.UNCHANGED
    assert server.writes() == []
    assert len(provenances(server)) == 1


def test_a_provenance_refused_during_an_outage_is_written_by_the_next_run() -> None:
    """503 on every Provenance write: the patient's error says so; the next run repairs it."""
    server = FakeServer(fail_writes_of={"Provenance": 503})
    with pytest.raises(PatientError, match="written but its Provenance was not"):
        write(server, "pat-1", Status.CANDIDATE)
    assert provenances(server) == {}
    server.fail_writes_of.clear()
    assert write(server, "pat-1", Status.CANDIDATE) is WriteOutcome.UNCHANGED
    assert list(provenances(server)) == [f"Provenance/{spec_provenance_id('pat-1', '1')}"]


def test_a_retried_conditional_create_that_finds_our_own_subject_gets_its_provenance() -> None:
    """The create's answer is lost and its retry answers 200 with what the first attempt made:
    ours, so `created` with its Provenance, not a concurrent write left for the next run."""
    server = FakeServer(searchable=frozenset(WRITE_TYPES), lose_answers={"ResearchSubject": 1})
    result = write(server, "pat-1", Status.CANDIDATE, entities=ENTITIES, capabilities=SEARCH_ALL)
    assert result is WriteOutcome.CREATED
    assert written_types(server).count(("POST", "ResearchSubject")) == 2  # the retry
    subject_path, version, _ = only_subject(server)
    assert len(targeting(server, subject_path, version)) == 1


@pytest.mark.parametrize(("caps", "method", "conditional"), PUT_REFUSED.values(), ids=PUT_REFUSED)
def test_a_server_refusing_put_create_gets_each_provenance_once(
    caps: Any, method: str, conditional: bool
) -> None:
    """updateCreate false: no Provenance PUT; created as the spec says, found by reruns."""
    searchable = frozenset({"Provenance"} if conditional else ())
    server = FakeServer(searchable=searchable, refuses_put_create=frozenset({"Provenance"}))
    assert write(server, "pat-1", Status.CANDIDATE, capabilities=caps) is WriteOutcome.CREATED
    subject_path, _, _ = only_subject(server)
    (post,) = [r for r in server.writes() if "Provenance" in r.url.path]
    assert (post.method, post.url.path) == (method, "/fhir/Provenance")
    expected = {"If-None-Exist": f"target={subject_path}/_history/1"} if conditional else {}
    assert {k: v for k, v in post.headers.items() if k == "if-none-exist"} == {
        k.lower(): v for k, v in expected.items()
    }
    (prov,) = provenances(server).values()
    assert prov["target"] == [{"reference": f"{subject_path}/_history/1"}]
    server.requests.clear()
    assert write(server, "pat-1", Status.CANDIDATE, capabilities=caps) is WriteOutcome.UNCHANGED
    assert server.writes() == []
    for path in provenances(server):
        del server.stored[path]  # lost: the next run writes it again, once
    assert write(server, "pat-1", Status.CANDIDATE, capabilities=caps) is WriteOutcome.UNCHANGED
    assert len(targeting(server, subject_path, 1)) == 1


def test_a_plain_provenance_post_is_never_retried_and_a_rerun_finds_it() -> None:
    """POST path, the answer lost after the server stored it: one POST, a fatal transport error
    (no blind retry), and the rerun finds the Provenance by its search instead of doubling it."""
    caps = capabilities(put_creates=False)
    server = FakeServer(
        refuses_put_create=frozenset({"Provenance"}), lose_answers={"Provenance": 1}
    )
    with pytest.raises(TransportError):
        write(server, "pat-1", Status.CANDIDATE, capabilities=caps)
    assert written_types(server).count(("POST", "Provenance")) == 1
    server.requests.clear()
    assert write(server, "pat-1", Status.CANDIDATE, capabilities=caps) is WriteOutcome.UNCHANGED
    assert server.writes() == []
    assert len(provenances(server)) == 1


def test_a_server_ignoring_the_version_in_target_still_gets_the_update_provenance() -> None:
    """sekmet-fhir 0.1.1 matches `target=.../_history/2` with version 1's Provenance: the sink
    checks the exact target, so the update's Provenance is written all the same."""
    caps = capabilities("Provenance", put_creates=False)
    server = FakeServer(
        searchable=frozenset({"Provenance"}),
        refuses_put_create=frozenset({"Provenance"}),
        ignores_versions=True,
    )
    write(server, "pat-1", Status.POTENTIAL_CANDIDATE, FIRST_DAY, capabilities=caps)
    assert write(server, "pat-1", Status.CANDIDATE, capabilities=caps) is WriteOutcome.UPDATED
    subject_path, version, _ = only_subject(server)
    assert version == 2
    assert len(targeting(server, subject_path, 1)) == len(targeting(server, subject_path, 2)) == 1
    assert len(provenances(server)) == 2


def test_a_dry_run_plans_the_missing_provenance_of_an_unchanged_subject() -> None:
    """Dry run: the repair is planned with its id, and only reads are sent."""
    server = FakeServer()
    write(server, "pat-1", Status.CANDIDATE, FIRST_DAY)
    for path in provenances(server):
        del server.stored[path]
    server.requests.clear()
    result, planned = dry_run(server, "pat-1", Status.CANDIDATE)
    assert result is WriteOutcome.UNCHANGED
    assert {r.method for r in server.requests} == {"GET"}
    assert [(p.method, p.resource_type, p.resource_id) for p in planned] == [
        ("PUT", "Provenance", spec_provenance_id("pat-1", "1"))
    ]


def sweep(server: FakeServer, wanted: dict[str, Status], **options: Any) -> str:
    """prepare() and every patient in `wanted`, errors swallowed as the CLI lists them: the
    sink's summary line."""

    async def action(sink: ServerSink) -> str:
        await sink.prepare()
        for patient_id, status in wanted.items():
            try:
                if status is Status.INELIGIBLE:
                    await sink.ineligible_outcome(patient_id)
                else:
                    await sink.write_subject(SubjectInput(patient_id, status), FIRST_DAY)
            except PatientError:
                pass
        return sink.summary()

    return run(server, action, **options)


def test_the_summary_counts_subjects_created_even_when_their_provenance_failed() -> None:
    """Issue 10: the sink said `nothing to do` after creating every subject."""
    server = FakeServer(fail_writes_of={"Provenance": 422})
    line = sweep(server, {"a": Status.CANDIDATE, "b": Status.POTENTIAL_CANDIDATE})
    assert line == "sink: created 2; Provenance not written 2 (the next run writes them)"
    server.fail_writes_of.clear()
    line = sweep(server, {"a": Status.CANDIDATE, "b": Status.INELIGIBLE, "c": Status.CANDIDATE})
    assert line == (
        "sink: created 1, no_longer_qualifies 1, unchanged 1; Provenance written 1, repaired 1"
    )
    assert sweep(server, {}) == "sink: nothing to do"


def test_the_summary_counts_failed_patients() -> None:
    """A patient whose write failed before anything was written counts as failed."""
    server = FakeServer()
    line = sweep(
        server,
        {"a": Status.CANDIDATE, "b": Status.CANDIDATE},
        logical_references=True,
        source_base=SOURCE,
    )
    assert line == "sink: failed 2 (see errors)"
