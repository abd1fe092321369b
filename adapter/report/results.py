"""results.json, and writing it with the CSVs drawn from it: what the coordinator reads, and what
other tools parse."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from adapter.criteria.results import CriterionResult, Evidence, PatientVerdict, Result, Status
from adapter.errors import OutputError
from adapter.facts.identity import Identity
from adapter.report.csvs import candidates_csv, candidates_detail_csv
from adapter.report.files import write_private
from adapter.sweep import SweepResult

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


def evidence_json(ev: Evidence) -> dict[str, Any]:
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


def criterion_json(result: CriterionResult) -> dict[str, Any]:
    return {
        "result": result.result.value,
        "reason": result.reason,
        "evidence": [evidence_json(e) for e in result.evidence],
    }


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
    who = {} if identity is None else {"identity": identity_json(identity)}
    return {
        "patient": verdict.patient,
        **who,
        "status": verdict.status.value,
        "criteria": {cid: criterion_json(r) for cid, r in verdict.criteria.items()},
    }


def results_json(sweep: SweepResult, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    counts = {s.value: 0 for s in Status}
    for v in sweep.verdicts:
        counts[v.status.value] += 1
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
        "patients": [
            verdict_json(v, sweep.identities.get(v.patient) or Identity())
            | {"people_status": sweep.people_status.get(v.patient)}
            for v in sweep.verdicts
        ],
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
    if sink_status == "started":
        pending = (v.patient for v in sweep.verdicts if v.status in _FLAGGED)
        writes = {p: writes.get(p, UNCONFIRMED) for p in pending}
    for entry in doc["patients"]:
        outcome = writes.get(entry["patient"])
        if outcome is None and failed and entry["status"] in {s.value for s in _FLAGGED}:
            outcome = NOT_WRITTEN
        if outcome is not None:
            entry["research_subject"] = outcome
    if sink_status is not None:
        flagged = [v.patient for v in sweep.verdicts if v.status in _FLAGGED]
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
        if isinstance(value, list) and value:
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


def unknown_summary(verdicts: list[PatientVerdict]) -> dict[str, int]:
    """How often each criterion was unknown among potential candidates (for the summary)."""
    out: dict[str, int] = {}
    for v in verdicts:
        if v.status is Status.POTENTIAL_CANDIDATE:
            for cid, r in v.criteria.items():
                if r.result is Result.UNKNOWN:
                    out[cid] = out.get(cid, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))
