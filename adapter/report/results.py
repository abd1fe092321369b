"""results.json, and writing it with the CSVs drawn from it: what the coordinator reads, and what
other tools parse."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from adapter.criteria.results import PatientVerdict, Result, Status
from adapter.errors import OutputError
from adapter.facts.identity import Identity
from adapter.report.csvs import candidates_csv, candidates_detail_csv
from adapter.report.entries import Entries
from adapter.report.files import write_private
from adapter.sweep import SweepResult
from adapter.verdicts import Verdicts, criterion_doc, evidence_doc, verdict_doc

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

#: `research_subject` of a patient whose write was under way when the sink failed, or of every
#: flagged patient while the sink is written: it may or may not have reached the sink (the next
#: run finds out, and writes what is missing).
UNCONFIRMED = "unconfirmed"
#: `research_subject` of a patient that was to be written when the sink failed, and was not.
NOT_WRITTEN = "not_written"
#: `sink_writes.status` of a run whose writes the sweep withheld (`SweepResult.withhold_writes`)
WITHHELD = "withheld"
_FLAGGED = (Status.CANDIDATE, Status.POTENTIAL_CANDIDATE)


evidence_json = evidence_doc
criterion_json = criterion_doc


def identity_json(identity: Identity | None) -> dict[str, Any]:
    """A patient's `identity` in results.json: every key, null where unknown."""
    who = identity or Identity()
    return {
        "name": who.name,
        "mrn": who.mrn,
        "birth_date": who.birth_date,
        "age": who.age,
        "sex": who.sex,
    }


def verdict_json(verdict: PatientVerdict, identity: Identity | None = None) -> dict[str, Any]:
    """One patient of results.json; `identity` (beside the reference) when one is given."""
    return _entry(verdict_doc(verdict), identity)


def _entry(doc: dict[str, Any], identity: Identity | None) -> dict[str, Any]:
    """A `verdict_doc` as results.json lists it: `identity` beside the reference, when given."""
    if identity is None:
        return doc
    return {"patient": doc["patient"], "identity": identity_json(identity), **doc}


def patient_entries(sweep: SweepResult) -> Entries:
    """Every patient's entry in results.json, with identity and `people_status`, made when read."""
    verdicts, identities, people = sweep.verdicts, sweep.identities, sweep.people_status

    def make(i: int) -> dict[str, Any]:
        doc = verdicts.doc(i)
        entry = _entry(doc, identities.get(doc["patient"]) or Identity())
        entry["people_status"] = people.get(doc["patient"])
        return entry

    return Entries(make, len(verdicts))


def results_json(sweep: SweepResult, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    counts = {s.value: 0 for s in Status}
    for _, status in sweep.verdicts.statuses():
        counts[status.value] += 1
    doc: dict[str, Any] = {
        "trial": sweep.trial.id,
        "trial_definition": {
            "file": sweep.trial.source_file.name,
            "sha256": sweep.trial.content_hash,
            "site_files": [str(f) for f in sweep.trial.site_files],
        },
        "as_of": sweep.as_of.isoformat(),
        # The CSVs' criterion columns, in the trial's order, even when no patient is listed.
        "automated_criteria": [c.id for c in sweep.trial.criteria],
        "counts": counts,
        # Every patient's identity (nulls where unknown): results.json is the owner's alone.
        # `status` keeps the verdict; `people_status` what people set on the sink (issue 12).
        "patients": patient_entries(sweep),
        "errors": [
            {"patient": e.patient, "reason": e.reason} | ({"detail": e.detail} if e.detail else {})
            for e in sweep.errors
        ],
        "stats": {
            "read": dict(sorted(sweep.stats.items())),
            "unusable_observations": dict(sorted(sweep.unusable.items())),
            "foreign_subjects": dict(sorted(sweep.foreign.items())),
        },
        # results.json is the owner's alone (report.files.write_private): the patient may be here.
        "unreadable_input": [
            {
                "file": u.file,
                "line": u.line,
                "reason": u.reason,
                "patient": None if u.patient is None else f"Patient/{u.patient}",
            }
            for u in sweep.unreadable
        ],
        "writes_withheld": sweep.withhold_writes,
        # issue 13: where the cohort came from, and how the source read (what it cannot reach)
        "cohort": dict(sweep.cohort),
        # issue 14: the Bulk export read (level, transactionTime, files per type, coded issues)
        "bulk": sweep.bulk,
        "source_reads": {
            "mode": sweep.reads.mode,
            "profile": sweep.reads.profile,
            "switched_to_per_patient": sweep.reads.switched,
            "unreached": list(sweep.reads.unreached),
        },
    }
    if extra:
        doc.update(extra)
    return doc


def sweep_json(
    sweep: SweepResult,
    *,
    sink: str | None,
    writes: Mapping[str, str],
    sink_status: str | None = None,
    sink_error: str | None = None,
    planned_writes: list[dict[str, str | None]] | None = None,
) -> dict[str, Any]:
    """results.json of a sweep: `results_json` with each patient's sink outcome (`writes`).

    With `sink_status` (`started`, written before the first sink write; `complete`; `failed`),
    `sink_writes` says which flagged patients' ResearchSubjects the sink holds (`written`: their
    outcome is under the patient), which it may hold (`unconfirmed`) and which it does not
    (`not_written`), and the fatal error's line. Until the sink is done (`started`: all a run
    killed mid-sink leaves behind) every flagged patient is `unconfirmed`, never `not_written`.
    A sweep that withholds writes makes any status `withheld`: the sink holds nothing of this
    run, and every flagged patient is `not_written`, whatever stage the caller is at.
    """
    doc = results_json(sweep, extra={"sink": sink})
    if sink_status is not None and sweep.withhold_writes:
        sink_status, writes = WITHHELD, {}
        sink_error = (
            sink_error or "writes withheld: unreadable input lines name no patient for sure"
        )
    failed = sink_status in ("failed", WITHHELD)
    flagged = [p for p, status in sweep.verdicts.statuses() if status in _FLAGGED]
    if sink_status == "started":
        writes = {p: writes.get(p, UNCONFIRMED) for p in flagged}
    flagged_values = {s.value for s in _FLAGGED}

    def with_outcome(entry: dict[str, Any]) -> dict[str, Any]:
        outcome = writes.get(entry["patient"])
        if outcome is None and failed and entry["status"] in flagged_values:
            outcome = NOT_WRITTEN
        if outcome is not None:
            entry["research_subject"] = outcome
        return entry

    doc["patients"] = doc["patients"].map(with_outcome)
    if sink_status is not None:
        doc["sink_writes"] = {
            "status": sink_status,
            "error": sink_error,
            "written": [p for p in flagged if p in writes and writes[p] != UNCONFIRMED],
            "unconfirmed": [p for p in flagged if writes.get(p) == UNCONFIRMED],
            "not_written": [p for p in flagged if p not in writes],
        }
    if planned_writes is not None:
        doc["planned_writes"] = planned_writes
    return doc


#: the files `write_reports` writes into the output folder
REPORT_FILES = ("results.json", "candidates.csv", "candidates-detail.csv")


def write_reports(out_dir: Path, doc: Mapping[str, Any]) -> None:
    """results.json, candidates.csv and candidates-detail.csv (adapter.report.csvs, drawn from
    `doc`), each replaced atomically and owner-only; OutputError if they cannot be.
    """
    try:
        write_private(out_dir / "results.json", json_pieces(doc))
        write_private(out_dir / "candidates.csv", candidates_csv(doc).encode())
        write_private(out_dir / "candidates-detail.csv", candidates_detail_csv(doc).encode())
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise OutputError(f"{out_dir}: the report could not be written ({why})") from exc


def json_pieces(doc: Mapping[str, Any]) -> Iterator[bytes]:
    """`doc` as `orjson.dumps(doc, option=OPT_INDENT_2) + b"\\n"` writes it, byte for byte, in
    pieces: one per top-level key and one per item of a top-level list, so that the patients
    of a large sweep are never all in one string (issue 15)."""
    if not doc:
        yield b"{}\n"
        return
    separator = b"{"
    for key, value in doc.items():
        yield separator + b"\n  " + orjson.dumps(key) + b": "
        separator = b","
        if isinstance(value, Entries) and not value:
            value = []
        if isinstance(value, list | Entries) and value:
            opening = b"["
            for item in value:
                yield opening + b"\n    " + _indented(item, 4)
                opening = b","
            yield b"\n  ]"
        else:
            yield _indented(value, 2)
    yield b"\n}\n"


def _indented(value: object, depth: int) -> bytes:
    # A JSON text has no raw newline inside a string: every newline is orjson's indentation.
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).replace(b"\n", b"\n" + b" " * depth)


def unknown_summary(verdicts: Verdicts | list[PatientVerdict]) -> dict[str, int]:
    """How often each criterion was unknown among potential candidates (for the summary)."""
    out: dict[str, int] = {}
    read = (
        verdicts.results()
        if isinstance(verdicts, Verdicts)  # read without their evidence
        else ((v.patient, v.status, {c: r.result for c, r in v.criteria.items()}) for v in verdicts)
    )
    for _, status, results in read:
        if status is Status.POTENTIAL_CANDIDATE:
            for cid, result in results.items():
                if result is Result.UNKNOWN:
                    out[cid] = out.get(cid, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))
