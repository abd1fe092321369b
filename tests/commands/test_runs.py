"""`trial-adapter runs`: recent runs from the ledger, as a table or as a JSON list."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from adapter import __version__
from adapter.commands.runs import (
    RESULTS_SCHEMA_VERSION,
    changes_json,
    list_runs,
    run_metadata,
    took,
    with_changes,
)
from adapter.criteria.results import Result, Status
from adapter.ledger import LEDGER_FILE, Changes, Ledger, NoLonger, PatientState

TRIAL = "hcc-ablation-lenvatinib-pd1"
HASH = "cd" * 32


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def state(status: Status) -> PatientState:
    return PatientState(status, {"bilirubin": Result.MET})


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A ledger with a finished run, a partial one, a dry run, and one killed (newest last)."""
    folder = tmp_path / "state"
    with Ledger.open(folder) as ledger:

        def begin(run_id: str, as_of: str, started: str, **more: bool) -> None:
            ledger.begin_run(
                run_id,
                trial_id=TRIAL,
                source="https://fhir.example/r4?_count=50",
                trial_hash=HASH,
                as_of=date.fromisoformat(as_of),
                started=at(started),
                **more,
            )

        begin("aaaa0001", "2026-04-01", "2026-04-01T02:00:00+02:00")
        ledger.finish_run(
            "aaaa0001",
            finished=at("2026-04-01T02:03:05+02:00"),
            exit_code=0,
            errors=0,
            patients={
                "Patient/a": state(Status.CANDIDATE),
                "Patient/b": state(Status.POTENTIAL_CANDIDATE),
                "Patient/c": state(Status.INELIGIBLE),
            },
        )
        begin("aaaa0002", "2026-05-01", "2026-05-01T02:00:00+02:00")
        ledger.finish_run(
            "aaaa0002",
            finished=at("2026-05-01T03:10:00+02:00"),
            exit_code=3,
            errors=2,
            patients={"Patient/a": state(Status.CANDIDATE)},
        )
        begin("aaaa0003", "2026-05-02", "2026-05-02T09:30:00+02:00", dry_run=True)
        ledger.finish_run(
            "aaaa0003",
            finished=at("2026-05-02T09:30:12+02:00"),
            exit_code=0,
            errors=0,
            patients={},
        )
        begin("aaaa0004", "2026-06-01", "2026-06-01T02:00:00+02:00")
    return folder


def test_the_table_lists_runs_newest_first_with_their_outcome(folder: Path) -> None:
    """One line per run: a killed run is `unfinished`, with no duration and no counts."""
    assert list_runs(folder, as_json=False).splitlines() == [
        "run       trial                        as of       started                    took   "
        "result            candidate  potential  ineligible  errors  source",
        "aaaa0004  hcc-ablation-lenvatinib-pd1  2026-06-01  2026-06-01 02:00:00+02:00         "
        "unfinished                                                  https://fhir.example/r4",
        "aaaa0003  hcc-ablation-lenvatinib-pd1  2026-05-02  2026-05-02 09:30:00+02:00  12s    "
        "ok (0) (dry run)          0          0           0       0  https://fhir.example/r4",
        "aaaa0002  hcc-ablation-lenvatinib-pd1  2026-05-01  2026-05-01 02:00:00+02:00  1h10m  "
        "partial (3)               1          0           0       2  https://fhir.example/r4",
        "aaaa0001  hcc-ablation-lenvatinib-pd1  2026-04-01  2026-04-01 02:00:00+02:00  3m05s  "
        "ok (0)                    1          1           1       0  https://fhir.example/r4",
    ]


def test_the_json_is_a_list_of_runs_newest_first(folder: Path) -> None:
    """Every field of the ledger's `runs` row; a killed run has null end, exit code and counts."""
    listed = json.loads(list_runs(folder, as_json=True))
    assert [r["run_id"] for r in listed] == ["aaaa0004", "aaaa0003", "aaaa0002", "aaaa0001"]
    assert listed[0] == {
        "run_id": "aaaa0004",
        "trial": TRIAL,
        "source": "https://fhir.example/r4",
        "adapter_version": __version__,
        "trial_sha256": HASH,
        "as_of": "2026-06-01",
        "dry_run": False,
        "started": "2026-06-01T02:00:00+02:00",
        "finished": None,
        "exit_code": None,
        "errors": None,
        "counts": None,
    }
    assert listed[2]["counts"] == {"candidate": 1, "potential-candidate": 0, "ineligible": 0}
    assert listed[2]["exit_code"] == 3


def test_the_listing_holds_no_patient_data(folder: Path) -> None:
    for as_json in (True, False):
        assert "Patient/" not in list_runs(folder, as_json=as_json)


def test_the_limit_keeps_the_newest(folder: Path) -> None:
    listed = json.loads(list_runs(folder, as_json=True, limit=2))
    assert [r["run_id"] for r in listed] == ["aaaa0004", "aaaa0003"]


@pytest.mark.parametrize(("as_json", "expected"), [(True, "[]\n"), (False, "no runs recorded")])
def test_a_state_folder_without_a_ledger_lists_nothing_and_creates_nothing(
    tmp_path: Path, as_json: bool, expected: str
) -> None:
    """Listing is reading: no ledger file is made for it."""
    assert list_runs(tmp_path, as_json=as_json).startswith(expected)
    assert not (tmp_path / LEDGER_FILE).exists()


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0s"), (59, "59s"), (185, "3m05s"), (3600, "1h00m"), (-5, "0s")]
)
def test_durations_are_short(seconds: int, shown: str) -> None:
    assert took(timedelta(seconds=seconds)) == shown


# --- what results.json says of its run -------------------------------------------------------


def test_results_json_gains_the_run_metadata() -> None:
    """schema_version, adapter_version, source (no query), started, finished and run_id."""
    meta = run_metadata(
        "0badc0de",
        source="https://fhir.example/r4?patient=7",
        started=at("2026-04-01T02:00:00+02:00"),
        finished=None,
    )
    assert meta == {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "adapter_version": __version__,
        "run_id": "0badc0de",
        "source": "https://fhir.example/r4",
        "started": "2026-04-01T02:00:00+02:00",
        "finished": None,
    }


def test_results_json_marks_new_patients_and_lists_those_no_longer_qualifying(
    folder: Path,
) -> None:
    """`new` on every patient, `no_longer_qualifies` with what changed, the run compared with."""
    with Ledger.open(folder) as ledger:
        (last,) = ledger.runs(1, trial_id=TRIAL)
    doc = {"trial": TRIAL, "patients": [{"patient": "Patient/a"}, {"patient": "Patient/b"}]}
    no_longer = NoLonger("Patient/b", Status.CANDIDATE, ("platelets",), "on-study")
    out = with_changes(doc, Changes(frozenset({"Patient/a"}), (no_longer,), last))
    assert [p["new"] for p in out["patients"]] == [True, False]
    assert out["no_longer_qualifies"] == [
        {
            "patient": "Patient/b",
            "previous_status": "candidate",
            "changed": ["platelets"],
            "people_status": "on-study",
        }
    ]
    assert out["compared_with"] == {"run_id": "aaaa0004", "as_of": "2026-06-01"}
    assert "new" not in doc["patients"][0]  # the document given is left as it was


def test_a_first_run_is_compared_with_nothing() -> None:
    assert changes_json(Changes()) == {"compared_with": None, "no_longer_qualifies": []}
