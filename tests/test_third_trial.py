"""A third trial, its analyte and a site-local lab code added as data only, with no Python change.

A copy of the bundled mappings gets: a system alias `my-lab` (systems.yaml), a local lab code
FERR -> ferritin (local-codes.yaml), and `trials/ferritin-demo.yaml`, which defines its own cohort
code set (iron deficiency anaemia, ICD-10 D50), its own analyte (ferritin, LOINC 2276-4, ng/mL)
and its own exclusion code set. A tiny FHIR folder is then swept through the API and the CLI.
The expected verdicts below are reasoned from the trial file, never taken from the adapter.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from adapter.cli import main
from adapter.sources.files import FolderSource
from adapter.sweep import SweepResult, run_sweep
from adapter.trials import default_mappings_dir, load_trial

TRIAL = "ferritin-demo"
AS_OF = date(2026, 6, 15)  # the 90-day window starts on 2026-03-17

TRIAL_YAML = """\
# A third trial, defined only here: adults with iron deficiency anaemia and a low ferritin.
id: ferritin-demo
title: Iron repletion in iron deficiency anaemia (test trial)
study: {system: "urn:trial-adapter:example-trials", value: ferritin-demo}

cohort:
  active_condition_in: [iron_deficiency_anaemia]

codesets:
  iron_deficiency_anaemia:
    description: Iron deficiency anaemia
    include:
      icd10: [D50]
  chronic_kidney_disease:
    description: Chronic kidney disease
    include:
      icd10: [N18]

analytes:
  ferritin:
    name: Ferritin
    unit: ng/mL
    codes:
      loinc: ["2276-4"]

criteria:
  - id: alive
    kind: alive
  - id: age
    kind: age
    min_years: 18
    max_years: 90
  - id: iron_deficiency_anaemia
    kind: diagnosis
    confirmed: iron_deficiency_anaemia
  - id: ferritin_low
    kind: lab_threshold
    analyte: ferritin
    op: "<"
    value: 30
    unit: ng/mL
    window_days: 90
  - id: no_chronic_kidney_disease
    kind: condition_absent
    codeset: chronic_kidney_disease
    active_only: true

manual:
  - id: informed_consent
    description: Signed informed consent
"""

SYSTEMS_LINE = '  my-lab: {urls: ["urn:oid:1.2.3.4.5"], match: exact}\n'
LOCAL_CODE_LINE = "  - {system: my-lab, code: FERR, analyte: ferritin}\n"

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
MY_LAB = "urn:oid:1.2.3.4.5"

CRITERIA = ("alive", "age", "iron_deficiency_anaemia", "ferritin_low", "no_chronic_kidney_disease")

# patient id -> (status, results in CRITERIA order); reasoned from the trial file above.
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    # 56, D50.9 active, LOINC ferritin 12 ug/L (= 12 ng/mL < 30) on 2026-05-20
    "fe-loinc-ugl": ("candidate", ("met", "met", "met", "met", "met")),
    # 40, WHO D50.0 active, local FERR 18 ng/mL (unit text only) on 2026-06-01
    "fe-local-code": ("candidate", ("met", "met", "met", "met", "met")),
    # 66, latest ferritin 45 ng/mL on 2026-06-10 decides (an older 10 ng/mL does not)
    "fe-high": ("ineligible", ("met", "met", "met", "not_met", "met")),
    # 26, only ferritin is on 2025-12-01, outside 90 days; a resolved N18.3 does not count
    "fe-none": ("potential-candidate", ("met", "met", "met", "unknown", "met")),
    # 96, ferritin 20 ug/L met, but too old and an active N18.4
    "fe-old-ckd": ("ineligible", ("met", "not_met", "met", "met", "not_met")),
}
# D51.0 (B12 deficiency anaemia) active and D50.9 resolved: not in the cohort
OUTSIDE = "fe-outside"


def patient(pid: str, birth: str, gender: str = "female") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": gender, "birthDate": birth}


def condition(cid: str, pid: str, system: str, code: str, status: str = "active") -> dict[str, Any]:
    clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"system": clinical, "code": status}]},
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": "2024-01-10",
    }


def observation(
    oid: str, pid: str, system: str, code: str, when: str, quantity: dict[str, Any]
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": quantity,
    }


def ucum(value: float, code: str, text: str | None = None) -> dict[str, Any]:
    return {"value": value, "unit": text or code, "system": UCUM, "code": code}


def write_ndjson(path: Path, resources: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))


def build_mappings(root: Path) -> Path:
    """The bundled mappings, copied, plus a site system, a local code and the third trial."""
    mappings = root / "mappings"
    shutil.copytree(default_mappings_dir(), mappings)
    systems = mappings / "systems.yaml"
    text = systems.read_text()
    # the site's system goes in the `systems:` block, before `equivalents:`
    systems.write_text(text.replace("\nequivalents:", "\n" + SYSTEMS_LINE + "equivalents:", 1))
    with (mappings / "local-codes.yaml").open("a") as f:
        f.write(LOCAL_CODE_LINE)
    (mappings / "trials" / f"{TRIAL}.yaml").write_text(TRIAL_YAML)
    return mappings


def build_data(root: Path) -> Path:
    data = root / "fhir"
    data.mkdir()
    write_ndjson(
        data / "Patient.ndjson",
        [
            patient("fe-loinc-ugl", "1970-02-01"),
            patient("fe-local-code", "1985-07-10", "male"),
            patient("fe-high", "1960-01-01"),
            patient("fe-none", "2000-03-03"),
            patient("fe-old-ckd", "1930-01-15", "male"),
            patient(OUTSIDE, "1975-05-05"),
        ],
    )
    write_ndjson(
        data / "Condition.ndjson",
        [
            condition("c1", "fe-loinc-ugl", ICD10CM, "D50.9"),
            condition("c2", "fe-local-code", ICD10, "D50.0"),
            condition("c3", "fe-high", ICD10CM, "D50.8"),
            condition("c4", "fe-none", ICD10CM, "D50.9"),
            condition("c5", "fe-none", ICD10CM, "N18.3", status="resolved"),
            condition("c6", "fe-old-ckd", ICD10CM, "D50.9"),
            condition("c7", "fe-old-ckd", ICD10CM, "N18.4"),
            condition("c8", OUTSIDE, ICD10CM, "D51.0"),
            condition("c9", OUTSIDE, ICD10CM, "D50.9", status="resolved"),
        ],
    )
    write_ndjson(
        data / "Observation.ndjson",
        [
            observation(
                "o1",
                "fe-loinc-ugl",
                LOINC,
                "2276-4",
                "2026-05-20T08:30:00+02:00",
                ucum(12, "ug/L", "µg/L"),
            ),
            observation(
                "o2",
                "fe-local-code",
                MY_LAB,
                "FERR",
                "2026-06-01T09:00:00-05:00",
                {"value": 18, "unit": "ng/mL"},
            ),
            observation(
                "o3a", "fe-high", LOINC, "2276-4", "2026-04-01T10:00:00Z", ucum(10, "ng/mL")
            ),
            observation(
                "o3b", "fe-high", LOINC, "2276-4", "2026-06-10T10:00:00Z", ucum(45, "ng/mL")
            ),
            observation("o4", "fe-none", LOINC, "2276-4", "2025-12-01T10:00:00Z", ucum(8, "ng/mL")),
            observation(
                "o5", "fe-old-ckd", LOINC, "2276-4", "2026-06-14T10:00:00Z", ucum(20, "ug/L")
            ),
            observation("o6", OUTSIDE, LOINC, "2276-4", "2026-06-14T10:00:00Z", ucum(10, "ng/mL")),
        ],
    )
    return data


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("third-trial")
    return build_mappings(root), build_data(root)


@pytest.fixture(scope="module")
def sweep(setup) -> SweepResult:
    mappings, data = setup
    trial = load_trial(TRIAL, mappings_dir=mappings)
    return asyncio.run(run_sweep(trial, FolderSource(data), AS_OF))


@pytest.fixture(scope="module")
def verdicts(sweep) -> dict[str, Any]:
    return {v.patient: v for v in sweep.verdicts}


def test_the_third_trial_loads_with_its_own_analyte_code_sets_and_local_code(setup):
    """The trial file's analyte gets its LOINC code and the site's local code."""
    mappings, _ = setup
    trial = load_trial(TRIAL, mappings_dir=mappings)
    assert trial.id == TRIAL
    assert [c.id for c in trial.criteria] == list(CRITERIA)
    codes = {(c.system, c.code) for c in trial.analytes["ferritin"].codes}
    assert {(LOINC, "2276-4"), (MY_LAB, "FERR")} <= codes
    assert trial.needed_analytes() == {"ferritin"}


@pytest.mark.parametrize("other", ["hcc-ablation-lenvatinib-pd1", "t2dm-glycaemic-control"])
def test_the_other_trials_still_load_from_the_same_mappings(setup, other):
    """Adding a third trial and its local lab code does not break the trials already there."""
    mappings, _ = setup
    assert load_trial(other, mappings_dir=mappings).id == other


def test_the_sweep_has_no_errors_and_reports_only_the_cohort(sweep, verdicts):
    """Only patients with an active D50 Condition are evaluated."""
    assert sweep.errors == []
    assert sorted(verdicts) == sorted(f"Patient/{pid}" for pid in EXPECTED)
    assert f"Patient/{OUTSIDE}" not in verdicts


@pytest.mark.parametrize("pid", sorted(EXPECTED))
def test_each_criterion_and_status_matches_the_trial_definition(pid, verdicts):
    """Each patient's results and status are the ones reasoned from the trial file."""
    status, results = EXPECTED[pid]
    verdict = verdicts[f"Patient/{pid}"]
    got = {cid: r.result.value for cid, r in verdict.criteria.items()}
    assert got == {**dict(zip(CRITERIA, results, strict=True)), "informed_consent": "manual"}
    assert verdict.status.value == status


@pytest.mark.parametrize(
    ("pid", "value"),
    [("fe-loinc-ugl", 12.0), ("fe-local-code", 18.0), ("fe-high", 45.0), ("fe-old-ckd", 20.0)],
)
def test_ferritin_is_normalised_to_ng_per_ml_from_ug_per_l_and_the_local_code(pid, value, verdicts):
    """ug/L is the same as ng/mL; the local code FERR is read as ferritin."""
    evidence = verdicts[f"Patient/{pid}"].criteria["ferritin_low"].evidence
    assert evidence
    assert evidence[0].normalised_unit == "ng/mL"
    assert evidence[0].normalised_value == pytest.approx(value)


def test_the_cli_sweeps_the_third_trial_from_the_given_mappings(setup, tmp_path):
    """`trial-adapter sweep --mappings` runs the new trial, exits 0 and reports the verdicts."""
    mappings, data = setup
    out = tmp_path / "out"
    code = main(
        [
            "sweep",
            "--trial",
            TRIAL,
            "--mappings",
            str(mappings),
            "--source",
            str(data),
            "--as-of",
            AS_OF.isoformat(),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["trial"] == TRIAL
    assert doc["errors"] == []
    got = {p["patient"]: p["status"] for p in doc["patients"]}
    assert got == {f"Patient/{pid}": status for pid, (status, _) in EXPECTED.items()}
