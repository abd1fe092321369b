"""Values computed from other labs, and `lab_threshold_derived` (an absolute count, else derived).

Trial-spec, "Analytes and codes" and fine print: when there is no absolute neutrophil count in the
window, ANC = WBC x neutrophil % / 100 from the latest calendar day that has both, marked as
derived. An absolute count that exists but cannot be read is unknown, with no fall-back to the
derivation (the latest usable Observation decides, never an older or a computed one).

The small helpers here (`present_in_window`, `latest_on_day`, `clean`, `decide`...) are shared by
the other kinds that compute values: `uln_multiple`, `pt_prolongation` and `child_pugh`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from adapter.criteria.context import Context, placement, window_start
from adapter.criteria.kinds import Criterion, LabThreshold, Problem
from adapter.criteria.labs import USABLE_STATUSES, Pick, compare, fmt, lab_evidence, latest_lab
from adapter.criteria.results import CriterionResult, Evidence, Result
from adapter.facts.model import Normalised

if TYPE_CHECKING:
    from adapter.analytes import Analyte
    from adapter.codes import CodeSet
    from adapter.facts.units import Units


def present_in_window(ctx: Context, analyte: str, days: int) -> bool:
    """A status-usable, dated `analyte` Observation that is, or may be, in the window.

    "No X in the window" in the spec's fall-back rules means none of these; one that exists but
    cannot be read (unit, value, partial date) is a problem of X, not an absence.
    """
    start = window_start(ctx.as_of, days)
    return any(
        lab.analyte == analyte
        and lab.status in USABLE_STATUSES
        and lab.date is not None
        and placement(lab.date, start, ctx.as_of) != "outside"
        for lab in ctx.facts.labs
    )


def on_day(ctx: Context, day: date) -> Context:
    """The same facts seen as of `day` (for same-day rules)."""
    return dataclasses.replace(ctx, as_of=day)


def latest_on_day(ctx: Context, analyte: str, day: date) -> Pick:
    """The latest usable `analyte` of calendar day `day`, for a day with one, or may have one.

    A day with only a partial date over it (`2026-06`) is ambiguous: that value may be of the day.
    """
    if day not in exact_days(on_day(ctx, day), analyte, 0):
        name = ctx.analytes[analyte].name if analyte in ctx.analytes else analyte
        return Pick(None, f"a {name} with a partial date may be of {day.isoformat()}")
    return latest_lab(on_day(ctx, day), analyte, 0)


def exact_days(ctx: Context, analyte: str, days: int) -> set[date]:
    """Calendar days in the window with a status-usable `analyte` Observation of an exact date."""
    start = window_start(ctx.as_of, days)
    return {
        lab.date.first_day
        for lab in ctx.facts.labs
        if lab.analyte == analyte
        and lab.status in USABLE_STATUSES
        and lab.date is not None
        and lab.date.is_exact_day
        and start <= lab.date.first_day <= ctx.as_of
    }


def clean(number: float) -> float:
    """Our own arithmetic without float noise (1.5 x 1.2 is 1.8, not 1.7999999999999998).

    Only results computed here are cleaned; recorded and converted values stay unrounded.
    """
    return float(f"{number:.12g}")


def shown(value: Normalised) -> str:
    return f"{value.comparator or ''}{fmt(value.value)} {value.unit}"


def decide(
    value: Normalised,
    op: str,
    limit: float,
    threshold: str,
    evidence: tuple[Evidence, ...],
    *,
    label: str | None = None,
) -> CriterionResult:
    """`value op limit` as a result, with the reason a coordinator reads."""
    result = compare(value, op, limit)
    text = label or shown(value)
    if result is Result.UNKNOWN:
        reason = f"{text} may be on either side of {threshold}"
    else:
        verb = "satisfies" if result is Result.MET else "fails"
        reason = f"{text} {verb} {threshold}"
    return CriterionResult(result, reason, evidence)


class DeriveFrom(BaseModel):
    """The two analytes an absolute count is derived from: total x percent / 100."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    total: str
    percent: str


class LabThresholdDerived(LabThreshold):
    """`lab_threshold`, but derived from total x percent / 100 when no absolute count exists."""

    kind: Literal["lab_threshold_derived"]  # type: ignore[assignment]
    derive_from: DeriveFrom

    def analytes(self) -> frozenset[str]:
        return frozenset({self.analyte, self.derive_from.total, self.derive_from.percent})

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        problem = super().check(codesets, analytes, units)  # analytes, and the threshold unit
        if problem is not None:
            return problem
        unit = analytes[self.analyte].unit
        total = analytes[self.derive_from.total]
        if total.unit != unit:
            return (
                "derive_from.total",
                f"'{total.id}' is in '{total.unit}', not in '{unit}': total x percent / 100 "
                f"would not be in the analyte's unit",
            )
        percent = analytes[self.derive_from.percent]
        if percent.unit != "%":
            return ("derive_from.percent", f"'{percent.id}' is in '{percent.unit}', not in '%'")
        return None

    def evaluate(self, ctx: Context) -> CriterionResult:
        if present_in_window(ctx, self.analyte, self.window_days):
            return super().evaluate(ctx)
        return self._derived(ctx)

    def _derived(self, ctx: Context) -> CriterionResult:
        total, percent = self.derive_from.total, self.derive_from.percent
        names = {a: ctx.analytes[a].name if a in ctx.analytes else a for a in (total, percent)}
        own = ctx.analytes[self.analyte].name if self.analyte in ctx.analytes else self.analyte
        days = exact_days(ctx, total, self.window_days) & exact_days(ctx, percent, self.window_days)
        if not days:
            return CriterionResult(
                Result.UNKNOWN,
                f"no {own.lower()} in the {self.window_days} days before "
                f"{ctx.as_of.isoformat()}, and no day in them with both {names[total]} and "
                f"{names[percent]} to derive it",
            )
        day = max(days)
        picks = (latest_on_day(ctx, total, day), latest_on_day(ctx, percent, day))
        sources = tuple(lab_evidence(p.lab, ctx.as_of) for p in picks if p.lab is not None)
        problems = [p.problem for p in picks if p.problem is not None]
        if problems:
            return CriterionResult(
                Result.UNKNOWN, f"cannot derive {own.lower()}: {'; '.join(problems)}", sources
            )
        # latest_lab reports a problem when there is no lab or it has no normalised value
        w, p = (pick.lab.normalised for pick in picks if pick.lab is not None)
        assert w is not None
        assert p is not None
        if w.comparator or p.comparator:
            return CriterionResult(
                Result.UNKNOWN,
                f"cannot derive {own.lower()}: {names[total]} {shown(w)} x {names[percent]} "
                f"{shown(p)} has a comparator",
                sources,
            )
        value = clean(w.value * p.value / 100)
        threshold = f"{self.op} {fmt(self.value)} {self.unit}"
        refs = " and ".join(e.reference for e in sources if e.reference)
        head = Evidence(
            normalised_value=value,
            normalised_unit=self.unit,
            date=day.isoformat(),
            threshold=threshold,
            note=(
                f"derived: {names[total]} {shown(w)} x {names[percent]} {shown(p)} / 100, "
                f"from {refs} (no absolute count in the window)"
            ),
        )
        derived = Normalised(value, self.unit, None, "derived")
        return decide(
            derived,
            self.op,
            self.value,
            threshold,
            (head, *sources),
            label=f"derived {shown(derived)} (no absolute count; {day.isoformat()})",
        )


KINDS: tuple[type[Criterion], ...] = (LabThresholdDerived,)
