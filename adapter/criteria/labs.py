"""Lab values: choosing the latest usable one in a window, and comparing intervals to thresholds.

Trial-spec, data rules and fine print: the latest status-usable Observation in the window decides
(chosen by adapter.criteria.latest: instants, corrections, dates that could be either); if its
value cannot be normalised the result is unknown with no fall-back. A comparator makes the value
an interval, decided only when the whole interval is on one side of the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from datetime import date

from adapter.criteria.context import Context, placement, window_start
from adapter.criteria.latest import choose_latest, same_value
from adapter.criteria.results import Evidence, Result
from adapter.facts.model import LabValue, Normalised

#: Observation.status values whose data may be used
USABLE_STATUSES = frozenset({"final", "amended", "corrected"})


@dataclass(frozen=True, slots=True)
class Pick:
    """The outcome of choosing a lab: the deciding value, or why there is none."""

    lab: LabValue | None
    problem: str | None = None


def latest_lab(
    ctx: Context,
    analyte: str,
    days: int,
    outcome: Callable[[LabValue], Hashable] = same_value,
) -> Pick:
    """The latest usable `analyte` value in the `days`-day window ending at as-of.

    `outcome` is what the criterion decides from a value: values that could each be the latest
    decide together when their outcomes agree (trial-spec: unknown when the choice changes it).
    """
    name = ctx.analytes[analyte].name.lower() if analyte in ctx.analytes else analyte
    inside, straddling = in_window(ctx, {analyte}, days)
    choice = choose_latest(
        inside,
        straddling,
        what=name,
        none=f"no {name} in the {days} days before {ctx.as_of.isoformat()}",
        outcome=outcome,
    )
    if choice.lab is None:
        return Pick(None, choice.problem)
    if choice.lab.normalised is None:
        return Pick(choice.lab, choice.lab.problem or f"the latest {name} has no usable value")
    return Pick(choice.lab)


def in_window(
    ctx: Context, analytes: Collection[str], days: int
) -> tuple[list[LabValue], list[LabValue]]:
    """Status-usable, dated values of `analytes`: those inside the window, and those whose partial
    date crosses its edge (they may or may not be inside)."""
    start = window_start(ctx.as_of, days)
    inside: list[LabValue] = []
    straddling: list[LabValue] = []
    for lab in ctx.facts.labs:
        if lab.analyte not in analytes or lab.status not in USABLE_STATUSES or lab.date is None:
            continue
        where = placement(lab.date, start, ctx.as_of)
        if where == "inside":
            inside.append(lab)
        elif where == "straddles":
            straddling.append(lab)
    return inside, straddling


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
    lab: LabValue,
    as_of: date,
    *,
    threshold: str | None = None,
    uln_source: str | None = None,
    mapping_sources: tuple[str, ...] = (),
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
        mapping_sources=lab.mapping_sources + mapping_sources,
    )
