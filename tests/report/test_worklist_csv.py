"""The coordinator's worklist on the demo population (issue 12): candidates.csv, its long form
candidates-detail.csv, and the summary's "most often unknown".

Until issue 12 nothing checked these outputs: listing ineligible patients, showing recorded
instead of normalised values, and counting every status under "most often unknown" all passed
every test. The expected content comes from fixtures/demo (Patient.ndjson, Observation.ndjson)
and from expected.json, which was written from the spec, never from the adapter's output.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import stat
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from spec_ids import AUTOMATED, MANUAL

from adapter.criteria.results import CriterionResult, PatientVerdict, Result, Status
from adapter.report.csvs import candidates_csv, candidates_detail_csv
from adapter.report.results import REPORT_FILES, results_json, unknown_summary, write_reports
from adapter.sources.files import FolderSource
from adapter.sweep import SweepResult, run_sweep
from adapter.trials import load_trial

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
EXPECTED = json.loads((DEMO / "expected.json").read_text())
DEMO_MRN = "urn:trial-adapter:demo-mrn"
HEADER = [
    "patient", "name", "mrn", "birth_date", "age", "sex", "status", "new", *AUTOMATED,
]  # fmt: skip
DETAIL_HEADER = [
    "patient", "name", "mrn", "status", "criterion", "result", "recorded_value", "recorded_unit",
    "value", "unit", "date", "threshold", "reason", "reference",
]  # fmt: skip


def expected_with(status: str) -> list[str]:
    return sorted(p for p, v in EXPECTED["patients"].items() if v["status"] == status)


CANDIDATES = expected_with("candidate")
POTENTIAL = expected_with("potential-candidate")
INELIGIBLE = expected_with("ineligible")


def sweep_demo(mrn_system: str | None) -> SweepResult:
    trial = load_trial(EXPECTED["trial"])
    as_of = date.fromisoformat(EXPECTED["as_of"])
    return asyncio.run(run_sweep(trial, FolderSource(DEMO), as_of, mrn_system=mrn_system))


@pytest.fixture(scope="module")
def sweep() -> SweepResult:
    return sweep_demo(DEMO_MRN)


@pytest.fixture(scope="module")
def doc(sweep: SweepResult) -> dict[str, Any]:
    return results_json(sweep)


def table(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def worklist(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    """candidates.csv by patient; criterion cells keyed by criterion id (`age` is twice a
    column name: the identity's, and the criterion's after `new`)."""
    header, *rows = table(candidates_csv(doc))
    out = {}
    for row in rows:
        identity = dict(zip(header[:8], row[:8], strict=True))
        criteria = dict(zip(header[8:], row[8:], strict=True))
        out[row[0]] = identity | {f"criterion:{c}": r for c, r in criteria.items()}
    return out


def detail(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, str]]:
    rows = csv.DictReader(io.StringIO(candidates_detail_csv(doc)))
    return {(r["patient"], r["criterion"]): r for r in rows}


# --- candidates.csv ----------------------------------------------------------------------------


def test_the_worklist_header_is_identity_status_new_then_the_automated_criteria_in_order(doc):
    """Exactly `patient,name,mrn,birth_date,age,sex,status,new` and the trial's automated ids."""
    assert table(candidates_csv(doc))[0] == HEADER


def test_the_worklist_has_one_row_per_candidate_then_per_potential_candidate(doc):
    """24 candidates then 21 potential candidates, each by reference: 45 rows."""
    rows = table(candidates_csv(doc))[1:]
    assert (len(CANDIDATES), len(POTENTIAL)) == (24, 21)
    assert [r[0] for r in rows] == CANDIDATES + POTENTIAL
    assert [r[6] for r in rows] == ["candidate"] * 24 + ["potential-candidate"] * 21


@pytest.mark.parametrize("write", [candidates_csv, candidates_detail_csv])
def test_no_ineligible_patient_is_listed(doc, write):
    """An ineligible patient is in no row of either CSV."""
    listed = {row[0] for row in table(write(doc))[1:]}
    assert listed
    assert not listed & set(INELIGIBLE)
    assert listed == set(CANDIDATES + POTENTIAL)


def test_each_criterion_cell_is_the_result_reasoned_from_the_spec(doc):
    """met / not_met / unknown as expected.json has it, for every listed patient."""
    for patient, row in worklist(doc).items():
        want = EXPECTED["patients"][patient]["criteria"]
        assert {c: row[f"criterion:{c}"] for c in AUTOMATED} == want, patient


def test_a_known_demo_patient_is_named_with_the_sites_mrn(doc):
    """Demo01 Synthetic, DEMO-0001 (urn:trial-adapter:demo-mrn), 1959-02-02, 67, male."""
    row = worklist(doc)["Patient/demo-01"]
    assert [row[c] for c in HEADER[:8]] == [
        "Patient/demo-01", "Demo01 Synthetic", "DEMO-0001", "1959-02-02", "67", "male",
        "candidate", "",
    ]  # fmt: skip


def test_without_mrn_system_the_demo_mrn_is_blank():
    """The demo identifiers have no type MR: without the site's system there is no MRN."""
    doc = results_json(sweep_demo(None))
    row = worklist(doc)["Patient/demo-01"]
    assert (row["name"], row["mrn"]) == ("Demo01 Synthetic", "")
    assert {r["mrn"] for r in worklist(doc).values()} == {""}
    assert detail(doc)[("Patient/demo-01", "albumin")]["mrn"] == ""


def test_an_age_a_partial_birth_date_leaves_open_is_blank(doc):
    """demo-27 was born in 2008-06, which straddles as-of's day: no age is shown."""
    row = worklist(doc)["Patient/demo-27"]
    assert (row["birth_date"], row["age"], row["criterion:age"]) == ("2008-06", "", "unknown")


def test_new_is_yes_or_no_from_results_json_and_blank_without_it(doc):
    """`new` comes from the ledger's key in results.json; absent, the cell is blank."""
    changed = json.loads(json.dumps(doc, default=list))
    by_patient = {p["patient"]: p for p in changed["patients"]}
    by_patient["Patient/demo-01"]["new"] = True
    by_patient["Patient/demo-02"]["new"] = False
    rows = worklist(changed)
    assert [rows[f"Patient/demo-0{i}"]["new"] for i in (1, 2, 3)] == ["yes", "no", ""]


def test_a_patient_people_have_set_a_status_on_is_left_out(doc):
    """withdrawn, on-study...: handled, so not on the worklist, nor in its detail."""
    changed = json.loads(json.dumps(doc, default=list))
    by_patient = {p["patient"]: p for p in changed["patients"]}
    by_patient["Patient/demo-01"]["people_status"] = "withdrawn"
    by_patient["Patient/demo-02"]["people_status"] = None
    assert "Patient/demo-01" not in worklist(changed)
    assert "Patient/demo-02" in worklist(changed)
    assert not [k for k in detail(changed) if k[0] == "Patient/demo-01"]


def test_results_json_gives_every_patient_an_identity_beside_the_reference(doc):
    """`identity` with name, mrn, birth_date, age, sex; the trial's automated ids at the top."""
    assert doc["automated_criteria"] == list(AUTOMATED)
    for entry in doc["patients"]:
        assert list(entry)[:2] == ["patient", "identity"]
        assert set(entry["identity"]) == {"name", "mrn", "birth_date", "age", "sex"}
    demo02 = next(p for p in doc["patients"] if p["patient"] == "Patient/demo-02")
    assert demo02["identity"] == {
        "name": "Demo02 Synthetic",
        "mrn": "DEMO-0002",
        "birth_date": "1978-02-09",
        "age": 48,
        "sex": "female",
    }


# --- candidates-detail.csv ---------------------------------------------------------------------


def test_the_detail_has_one_row_per_automated_criterion_of_each_listed_patient(doc):
    """26 automated criteria x 45 patients; the manual ones, the same for everyone, left out."""
    header, *rows = table(candidates_detail_csv(doc))
    assert header == DETAIL_HEADER
    assert len(rows) == 45 * len(AUTOMATED)
    assert {r[4] for r in rows} == set(AUTOMATED)
    assert not {r[4] for r in rows} & set(MANUAL)
    assert "manual" not in {r[5] for r in rows}


@pytest.mark.parametrize(
    ("patient", "criterion", "recorded", "shown"),
    [
        # US units converted: 3.9 g/dL is 39 g/L, not 39.000000001 g/L.
        ("demo-01", "albumin", ("3.9", "g/dL"), ("39", "g/L")),
        # 34.2 umol/L is 1.9995 mg/dL: three figures recorded, three shown, zeros kept.
        ("demo-03", "bilirubin_total", ("34.2", "µmol/L"), ("2.00", "mg/dL")),
        ("demo-02", "creatinine", ("74", "µmol/L"), ("0.84", "mg/dL")),
        ("demo-02", "hemoglobin", ("134", "g/L"), ("13.4", "g/dL")),
        # One figure recorded (5, perhaps `5.0` before JSON parsing): never fewer than two shown.
        ("demo-02", "bun", ("5", "mmol/L"), ("14", "mg/dL")),
        ("demo-90", "alt", ("0.45", "µkat/L"), ("27", "U/L")),
        # The comparator is kept, recorded and normalised: `>400`, never `400`.
        ("demo-08", "platelets", (">400", "10^9/L"), (">400", "10^9/L")),
        # Unit text as recorded, never the UCUM code; the canonical unit as people write it.
        ("demo-12", "platelets", ("156", "K/uL"), ("156", "10^9/L")),
        ("demo-83", "platelets", ("168", "\u00d710^9/L"), ("168", "10^9/L")),  # U+00D7 times
        ("demo-08", "ast", ("29", "IU/L"), ("29", "U/L")),
        # A value whose unit cannot be converted: recorded, and no normalised value at all.
        ("demo-17", "hemoglobin", ("8.1", "mmol"), ("", "")),
    ],
)
def test_the_detail_shows_the_recorded_value_and_the_normalised_one_rounded(
    doc, patient, criterion, recorded, shown
):
    """recorded_value/unit as the lab wrote them; value/unit what the threshold was applied to,
    rounded to the recorded precision."""
    row = detail(doc)[(f"Patient/{patient}", criterion)]
    assert (row["recorded_value"], row["recorded_unit"]) == recorded
    assert (row["value"], row["unit"]) == shown


def test_the_detail_names_the_patient_and_cites_the_evidence(doc):
    """Name, MRN, status, result, day, threshold, reason and reference on each row."""
    row = detail(doc)[("Patient/demo-01", "albumin")]
    assert row == {
        "patient": "Patient/demo-01",
        "name": "Demo01 Synthetic",
        "mrn": "DEMO-0001",
        "status": "candidate",
        "criterion": "albumin",
        "result": "met",
        "recorded_value": "3.9",
        "recorded_unit": "g/dL",
        "value": "39",
        "unit": "g/L",
        "date": "2026-06-10",
        "threshold": ">= 28 g/L",
        "reason": row["reason"],
        "reference": "Observation/demo-01-alb",
    }
    assert row["reason"]


# --- "most often unknown" ----------------------------------------------------------------------


def test_most_often_unknown_counts_the_potential_candidates_only(sweep):
    """The summary's counts are those of expected.json's potential candidates, most first."""
    want: dict[str, int] = {}
    for patient in POTENTIAL:
        for cid, result in EXPECTED["patients"][patient]["criteria"].items():
            if result == "unknown":
                want[cid] = want.get(cid, 0) + 1
    got = unknown_summary(sweep.verdicts)
    assert got == want
    assert list(got) == sorted(want, key=lambda c: (-want[c], c))
    assert list(got)[:2] == ["early_recurrence", "hemoglobin"]


def test_an_unknown_of_an_ineligible_or_candidate_patient_is_not_counted():
    """Only potential candidates wait on an unknown; an ineligible one is out whatever it is."""

    def verdict(status: Status, **results: Result) -> PatientVerdict:
        criteria = {c: CriterionResult(r, "") for c, r in results.items()}
        return PatientVerdict(f"Patient/{status.value}", status, criteria)

    verdicts = [
        verdict(Status.INELIGIBLE, age=Result.NOT_MET, hemoglobin=Result.UNKNOWN),
        verdict(Status.CANDIDATE, age=Result.MET, hemoglobin=Result.MET),
        verdict(Status.POTENTIAL_CANDIDATE, age=Result.UNKNOWN, hemoglobin=Result.MET),
        verdict(Status.POTENTIAL_CANDIDATE, age=Result.UNKNOWN, pathology=Result.MANUAL),
    ]
    assert unknown_summary(verdicts) == {"age": 2}


def test_no_log_line_of_a_sweep_and_its_reports_names_a_patient(tmp_path, caplog):
    """Names and MRNs go to results.json and the CSVs only, never to a log."""
    caplog.set_level(logging.DEBUG)
    write_reports(tmp_path, results_json(sweep_demo(DEMO_MRN)))
    assert caplog.records
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Synthetic" not in text
    assert "DEMO-0" not in text


# --- the files ---------------------------------------------------------------------------------


def test_write_reports_writes_results_and_both_csvs_for_the_owner_only(doc, tmp_path):
    """results.json, candidates.csv and candidates-detail.csv, mode 0600, drawn from `doc`."""
    write_reports(tmp_path, doc)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(REPORT_FILES)
    for name in REPORT_FILES:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert (tmp_path / "candidates.csv").read_text() == candidates_csv(doc)
    assert (tmp_path / "candidates-detail.csv").read_text() == candidates_detail_csv(doc)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(
        json.dumps(doc, default=list)
    )


def test_the_csvs_read_the_same_from_results_json_on_disk(doc, tmp_path):
    """A document read back from disk (as report.html reads it) gives the same files."""
    write_reports(tmp_path, doc)
    again = json.loads((tmp_path / "results.json").read_text())
    assert candidates_csv(again) == candidates_csv(doc)
    assert candidates_detail_csv(again) == candidates_detail_csv(doc)
