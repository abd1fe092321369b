"""A sweep's verdicts, on disk in the form results.json gives them (issue 15).

A verdict carries the evidence behind every criterion: about 4 KiB in memory for a t2dm patient
and 20 KiB for an hcc one, so that 100,000 patients' verdicts and the results.json entries made
of them took more memory than everything else the sweep keeps. `Verdicts` writes each verdict, as
its JSON document (`verdict_doc`), to a temporary SQLite database as it is made, and keeps in
memory only each patient's reference and status. The document holds every field of the verdict
(`verdict_from_doc` rebuilds it exactly), so iterating gives the verdicts back, and the reports
read the documents without rebuilding anything.

The database is SQLite's own temporary one (`connect("")`), unlinked as soon as it is opened: no
other process finds it by name, and it is gone when the sweep's process ends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from adapter.criteria.results import CriterionResult, Evidence, PatientVerdict, Result, Status

Doc = dict[str, Any]


def evidence_doc(ev: Evidence) -> Doc:
    return {
        "reference": ev.reference,
        "recorded": {
            "value": ev.recorded_value,
            "unit": ev.recorded_unit,
            "code": ev.recorded_code,
            "comparator": ev.recorded_comparator,
        },
        "normalised": {"value": ev.normalised_value, "unit": ev.normalised_unit},
        "date": ev.date,
        "threshold": ev.threshold,
        "uln_source": ev.uln_source,
        "note": ev.note,
        "mapping_sources": list(ev.mapping_sources),
    }


def criterion_doc(result: CriterionResult) -> Doc:
    return {
        "result": result.result.value,
        "reason": result.reason,
        "evidence": [evidence_doc(e) for e in result.evidence],
    }


def verdict_doc(verdict: PatientVerdict) -> Doc:
    """A patient of results.json without `identity`: reference, status, every criterion."""
    return {
        "patient": verdict.patient,
        "status": verdict.status.value,
        "criteria": {cid: criterion_doc(r) for cid, r in verdict.criteria.items()},
    }


def verdict_from_doc(doc: Doc) -> PatientVerdict:
    """The verdict `verdict_doc` was made of, equal to it."""
    return PatientVerdict(
        doc["patient"],
        Status(doc["status"]),
        {cid: _criterion(c) for cid, c in doc["criteria"].items()},
    )


def _criterion(doc: Doc) -> CriterionResult:
    return CriterionResult(
        Result(doc["result"]), doc["reason"], tuple(_evidence(e) for e in doc["evidence"])
    )


def _evidence(doc: Doc) -> Evidence:
    recorded, normalised = doc["recorded"], doc["normalised"]
    return Evidence(
        reference=doc["reference"],
        recorded_value=recorded["value"],
        recorded_unit=recorded["unit"],
        recorded_code=recorded["code"],
        recorded_comparator=recorded["comparator"],
        normalised_value=normalised["value"],
        normalised_unit=normalised["unit"],
        date=doc["date"],
        threshold=doc["threshold"],
        uln_source=doc["uln_source"],
        note=doc["note"],
        mapping_sources=tuple(doc["mapping_sources"]),
    )


class Verdicts:
    """The verdicts of a sweep in the order added; a sequence of PatientVerdict to its readers
    (iteration, `len`, indexing, `==` with a list), kept on disk (see the module)."""

    def __init__(self, verdicts: Iterable[PatientVerdict] = ()) -> None:
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE verdicts (n INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        self._statuses: list[tuple[str, Status]] = []
        for verdict in verdicts:
            self.append(verdict)

    def append(self, verdict: PatientVerdict) -> None:
        body = orjson.dumps(verdict_doc(verdict))
        self._db.execute("INSERT INTO verdicts (n, body) VALUES (?, ?)", (len(self), body))
        self._statuses.append((verdict.patient, verdict.status))

    def statuses(self) -> list[tuple[str, Status]]:
        """(patient reference, status) of each verdict, in order, from memory."""
        return list(self._statuses)

    def doc(self, index: int) -> Doc:
        """The `verdict_doc` of verdict `index` (0-based; negative from the end)."""
        n = index + len(self) if index < 0 else index
        if not 0 <= n < len(self):
            raise IndexError("verdict index out of range")
        (body,) = self._db.execute("SELECT body FROM verdicts WHERE n = ?", (n,)).fetchone()
        loaded: Doc = orjson.loads(body)
        return loaded

    def docs(self) -> Iterator[Doc]:
        """Every verdict's document, in order."""
        for (body,) in self._db.execute("SELECT body FROM verdicts ORDER BY n"):
            yield orjson.loads(body)

    def results(self) -> Iterator[tuple[str, Status, dict[str, Result]]]:
        """(patient, status, criterion id -> result) of each verdict, without its evidence."""
        for doc in self.docs():
            results = {cid: Result(c["result"]) for cid, c in doc["criteria"].items()}
            yield doc["patient"], Status(doc["status"]), results

    def __iter__(self) -> Iterator[PatientVerdict]:
        return (verdict_from_doc(d) for d in self.docs())

    def __len__(self) -> int:
        return len(self._statuses)

    def __bool__(self) -> bool:
        return bool(self._statuses)

    def __getitem__(self, index: int) -> PatientVerdict:
        return verdict_from_doc(self.doc(index))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Verdicts | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Verdicts({len(self)} verdicts)"
