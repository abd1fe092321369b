"""The survey on the shared data: Synthea and the HL7 examples, counts checked line by line."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adapter.cli import main

pytestmark = pytest.mark.data


def survey(
    capsys: pytest.CaptureFixture[str], source: Path, out: Path
) -> tuple[dict[str, Any], str]:
    code = main(["survey", "--source", str(source), "--out", str(out), "-q"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    return json.loads((out / "survey.json").read_text(encoding="utf-8")), stdout


@pytest.fixture(scope="module")
def synthea(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], str, Path]:
    """One survey of synthea-r4-100 for the module: (survey.json, stdout, out folder)."""
    out = tmp_path_factory.mktemp("synthea")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            ["survey", "--source", str(shared_data / "synthea-r4-100"), "--out", str(out), "-q"]
        )
    assert code == 0
    return json.loads((out / "survey.json").read_text(encoding="utf-8")), stdout.getvalue(), out


def loinc_counts(path: Path) -> Counter[str]:
    """LOINC codes of the Observations (and their components) in an NDJSON file, counted here."""
    counts: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        resource = json.loads(line)
        for part in [resource, *resource.get("component", [])]:
            codes = {
                c["code"]
                for c in part.get("code", {}).get("coding", [])
                if c.get("system") == "http://loinc.org"
            }
            counts.update(codes)
    return counts


def row(doc: dict[str, Any], system: str, code: str) -> dict[str, Any]:
    (found,) = [o for o in doc["observations"] if (o["system"], o["code"]) == (system, code)]
    return found


def patient_data(folder: Path) -> set[str]:
    """Ids, family names and birth dates of the folder's patients (what no output may hold)."""
    secrets: set[str] = set()
    for line in (folder / "Patient.ndjson").read_text(encoding="utf-8").splitlines():
        patient = json.loads(line)
        if len(patient["id"]) > 8:  # short ids (`f001`) are words that codes use too
            secrets.add(patient["id"])
        secrets.update(n["family"] for n in patient.get("name", []) if len(n.get("family", "")) > 3)
        if "birthDate" in patient:
            secrets.add(patient["birthDate"])
    return secrets


def no_values(node: Any) -> bool:
    """No `value` key anywhere: the outputs hold units and counts, never a measurement."""
    if isinstance(node, dict):
        return "value" not in node and all(no_values(v) for v in node.values())
    if isinstance(node, list):
        return all(no_values(v) for v in node)
    return True


@pytest.mark.parametrize(
    ("code", "analyte"),
    [
        ("718-7", "hemoglobin"),
        ("777-3", "platelets"),
        ("1975-2", "bilirubin_total"),
        ("1751-7", "albumin"),
        ("1742-6", "alt"),
        ("38483-4", "creatinine"),
        ("6299-2", "bun"),
        ("4548-4", "hba1c"),
    ],
)
def test_synthea_lab_codes_map_to_their_analytes_with_counts(shared_data, synthea, code, analyte):
    folder = shared_data / "synthea-r4-100"
    doc = synthea[0]
    found = row(doc, "http://loinc.org", code)
    assert found["analyte"] == analyte
    assert found["suggested"] == []
    assert found["count"] == loinc_counts(folder / "Observation.ndjson")[code]
    assert all(u["parses"] and u["converts"] for u in found["units"])


def test_synthea_outputs_hold_no_patient_data(shared_data, synthea):
    folder = shared_data / "synthea-r4-100"
    doc, stdout, out = synthea
    lines = (folder / "Observation.ndjson").read_text(encoding="utf-8").count("\n")
    assert doc["sample"]["Observation"]["read"] == lines
    texts = [stdout, *((out / n).read_text() for n in ("survey.json", "site-mappings.yaml"))]
    secrets = patient_data(folder)
    assert secrets
    assert not [s for s in secrets for t in texts if s in t]
    assert no_values(doc)
    # urine bilirubin has the analyte's name but not its specimen: no suggestion
    assert row(doc, "http://loinc.org", "20505-4")["suggested"] == []
    assert {cs["name"]: cs["counts"] for cs in doc["codesets"]}["t2dm"] == {"Condition": 5}


def test_hl7_examples_map_known_codes_and_suggest_a_local_creatinine(shared_data, tmp_path, capsys):
    folder = shared_data / "hl7-examples" / "ndjson"
    doc, stdout = survey(capsys, folder, tmp_path / "out")
    hgb = row(doc, "http://loinc.org", "718-7")
    assert (hgb["analyte"], hgb["count"]) == (
        "hemoglobin",
        loinc_counts(folder / "Observation.ndjson")["718-7"],
    )
    local = row(doc, "https://intranet.aumc.nl/labtestcodes", "20005")
    assert local["analyte"] is None
    assert [s["analyte"] for s in local["suggested"]] == ["creatinine"]
    unknown = {u["system"] for u in doc["unknown_systems"]}
    assert {"https://intranet.aumc.nl/labtestcodes", "urn:oid:2.16.840.1.113883.6.24"} <= unknown
    assert "http://loinc.org" not in unknown
    assert doc["sample"]["Procedure"] == {"read": 0, "limit": None, "complete": True}
    texts = [stdout, (tmp_path / "out" / "survey.json").read_text()]
    assert not [s for s in patient_data(folder) for t in texts if s in t]
    assert no_values(doc)
