"""The criterion table of one patient, as `trial-adapter explain` prints it."""

from __future__ import annotations

from datetime import date

from adapter.criteria.results import Evidence, PatientVerdict
from adapter.report.results import evidence_json
from adapter.report.values import shown_value

COLUMNS = ("criterion", "result", "value", "unit", "date", "threshold", "reason")


def _value(ev: Evidence) -> tuple[str, str]:
    """As the CSVs and report.html show it: normalised and rounded where it could be, else as
    recorded; the comparator kept either way (adapter.report.values)."""
    shape = evidence_json(ev)
    return shown_value(shape["recorded"], shape["normalised"])


def explain_table(verdict: PatientVerdict, trial: str, as_of: date, *, in_cohort: bool) -> str:
    """A plain-text table: one row per criterion, automated first, then manual."""
    rows: list[tuple[str, ...]] = []
    for cid, r in verdict.criteria.items():
        ev = r.evidence[0] if r.evidence else Evidence()
        value, unit = _value(ev)
        date_text = (ev.date or "")[:10]
        rows.append((cid, r.result.value, value, unit, date_text, ev.threshold or "", r.reason))
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS[:-1])]
    head = f"{verdict.patient}: {verdict.status.value} for {trial} as of {as_of.isoformat()}"
    if not in_cohort:
        head += " (outside the trial's cohort: a sweep would not report this patient)"
    lines = [head, ""]
    for row in (COLUMNS, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines + _mapping_sources(verdict))


def _mapping_sources(verdict: PatientVerdict) -> list[str]:
    """Which mapping file read each code, unit, ULN and bound used (site folders, issue 9)."""
    out: list[str] = []
    for cid, r in verdict.criteria.items():
        used = dict.fromkeys(s for ev in r.evidence for s in ev.mapping_sources)
        out += [f"  {cid}: {source}" for source in used]
    return ["", "mapping files used:", *out] if out else []
