"""The run ledger (issue 12): runs recorded, and each patient's status across sweeps.

"New since last sweep": flagged now, not flagged in the previous completed run, not handled by
people. "No longer qualifies": flagged then, ineligible now, with the criteria turned not_met.
"""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from adapter import __version__
from adapter.commands.runs import run_json
from adapter.criteria.results import Result, Status
from adapter.errors import ExitCode, OutputError, StateDirError
from adapter.ledger import (
    LEDGER_FILE,
    SCHEMA_VERSION,
    Changes,
    Ledger,
    NoLonger,
    PatientState,
    compare,
    current_states,
    source_label,
)
from adapter.sources.files import FolderSource
from adapter.sweep import run_sweep
from adapter.trials import load_trial

TRIAL = "hcc-ablation-lenvatinib-pd1"
OTHER = "another-trial"
HASH = "ab" * 32
C, P, X = Status.CANDIDATE, Status.POTENTIAL_CANDIDATE, Status.INELIGIBLE
MET, NOT, UNK = Result.MET, Result.NOT_MET, Result.UNKNOWN
ZONE = datetime.fromisoformat("2026-01-01T00:00:00+02:00").tzinfo
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"


def state(status: Status, people: str | None = None, **criteria: Result) -> PatientState:
    """A patient's outcome; criteria default to all met (a candidate's)."""
    results = {"bilirubin": MET, "platelets": MET, "albumin": MET} | criteria
    return PatientState(status, results, people)


def at(day: str, hour: int = 2) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=ZONE)


class Runs:
    """Begins and finishes runs of one ledger the way the CLI does, a day at a time."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.count = 0

    def begin(self, as_of: str, trial: str = TRIAL, *, dry_run: bool = False) -> str:
        self.count += 1
        run_id = f"run{self.count}"
        self.ledger.begin_run(
            run_id,
            trial_id=trial,
            source="fixtures/demo",
            trial_hash=HASH,
            as_of=date.fromisoformat(as_of),
            started=at(as_of),
            dry_run=dry_run,
        )
        return run_id

    def sweep(
        self, as_of: str, patients: Mapping[str, PatientState], trial: str = TRIAL
    ) -> tuple[str, Changes]:
        """One whole run: begin, changes, finish (exit 0)."""
        run_id = self.begin(as_of, trial)
        changes = self.ledger.changes(run_id, patients)
        self.finish(run_id, as_of, patients)
        return run_id, changes

    def finish(
        self,
        run_id: str,
        as_of: str,
        patients: Mapping[str, PatientState] | None,
        exit_code: int = ExitCode.OK,
    ) -> None:
        self.ledger.finish_run(
            run_id,
            finished=at(as_of) + timedelta(minutes=3, seconds=5),
            exit_code=exit_code,
            errors=0,
            patients=patients,
        )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "state") as opened:
        yield opened


@pytest.fixture
def runs(ledger: Ledger) -> Runs:
    return Runs(ledger)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the pure rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "now", "new"),
    [
        (None, state(C), True),
        (None, state(P, albumin=UNK), True),
        (None, state(X, albumin=NOT), False),
        (state(X, albumin=NOT), state(C), True),
        (state(C), state(C), False),
        (state(P, albumin=UNK), state(C), False),
        (state(C), state(P, albumin=UNK), False),
        (None, state(C, people="on-study"), False),
        (state(X, "withdrawn", albumin=NOT), state(C), False),
    ],
)
def test_new_means_flagged_now_not_flagged_before_and_not_handled_by_people(
    before: PatientState | None, now: PatientState, new: bool
) -> None:
    """Never seen or not flagged before, flagged now, no people's status now or before."""
    previous = {} if before is None else {"Patient/a": before}
    assert compare(previous, {"Patient/a": now}).new == ({"Patient/a"} if new else set())


def test_no_longer_qualifies_names_the_criteria_that_turned_not_met() -> None:
    """A criterion already not_met is not a change; one new to the trial counts as changed."""
    before = {"Patient/a": state(P, albumin=UNK, platelets=MET)}
    now = PatientState(X, {"bilirubin": NOT, "platelets": NOT, "albumin": UNK, "ecog": NOT})
    changes = compare(before, {"Patient/a": now})
    assert changes.no_longer == (
        NoLonger("Patient/a", P, ("bilirubin", "platelets", "ecog"), None),
    )
    assert changes.new == frozenset()


@pytest.mark.parametrize(
    ("before", "now"),
    [
        (state(X, albumin=NOT), state(X, albumin=NOT, bilirubin=NOT)),
        (state(C), state(P, albumin=UNK)),
        (None, state(X, albumin=NOT)),
    ],
)
def test_only_flagged_to_ineligible_is_no_longer_qualifying(
    before: PatientState | None, now: PatientState
) -> None:
    """Ineligible before, a candidate falling back to potential, or never seen: not listed."""
    previous = {} if before is None else {"Patient/a": before}
    assert compare(previous, {"Patient/a": now}).no_longer == ()


def test_a_patient_not_evaluated_now_is_neither_new_nor_no_longer_qualifying() -> None:
    """Someone absent from this run's verdicts (an error, out of the cohort) is not judged."""
    assert compare({"Patient/a": state(C)}, {}) == Changes()


def test_the_first_run_has_everyone_flagged_new() -> None:
    """No earlier run: every candidate and potential candidate is new."""
    now = {"Patient/a": state(C), "Patient/b": state(P, albumin=UNK), "Patient/c": state(X)}
    assert compare({}, now).new == {"Patient/a", "Patient/b"}


# --- three runs with the as-of moving forward -------------------------------------------------


def test_the_ledger_across_three_runs(runs: Runs, ledger: Ledger) -> None:
    """New, still flagged, no longer qualifying, and handled by people, run after run."""
    _, first = runs.sweep(
        "2026-04-01",
        {
            "Patient/a": state(C),
            "Patient/b": state(P, albumin=UNK),
            "Patient/c": state(X, platelets=NOT),
            "Patient/d": state(C),
        },
    )
    assert first.new == {"Patient/a", "Patient/b", "Patient/d"}
    assert first.no_longer == ()
    assert first.compared_with is None

    _, second = runs.sweep(
        "2026-05-01",
        {
            "Patient/a": state(C),  # still flagged: not new
            "Patient/b": state(X, albumin=NOT, bilirubin=NOT),  # no longer qualifies
            "Patient/c": state(C),  # newly flagged
            "Patient/d": state(C, people="on-study"),  # handled by people now
            "Patient/e": state(C, people="on-study"),  # handled by people: never new
        },
    )
    assert second.new == {"Patient/c"}
    assert second.no_longer == (NoLonger("Patient/b", P, ("bilirubin", "albumin"), None),)
    assert second.compared_with is not None
    assert second.compared_with.run_id == "run1"

    # The third run has no sink: people's status comes from the ledger.
    _, third = runs.sweep(
        "2026-06-01",
        {
            "Patient/a": state(X, platelets=NOT),  # flagged twice, no longer qualifies
            "Patient/b": state(C),  # flagged again after a run ineligible: new again
            "Patient/c": state(C),  # still flagged
            "Patient/d": state(X, bilirubin=NOT),  # handled by people, no longer qualifies
            "Patient/e": state(C),  # handled by people (the ledger remembers): not new
        },
    )
    assert third.new == {"Patient/b"}
    assert third.no_longer == (
        NoLonger("Patient/a", C, ("platelets",), None),
        NoLonger("Patient/d", C, ("bilirubin",), "on-study"),
    )
    assert third.compared_with is not None
    assert third.compared_with.run_id == "run2"


def test_each_patient_keeps_its_status_since_the_as_of_it_began(runs: Runs, ledger: Ledger) -> None:
    """Since when: the as-of and run of the status change, kept while the status holds."""
    runs.sweep("2026-04-01", {"Patient/a": state(C), "Patient/b": state(C)})
    runs.sweep("2026-05-01", {"Patient/a": state(C), "Patient/b": state(P, albumin=UNK)})
    runs.sweep("2026-06-01", {"Patient/a": state(C), "Patient/b": state(X, albumin=NOT)})
    records = ledger.previous(TRIAL)
    a, b = records["Patient/a"], records["Patient/b"]
    assert (a.state.status, a.since_as_of, a.since_run) == (C, date(2026, 4, 1), "run1")
    assert (b.state.status, b.since_as_of, b.since_run) == (X, date(2026, 6, 1), "run3")
    assert (b.last_as_of, b.last_run) == (date(2026, 6, 1), "run3")
    assert b.state.criteria == {"bilirubin": MET, "platelets": MET, "albumin": NOT}


def test_a_killed_run_is_listed_unfinished_and_never_compared_with(
    runs: Runs, ledger: Ledger
) -> None:
    """A run begun and never finished keeps no end time; the next run compares with the one
    before it, and its patients are as that run left them."""
    runs.sweep("2026-04-01", {"Patient/a": state(C)})
    killed = runs.begin("2026-05-01")
    _, after = runs.sweep("2026-06-01", {"Patient/a": state(C), "Patient/b": state(C)})
    assert after.new == {"Patient/b"}
    assert after.compared_with is not None
    assert after.compared_with.run_id == "run1"
    listed = {r.run_id: r for r in ledger.runs()}
    assert listed[killed].finished is None
    assert listed[killed].exit_code is None
    assert listed[killed].counts is None


def test_a_run_that_judged_no_one_is_never_compared_with(runs: Runs, ledger: Ledger) -> None:
    """A run whose source failed finishes with its exit status and no patients."""
    runs.sweep("2026-04-01", {"Patient/a": state(C)})
    failed = runs.begin("2026-05-01")
    runs.finish(failed, "2026-05-01", None, exit_code=ExitCode.FATAL)
    _, after = runs.sweep("2026-06-01", {"Patient/a": state(C)})
    assert after.new == frozenset()
    assert after.compared_with is not None
    assert after.compared_with.run_id == "run1"
    assert ledger.runs()[1].exit_code == ExitCode.FATAL


def test_a_dry_run_is_listed_but_leaves_the_patients_as_they_were(
    runs: Runs, ledger: Ledger
) -> None:
    """A rehearsal is compared like any run, but the next real run compares with the last real
    one: its new candidates are still new."""
    runs.sweep("2026-04-01", {"Patient/a": state(C)})
    dry = runs.begin("2026-05-01", dry_run=True)
    now = {"Patient/a": state(C), "Patient/b": state(C)}
    assert ledger.changes(dry, now).new == {"Patient/b"}
    runs.finish(dry, "2026-05-01", now)
    _, after = runs.sweep("2026-05-01", now)
    assert after.new == {"Patient/b"}
    assert ledger.runs()[1].dry_run
    assert ledger.runs()[1].counts == {"candidate": 2, "potential-candidate": 0, "ineligible": 0}


def test_a_run_dated_before_the_last_does_not_overwrite_a_later_state(
    runs: Runs, ledger: Ledger
) -> None:
    """Re-running a past as-of (to reproduce an old report) leaves the latest state in place."""
    runs.sweep("2026-06-01", {"Patient/a": state(C)})
    runs.sweep("2026-01-01", {"Patient/a": state(X, albumin=NOT)})
    assert ledger.previous(TRIAL)["Patient/a"].state.status is C


def test_trials_are_kept_apart(runs: Runs, ledger: Ledger) -> None:
    """A patient flagged for one trial is new for another."""
    runs.sweep("2026-04-01", {"Patient/a": state(C)})
    _, other = runs.sweep("2026-04-01", {"Patient/a": state(C)}, trial=OTHER)
    assert other.new == {"Patient/a"}
    assert other.compared_with is None


def test_changes_of_a_finished_run_are_refused(runs: Runs, ledger: Ledger) -> None:
    """After finish_run the ledger holds the run's own states: comparing would find nothing."""
    run_id, _ = runs.sweep("2026-04-01", {"Patient/a": state(C)})
    with pytest.raises(ValueError, match="finished"):
        ledger.changes(run_id, {"Patient/a": state(C)})


def test_a_run_is_finished_once(runs: Runs) -> None:
    run_id, _ = runs.sweep("2026-04-01", {})
    with pytest.raises(ValueError, match="already finished"):
        runs.finish(run_id, "2026-04-01", {})


# --- the runs table ---------------------------------------------------------------------------


def test_a_run_records_what_it_was_and_how_it_ended(runs: Runs, ledger: Ledger) -> None:
    """Start, end, trial, source, version, trial hash, counts, exit status, errors (a count)."""
    run_id = runs.begin("2026-04-01")
    patients = {"Patient/a": state(C), "Patient/b": state(X, albumin=NOT)}
    ledger.finish_run(
        run_id, finished=at("2026-04-01", 3), exit_code=3, errors=2, patients=patients
    )
    (record,) = ledger.runs()
    assert run_json(record) == {
        "run_id": "run1",
        "trial": TRIAL,
        "source": str(Path("fixtures/demo").absolute()),
        "adapter_version": __version__,
        "trial_sha256": HASH,
        "as_of": "2026-04-01",
        "dry_run": False,
        "started": "2026-04-01T02:00:00+02:00",
        "finished": "2026-04-01T03:00:00+02:00",
        "exit_code": 3,
        "errors": 2,
        "counts": {"candidate": 1, "potential-candidate": 0, "ineligible": 1},
    }


def test_the_runs_table_holds_no_patient_data(runs: Runs, ledger: Ledger) -> None:
    """No column of `runs` holds a patient reference."""
    runs.sweep("2026-04-01", {"Patient/secret-7": state(C)})
    with closing(sqlite3.connect(ledger.path)) as db:
        rows = db.execute("SELECT * FROM runs").fetchall()
    assert "secret-7" not in repr(rows)


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        ("https://user:pw@fhir.example/r4?_tag=x&patient=7", "https://fhir.example/r4"),
        ("http://fhir.example:8080/fhir/", "http://fhir.example:8080/fhir/"),
    ],
)
def test_a_source_url_is_recorded_without_query_or_credentials(given: str, recorded: str) -> None:
    assert source_label(given) == recorded


def test_runs_are_listed_newest_first_up_to_the_limit(runs: Runs, ledger: Ledger) -> None:
    for day in ("2026-04-01", "2026-05-01", "2026-06-01"):
        runs.sweep(day, {})
    runs.sweep("2026-06-01", {}, trial=OTHER)
    assert [r.run_id for r in ledger.runs(2)] == ["run4", "run3"]
    assert [r.run_id for r in ledger.runs(trial_id=TRIAL)] == ["run3", "run2", "run1"]


def test_a_naive_time_is_refused(ledger: Ledger) -> None:
    """Times carry their offset: a naive one would be read differently in another zone."""
    with pytest.raises(ValueError, match="aware"):
        ledger.begin_run(
            "r",
            trial_id=TRIAL,
            source="x",
            trial_hash=HASH,
            as_of=date(2026, 4, 1),
            started=datetime(2026, 4, 1, 2),
        )


def test_a_run_id_used_twice_is_an_output_error(runs: Runs, ledger: Ledger) -> None:
    """The second begin_run with one id fails whole, naming the ledger."""
    runs.sweep("2026-04-01", {})
    with pytest.raises(OutputError, match="run ledger"):
        ledger.begin_run(
            "run1",
            trial_id=TRIAL,
            source="x",
            trial_hash=HASH,
            as_of=date(2026, 4, 1),
            started=at("2026-04-01"),
        )


# --- the file ---------------------------------------------------------------------------------


def test_the_ledger_file_is_owner_only(tmp_path: Path, runs: Runs, ledger: Ledger) -> None:
    """0600 for the database and its WAL files, whatever the umask; the folder 0700."""
    runs.sweep("2026-04-01", {"Patient/a": state(C)})
    folder = tmp_path / "state"
    assert mode(folder) == 0o700
    files = [p for p in folder.iterdir() if p.name.startswith(LEDGER_FILE)]
    assert {p.name for p in files} >= {LEDGER_FILE, f"{LEDGER_FILE}-wal"}
    assert {p.name: mode(p) for p in files} == dict.fromkeys((p.name for p in files), 0o600)


def test_a_looser_ledger_file_is_tightened(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    Ledger.open(folder).close()
    (folder / LEDGER_FILE).chmod(0o644)
    Ledger.open(folder).close()
    assert mode(folder / LEDGER_FILE) == 0o600


def test_a_link_in_place_of_the_ledger_is_refused(tmp_path: Path) -> None:
    """A symbolic link could point the ledger's writes anywhere: StateDirError (exit 2)."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    (folder / LEDGER_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateDirError, match="run ledger"):
        Ledger.open(folder)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    """StateDirError naming the ledger, rather than a traceback."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    (folder / LEDGER_FILE).write_bytes(b"not a database, " * 100)
    with pytest.raises(StateDirError, match="run ledger"):
        Ledger.open(folder)


def test_the_schema_version_is_recorded_in_user_version(ledger: Ledger) -> None:
    with closing(sqlite3.connect(ledger.path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_an_empty_file_is_migrated_from_version_0(tmp_path: Path) -> None:
    """A file at version 0 (no tables) gets the whole schema."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    (folder / LEDGER_FILE).touch(mode=0o600)
    with Ledger.open(folder) as ledger:
        assert ledger.runs() == []


def test_a_ledger_from_a_newer_adapter_is_refused(tmp_path: Path) -> None:
    """A schema this adapter does not know: StateDirError naming both versions, nothing written."""
    folder = tmp_path / "state"
    Ledger.open(folder).close()
    with closing(sqlite3.connect(folder / LEDGER_FILE)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateDirError, match=f"version {SCHEMA_VERSION + 1}"):
        Ledger.open(folder)


class Failing(Mapping[str, PatientState]):
    """Patients whose second one cannot be read: a crash in the middle of finish_run."""

    def __getitem__(self, key: str) -> PatientState:
        raise KeyError(key)

    def __len__(self) -> int:
        return 2

    def __iter__(self) -> Iterator[str]:
        yield "Patient/a"

    def values(self):  # type: ignore[override]  # the tally reads them first
        return [state(X, albumin=NOT), state(X, albumin=NOT)]

    def items(self):  # type: ignore[override]
        yield "Patient/a", state(X, albumin=NOT)
        raise RuntimeError("killed mid-write")


def test_a_crash_mid_write_leaves_the_previous_state(runs: Runs, ledger: Ledger) -> None:
    """finish_run is one transaction: neither the end time nor any patient is half written."""
    runs.sweep("2026-04-01", {"Patient/a": state(C)})
    run_id = runs.begin("2026-05-01")
    with pytest.raises(RuntimeError, match="mid-write"):
        ledger.finish_run(
            run_id, finished=at("2026-05-01"), exit_code=0, errors=0, patients=Failing()
        )
    assert ledger.previous(TRIAL)["Patient/a"].state.status is C
    assert ledger.runs()[0].finished is None


def test_two_processes_may_write_at_once(tmp_path: Path) -> None:
    """Two open ledgers (two sweeps of two trials) interleave their writes; a writer waits for
    the other's transaction rather than failing."""
    folder = tmp_path / "state"
    with Ledger.open(folder) as one, Ledger.open(folder, timeout=5) as two:
        first, second = Runs(one), Runs(two)
        second.count = 10
        a = first.begin("2026-04-01")
        b = second.begin("2026-04-01", trial=OTHER)
        first.finish(a, "2026-04-01", {"Patient/a": state(C)})
        second.finish(b, "2026-04-01", {"Patient/a": state(P, albumin=UNK)})
        assert {r.run_id for r in one.runs()} == {"run1", "run11"}
        assert two.previous(TRIAL)["Patient/a"].state.status is C


WRITER = """
import sys
from datetime import date, datetime
from pathlib import Path
from adapter.criteria.results import Result, Status
from adapter.ledger import Ledger, PatientState

folder, trial = Path(sys.argv[1]), sys.argv[2]
now = datetime.now().astimezone()
with Ledger.open(folder) as ledger:
    for n in range(25):
        run_id = f"{trial}-{n}"
        ledger.begin_run(run_id, trial_id=trial, source="x", trial_hash="h",
                         as_of=date(2026, 4, 1), started=now)
        patients = {f"Patient/{n}": PatientState(Status.CANDIDATE, {"c": Result.MET})}
        ledger.changes(run_id, patients)
        ledger.finish_run(run_id, finished=now, exit_code=0, errors=0, patients=patients)
"""


def test_two_processes_sweeping_two_trials_share_the_ledger(tmp_path: Path) -> None:
    """Two processes create (one migrates, the other waits) and write one new ledger at once."""
    folder = tmp_path / "state"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(folder), trial], cwd=ROOT)
        for trial in ("trial-one", "trial-two")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    with Ledger.open(folder) as ledger:
        assert len(ledger.runs(100)) == 50
        assert len(ledger.previous("trial-one")) == len(ledger.previous("trial-two")) == 25


def test_a_writer_past_the_busy_timeout_fails_with_an_output_error(tmp_path: Path) -> None:
    """Another process holding the write lock too long: OutputError, not a hang."""
    folder = tmp_path / "state"
    with Ledger.open(folder, timeout=0.05) as ledger:
        blocker = sqlite3.connect(folder / LEDGER_FILE, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(OutputError, match="locked"):
                Runs(ledger).begin("2026-04-01")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()


# --- real verdicts ------------------------------------------------------------------------------


def test_the_demo_swept_twice_and_three_months_on(ledger: Ledger) -> None:
    """Real verdicts: the first sweep has every flagged patient new, the same sweep again none;
    three months on, demo-09 has passed the age limit and no longer qualifies, by `age`."""
    trial = load_trial(TRIAL)
    recorded = Runs(ledger)
    seen = []
    for as_of in ("2026-06-15", "2026-06-15", "2026-09-15"):
        result = asyncio.run(run_sweep(trial, FolderSource(DEMO), date.fromisoformat(as_of)))
        now = current_states(result.verdicts, result.people_status)
        _, changes = recorded.sweep(as_of, now)
        seen.append((now, changes))
    (first, one), (_, two), (later, three) = seen
    assert one.new == {p for p, s in first.items() if s.status in {C, P}}
    assert two.new == frozenset()
    assert two.no_longer == ()
    assert three.no_longer == (NoLonger("Patient/demo-09", C, ("age",)),)
    assert replace(three, compared_with=None) == compare(first, later)
