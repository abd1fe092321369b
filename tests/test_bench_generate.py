"""bench/generate.py: benchmark populations are deterministic, complete and correctly rewired.

A benchmark compares runs, so the same seed must give the same bytes; and a copy that shared an
id with another, or pointed at a missing patient, would measure a different sweep. Tiny
populations (20 patients) from the 100-patient Synthea set keep this fast.
"""

from __future__ import annotations

import gzip
import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.data

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_generate", BENCH / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gen = _generator()


def _build(out: Path, data: Path, **params: object) -> Path:
    settings: dict[str, object] = {"patients": 20, "seed": 7, "hcc_prevalence": 0.25} | params
    gen.generate(gen.Params(**settings), out, data / "synthea-r4-100")
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _resources(folder: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(folder.glob("*.ndjson")):
        found += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return found


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """20 patients, 5 of them HCC; Observations in files of 500 lines."""
    return _build(tmp_path_factory.mktemp("population"), shared_data, lines_per_file=500)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_ones(
    population: Path, tmp_path: Path, shared_data: Path
) -> None:
    again = _files(_build(tmp_path / "again", shared_data, lines_per_file=500))
    other = _files(_build(tmp_path / "other", shared_data, lines_per_file=500, seed=8))
    assert _files(population) == again
    assert _files(population) != other


def test_gzip_holds_the_same_lines_with_a_header_that_never_changes(
    population: Path, tmp_path: Path, shared_data: Path
) -> None:
    zipped = _build(tmp_path / "gz", shared_data, lines_per_file=500, gzip=True)
    names = sorted(p.name for p in population.glob("*.ndjson"))
    assert sorted(p.name for p in zipped.glob("*.ndjson.gz")) == [f"{n}.gz" for n in names]
    for name in names:
        raw = (zipped / f"{name}.gz").read_bytes()
        assert raw[4:8] == b"\0\0\0\0"  # mtime 0, and no file name (FNAME flag clear)
        assert not raw[3] & 0x08
        assert gzip.decompress(raw) == (population / name).read_bytes()


def test_bulk_naming_and_one_record_per_patient(population: Path) -> None:
    names = sorted(p.name for p in population.glob("*.ndjson"))
    assert names[0] == "Condition.ndjson"
    assert names[-2:] == ["Patient.ndjson", "Procedure.ndjson"]
    observation_files = names[1:-2]
    assert len(observation_files) > 1
    assert observation_files == [
        f"Observation.{i:03d}.ndjson" for i in range(len(observation_files))
    ]

    resources = _resources(population)
    patients = {r["id"] for r in resources if r["resourceType"] == "Patient"}
    assert len(patients) == 20
    ids = Counter((r["resourceType"], r["id"]) for r in resources)
    assert max(ids.values()) == 1
    for r in resources:
        if r["resourceType"] != "Patient":
            assert r["subject"]["reference"].removeprefix("Patient/") in patients
    assert not any(b"urn:uuid:" in p.read_bytes() for p in population.glob("*.ndjson"))

    manifest = orjson.loads((population / gen.MANIFEST).read_bytes())
    assert manifest["lines"] == dict(Counter(r["resourceType"] for r in resources))


def test_hcc_patients_cover_every_status_of_the_hcc_trial(population: Path) -> None:
    manifest = orjson.loads((population / gen.MANIFEST).read_bytes())
    assert manifest["hcc_patients"] == 5
    assert set(manifest["hcc_by_expected_status"]) == {
        "candidate",
        "potential-candidate",
        "ineligible",
        "outside-cohort",
    }
    patients = {
        f"Patient/{r['id']}" for r in _resources(population) if r["resourceType"] == "Patient"
    }
    assert set(manifest["hcc_expected"]) <= patients


def test_demo_dates_move_whole_years_that_keep_leap_days() -> None:
    assert gen.YEAR_SHIFT % 4 == 0
    assert gen._shift_date("2026-06-15T08:30:00-05:00") == "2022-06-15T08:30:00-05:00"
    assert gen._shift_date("2024-02-29") == "2020-02-29"
    assert gen._shift_date("2008-06") == "2004-06"
    assert gen.HCC_AS_OF.isoformat() == "2022-06-15"
