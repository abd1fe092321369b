"""Robustness on third-party data: every trial sweeps real folders without crashing or losing data.

Each sweep runs twice: as the nightly sweep does (cohort first), and over every Patient of the
folder (`only=`, the `explain` path), so that the Observations are read even when no patient of
the folder is in the trial's cohort. Every non-blank Observation line must be accounted for: read
and then used, skipped (code not needed) or unusable (with a reason), or left out by the source
(another patient's, or a line of another resource type).

The HL7 examples hold no Procedure, which the HCC trial reads: evaluating their patients for it
is incomplete input (issue 10, item 2) and must fail, naming the type. Nobody there is in its
cohort, so the nightly (cohort) sweep never asks for Procedures and completes.
"""

from __future__ import annotations

import asyncio
import gzip
from datetime import date
from pathlib import Path

import pytest

from adapter.errors import IncompleteInputError
from adapter.sources.base import Query, patient_id_of
from adapter.sources.files import FolderSource
from adapter.sweep import SweepResult, run_sweep
from adapter.trials import load_trial

pytestmark = pytest.mark.data

HCC = "hcc-ablation-lenvatinib-pd1"
T2DM = "t2dm-glycaemic-control"
TRIALS = (HCC, T2DM)
AS_OF = date(2021, 4, 1)
LATER = date(2026, 6, 15)

NDJSON_SWEEPS = [
    pytest.param(folder, trial, as_of, id=f"{folder}-{trial}-{as_of}")
    for folder, dates in (("hl7-examples/ndjson", (AS_OF, LATER)), ("synthea-r4-100", (AS_OF,)))
    for trial in TRIALS
    for as_of in dates
]
MODES = [pytest.param(False, id="cohort"), pytest.param(True, id="every-patient")]
LACK_PROCEDURES = frozenset({"hl7-examples", "hl7-examples/ndjson"})


def lacks_a_needed_type(folder: str, trial_id: str, all_patients: bool) -> bool:
    return all_patients and trial_id == HCC and folder in LACK_PROCEDURES


def _is_observation_ndjson(path: Path) -> bool:
    name = path.name
    return name.split(".", 1)[0] == "Observation" and name.endswith((".ndjson", ".ndjson.gz"))


def observation_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_observation_ndjson(p))


def count_lines(path: Path) -> int:
    """Non-blank lines of an NDJSON file, gzipped or not."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as stream:
        return sum(1 for line in stream if line.strip())


def every_patient(folder: Path) -> frozenset[str]:
    """The ids of every Patient resource the folder holds, read through the source itself."""

    async def collect() -> frozenset[str]:
        source = FolderSource(folder)
        ids = [patient_id_of(r) async for r in source.fetch(Query("Patient"))]
        return frozenset(i for i in ids if i)

    return asyncio.run(collect())


def sweep(folder: Path, trial_id: str, as_of: date, *, all_patients: bool):
    source = FolderSource(folder)
    only = every_patient(folder) if all_patients else None
    result = asyncio.run(run_sweep(load_trial(trial_id), source, as_of, only=only))
    return source, result


def assert_observations_accounted_for(folder: Path, source: FolderSource, result: SweepResult):
    stats = result.stats
    files = observation_files(folder)
    lines = sum(count_lines(p) for p in files)
    skipped = sum(
        n for key, n in source.skipped.items() if any(key.startswith(p.name) for p in files)
    )
    if not (result.verdicts or result.errors):
        # No patient to evaluate: the sweep stops after the cohort and reads no Observation.
        assert stats["Observation"] == 0
        assert source.other_patients["Observation"] == 0
        return
    left_out = source.other_patients["Observation"] + source.foreign["Observation"]
    assert lines == left_out + stats["Observation"] + skipped
    # Lines of wanted patients that hold none of the trial's codes are skipped unparsed (issue
    # 15) and counted as read and skipped for their code, as if they had been parsed.
    code_skipped = getattr(source, "code_skipped", {}).get("Observation", 0)
    assert source.yielded["Observation"] + code_skipped == stats["Observation"]
    assert stats["Observation"] == (
        stats["observations_used"]
        + stats["observations_skipped_code_not_needed"]
        + stats["observations_unusable"]
        + stats.get("observations_other_patients", 0)
    )
    assert sum(result.unusable.values()) == stats["observations_unusable"]


@pytest.mark.parametrize("all_patients", MODES)
@pytest.mark.parametrize(("folder", "trial_id", "as_of"), NDJSON_SWEEPS)
def test_an_ndjson_sweep_completes_without_errors_and_accounts_for_every_observation_line(
    shared_data, folder, trial_id, as_of, all_patients
):
    """No crash, no `errors`, and every Observation line is read, skipped or left out, counted."""
    path = shared_data / folder
    if lacks_a_needed_type(folder, trial_id, all_patients):
        with pytest.raises(IncompleteInputError, match="no Procedure resources"):
            sweep(path, trial_id, as_of, all_patients=all_patients)
        return
    source, result = sweep(path, trial_id, as_of, all_patients=all_patients)
    assert result.errors == []
    assert_observations_accounted_for(path, source, result)


@pytest.mark.parametrize("all_patients", MODES)
@pytest.mark.parametrize("as_of", [AS_OF, LATER], ids=str)
@pytest.mark.parametrize("trial_id", TRIALS)
def test_the_hl7_json_examples_sweep_completes_without_errors(
    shared_data, trial_id, as_of, all_patients
):
    """The HL7 example JSON files (single resources, Bundles, package.json) never fail a sweep,
    but for the Procedures they lack."""
    path = shared_data / "hl7-examples"
    if lacks_a_needed_type("hl7-examples", trial_id, all_patients):
        with pytest.raises(IncompleteInputError, match="no Procedure resources"):
            sweep(path, trial_id, as_of, all_patients=all_patients)
        return
    source, result = sweep(path, trial_id, as_of, all_patients=all_patients)
    assert result.errors == []
    assert source.yielded["Observation"] == result.stats["Observation"]
    assert sum(result.unusable.values()) == result.stats["observations_unusable"]
    if all_patients:
        assert result.verdicts, "every Patient of the folder is evaluated"


def test_the_t2dm_trial_finds_its_cohort_and_uses_observations_in_synthea(shared_data):
    """The second trial on synthea-r4-100: a non-empty cohort, evaluated with real lab values."""
    _, result = sweep(shared_data / "synthea-r4-100", T2DM, AS_OF, all_patients=False)
    assert result.verdicts
    assert result.stats["observations_used"] > 0
    assert any(
        r.result.value != "unknown"
        for v in result.verdicts
        for cid, r in v.criteria.items()
        if cid in {"hba1c", "egfr"}
    )
