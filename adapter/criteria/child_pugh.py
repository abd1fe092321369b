"""`child_pugh`: the Child-Pugh score as a range of possible scores.

Trial-spec, "The criteria" and fine print: points from the latest bilirubin, albumin and INR in
the lab window (PT prolongation when there is no usable INR there), plus one item per condition
code set (ascites, hepatic encephalopathy): `absent` points when no active Condition, `present`
(a min..max range, the grade is rarely coded) when one is. A missing or unreadable lab contributes
every band's points; a value with a comparator contributes every band its interval overlaps.
Highest possible score <= `max_score` is met; lowest possible > `max_score` is not_met; else
unknown.

Bands are parameters, in the analyte's canonical unit, each with explicit edges: `gt`/`ge` for
the lower edge, `lt`/`le` for the upper one (absent: unbounded). The spec's "2-3 mg/dL" includes
2 and 3, so the bands of "<2 / 2-3 / >3" are `{lt: 2}`, `{ge: 2, le: 3}`, `{gt: 3}`. The bands of
one lab must cover every value exactly once (checked when the trial loads).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapter.criteria.coagulation import pt_prolongation
from adapter.criteria.context import Context
from adapter.criteria.derived import present_in_window, shown
from adapter.criteria.kinds import Criterion, Problem
from adapter.criteria.labs import fmt, interval, lab_evidence, latest_lab
from adapter.criteria.latest import same_value
from adapter.criteria.results import CriterionResult, Evidence, Result
from adapter.facts.model import Normalised

if TYPE_CHECKING:
    from adapter.analytes import Analyte
    from adapter.codes import CodeSet
    from adapter.facts.units import Units


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Band(_Strict):
    """Values between a lower edge (`gt` or `ge`) and an upper edge (`lt` or `le`): `points`."""

    points: int = Field(ge=0)
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    @model_validator(mode="after")
    def _edges(self) -> Band:
        if self.gt is not None and self.ge is not None:
            raise ValueError("a band has one lower edge: `gt` or `ge`, not both")
        if self.lt is not None and self.le is not None:
            raise ValueError("a band has one upper edge: `lt` or `le`, not both")
        low, _, high, _ = self.bounds()
        if low >= high:
            raise ValueError(f"band '{self.text()}' is empty")
        return self

    def bounds(self) -> tuple[float, bool, float, bool]:
        """(low, low included, high, high included), as `labs.interval` gives them."""
        if self.ge is not None:
            low, low_in = self.ge, True
        else:
            low, low_in = (self.gt, False) if self.gt is not None else (-math.inf, False)
        if self.le is not None:
            high, high_in = self.le, True
        else:
            high, high_in = (self.lt, False) if self.lt is not None else (math.inf, False)
        return low, low_in, high, high_in

    def text(self, unit: str = "") -> str:
        low, low_in, high, high_in = self.bounds()
        parts = []
        if low > -math.inf:
            parts.append(f"{'>=' if low_in else '>'} {fmt(low)}")
        if high < math.inf:
            parts.append(f"{'<=' if high_in else '<'} {fmt(high)}")
        if not parts:
            return "any value"
        return f"{' and '.join(parts)}{f' {unit}' if unit else ''}"

    def overlaps(self, value: Normalised) -> bool:
        """Some value of the (possibly comparator-qualified) interval is in the band."""
        a_low, a_low_in, a_high, a_high_in = interval(value)
        b_low, b_low_in, b_high, b_high_in = self.bounds()
        low, low_in = max((a_low, a_low_in), (b_low, b_low_in), key=_lower_key)
        high, high_in = min((a_high, a_high_in), (b_high, b_high_in), key=_upper_key)
        return low < high or (low == high and low_in and high_in)


def _lower_key(edge: tuple[float, bool]) -> tuple[float, bool]:
    # Of two lower edges at the same value, the exclusive one is the tighter.
    return (edge[0], not edge[1])


def _upper_key(edge: tuple[float, bool]) -> tuple[float, bool]:
    # Of two upper edges at the same value, the exclusive one is the tighter.
    return (edge[0], edge[1])


class LabBands(_Strict):
    """One lab item: the analyte, the unit its band edges are in, and the bands."""

    analyte: str
    unit: str
    bands: tuple[Band, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _cover(self) -> LabBands:
        ordered = sorted(self.bands, key=lambda b: _lower_key(b.bounds()[:2]))
        first, last = ordered[0].bounds(), ordered[-1].bounds()
        if first[0] > -math.inf:
            raise ValueError(f"the bands leave values below {fmt(first[0])} without points")
        if last[2] < math.inf:
            raise ValueError(f"the bands leave values above {fmt(last[2])} without points")
        for below, above in pairwise(ordered):
            _, _, high, high_in = below.bounds()
            low, low_in, _, _ = above.bounds()
            if high != low or high_in == low_in:
                raise ValueError(
                    f"bands '{below.text()}' and '{above.text()}' must meet at one edge, "
                    f"included in exactly one of them"
                )
        return self

    def span(self) -> tuple[int, int]:
        """Lowest and highest points of any band (a missing value may score any of them)."""
        every = [b.points for b in self.bands]
        return min(every), max(every)

    def score(self, value: Normalised) -> tuple[int, int, list[Band]]:
        hit = [b for b in self.bands if b.overlaps(value)]
        return min(b.points for b in hit), max(b.points for b in hit), hit

    def check(self, analytes: Mapping[str, Analyte], where: str) -> Problem:
        unit = analytes[self.analyte].unit
        if self.unit != unit:
            return (
                f"{where}.unit",
                f"band unit '{self.unit}' is not the analyte's canonical unit '{unit}'",
            )
        return None


class PtBands(LabBands):
    """The PT-prolongation item, used when there is no usable INR in the window."""

    ratio_analyte: str | None = None
    #: control PT, in `unit`, when there is neither a same-day ratio nor a two-bound range
    default_control: float = Field(gt=0)


class ConditionPoints(_Strict):
    """One condition item: `absent` points when no active Condition, `present` (min, max) else."""

    codeset: str
    absent: int = Field(ge=0)
    present: tuple[int, int]

    @model_validator(mode="after")
    def _ordered(self) -> ConditionPoints:
        if self.present[0] > self.present[1]:
            raise ValueError("`present` is [lowest, highest] points")
        return self


class Grade(_Strict):
    """A class label for scores up to `up_to` (and above the previous grade's)."""

    grade: str
    up_to: int


@dataclass(frozen=True, slots=True)
class Item:
    """What one item contributes: a points range, why it is a range, and its evidence."""

    label: str
    low: int
    high: int
    why: str | None
    evidence: tuple[Evidence, ...]

    def text(self) -> str:
        pts = point_text(self.low, self.high)
        return f"{self.label}: {pts}{f' ({self.why})' if self.why else ''}"


def point_text(low: int, high: int) -> str:
    """'1 point', '2 points', '1-3 points'."""
    if low == high:
        return f"{low} point{'' if low == 1 else 's'}"
    return f"{low}-{high} points"


class ChildPugh(Criterion):
    """Child-Pugh score range from labs and conditions; decided only when wholly on one side."""

    kind: Literal["child_pugh"]
    window_days: int = Field(gt=0, le=3650)
    max_score: int
    bilirubin: LabBands
    albumin: LabBands
    inr: LabBands
    pt_prolongation: PtBands | None = None
    conditions: tuple[ConditionPoints, ...] = ()
    grades: tuple[Grade, ...] = ()

    def _labs(self) -> dict[str, LabBands]:
        labs = {"bilirubin": self.bilirubin, "albumin": self.albumin, "inr": self.inr}
        if self.pt_prolongation is not None:
            labs["pt_prolongation"] = self.pt_prolongation
        return labs

    def analytes(self) -> frozenset[str]:
        names = {item.analyte for item in self._labs().values()}
        if self.pt_prolongation is not None and self.pt_prolongation.ratio_analyte:
            names.add(self.pt_prolongation.ratio_analyte)
        return frozenset(names)

    def codesets(self) -> frozenset[str]:
        return frozenset(c.codeset for c in self.conditions)

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        problem = super().check(codesets, analytes, units)
        for where, item in self._labs().items():
            problem = problem or item.check(analytes, where)
        return problem

    def evaluate(self, ctx: Context) -> CriterionResult:
        items = [
            self._lab(ctx, "bilirubin", self.bilirubin),
            self._lab(ctx, "albumin", self.albumin),
            self._coagulation(ctx),
            *(self._condition(ctx, c) for c in self.conditions),
        ]
        low = sum(i.low for i in items)
        high = sum(i.high for i in items)
        scores = f"{low}" if low == high else f"{low}-{high}"
        grades = self._grades(low, high)
        summary = f"Child-Pugh {scores}{f' ({grades})' if grades else ''}"
        if high <= self.max_score:
            result, verdict = Result.MET, summary
        elif low > self.max_score:
            result, verdict = Result.NOT_MET, summary
        else:
            result = Result.UNKNOWN
            verdict = f"{summary}, on both sides of {self.max_score}/{self.max_score + 1}"
        head = Evidence(threshold=f"score <= {self.max_score}", note=summary)
        return CriterionResult(
            result,
            f"{verdict}: {', '.join(i.text() for i in items)}",
            (head, *(e for i in items for e in i.evidence)),
        )

    def _grades(self, low: int, high: int) -> str:
        names, floor = [], -math.inf
        for g in sorted(self.grades, key=lambda g: g.up_to):
            if low <= g.up_to and high > floor:
                names.append(g.grade)
            floor = g.up_to
        return " or ".join(names)

    def _lab(self, ctx: Context, label: str, spec: LabBands) -> Item:
        pick = latest_lab(
            ctx,
            spec.analyte,
            self.window_days,
            lambda lab: spec.score(lab.normalised)[:2] if lab.normalised else same_value(lab),
        )
        low, high = spec.span()
        if pick.lab is None:
            why = pick.problem or "no value"
            return Item(label, low, high, why, (Evidence(note=f"{label}: {why}"),))
        norm = pick.lab.normalised
        if pick.problem is not None or norm is None:
            why = pick.problem or "no usable value"
            return Item(label, low, high, why, (lab_evidence(pick.lab, ctx.as_of),))
        low, high, hit = spec.score(norm)
        bands = "; ".join(f"{b.text(spec.unit)}: {point_text(b.points, b.points)}" for b in hit)
        ev = lab_evidence(pick.lab, ctx.as_of, threshold=bands)
        return Item(f"{label} {shown(norm)}", low, high, None, (ev,))

    def _coagulation(self, ctx: Context) -> Item:
        pt = self.pt_prolongation
        if pt is None or present_in_window(ctx, self.inr.analyte, self.window_days):
            return self._lab(ctx, "INR", self.inr)
        found = pt_prolongation(
            ctx, pt.analyte, pt.ratio_analyte, self.window_days, pt.default_control
        )
        low, high = pt.span()
        no_inr = f"no INR in the {self.window_days} days"
        if found.value is None:
            why = f"{no_inr}; {found.text}"
            return Item("INR/PT", low, high, why, (*found.evidence, Evidence(note=why)))
        low, high, hit = pt.score(found.value)
        bands = "; ".join(f"{b.text(pt.unit)}: {point_text(b.points, b.points)}" for b in hit)
        head, *rest = found.evidence
        head = dataclasses.replace(
            head, threshold=f"PT prolongation {bands}", note=f"{no_inr}; {head.note}"
        )
        return Item(found.text, low, high, None, (head, *rest))

    def _condition(self, ctx: Context, spec: ConditionPoints) -> Item:
        label = spec.codeset.replace("_", " ")
        found = list(ctx.conditions_in(spec.codeset, active_only=True))
        if not found:
            note = f"no active {label} Condition: {point_text(spec.absent, spec.absent)}"
            return Item(f"{label} absent", spec.absent, spec.absent, None, (Evidence(note=note),))
        low, high = spec.present
        evidence = []
        for cond in found:
            coding = ctx.codesets[spec.codeset].matches_any(cond.codes)
            when = cond.onset or cond.recorded_date
            evidence.append(
                Evidence(
                    reference=cond.reference,
                    recorded_code=coding.token() if coding else None,
                    date=when.text if when else None,
                    note=f"active {label} (clinicalStatus {cond.clinical_status or 'absent'}): "
                    f"{point_text(low, high)}, the grade is not coded",
                )
            )
        return Item(f"{label} active", low, high, None, tuple(evidence))


KINDS: tuple[type[Criterion], ...] = (ChildPugh,)
