"""Golden test: the demo population against the verdicts written from the spec.

`fixtures/demo/expected.json` was written by reasoning from trial-spec.md (see
fixtures/make_demo.py), never by running the adapter. Every cohort patient is reported with exactly
the spec's criteria: each automated criterion with the result reasoned from the spec, each manual
one (tests/spec_ids.py `MANUAL`) as `manual`, nothing missing and nothing extra; every status
matches; and the patients outside the cohort are not reported.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path

import pytest
from spec_ids import AUTOMATED, MANUAL

from adapter.report.results import results_json
from adapter.sources.files import FolderSource
from adapter.sweep import SweepResult, run_sweep
from adapter.trials import load_trial

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
EXPECTED = json.loads((DEMO / "expected.json").read_text())
PATIENTS = sorted(EXPECTED["patients"])


@pytest.fixture(scope="module")
def sweep() -> SweepResult:
    trial = load_trial(EXPECTED["trial"])
    return asyncio.run(run_sweep(trial, FolderSource(DEMO), date.fromisoformat(EXPECTED["as_of"])))


@pytest.fixture(scope="module")
def results(sweep: SweepResult) -> dict[str, dict]:
    doc = results_json(sweep)
    return {p["patient"]: p for p in doc["patients"]}


def _why(patient: str) -> str:
    return EXPECTED["patients"][patient]["why"]


def test_the_sweep_evaluates_every_patient_without_errors(sweep):
    """No patient of the demo population fails to be evaluated."""
    assert sweep.errors == []


def test_the_cohort_is_exactly_the_patients_with_an_active_hcc_or_possible_hcc_condition(results):
    """Cohort: everyone else is not listed."""
    assert sorted(results) == PATIENTS
    assert not set(EXPECTED["outside_cohort"]) & set(results)


@pytest.mark.parametrize("patient", PATIENTS)
def test_expected_states_every_automated_criterion(patient):
    """expected.json states each automated criterion of the spec (and only those)."""
    assert set(EXPECTED["patients"][patient]["criteria"]) == set(AUTOMATED)


@pytest.mark.parametrize("patient", PATIENTS)
def test_every_criterion_matches_the_spec(patient, results):
    """The reported criteria are exactly the spec's: each automated one with the result reasoned
    from the spec, each manual one as `manual`; none missing, none extra."""
    got = results[patient]["criteria"]
    expected = {**EXPECTED["patients"][patient]["criteria"], **dict.fromkeys(MANUAL, "manual")}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing, f"not reported: {missing}: {_why(patient)}"
    assert not extra, f"not in the spec: {extra}: {_why(patient)}"
    mismatches = {
        c: (want, got[c]["result"], got[c]["reason"])
        for c, want in expected.items()
        if got[c]["result"] != want
    }
    assert not mismatches, _why(patient)


@pytest.mark.parametrize("patient", PATIENTS)
def test_status_matches_the_spec(patient, results):
    """Status: any not_met is ineligible, all met is candidate, else potential-candidate."""
    assert results[patient]["status"] == EXPECTED["patients"][patient]["status"], _why(patient)


def test_manual_criteria_are_listed_as_manual_on_every_patient(results):
    """The spec's manual criteria are listed on every patient, never decided."""
    manual = set(MANUAL)
    for p in results.values():
        assert {c for c, r in p["criteria"].items() if r["result"] == "manual"} == manual
