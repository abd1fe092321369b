"""Lab values: choosing the latest usable one in a window, and comparing intervals to thresholds.

Trial-spec, data rules and fine print: the latest status-usable Observation in the window decides;
if its value cannot be normalised the result is unknown with no fall-back; same-timestamp values
that disagree give unknown; a partial date that crosses the window edge, or could be the latest,
gives unknown. A comparator makes the value an interval, decided only when the whole interval is
on one side of the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

from adapter.criteria.context import Context, placement, window_start
from adapter.criteria.results import Evidence, Result
from adapter.facts.dates import FhirDate
from adapter.facts.model import LabValue, Normalised

#: Observation.status values whose data may be used
USABLE_STATUSES = frozenset({"final", "amended", "corrected"})


@dataclass(frozen=True, slots=True)
class Pick:
    """The outcome of choosing a lab: the deciding value, or why there is none."""

    lab: LabValue | None
    problem: str | None = None


def latest_lab(ctx: Context, analyte: str, days: int) -> Pick:
    """The latest usable `analyte` value in the `days`-day window ending at as-of."""
    name = ctx.analytes[analyte].name.lower() if analyte in ctx.analytes else analyte
    start = window_start(ctx.as_of, days)
    inside: list[LabValue] = []
    straddling: list[LabValue] = []
    for lab in ctx.facts.labs:
        if lab.analyte != analyte or lab.status not in USABLE_STATUSES or lab.date is None:
            continue
        where = placement(lab.date, start, ctx.as_of)
        if where == "inside":
            inside.append(lab)
        elif where == "straddles":
            straddling.append(lab)
    no_value = f"no {name} in the {days} days before {ctx.as_of.isoformat()}"
    if not inside:
        if straddling:
            return Pick(None, f"{no_value} for certain: a partial date crosses the window edge")
        return Pick(None, no_value)
    latest = max(inside, key=lambda lab: _key(lab))
    assert latest.date is not None
    for other in (*inside, *straddling):
        if other is latest:
            continue
        assert other.date is not None
        both_exact = other.date.is_exact_day and latest.date.is_exact_day
        if not both_exact and other.date.last_day >= latest.date.first_day:
            return Pick(None, f"a partial date ({other.date.text}) could be the latest {name}")
        if _same_time(other.date, latest.date) and not _agree(other, latest):
            return Pick(None, f"two {name} values with the same timestamp disagree")
    if latest.normalised is None:
        return Pick(latest, latest.problem or f"the latest {name} has no usable value")
    return Pick(latest)


def _key(lab: LabValue) -> tuple[date, float]:
    assert lab.date is not None
    day, moment = lab.date.sort_key()
    return (day, moment.timestamp())


def _same_time(a: FhirDate, b: FhirDate) -> bool:
    """Same timestamp: the same exact day, and the same instant when both have one."""
    if a.first_day != b.first_day or not a.is_exact_day:
        return False
    if a.instant is None or b.instant is None:
        return True
    return a.instant == b.instant


def _agree(a: LabValue, b: LabValue) -> bool:
    if a.normalised is None or b.normalised is None:
        return False
    return (a.normalised.value, a.normalised.comparator) == (
        b.normalised.value,
        b.normalised.comparator,
    )


def interval(value: Normalised) -> tuple[float, bool, float, bool]:
    """(low, low included, high, high included) of a possibly comparator-qualified value."""
    v = value.value
    match value.comparator:
        case "<":
            return (-math.inf, False, v, False)
        case "<=":
            return (-math.inf, False, v, True)
        case ">":
            return (v, False, math.inf, False)
        case ">=":
            return (v, True, math.inf, False)
        case _:
            return (v, True, v, True)


def compare(value: Normalised, op: str, threshold: float) -> Result:
    """met if every value of the interval satisfies `op threshold`, not_met if none does."""
    lo, lo_in, hi, hi_in = interval(value)
    t = threshold
    if op == ">=":
        every = lo >= t
        none = hi < t or (hi == t and not hi_in)
    elif op == ">":
        every = lo > t or (lo == t and not lo_in)
        none = hi <= t
    elif op == "<":
        every = hi < t or (hi == t and not hi_in)
        none = lo >= t
    elif op == "<=":
        every = hi <= t
        none = lo > t or (lo == t and not lo_in)
    else:  # pragma: no cover - the trial schema admits only the four operators
        raise ValueError(op)
    if every:
        return Result.MET
    if none:
        return Result.NOT_MET
    return Result.UNKNOWN


def fmt(number: float) -> str:
    """A number as people write it: 9.0 -> '9', 1.99954 -> '1.99954'."""
    return f"{number:.6g}"


def lab_evidence(
    lab: LabValue, as_of: date, *, threshold: str | None = None, uln_source: str | None = None
) -> Evidence:
    rec = lab.recorded
    norm = lab.normalised
    note = norm.via if norm is not None else lab.problem
    if lab.date is not None and (as_of - lab.date.last_day).days > 7:
        note = (
            f"{note}; older than 7 days: redraw at the enrolment visit"
            if note
            else ("older than 7 days: redraw at the enrolment visit")
        )
    return Evidence(
        reference=lab.reference,
        recorded_value=rec.value if rec else None,
        recorded_unit=rec.unit if rec else None,
        recorded_code=rec.code if rec else None,
        recorded_comparator=rec.comparator if rec else None,
        normalised_value=norm.value if norm else None,
        normalised_unit=norm.unit if norm else None,
        date=lab.date.text if lab.date else None,
        threshold=threshold,
        uln_source=uln_source,
        note=note,
    )
