"""SNOMED CT code sets against the SNOMED codes hospitals' data really carries (trial-spec v2).

The code sets written "X and its descendants" ship as published expansions. Every SNOMED code of
that meaning found in the shared Synthea data must be in its set: the data is swept patient by
patient (the `explain` path, so that patients outside the cohort are evaluated too), and each
patient holding one of these codes must get the criterion it excludes on.
"""

from __future__ import annotations

import asyncio
import gzip
from datetime import date
from pathlib import Path

import orjson
import pytest

from adapter.facts.model import Coding
from adapter.sources.files import FolderSource
from adapter.sweep import run_sweep
from adapter.trials import load_trial

pytestmark = pytest.mark.data

SNOMED = "http://snomed.info/sct"
TRIAL = load_trial("hcc-ablation-lenvatinib-pd1")

#: set -> the SNOMED codes of the shared data that must be in it (issue 8's table)
IN_DATA = {
    "other_malignancy": (
        "363346000",
        "363406005",
        "109838007",
        "93761005",
        "254837009",
        "254637007",
        "424132000",
        "254632001",
        "67811000119102",
    ),
    "extrahepatic_metastasis": ("94260004", "314994000"),
    "coronary_heart_disease": ("53741008", "22298006", "399211009"),
    "autoimmune": ("69896004",),
    "pregnancy": ("72892002", "79586000"),
    "organ_transplant": ("161665007",),
}
#: the criterion each set excludes on, and whether only active Conditions count
CRITERION = {
    "other_malignancy": ("no_other_malignancy", False),
    "extrahepatic_metastasis": ("no_extrahepatic_metastasis", True),
    "coronary_heart_disease": ("cardiac_function", True),
    "autoimmune": ("no_autoimmune_disease", True),
    "pregnancy": ("not_pregnant", True),
    "organ_transplant": ("no_organ_transplant", False),
}
ACTIVE = {"active", "recurrence", "relapse"}


@pytest.mark.parametrize(
    ("codeset", "code"), [(s, c) for s, codes in IN_DATA.items() for c in codes]
)
def test_every_snomed_code_found_in_the_data_is_in_its_set(codeset, code):
    """At the least, the set holds every SNOMED code of its meaning that occurs in data/."""
    assert TRIAL.codesets[codeset].matches(Coding(SNOMED, code))


def test_secondaries_are_not_other_malignancies():
    """other_malignancy excepts the secondaries (128462008 and its descendants)."""
    for code in IN_DATA["extrahepatic_metastasis"]:
        assert not TRIAL.codesets["other_malignancy"].matches(Coding(SNOMED, code))


def _read(folder: Path, kind: str) -> list[dict]:
    path = folder / f"{kind}.ndjson.gz"
    if path.exists():
        with gzip.open(path, "rb") as f:
            return [orjson.loads(line) for line in f if line.strip()]
    with (folder / f"{kind}.ndjson").open("rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("folder", ["synthea-r4-615"])
def test_sweeping_the_data_excludes_every_patient_holding_one_of_these_codes(shared_data, folder):
    """Sweep the files: each patient with such a Condition fails the criterion it excludes on
    (pregnancy only for women; a man's pregnancy code does not exclude, v2)."""
    source = shared_data / folder
    gender = {p["id"]: p.get("gender") for p in _read(source, "Patient")}
    expected: dict[str, set[str]] = {}
    for res in _read(source, "Condition"):
        status = (res.get("clinicalStatus") or {}).get("coding", [{}])[0].get("code")
        ref = (res.get("subject") or {}).get("reference", "")
        for coding in (res.get("code") or {}).get("coding", []):
            if coding.get("system") != SNOMED:
                continue
            for codeset, codes in IN_DATA.items():
                criterion, active_only = CRITERION[codeset]
                if coding.get("code") in codes and (status in ACTIVE or not active_only):
                    expected.setdefault(ref.split("/")[-1], set()).add(criterion)
    assert expected, "the data holds none of the codes: the test would prove nothing"
    as_of = date(2021, 4, 1)
    result = asyncio.run(run_sweep(TRIAL, FolderSource(source), as_of, only=frozenset(expected)))
    assert not result.errors
    by_patient = {v.patient.split("/")[-1]: v for v in result.verdicts}
    for pid, criteria in expected.items():
        verdict = by_patient[pid]
        for criterion in criteria:
            got = verdict.criteria[criterion].result.value
            want = "met" if criterion == "not_pregnant" and gender[pid] == "male" else "not_met"
            assert got == want, (pid, criterion, verdict.criteria[criterion].reason)
