"""The facts store of incremental Bulk runs (issue 14): the resources of the last export, kept.

An incremental run exports only what changed since the last export (`_since`), yet evaluates
every cohort patient again: labs age out of their windows and patients turn 18 or 76 with no new
data. The facts of the patients that did not change come from here: `bulk/<job key>.store.sqlite3`
beside the job folder (which is emptied after each run), one per (server, trial, export request).

- `resources`: the raw NDJSON line of each resource, keyed by (type, id), with the local Patient
  id it belongs to (`adapter.sources.base.patient_id_of`; NULL for none or another server's), so a
  changed patient's rows can be replaced whole.
- `meta`: `transaction_time`, the last export whose sweep completed (the next `_since`);
  `last_full`, the kick-off instant of the last full export; `request_hash`, the export request
  without `_since` (`request_hash`). Without a transaction time the next run is a full one.

It is a cache of what the server holds: a store that cannot be read (corrupt, another schema) is
deleted and the run is a full one (`open_store`); a rebuild (`rebuild`) and each update
(`update`) are one transaction, so a killed run leaves the store as the last whole write did.
SQLite as the run ledger uses it (adapter.ledger): created 0600 in the 0700 `bulk/` folder, WAL,
writes under `BEGIN IMMEDIATE`. The store holds patient data: nothing of a row is ever logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from adapter.bulk.model import ExportRequest
from adapter.errors import StateDirError
from adapter.sources.base import Resource, patient_id_of
from adapter.sources.unreadable import parse_line
from adapter.state import open_sqlite

log = logging.getLogger(__name__)

STORE_SUFFIX: Final = ".store.sqlite3"
SCHEMA_VERSION: Final = 1
#: seconds a write waits for another process's write to end before it fails
BUSY_TIMEOUT: Final = 30.0
#: keys looked up, or patients deleted, per statement (SQLite's default variable limit is 32,766)
CHUNK: Final = 500

Key = tuple[str, str]

_SCHEMA: Final = (
    """CREATE TABLE resources (
        type    TEXT NOT NULL,
        id      TEXT NOT NULL,
        patient TEXT,
        body    BLOB NOT NULL,
        PRIMARY KEY (type, id)
    ) WITHOUT ROWID""",
    "CREATE INDEX resources_by_patient ON resources (patient) WHERE patient IS NOT NULL",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
_PUT: Final = "INSERT OR REPLACE INTO resources (type, id, patient, body) VALUES (?, ?, ?, ?)"
_BOM: Final = b"\xef\xbb\xbf"


class StoreCorruptError(Exception):
    """The store file cannot be used (not a database, damaged, another schema): delete it and
    export in full. The message never quotes its content."""


@dataclass(frozen=True, slots=True)
class StoreMeta:
    """What the store says of the exports behind it (see the module docstring)."""

    transaction_time: str | None = None
    last_full: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild read: rows kept, and lines it could not keep (counts only).

    `unreadable`: not JSON objects; `unkeyed`: resources without a string id; `skipped`: lines of
    another type than their file's (FolderSource skips those too). An unreadable or unkeyed line
    may be any patient's resource, so the store is not used for an incremental run (`ready`).
    """

    rows: int = 0
    unreadable: int = 0
    unkeyed: int = 0
    skipped: int = 0

    @property
    def ready(self) -> bool:
        return not (self.unreadable or self.unkeyed)


def store_path(state_dir: Path, key: str) -> Path:
    """`<state folder>/bulk/<job key>.store.sqlite3` (the folder is made by JobFolder.open)."""
    return state_dir / "bulk" / f"{key}{STORE_SUFFIX}"


def request_hash(request: ExportRequest) -> str:
    """A hash of what is exported, `_since` left out: a different request needs a full export.

    Types and type filters are sorted, as in `adapter.bulk.jobs.job_key`.
    """
    canonical = {
        "level": request.level,
        "group": request.group_id,
        "types": sorted(set(request.types)),
        "type_filters": sorted(set(request.type_filters)),
    }
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def open_store(path: Path) -> FactStore:
    """The store at `path`; one that cannot be used is deleted (warning) and a new one made."""
    try:
        return FactStore.open(path)
    except StoreCorruptError as exc:
        log.warning(
            "the Bulk facts store %s cannot be used (%s); it is made anew, and this run exports "
            "in full",
            path.name,
            exc,
            extra={"event": "bulk_store_reset"},
        )
        delete_store(path)
        return FactStore.open(path)


def delete_store(path: Path) -> None:
    """Remove the store file and its WAL files."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            name.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateDirError(f"Bulk facts store {name}: {exc.strerror or exc}") from None


class FactStore:
    """An open store; use as a context manager, or `close()` it."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: Path, *, timeout: float = BUSY_TIMEOUT) -> FactStore:
        """Open (creating it 0600 if need be) the store at `path`.

        StoreCorruptError when it is no SQLite database, a damaged one, or of another schema;
        StateDirError when it cannot be opened at all (a link, another user's file, busy).
        """
        with _errors(path):
            db = open_sqlite(path, "Bulk facts store", timeout=timeout)
        try:
            with _errors(path):
                _prepare(db)
        except BaseException:
            db.close()
            raise
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> FactStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- meta ------------------------------------------------------------------------------------

    def meta(self) -> StoreMeta:
        with _errors(self.path):
            rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        return StoreMeta(
            transaction_time=_text(rows.get("transaction_time")),
            last_full=_text(rows.get("last_full")),
            request_hash=_text(rows.get("request_hash")),
        )

    def set_since(self, transaction_time: str) -> None:
        """Record the export a completed sweep used: the next run asks for what changed since."""
        with self._write() as db:
            _set(db, "transaction_time", transaction_time)

    def clear_since(self) -> None:
        """Make the next run a full one (the store's rows stay until that rebuild)."""
        with self._write() as db:
            db.execute("DELETE FROM meta WHERE key = 'transaction_time'")

    # -- whole exports ---------------------------------------------------------------------------

    def rebuild(
        self,
        files: Iterable[tuple[str, Path]],
        *,
        transaction_time: str,
        full_at: str,
        request: str,
    ) -> Rebuilt:
        """Replace every row by the resources of a full export's `(type, path)` NDJSON files.

        Streamed line by line in one transaction. The meta records the export (`full_at`, the
        request hash `request`), and its `transaction_time` only when every line was kept
        (`Rebuilt.ready`): otherwise the next run is a full one again.
        """
        counts = {"rows": 0, "unreadable": 0, "unkeyed": 0, "skipped": 0}

        def rows() -> Iterator[tuple[str, str, str | None, bytes]]:
            for kind, path in files:
                for line in ndjson_lines(path):
                    resource = parse_line(line)
                    if isinstance(resource, str):
                        counts["unreadable"] += 1
                        continue
                    if resource.get("resourceType") != kind:
                        counts["skipped"] += 1
                        continue
                    row = row_of(resource, line)
                    if row is None:
                        counts["unkeyed"] += 1
                        continue
                    counts["rows"] += 1
                    yield row

        with self._write() as db:
            db.execute("DELETE FROM resources")
            db.executemany(_PUT, rows())
            done = Rebuilt(**counts)
            db.execute("DELETE FROM meta")
            _set(db, "last_full", full_at)
            _set(db, "request_hash", request)
            if done.ready:
                _set(db, "transaction_time", transaction_time)
        self._checkpoint()
        return done

    # -- reading ---------------------------------------------------------------------------------

    def patients_of(self, keys: Iterable[Key]) -> dict[Key, str]:
        """The Patient id of each stored resource of `keys` that has one."""
        found: dict[Key, str] = {}
        wanted = list(dict.fromkeys(keys))
        with _errors(self.path):
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                pairs = ",".join("(?, ?)" for _ in chunk)
                flat = [part for key in chunk for part in key]
                query = (
                    "SELECT type, id, patient FROM resources "
                    f"WHERE (type, id) IN (VALUES {pairs}) AND patient IS NOT NULL"
                )
                for kind, rid, patient in self._db.execute(query, flat):
                    found[(kind, rid)] = patient
        return found

    def patients(self) -> set[str]:
        """Every Patient id some stored resource belongs to."""
        with _errors(self.path):
            rows = self._db.execute(
                "SELECT DISTINCT patient FROM resources WHERE patient IS NOT NULL"
            ).fetchall()
        return {patient for (patient,) in rows}

    def count(self, kind: str | None = None) -> int:
        """Rows stored, of `kind` or of every type."""
        with _errors(self.path):
            if kind is None:
                (n,) = self._db.execute("SELECT count(*) FROM resources").fetchone()
            else:
                (n,) = self._db.execute(
                    "SELECT count(*) FROM resources WHERE type = ?", (kind,)
                ).fetchone()
        return int(n)

    def rows(self, kind: str) -> Iterator[bytes]:
        """The raw lines of `kind`, by id: streamed, never all in memory."""
        with _errors(self.path):
            cursor = self._db.execute(
                "SELECT body FROM resources WHERE type = ? ORDER BY id", (kind,)
            )
            for (body,) in cursor:
                yield bytes(body)

    # -- changes ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def update(self) -> Iterator[StoreUpdate]:
        """One transaction of changes (`StoreUpdate`): all of them, or none."""
        with self._write() as db:
            yield StoreUpdate(db)
        self._checkpoint()

    # -- inside ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, holding the write lock from its start."""
        with _errors(self.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _checkpoint(self) -> None:
        # A rebuild writes the whole store into the WAL once more: give the space back.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class StoreUpdate:
    """The changes of one incremental run, inside `FactStore.update`'s transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def delete_keys(self, keys: Iterable[Key]) -> int:
        """Remove the resources of `keys`; how many were stored."""
        removed = 0
        wanted = list(dict.fromkeys(keys))
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start : start + CHUNK]
            pairs = ",".join("(?, ?)" for _ in chunk)
            flat = [part for key in chunk for part in key]
            cursor = self._db.execute(
                f"DELETE FROM resources WHERE (type, id) IN (VALUES {pairs})", flat
            )
            removed += cursor.rowcount
        return removed

    def delete_patients(self, patients: Iterable[str]) -> int:
        """Remove every resource of `patients`; how many there were."""
        removed = 0
        wanted = sorted(set(patients))
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start : start + CHUNK]
            marks = ",".join("?" for _ in chunk)
            cursor = self._db.execute(f"DELETE FROM resources WHERE patient IN ({marks})", chunk)
            removed += cursor.rowcount
        return removed

    def put(self, resource: Resource, body: bytes | None = None) -> bool:
        """Store `resource` (its raw line `body`, else its JSON), replacing one of its key.

        False, and nothing stored, for a resource without a type or a string id.
        """
        row = row_of(resource, body if body is not None else orjson.dumps(resource))
        if row is None:
            return False
        self._db.execute(_PUT, row)
        return True


def row_of(resource: Resource, body: bytes) -> tuple[str, str, str | None, bytes] | None:
    """(type, id, patient, body) of a resource, or None without a type or a string id."""
    kind, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(kind, str) or not kind or not isinstance(rid, str) or not rid:
        return None
    return kind, rid, patient_id_of(resource), body


def ndjson_lines(path: Path) -> Iterator[bytes]:
    """An NDJSON file's non-blank lines, stripped, the first without a BOM; never all in memory."""
    try:
        with open(path, "rb", buffering=1 << 20) as stream:
            for number, raw in enumerate(stream):
                line = raw.strip()
                if number == 0 and line.startswith(_BOM):
                    line = line[len(_BOM) :].strip()
                if line:
                    yield line
    except OSError as exc:
        raise StateDirError(f"Bulk file {path}: {exc.strerror or exc}") from None


def _set(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _prepare(db: sqlite3.Connection) -> None:
    """Create the schema in a new store; StoreCorruptError for one of another schema."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        # A damaged file often reads its header well: touch both tables once.
        db.execute("SELECT count(*) FROM meta").fetchone()
        db.execute("SELECT 1 FROM resources LIMIT 1").fetchall()
        return
    if version != 0:
        raise StoreCorruptError(f"schema version {version}, not {SCHEMA_VERSION}")
    db.execute("BEGIN IMMEDIATE")
    try:
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise StoreCorruptError("a database that is not a facts store")
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _errors(path: Path) -> Iterator[None]:
    """SQLite errors as the adapter's: a busy or unwritable store is a StateDirError, a damaged
    one a StoreCorruptError (the run then exports in full)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "malformed" in text or "not a database" in text or "no such table" in text:
            raise StoreCorruptError(text) from None
        raise StateDirError(f"Bulk facts store {path}: {text}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreCorruptError(str(exc)) from None
