"""The run ledger: what each run did, and each patient's last status, in one SQLite file.

SQLite (stdlib `sqlite3`) because it is one file in the state folder with nothing to install, and
its transactions leave the ledger as the last whole write left it when a run dies mid-write.
`ledger.sqlite3` is created 0600 in the 0700 state folder (adapter.state); its schema version is
`PRAGMA user_version`, migrated forward step by step at open (`_MIGRATIONS`).

- `runs`: one row per run, written by `begin_run` and completed by `finish_run`: trial, source (a
  URL without query or credentials, or an absolute folder path), adapter version, trial
  definition hash, as-of, start, end, counts per status, exit status, and the number of errors.
  No patient data. A run killed before `finish_run` keeps no end time: `runs` lists it as
  unfinished, and it is never what a later run is compared with.
- `patients`: per (trial, patient), the last status, since when (as-of and run), the status people
  gave its ResearchSubject, and the criteria results of the last run that evaluated the patient.

"New since last sweep" and "no longer qualifies" set a run's verdicts against `patients` before
the run is finished (`Ledger.changes`; the rule is `compare`, pure), each patient against their
last known state: one a run could not evaluate (under `errors`) is not listed new again later.
Dry runs, runs without verdicts (a failed source) and runs dated before a patient's last as-of
leave `patients` alone: a rehearsal, or a past date's report, does not move the next comparison.

Two processes may use the ledger at once (two trials): WAL lets readers work beside a writer, every
write takes the write lock up front (`BEGIN IMMEDIATE`), and a busy one waits up to
`BUSY_TIMEOUT` seconds.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson

from adapter import __version__
from adapter.criteria.results import PatientVerdict, Result, Status
from adapter.errors import OutputError, StateDirError, redact_url
from adapter.state import open_sqlite, prepare_state_dir
from adapter.verdicts import Verdicts

LEDGER_FILE = "ledger.sqlite3"
#: seconds a write waits for another process's write to end before it fails
BUSY_TIMEOUT = 30.0
FLAGGED = frozenset({Status.CANDIDATE, Status.POTENTIAL_CANDIDATE})
#: the order of the `runs` count columns
_STATUSES = (Status.CANDIDATE, Status.POTENTIAL_CANDIDATE, Status.INELIGIBLE)

# One entry per schema version: the statements that take version i to i + 1. Append, never edit.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runs (
            run_id              TEXT PRIMARY KEY,
            trial_id            TEXT NOT NULL,
            source              TEXT NOT NULL,
            adapter_version     TEXT NOT NULL,
            trial_sha256        TEXT NOT NULL,
            as_of               TEXT NOT NULL,
            dry_run             INTEGER NOT NULL DEFAULT 0,
            started             TEXT NOT NULL,
            finished            TEXT,
            exit_code           INTEGER,
            errors              INTEGER,
            candidate           INTEGER,
            potential_candidate INTEGER,
            ineligible          INTEGER
        )""",
        "CREATE INDEX runs_by_trial ON runs (trial_id)",
        """CREATE TABLE patients (
            trial_id      TEXT NOT NULL,
            patient       TEXT NOT NULL,
            status        TEXT NOT NULL,
            since_as_of   TEXT NOT NULL,
            since_run     TEXT NOT NULL REFERENCES runs (run_id),
            last_as_of    TEXT NOT NULL,
            last_run      TEXT NOT NULL REFERENCES runs (run_id),
            people_status TEXT,
            criteria      TEXT NOT NULL,
            PRIMARY KEY (trial_id, patient)
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

# The status and since-when change only when the status does; people's status, once seen, stays
# until a run sees another (a run without a sink sees none). The WHERE keeps a run dated before the
# patient's last as-of from writing over a later state.
_UPSERT = """
INSERT INTO patients (trial_id, patient, status, since_as_of, since_run, last_as_of, last_run,
                      people_status, criteria)
VALUES (:trial, :patient, :status, :as_of, :run, :as_of, :run, :people, :criteria)
ON CONFLICT (trial_id, patient) DO UPDATE SET
    since_as_of = CASE WHEN status = excluded.status THEN since_as_of ELSE excluded.since_as_of END,
    since_run = CASE WHEN status = excluded.status THEN since_run ELSE excluded.since_run END,
    status = excluded.status,
    last_as_of = excluded.last_as_of,
    last_run = excluded.last_run,
    people_status = coalesce(excluded.people_status, people_status),
    criteria = excluded.criteria
WHERE excluded.last_as_of >= last_as_of
"""
_COMPLETED = "finished IS NOT NULL AND candidate IS NOT NULL AND dry_run = 0"


@dataclass(frozen=True, slots=True)
class PatientState:
    """One patient's outcome in one run, as the ledger keeps and compares it."""

    status: Status
    #: criterion id -> result, in the trial's order
    criteria: Mapping[str, Result]
    #: the status people gave the patient's ResearchSubject (withdrawn, on-study...), if any
    people_status: str | None = None


@dataclass(frozen=True, slots=True)
class PatientRecord:
    """A patient's last known state in the ledger, and since when the status holds."""

    state: PatientState
    since_as_of: date
    since_run: str
    last_as_of: date
    last_run: str


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One row of `runs`: `finished` is None while running, and for ever once killed."""

    run_id: str
    trial_id: str
    source: str
    adapter_version: str
    trial_sha256: str
    as_of: date
    dry_run: bool
    started: datetime
    finished: datetime | None = None
    exit_code: int | None = None
    errors: int | None = None
    #: patients per status; None for a run that judged no one (unfinished, or a failed source)
    counts: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class NoLonger:
    """A patient flagged before and ineligible now, with the criteria that turned not_met."""

    patient: str
    previous_status: Status
    #: criterion ids that are not_met now and were not before, in the trial's order
    changed: tuple[str, ...]
    people_status: str | None = None


@dataclass(frozen=True, slots=True)
class Changes:
    """What a run changed: patients newly flagged, and patients who no longer qualify."""

    new: frozenset[str] = frozenset()
    no_longer: tuple[NoLonger, ...] = ()
    #: the last completed run of the trial before this one; None on a trial's first run
    compared_with: RunRecord | None = None


def compare(previous: Mapping[str, PatientState], current: Mapping[str, PatientState]) -> Changes:
    """New: flagged now, not flagged before (or never seen), and not handled by people.

    No longer qualifies: flagged before, ineligible now, with each criterion that is not_met now
    and was not before (in the trial's order). A patient is handled by people when this run or an
    earlier one saw a people's status on their ResearchSubject; they stay listed when they no
    longer qualify, with that status, as the coordinator may want to know.
    """
    new: set[str] = set()
    no_longer: list[NoLonger] = []
    for patient, now in current.items():
        before = previous.get(patient)
        was_flagged = before is not None and before.status in FLAGGED
        people = now.people_status or (before.people_status if before else None)
        if now.status in FLAGGED and not was_flagged and people is None:
            new.add(patient)
        if before is not None and was_flagged and now.status is Status.INELIGIBLE:
            turned = tuple(
                cid
                for cid, result in now.criteria.items()
                if result is Result.NOT_MET and before.criteria.get(cid) is not Result.NOT_MET
            )
            no_longer.append(NoLonger(patient, before.status, turned, people))
    no_longer.sort(key=lambda n: n.patient)
    return Changes(frozenset(new), tuple(no_longer))


def current_states(
    verdicts: Iterable[PatientVerdict], people_status: Mapping[str, str]
) -> dict[str, PatientState]:
    """The ledger's view of a sweep's verdicts (`SweepResult.verdicts`, `.people_status`)."""
    if isinstance(verdicts, Verdicts):  # read without their evidence
        return {
            patient: PatientState(status, results, people_status.get(patient))
            for patient, status, results in verdicts.results()
        }
    return {
        v.patient: PatientState(
            v.status, {cid: r.result for cid, r in v.criteria.items()}, people_status.get(v.patient)
        )
        for v in verdicts
    }


def source_label(source: str) -> str:
    """`--source` as the ledger and results.json name it: a URL without query or credentials,
    or a folder's absolute path (the working folder of a nightly job is not the reader's)."""
    if source.startswith(("http://", "https://")):
        return redact_url(source)
    return os.path.abspath(source)


class Ledger:
    """The open ledger of one state folder; use as a context manager, or `close()` it."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, state_dir: Path, *, timeout: float = BUSY_TIMEOUT) -> Ledger:
        """Open (creating it 0600 if need be) the ledger in `state_dir`, migrated to this version.

        StateDirError when it cannot be opened, or was written by a newer adapter.
        """
        path = prepare_state_dir(state_dir) / LEDGER_FILE
        try:
            db = open_sqlite(path, "run ledger", timeout=timeout)
        except sqlite3.Error as exc:
            raise StateDirError(f"run ledger {path}: {exc}") from None
        try:
            db.execute("PRAGMA foreign_keys = ON")
            _migrate(db, path)
        except sqlite3.Error as exc:
            db.close()
            raise StateDirError(f"run ledger {path}: {exc}") from None
        except BaseException:
            db.close()
            raise
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def begin_run(
        self,
        run_id: str,
        *,
        trial_id: str,
        source: str,
        trial_hash: str,
        as_of: date,
        started: datetime,
        adapter_version: str = __version__,
        dry_run: bool = False,
    ) -> None:
        """Record a run's start; `source` is `--source` as given (`source_label` is applied)."""
        row = {
            "run": run_id,
            "trial": trial_id,
            "source": source_label(source),
            "version": adapter_version,
            "hash": trial_hash,
            "as_of": as_of.isoformat(),
            "dry": int(dry_run),
            "started": stamp(started),
        }
        with self._write() as db:
            db.execute(
                "INSERT INTO runs (run_id, trial_id, source, adapter_version, trial_sha256, "
                "as_of, dry_run, started) "
                "VALUES (:run, :trial, :source, :version, :hash, :as_of, :dry, :started)",
                row,
            )

    def changes(self, run_id: str, current: Mapping[str, PatientState]) -> Changes:
        """`compare` this unfinished run's patients with their last known state in its trial."""
        run = self._run(run_id)
        if run.finished is not None:
            raise ValueError(f"run {run_id} is finished: its changes are in its report")
        before = {ref: rec.state for ref, rec in self.previous(run.trial_id).items()}
        return replace(compare(before, current), compared_with=self.last_completed(run))

    def previous(self, trial_id: str) -> dict[str, PatientRecord]:
        """Each patient's last known state in `trial_id`, as finished runs left it."""
        rows = self._read(
            "SELECT patient, status, criteria, people_status, since_as_of, since_run, "
            "last_as_of, last_run FROM patients WHERE trial_id = ?",
            (trial_id,),
        )
        out: dict[str, PatientRecord] = {}
        for patient, status, criteria, people, since_as_of, since_run, last_as_of, last_run in rows:
            results = {cid: Result(r) for cid, r in orjson.loads(criteria).items()}
            state = PatientState(Status(status), results, people)
            out[patient] = PatientRecord(
                state,
                date.fromisoformat(since_as_of),
                since_run,
                date.fromisoformat(last_as_of),
                last_run,
            )
        return out

    def last_completed(self, before: RunRecord) -> RunRecord | None:
        """The last run of `before`'s trial begun before it that finished with verdicts."""
        rows = self._read(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE trial_id = ? AND {_COMPLETED} "
            "AND rowid < (SELECT rowid FROM runs WHERE run_id = ?) ORDER BY rowid DESC LIMIT 1",
            (before.trial_id, before.run_id),
        )
        return _run_record(rows[0]) if rows else None

    def finish_run(
        self,
        run_id: str,
        *,
        finished: datetime,
        exit_code: int,
        errors: int,
        patients: Mapping[str, PatientState] | None,
    ) -> None:
        """Record a run's end, and (unless a dry run) its patients' states, in one transaction.

        `patients` is None when the run judged no one (the source failed): it is then listed
        with its exit status, and later runs are compared with the run before it.
        """
        run = self._run(run_id)
        if run.finished is not None:
            raise ValueError(f"run {run_id} is already finished")
        counts: tuple[int | None, ...] = (None, None, None)
        if patients is not None:
            tally = Counter(state.status for state in patients.values())
            counts = tuple(tally[s] for s in _STATUSES)
        with self._write() as db:
            db.execute(
                "UPDATE runs SET finished = ?, exit_code = ?, errors = ?, candidate = ?, "
                "potential_candidate = ?, ineligible = ? WHERE run_id = ?",
                (stamp(finished), exit_code, errors, *counts, run_id),
            )
            if patients is None or run.dry_run:
                return
            db.executemany(
                _UPSERT,
                (
                    {
                        "trial": run.trial_id,
                        "patient": patient,
                        "status": state.status.value,
                        "as_of": run.as_of.isoformat(),
                        "run": run_id,
                        "people": state.people_status,
                        "criteria": orjson.dumps(
                            {cid: r.value for cid, r in state.criteria.items()}
                        ).decode(),
                    }
                    for patient, state in patients.items()
                ),
            )

    def runs(self, limit: int = 20, *, trial_id: str | None = None) -> list[RunRecord]:
        """The `limit` most recently begun runs (of `trial_id`, or all), newest first."""
        where, params = ("WHERE trial_id = ?", (trial_id, limit)) if trial_id else ("", (limit,))
        rows = self._read(
            f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY rowid DESC LIMIT ?", params
        )
        return [_run_record(row) for row in rows]

    def _run(self, run_id: str) -> RunRecord:
        rows = self._read(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise ValueError(f"run {run_id} was never begun")
        return _run_record(rows[0])

    def _read(self, sql: str, params: Iterable[object]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise OutputError(f"run ledger {self.path}: {exc}") from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, holding the write lock from its start: all of it, or nothing."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            raise OutputError(f"run ledger {self.path}: {exc}") from None


_RUN_COLUMNS = (
    "run_id, trial_id, source, adapter_version, trial_sha256, as_of, dry_run, started, "
    "finished, exit_code, errors, candidate, potential_candidate, ineligible"
)


def _run_record(row: tuple[Any, ...]) -> RunRecord:
    """A `_RUN_COLUMNS` row as a RunRecord."""
    run_id, trial, source, version, sha, as_of, dry, started, finished, code, errors = row[:11]
    counts = None
    if row[11] is not None:
        counts = {s.value: n for s, n in zip(_STATUSES, row[11:], strict=True)}
    return RunRecord(
        run_id,
        trial,
        source,
        version,
        sha,
        date.fromisoformat(as_of),
        bool(dry),
        datetime.fromisoformat(started),
        None if finished is None else datetime.fromisoformat(finished),
        code,
        errors,
        counts,
    )


def stamp(moment: datetime) -> str:
    """An aware time as ISO 8601 with its offset; a naive one is a caller's mistake."""
    if moment.utcoffset() is None:
        raise ValueError("the ledger records aware times only (datetime.now().astimezone())")
    return moment.isoformat(timespec="seconds")


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION, one step at a time, each step whole or not at all."""
    if _user_version(db) == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated meanwhile.
        version = _user_version(db)
        if version > SCHEMA_VERSION:
            raise StateDirError(
                f"run ledger {path} has schema version {version}, newer than this adapter's "
                f"({SCHEMA_VERSION}): use a newer trial-adapter, or another --state-dir"
            )
        for step in _MIGRATIONS[version:]:
            for statement in step:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _user_version(db: sqlite3.Connection) -> int:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(version)
