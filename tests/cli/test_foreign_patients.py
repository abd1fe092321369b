"""Another server's patient is not ours (issue 10, item 3), from files and over REST.

`subject: http://other-hospital.example/fhir/Patient/h01` was counted as local `h01`, and turned
h01 from candidate to ineligible. Only a relative reference, or an absolute one under the source's
own base, is a local patient's; the rest are left out, counted in `stats`, and one stderr line
gives their number (never an id).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
import respx
from fake_fhir import FakeFhir, read_ndjson

from adapter.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"
SOURCE = "https://ehr.test/fhir/"
OTHER = "http://other-hospital.example/fhir/"
TYPES = ("Patient", "Condition", "Observation", "Procedure")


def low_albumin(subject: str) -> dict[str, Any]:
    """demo-01's albumin, a day later and far too low: it would make demo-01 ineligible."""
    [albumin] = [r for r in read_ndjson(DEMO, "Observation") if r["id"] == "demo-01-alb"]
    other = copy.deepcopy(albumin)
    other["id"] = "elsewhere-alb"
    other["subject"] = {"reference": subject}
    other["effectiveDateTime"] = "2026-06-14T08:30:00-05:00"
    other["issued"] = "2026-06-14T18:00:00-05:00"
    other["valueQuantity"]["value"] = 1.2
    return other


def folder_with(tmp_path: Path, extra: dict[str, Any]) -> Path:
    src = tmp_path / "src"
    shutil.copytree(DEMO, src)
    with (src / "Observation.ndjson").open("ab") as fh:
        fh.write(orjson.dumps(extra) + b"\n")
    return src


def sweep(capsys: pytest.CaptureFixture[str], source: str | Path, out: Path) -> tuple[dict, str]:
    args = ["sweep", "--trial", TRIAL, "--source", str(source), "--as-of", "2026-06-15"]
    code = main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads((out / "results.json").read_text()), err


def status_of(doc: dict[str, Any], patient: str) -> str:
    return next(p["status"] for p in doc["patients"] if p["patient"] == patient)


def test_a_local_low_albumin_makes_demo_01_ineligible(tmp_path, capsys):
    """The control: the same Observation with a relative subject does decide demo-01."""
    doc, _ = sweep(capsys, folder_with(tmp_path, low_albumin("Patient/demo-01")), tmp_path / "o")
    assert status_of(doc, "Patient/demo-01") == "ineligible"
    assert doc["stats"]["foreign_subjects"] == {}


def test_another_hospitals_observation_leaves_the_local_candidate_a_candidate_from_files(
    tmp_path, capsys
):
    """The issue's case from a folder: counted under stats, one stderr line without ids."""
    foreign = low_albumin(f"{OTHER}Patient/demo-01")
    doc, err = sweep(capsys, folder_with(tmp_path, foreign), tmp_path / "out")
    assert status_of(doc, "Patient/demo-01") == "candidate"
    assert doc["stats"]["foreign_subjects"] == {"Observation": 1}
    [line] = [x for x in err.splitlines() if "another server's patient" in x]
    assert "1 resources" in line
    assert "demo-01" not in err
    assert "other-hospital" not in err


@pytest.mark.parametrize(
    ("subject", "status", "foreign"),
    [
        (f"{OTHER}Patient/demo-01", "candidate", {"Observation": 1}),
        # Same host, another base path: still another server.
        ("https://ehr.test/other/Patient/demo-01", "candidate", {"Observation": 1}),
        # Under the source's own base: ours, made relative.
        (f"{SOURCE}Patient/demo-01", "ineligible", {}),
    ],
    ids=["other-server", "other-base-path", "own-base"],
)
def test_over_rest_only_references_under_the_sources_base_are_local(
    tmp_path, capsys, subject, status, foreign
):
    """A lax server answers `patient=demo-01` with the foreign Observation too: the adapter
    tells them apart by the parsed base, not the id."""
    server = FakeFhir(SOURCE, [*read_ndjson(DEMO, *TYPES), low_albumin(subject)])
    with respx.mock(assert_all_called=False) as router:
        router.route(host="ehr.test").mock(side_effect=server.handle)
        doc, err = sweep(capsys, SOURCE, tmp_path / "out")
    assert status_of(doc, "Patient/demo-01") == status
    assert doc["stats"]["foreign_subjects"] == foreign
    assert "demo-01" not in err


def test_a_foreign_cohort_condition_does_not_bring_its_patient_into_the_cohort(tmp_path, capsys):
    """Another hospital's HCC diagnosis of an `h01` does not make local h01 a cohort member."""
    [condition] = [r for r in read_ndjson(DEMO, "Condition") if r["id"].startswith("demo-01")][:1]
    foreign = copy.deepcopy(condition) | {"id": "elsewhere-hcc"}
    foreign["subject"] = {"reference": f"{OTHER}Patient/h01"}
    src = tmp_path / "src"
    shutil.copytree(DEMO, src)
    with (src / "Condition.ndjson").open("ab") as fh:
        fh.write(orjson.dumps(foreign) + b"\n")
    with (src / "Patient.ndjson").open("ab") as fh:
        fh.write(orjson.dumps({"resourceType": "Patient", "id": "h01"}) + b"\n")
    doc, _ = sweep(capsys, src, tmp_path / "out")
    assert "Patient/h01" not in {p["patient"] for p in doc["patients"]}
    assert doc["stats"]["foreign_subjects"] == {"Condition": 1}
