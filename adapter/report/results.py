"""results.json and candidates.csv: what the coordinator reads, and what other tools parse."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson

from adapter.criteria.results import CriterionResult, Evidence, PatientVerdict, Result, Status
from adapter.report.files import write_private
from adapter.sweep import SweepResult


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
    }


def criterion_json(result: CriterionResult) -> dict[str, Any]:
    return {
        "result": result.result.value,
        "reason": result.reason,
        "evidence": [evidence_json(e) for e in result.evidence],
    }


def verdict_json(verdict: PatientVerdict) -> dict[str, Any]:
    return {
        "patient": verdict.patient,
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
        },
        "as_of": sweep.as_of.isoformat(),
        "counts": counts,
        "patients": [verdict_json(v) for v in sweep.verdicts],
        "errors": [{"patient": e.patient, "reason": e.reason} for e in sweep.errors],
        "stats": {
            "read": dict(sorted(sweep.stats.items())),
            "unusable_observations": dict(sorted(sweep.unusable.items())),
        },
    }
    if extra:
        doc.update(extra)
    return doc


CSV_COLUMNS = (
    "patient",
    "status",
    "criterion",
    "result",
    "value",
    "unit",
    "date",
    "threshold",
    "reason",
    "reference",
)


def candidates_csv(verdicts: list[PatientVerdict]) -> str:
    """One row per criterion of every candidate and potential candidate (ineligible left out)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    order = {Status.CANDIDATE: 0, Status.POTENTIAL_CANDIDATE: 1}
    flagged = [v for v in verdicts if v.status in order]
    flagged.sort(key=lambda v: (order[v.status], v.patient))
    for v in flagged:
        for cid, r in v.criteria.items():
            ev = r.evidence[0] if r.evidence else Evidence()
            value = ev.normalised_value if ev.normalised_value is not None else ev.recorded_value
            unit = ev.normalised_unit if ev.normalised_value is not None else ev.recorded_unit
            writer.writerow(
                [
                    v.patient,
                    v.status.value,
                    cid,
                    r.result.value,
                    "" if value is None else f"{value:g}",
                    unit or "",
                    ev.date or "",
                    ev.threshold or "",
                    r.reason,
                    ev.reference or "",
                ]
            )
    return buf.getvalue()


def write_reports(out_dir: Path, doc: dict[str, Any], verdicts: list[PatientVerdict]) -> None:
    write_private(out_dir / "results.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    write_private(out_dir / "candidates.csv", candidates_csv(verdicts).encode())


def unknown_summary(verdicts: list[PatientVerdict]) -> dict[str, int]:
    """How often each criterion was unknown among potential candidates (for the summary)."""
    out: dict[str, int] = {}
    for v in verdicts:
        if v.status is Status.POTENTIAL_CANDIDATE:
            for cid, r in v.criteria.items():
                if r.result is Result.UNKNOWN:
                    out[cid] = out.get(cid, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))
