"""`pt_prolongation`, and the combinators `any_of` / `all_of` of inline sub-criteria.

Trial-spec, "Analytes and codes": PT prolongation = PT - control PT. The control is PT / ratio
when a ratio Observation exists on the PT's calendar day, else the midpoint of the PT
Observation's referenceRange low..high, else the default (a trial parameter); the evidence says
which. Fine print: a referenceRange with only one bound gives the default. Coagulation is
"INR < 1.7 OR PT prolongation < 3 s" in Kleene logic: `any_of` over two sub-criteria.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator

from adapter.criteria.context import Context
from adapter.criteria.derived import (
    clean,
    decide,
    latest_on_day,
    on_day,
    present_in_window,
    shown,
)
from adapter.criteria.kinds import Criterion, Op, Problem
from adapter.criteria.labs import fmt, lab_evidence, latest_lab
from adapter.criteria.results import CriterionResult, Evidence, Result, all_of, any_of
from adapter.criteria.uln import ranges_for
from adapter.facts.model import LabValue, Normalised

if TYPE_CHECKING:
    from adapter.analytes import Analyte
    from adapter.codes import CodeSet
    from adapter.facts.units import Units


@dataclass(frozen=True, slots=True)
class Control:
    """The control PT (in the PT's unit) and how it was found, or why it cannot be."""

    value: float | None
    source: str
    evidence: tuple[Evidence, ...] = ()


def control_pt(ctx: Context, pt: LabValue, ratio_analyte: str | None, default: float) -> Control:
    """PT / same-day ratio, else the referenceRange midpoint, else `default`."""
    assert pt.normalised is not None
    value = pt.normalised
    day = pt.date.first_day if pt.date is not None and pt.date.is_exact_day else None
    if ratio_analyte and day is not None and present_in_window(on_day(ctx, day), ratio_analyte, 0):
        return _ratio_control(ctx, value, ratio_analyte, day)
    entries = ranges_for(pt.reference_ranges, ctx.facts.patient, ctx.as_of)
    if entries and entries[0].high_problem is not None:
        # As for a ULN: a range the Observation gives but that cannot be read is not replaced
        # by the default in silence.
        return Control(
            None, f"control PT from the referenceRange: {entries[0].high_problem} ({pt.reference})"
        )
    if entries:
        low, high = entries[0].low, entries[0].high
        if low is not None and high is not None:
            control = clean(low.value / 2 + high.value / 2)  # (low + high) / 2 can overflow
            return Control(
                control,
                f"control PT {fmt(control)} {value.unit} = midpoint of referenceRange "
                f"{fmt(low.value)}-{fmt(high.value)} {high.unit} of {pt.reference}",
            )
        why = "no same-day ratio; the referenceRange has only one readable bound"
    else:
        why = "no same-day ratio, no referenceRange"
    return Control(default, f"control PT {fmt(default)} {value.unit}: the default ({why})")


def _ratio_control(ctx: Context, pt: Normalised, ratio_analyte: str, day: date) -> Control:
    pick = latest_on_day(ctx, ratio_analyte, day)
    if pick.lab is None:
        return Control(None, f"control PT from the same-day ratio: {pick.problem}")
    ev = (lab_evidence(pick.lab, ctx.as_of),)
    ratio = pick.lab.normalised
    if pick.problem is not None or ratio is None:
        return Control(None, f"control PT from the same-day ratio: {pick.problem}", ev)
    control = pt.value / ratio.value if ratio.value > 0 else math.inf
    if ratio.comparator or pt.comparator or not math.isfinite(control):
        # a ratio of 5e-324 makes the control infinite, and the prolongation -inf: no band
        return Control(
            None, f"control PT = PT {shown(pt)} / ratio {shown(ratio)} cannot be computed", ev
        )
    control = clean(control)
    return Control(
        control,
        f"control PT {fmt(control)} {pt.unit} = PT {fmt(pt.value)} {pt.unit} / ratio "
        f"{fmt(ratio.value)} of {pick.lab.reference} (same day)",
        ev,
    )


@dataclass(frozen=True, slots=True)
class Prolongation:
    """PT - control PT (comparator of the PT kept), or why it cannot be computed."""

    value: Normalised | None
    text: str
    evidence: tuple[Evidence, ...] = ()


def pt_prolongation(
    ctx: Context, pt: str, ratio: str | None, window_days: int, default_control: float
) -> Prolongation:
    pick = latest_lab(ctx, pt, window_days)
    if pick.lab is None:
        return Prolongation(None, pick.problem or "no prothrombin time")
    lab, norm = pick.lab, pick.lab.normalised
    pt_ev = lab_evidence(lab, ctx.as_of)
    if pick.problem is not None or norm is None:
        return Prolongation(None, pick.problem or "no usable prothrombin time", (pt_ev,))
    control = control_pt(ctx, lab, ratio, default_control)
    if control.value is None:
        return Prolongation(None, control.source, (pt_ev, *control.evidence))
    analyte = ctx.analytes.get(pt)
    if analyte is not None and not analyte.plausible(control.value):
        # The control is a prothrombin time too (trial-spec v2 plausibility): a ratio of 1e-300
        # or a referenceRange of 1e308 s must not give a prolongation of -1e301 s.
        why = f"{control.source}: not a plausible prothrombin time ({analyte.plausible_text()})"
        return Prolongation(None, why, (pt_ev, *control.evidence))
    value = Normalised(clean(norm.value - control.value), norm.unit, norm.comparator, "derived")
    head = Evidence(
        reference=lab.reference,
        normalised_value=value.value,
        normalised_unit=value.unit,
        recorded_comparator=value.comparator,
        date=lab.date.text if lab.date else None,
        note=f"derived: PT prolongation = PT {shown(norm)} - control; {control.source}",
    )
    text = (
        f"PT prolongation {shown(value)} "
        f"(PT {shown(norm)} - control {fmt(control.value)} {norm.unit})"
    )
    return Prolongation(value, text, (head, pt_ev, *control.evidence))


class PtProlongation(Criterion):
    """PT prolongation (PT - control PT) of the latest usable PT compared `op value unit`."""

    kind: Literal["pt_prolongation"]
    analyte: str
    ratio_analyte: str | None = None
    #: control PT, in `unit`, when there is neither a same-day ratio nor a two-bound range
    default_control: float = Field(gt=0)
    op: Op
    value: float
    unit: str
    window_days: int = Field(gt=0, le=3650)

    def analytes(self) -> frozenset[str]:
        return frozenset(a for a in (self.analyte, self.ratio_analyte) if a)

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        problem = super().check(codesets, analytes, units)
        if problem is None and self.unit != analytes[self.analyte].unit:
            return (
                "unit",
                f"unit '{self.unit}' is not the analyte's unit '{analytes[self.analyte].unit}'",
            )
        return problem

    def evaluate(self, ctx: Context) -> CriterionResult:
        threshold = f"{self.op} {fmt(self.value)} {self.unit}"
        found = pt_prolongation(
            ctx, self.analyte, self.ratio_analyte, self.window_days, self.default_control
        )
        if found.value is None:
            return CriterionResult(
                Result.UNKNOWN, f"no PT prolongation: {found.text}", found.evidence
            )
        head, *rest = found.evidence
        head = dataclasses.replace(head, threshold=f"PT prolongation {threshold}")
        return decide(found.value, self.op, self.value, threshold, (head, *rest), label=found.text)


# -- combinators ------------------------------------------------------------------------------

_ID = re.compile(r"^[a-z][a-z0-9_]*$")


def known_kinds() -> Mapping[str, type[Criterion]]:
    """kind name -> model, for sub-criteria."""
    # Imported here, not at the top: kinds.py registers this module's KINDS.
    from adapter.criteria.kinds import criterion_models

    return criterion_models()


class _Combination(Criterion):
    """Inline sub-criteria (`of`), each a kind with its parameters; `id` optional, else <id>_<n>."""

    # SerializeAsAny: a dump shows each part's own parameters, not only the base fields
    of: tuple[SerializeAsAny[Criterion], ...] = Field(min_length=1)

    @field_validator("of", mode="before")
    @classmethod
    def _build_parts(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, list):
            return value
        parent = info.data.get("id")
        prefix = parent if isinstance(parent, str) and _ID.match(parent) else "part"
        models = known_kinds()
        parts: list[Any] = []
        for n, raw in enumerate(value):
            if not isinstance(raw, dict):
                parts.append(raw)
                continue
            kind = raw.get("kind")
            if not isinstance(kind, str) or kind not in models:
                raise ValueError(
                    f"of.{n}.kind: unknown criterion kind {kind!r} "
                    f"(known: {', '.join(sorted(models))})"
                )
            try:
                parts.append(models[kind].model_validate({"id": f"{prefix}_{n + 1}", **raw}))
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in ("of", n, *err["loc"]))
                raise ValueError(f"{where}: {err['msg']}") from None
        return parts

    def analytes(self) -> frozenset[str]:
        return frozenset().union(*(part.analytes() for part in self.of))

    def reads(self) -> frozenset[str]:
        return frozenset().union(*(part.reads() for part in self.of))

    def codesets(self) -> frozenset[str]:
        return frozenset().union(*(part.codesets() for part in self.of))

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        for n, part in enumerate(self.of):
            problem = part.check(codesets, analytes, units)
            if problem is not None:
                return (f"of.{n}.{problem[0]}", problem[1])
        return None

    def _parts(self, ctx: Context) -> tuple[list[CriterionResult], str, tuple[Evidence, ...]]:
        results = [part.evaluate(ctx) for part in self.of]
        reason = "; ".join(
            f"{part.description}: {r.reason}" if part.description else r.reason
            for part, r in zip(self.of, results, strict=True)
        )
        return results, reason, tuple(e for r in results for e in r.evidence)


class AnyOf(_Combination):
    """Kleene OR of the sub-criteria: met if any is met, not_met only if every one is."""

    kind: Literal["any_of"]

    def evaluate(self, ctx: Context) -> CriterionResult:
        results, reason, evidence = self._parts(ctx)
        return CriterionResult(any_of(r.result for r in results), reason, evidence)


class AllOf(_Combination):
    """Kleene AND of the sub-criteria: not_met if any is not_met, met only if every one is."""

    kind: Literal["all_of"]

    def evaluate(self, ctx: Context) -> CriterionResult:
        results, reason, evidence = self._parts(ctx)
        return CriterionResult(all_of(r.result for r in results), reason, evidence)


KINDS: tuple[type[Criterion], ...] = (PtProlongation, AnyOf, AllOf)
