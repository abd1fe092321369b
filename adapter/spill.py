"""Resources of the cohort's patients on disk while a sweep reads them (issue 15).

A sweep reads each resource type for all of the cohort's patients at once (one search per type
and batch, or one pass over a file), but evaluates patient by patient. Kept in memory, the
resources read for 6,000 patients took 230 MiB; here they wait in a temporary SQLite database
instead, as the JSON they were read as, and come back grouped by patient, in patient-id order and,
within a patient, in the order they were added. Memory stays at SQLite's page cache (2 MiB) and
one patient's resources.

Facts are built when the patient's turn comes, not when the resource is read: building a lab
value costs about 45 us, pickling one and reading it back about 55 us, storing the JSON and
parsing it again about 14 us.

The database is SQLite's own temporary one (`connect("")`): its file is unlinked as soon as it
is opened, so no other process finds it by name, and it is gone when the connection closes or
the process dies.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from enum import IntEnum
from itertools import groupby
from operator import itemgetter

import orjson

from adapter.sources.base import Resource

#: bytes of JSON added before they are written in one statement (a Patient is 3 KiB or more:
#: a count of rows would hold 15 MiB of them)
_BATCH_BYTES = 1 << 20


class Kind(IntEnum):
    """What a spilled resource is to the sweep."""

    PATIENT = 0
    CONDITION = 1
    PROCEDURE = 2
    OBSERVATION = 3


class ResourceSpill:
    """Resources by patient, on disk until `by_patient` hands them back (see the module)."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)
        # Nothing here outlives the run: no journal, no syncs.
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE spilled (seq INTEGER PRIMARY KEY, patient TEXT NOT NULL, "
            "kind INTEGER NOT NULL, body BLOB NOT NULL)"
        )
        self._pending: list[tuple[str, int, bytes]] = []
        self._pending_bytes = 0
        self.added = 0

    def add(self, patient: str, kind: Kind, resource: Resource) -> None:
        self.add_json(patient, kind, orjson.dumps(resource))

    def add_json(self, patient: str, kind: Kind, body: bytes) -> None:
        """`add` of a resource already as JSON."""
        self._pending.append((patient, int(kind), body))
        self._pending_bytes += len(body)
        self.added += 1
        if self._pending_bytes >= _BATCH_BYTES:
            self._flush()

    def by_patient(self) -> Iterator[tuple[str, list[tuple[Kind, Resource]]]]:
        """(patient id, its resources in the order added), patients in id order (code points:
        SQLite compares the UTF-8 bytes, which sort as Python sorts the strings)."""
        self._flush()
        rows = self._db.execute("SELECT patient, kind, body FROM spilled ORDER BY patient, seq")
        for patient, group in groupby(rows, key=itemgetter(0)):
            yield patient, [(Kind(kind), orjson.loads(body)) for _, kind, body in group]

    def close(self) -> None:
        self._pending.clear()
        self._db.close()

    def __enter__(self) -> ResourceSpill:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _flush(self) -> None:
        if self._pending:
            with self._db:  # one transaction per batch, not one per row
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO spilled (patient, kind, body) VALUES (?, ?, ?)", self._pending
                )
            self._pending.clear()
            self._pending_bytes = 0
