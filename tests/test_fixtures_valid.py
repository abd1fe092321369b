"""The fixtures are valid FHIR R4, and the demo population is what its generator writes.

Validation uses the R4B models of fhir.resources (R4B is R4 plus fixes; no R4 model set ships in
fhir.resources 8). The models check structure, cardinality and primitive formats, not the codes
of required bindings.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from fhir.resources.R4B import get_fhir_model_class
from spec_ids import AUTOMATED

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
DEMO = FIXTURES / "demo"
GENERATOR = FIXTURES / "make_demo.py"

# The spec's automated criteria ("The criteria").
CRITERIA = set(AUTOMATED)
ICD10_SYSTEMS = {"http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-cm"}
HCC_OR_POSSIBLE_ICD10 = ("C220", "C228", "C229")  # prefixes, dots removed (spec code-set grammar)
HCC_SNOMED = {"109841003"}
ACTIVE = {"active", "recurrence", "relapse"}
NOT_COUNTING = {"refuted", "entered-in-error"}


def _is_resource_file(path: Path) -> bool:
    """NDJSON always; a .json file only when its top level is a FHIR resource."""
    if path.name.endswith((".ndjson", ".ndjson.gz")):
        return True
    if path.suffix != ".json" or path.name == "expected.json":
        return False
    try:
        top = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return True  # cannot tell; let the validation test report the broken JSON
    return isinstance(top, dict) and "resourceType" in top


RESOURCE_FILES = sorted(p for p in FIXTURES.rglob("*") if p.is_file() and _is_resource_file(p))


def _records(path: Path) -> list[tuple[int, bytes]]:
    """(line number, JSON text) for each resource: every NDJSON line, or the whole .json file."""
    if path.suffix == ".json":
        return [(1, path.read_bytes())]
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return list(enumerate(data.splitlines(), start=1))


def _problem(raw: bytes) -> str | None:
    """Why one JSON text is not a valid R4 resource, or None."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        return "no resourceType"
    try:
        model = get_fhir_model_class(obj["resourceType"])
    except ValueError as exc:
        return str(exc)
    try:
        model.model_validate(obj)
    except pydantic.ValidationError as exc:
        return f"{obj['resourceType']}/{obj.get('id')}: {exc}"
    return None


def _demo_resources(resource_type: str) -> list[Any]:
    lines = (DEMO / f"{resource_type}.ndjson").read_bytes().splitlines()
    return [orjson.loads(line) for line in lines]


def _expected() -> Any:
    return orjson.loads((DEMO / "expected.json").read_bytes())


@pytest.mark.parametrize(
    "path", RESOURCE_FILES, ids=[p.relative_to(FIXTURES).as_posix() for p in RESOURCE_FILES]
)
def test_every_fixture_resource_is_valid_fhir_r4(path: Path) -> None:
    """Every resource in the file validates against its fhir.resources R4B model."""
    problems = []
    for line, raw in _records(path):
        problem = _problem(raw)
        if problem is not None:
            problems.append(f"{path.relative_to(ROOT)}:{line}: {problem}")
    shown = "\n".join(problems[:20])
    more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
    assert not problems, f"{len(problems)} invalid resource(s):\n{shown}{more}"


def test_demo_files_are_found_by_the_validation() -> None:
    """The demo NDJSON files are among the validated fixture files."""
    demo = {p.name for p in RESOURCE_FILES if p.parent == DEMO}
    assert {"Patient.ndjson", "Condition.ndjson", "Observation.ndjson"} <= demo


def test_demo_fixtures_are_what_the_generator_writes(tmp_path: Path) -> None:
    """make_demo.py run into an empty folder reproduces fixtures/demo byte for byte."""
    subprocess.run([sys.executable, str(GENERATOR), str(tmp_path)], check=True, capture_output=True)
    generated = sorted(p.name for p in tmp_path.iterdir())
    committed = {p.name for p in DEMO.glob("*.ndjson")}
    assert committed <= set(generated), f"not generated: {committed - set(generated)}"
    stale = [n for n in generated if (tmp_path / n).read_bytes() != (DEMO / n).read_bytes()]
    assert not stale, f"stale {stale}: run .venv/bin/python fixtures/make_demo.py"


def test_expected_names_each_demo_patient_exactly_once() -> None:
    """expected.json lists only demo patients, each in the cohort or outside it, never both."""
    expected = _expected()
    present = {f"Patient/{p['id']}" for p in _demo_resources("Patient")}
    cohort = set(expected["patients"])
    outside = expected["outside_cohort"]
    assert isinstance(outside, list)
    assert len(outside) == len(set(outside))
    assert not cohort & set(outside)
    assert cohort | set(outside) == present


def test_expected_cohort_is_the_patients_with_an_active_hcc_condition() -> None:
    """The cohort in expected.json is exactly the patients with an active hcc/possible_hcc."""

    def counts(condition: Any) -> bool:
        clinical = condition.get("clinicalStatus", {"coding": [{"code": "active"}]})
        verification = condition.get("verificationStatus", {"coding": [{"code": "confirmed"}]})
        if clinical["coding"][0]["code"] not in ACTIVE:
            return False
        if verification["coding"][0]["code"] in NOT_COUNTING:
            return False
        for coding in condition["code"]["coding"]:
            code = coding["code"].replace(".", "")
            if coding["system"] in ICD10_SYSTEMS and code.startswith(HCC_OR_POSSIBLE_ICD10):
                return True
            if coding["system"] == "http://snomed.info/sct" and code in HCC_SNOMED:
                return True
        return False

    conditions = _demo_resources("Condition")
    in_cohort = {c["subject"]["reference"] for c in conditions if counts(c)}
    assert set(_expected()["patients"]) == in_cohort


def test_expected_status_follows_from_the_criteria() -> None:
    """Each cohort patient has every automated criterion, a why, and the status they imply."""
    expected = _expected()
    assert expected["as_of"] == "2026-06-15"
    assert expected["trial"] == "hcc-ablation-lenvatinib-pd1"
    for ref, verdict in expected["patients"].items():
        results = verdict["criteria"]
        assert set(results) == CRITERIA, ref
        assert set(results.values()) <= {"met", "not_met", "unknown"}, ref
        assert verdict["why"], ref
        if "not_met" in results.values():
            status = "ineligible"
        elif "unknown" in results.values():
            status = "potential-candidate"
        else:
            status = "candidate"
        assert verdict["status"] == status, ref
