"""A sweep's verdicts wait on disk as results.json gives them (issue 15): every verdict comes
back equal, and the reports read results.json's entries from there, made as they are read."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import pytest

from adapter.criteria.results import CriterionResult, Evidence, PatientVerdict, Result, Status
from adapter.report.entries import Entries
from adapter.report.results import results_json, sweep_json, verdict_json
from adapter.sources.files import FolderSource
from adapter.sweep import run_sweep
from adapter.trials import load_trial
from adapter.verdicts import Verdicts, verdict_doc, verdict_from_doc

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo"


@pytest.fixture(scope="module")
def demo():  # type: ignore[no-untyped-def]
    return asyncio.run(
        run_sweep(load_trial("hcc-ablation-lenvatinib-pd1"), FolderSource(DEMO), date(2026, 6, 15))
    )


def test_every_demo_verdict_comes_back_from_its_document_equal(demo) -> None:  # type: ignore[no-untyped-def]
    assert len(demo.verdicts) == 80
    for verdict in demo.verdicts:
        assert verdict_from_doc(verdict_doc(verdict)) == verdict
    assert any(
        e.normalised_value for v in demo.verdicts for c in v.criteria.values() for e in c.evidence
    )


def test_verdicts_are_a_sequence_to_their_readers() -> None:
    ev = Evidence(
        "Observation/1",
        1.1,
        "mg/dL",
        None,
        "<",
        97.24,
        "umol/L",
        "2026-01-02",
        "x",
        None,
        "note",
        ("code: a.yaml",),
    )
    one = PatientVerdict(
        "Patient/1", Status.CANDIDATE, {"c": CriterionResult(Result.MET, "r", (ev,))}
    )
    two = PatientVerdict(
        "Patient/2", Status.INELIGIBLE, {"c": CriterionResult(Result.NOT_MET, "s")}
    )
    verdicts = Verdicts([one])
    verdicts.append(two)
    assert len(verdicts) == 2
    assert verdicts
    assert list(verdicts) == [one, two]
    assert verdicts == [one, two]
    assert verdicts[0] == one
    assert verdicts[-1] == two
    assert verdicts.statuses() == [
        ("Patient/1", Status.CANDIDATE),
        ("Patient/2", Status.INELIGIBLE),
    ]
    assert list(verdicts.results()) == [
        ("Patient/1", Status.CANDIDATE, {"c": Result.MET}),
        ("Patient/2", Status.INELIGIBLE, {"c": Result.NOT_MET}),
    ]
    with pytest.raises(IndexError):
        verdicts[2]
    assert not Verdicts()


def test_results_json_entries_are_made_when_read_and_equal_the_verdicts(demo) -> None:  # type: ignore[no-untyped-def]
    doc = results_json(demo)
    entries = doc["patients"]
    assert isinstance(entries, Entries)
    assert len(entries) == len(demo.verdicts)
    expected = [
        verdict_json(v, demo.identities.get(v.patient)) | {"people_status": None}
        for v in demo.verdicts
    ]
    assert list(entries) == expected
    assert list(entries) == expected
    assert entries[3] == expected[3]
    assert entries[-1] == expected[-1]


def test_a_sink_outcome_is_on_the_entry_of_its_patient(demo) -> None:  # type: ignore[no-untyped-def]
    flagged = next(v.patient for v in demo.verdicts if v.status is Status.CANDIDATE)
    doc = sweep_json(demo, sink="s", writes={flagged: "created"}, sink_status="complete")
    (entry,) = [e for e in doc["patients"] if e["patient"] == flagged]
    assert entry["research_subject"] == "created"
    assert flagged in doc["sink_writes"]["written"]
