"""Golden test: the second trial on real Synthea data against verdicts written from its definition.

`t2dm_expected.json` was written by reading the raw Synthea NDJSON (birthDate, deceasedDateTime,
Conditions, HbA1c and eGFR Observations) and applying `mappings/trials/t2dm-glycaemic-control.yaml`
and the trial-spec data rules by hand, never by running the adapter. Each listed patient's status
and every criterion result must match; patients without type 2 diabetes must not be reported.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path

import pytest

from adapter.report.results import results_json
from adapter.sources.files import FolderSource
from adapter.sweep import SweepResult, run_sweep
from adapter.trials import load_trial

EXPECTED = json.loads((Path(__file__).with_name("t2dm_expected.json")).read_text())
PATIENTS = sorted(EXPECTED["patients"])

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def sweep(shared_data: Path) -> SweepResult:
    trial = load_trial(EXPECTED["trial"])
    source = FolderSource(shared_data / EXPECTED["source"])
    return asyncio.run(run_sweep(trial, source, date.fromisoformat(EXPECTED["as_of"])))


@pytest.fixture(scope="module")
def results(sweep: SweepResult) -> dict[str, dict]:
    doc = results_json(sweep)
    return {p["patient"]: p for p in doc["patients"]}


def test_the_sweep_evaluates_every_patient_without_errors(sweep):
    """No patient of the cohort fails to be evaluated."""
    assert sweep.errors == []


def test_every_listed_patient_is_in_the_cohort(results):
    """Each patient with an active type 2 diabetes Condition is reported."""
    assert set(PATIENTS) <= set(results)


@pytest.mark.parametrize("patient", EXPECTED["outside_cohort"])
def test_patients_without_type_2_diabetes_are_not_reported(patient, results):
    """Prediabetes or heart failure alone does not put a patient in the cohort."""
    assert patient not in results


@pytest.mark.parametrize("patient", PATIENTS)
def test_every_criterion_matches_the_trial_definition(patient, results):
    """Each criterion's result is the one reasoned from the raw data."""
    got = results[patient]["criteria"]
    expected = EXPECTED["patients"][patient]["criteria"]
    assert set(got) == set(expected)
    mismatches = {
        c: (want, got[c]["result"], got[c]["reason"])
        for c, want in expected.items()
        if got[c]["result"] != want
    }
    assert not mismatches, EXPECTED["patients"][patient]["why"]


@pytest.mark.parametrize("patient", PATIENTS)
def test_status_matches_the_trial_definition(patient, results):
    """Status: any not_met is ineligible, all met is candidate, else potential-candidate."""
    assert results[patient]["status"] == EXPECTED["patients"][patient]["status"], EXPECTED[
        "patients"
    ][patient]["why"]
