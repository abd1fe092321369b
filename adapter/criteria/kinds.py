"""Criterion kinds: the Python half of a trial definition.

A trial file (mappings/trials/*.yaml) lists criteria, each an `id` and a `kind` with its
parameters; this module holds the kinds and how each decides. No criterion id, code, analyte,
unit or threshold of any trial lives here. Every kind is a frozen pydantic model with:
`analytes()` (what the fact builder must read), `check()` (a load-time consistency check against
the mappings, so a bad trial fails at start) and `evaluate(ctx)` (pure: facts in, result out).
"""

from __future__ import annotations

import typing
from collections.abc import Hashable, Mapping
from datetime import date
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from adapter.criteria.context import Context
from adapter.criteria.labs import compare, fmt, lab_evidence, latest_lab
from adapter.criteria.latest import same_value
from adapter.criteria.results import CriterionResult, Evidence, Result, all_of

if TYPE_CHECKING:
    from adapter.analytes import Analyte
    from adapter.codes import CodeSet
    from adapter.facts.model import LabValue, Normalised
    from adapter.facts.units import Units

Problem = tuple[str, str] | None
Op = Literal[">=", ">", "<", "<="]


class Criterion(BaseModel):
    """Base of every kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: str
    description: str = ""

    def analytes(self) -> frozenset[str]:
        return frozenset()

    def codesets(self) -> frozenset[str]:
        return frozenset()

    def reads(self) -> frozenset[str]:
        """Resource types this criterion reads besides Patient (the sweep fetches only these)."""
        types = set()
        if self.analytes():
            types.add("Observation")
        if self.codesets():
            types.add("Condition")
        return frozenset(types)

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        for name in self.codesets():
            if name not in codesets:
                return ("codeset", f"unknown code set '{name}'")
        for name in self.analytes():
            if name not in analytes:
                return ("analyte", f"unknown analyte '{name}'")
        return None

    def evaluate(self, ctx: Context) -> CriterionResult:  # pragma: no cover - abstract
        raise NotImplementedError


class NotImplementedCriterion(Criterion):
    """A criterion of the spec that the engine does not decide yet: always unknown."""

    kind: Literal["not_implemented"]

    def evaluate(self, ctx: Context) -> CriterionResult:
        return CriterionResult(Result.UNKNOWN, "not yet implemented")


class Alive(Criterion):
    """Patient.deceased[x]: deceased on or before as-of is not_met."""

    kind: Literal["alive"]

    def evaluate(self, ctx: Context) -> CriterionResult:
        p = ctx.facts.patient
        ev = (Evidence(reference=p.reference),)
        if p.deceased_boolean is True:
            return CriterionResult(Result.NOT_MET, "deceased", ev)
        when = p.deceased_date
        if when is not None:
            ev = (Evidence(reference=p.reference, date=when.text),)
            if when.last_day <= ctx.as_of:
                return CriterionResult(Result.NOT_MET, f"deceased on {when.text}", ev)
            if when.first_day <= ctx.as_of:
                return CriterionResult(
                    Result.UNKNOWN, f"deceased date {when.text} may be on or before as-of", ev
                )
            return CriterionResult(Result.MET, f"deceased only after as-of ({when.text})", ev)
        if p.deceased_unreadable:
            return CriterionResult(Result.UNKNOWN, "deceasedDateTime cannot be read", ev)
        return CriterionResult(Result.MET, "not recorded as deceased", ev)


def completed_years(birth: date, on: date) -> int:
    """Age in completed years; the birthday itself counts."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


class Age(Criterion):
    """min_years <= age <= max_years at as-of, from a possibly partial birthDate."""

    kind: Literal["age"]
    min_years: int = Field(ge=0)
    max_years: int = Field(ge=0)

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        if self.min_years > self.max_years:
            return ("min_years", "min_years is above max_years")
        return None

    def evaluate(self, ctx: Context) -> CriterionResult:
        p = ctx.facts.patient
        if p.birth_date is None:
            return CriterionResult(
                Result.UNKNOWN, "no birthDate", (Evidence(reference=p.reference),)
            )
        youngest = completed_years(p.birth_date.last_day, ctx.as_of)
        oldest = completed_years(p.birth_date.first_day, ctx.as_of)
        ev = (
            Evidence(
                reference=p.reference,
                date=p.birth_date.text,
                threshold=f"{self.min_years} to {self.max_years} years",
            ),
        )
        ages = f"{youngest}" if youngest == oldest else f"{youngest} to {oldest}"
        if youngest >= self.min_years and oldest <= self.max_years:
            return CriterionResult(Result.MET, f"aged {ages}", ev)
        if oldest < self.min_years or youngest > self.max_years:
            return CriterionResult(Result.NOT_MET, f"aged {ages}", ev)
        return CriterionResult(
            Result.UNKNOWN, f"partial birthDate: aged {ages}, across an age limit", ev
        )


def _condition_evidence(ctx: Context, codeset: str, *, active_only: bool) -> tuple[Evidence, ...]:
    out = []
    for cond in ctx.conditions_in(codeset, active_only=active_only):
        coding = ctx.codesets[codeset].matches_any(cond.codes)
        date_text = (
            cond.onset.text
            if cond.onset
            else (cond.recorded_date.text if cond.recorded_date else None)
        )
        out.append(
            Evidence(
                reference=cond.reference,
                recorded_code=coding.token() if coding else None,
                date=date_text,
                note=f"clinicalStatus {cond.clinical_status or 'absent'}",
            )
        )
    return tuple(out)


class Diagnosis(Criterion):
    """An active Condition in `confirmed` is met; only one in `possible` is unknown."""

    kind: Literal["diagnosis"]
    confirmed: str
    possible: str | None = None

    def codesets(self) -> frozenset[str]:
        return frozenset(x for x in (self.confirmed, self.possible) if x)

    def evaluate(self, ctx: Context) -> CriterionResult:
        confirmed = _condition_evidence(ctx, self.confirmed, active_only=True)
        if confirmed:
            return CriterionResult(Result.MET, f"active {self.confirmed} Condition", confirmed)
        if self.possible:
            possible = _condition_evidence(ctx, self.possible, active_only=True)
            if possible:
                return CriterionResult(
                    Result.UNKNOWN,
                    f"only a {self.possible} Condition: the coordinator confirms the type",
                    possible,
                )
        return CriterionResult(Result.NOT_MET, f"no active {self.confirmed} Condition")


class ConditionAbsent(Criterion):
    """No counting Condition in `codeset` (active ones only, or any clinicalStatus).

    `undecided_codeset` names Conditions that make the criterion unknown rather than not_met
    when nothing in `codeset` is found (trial-spec v2: a WHO Z85.0 may be the liver cancer
    itself, so no_other_malignancy is unknown and the coordinator reads the history).
    """

    kind: Literal["condition_absent"]
    codeset: str
    active_only: bool
    undecided_codeset: str | None = None

    def codesets(self) -> frozenset[str]:
        return frozenset(x for x in (self.codeset, self.undecided_codeset) if x)

    def evaluate(self, ctx: Context) -> CriterionResult:
        found = _condition_evidence(ctx, self.codeset, active_only=self.active_only)
        which = "active " if self.active_only else ""
        if found:
            return CriterionResult(Result.NOT_MET, f"{which}{self.codeset} Condition", found)
        if self.undecided_codeset:
            maybe = _condition_evidence(ctx, self.undecided_codeset, active_only=self.active_only)
            if maybe:
                return CriterionResult(
                    Result.UNKNOWN,
                    f"only a {which}{self.undecided_codeset} Condition, which may or may not "
                    f"count as {self.codeset}: the coordinator reads the history",
                    maybe,
                )
        return CriterionResult(Result.MET, f"no {which}{self.codeset} Condition")


class LabThreshold(Criterion):
    """The latest usable value of `analyte` in the window compared with `op value unit`."""

    kind: Literal["lab_threshold"]
    analyte: str
    op: Op
    value: float
    unit: str
    window_days: int = Field(gt=0, le=3650)

    def analytes(self) -> frozenset[str]:
        return frozenset({self.analyte})

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        problem = super().check(codesets, analytes, units)
        if problem is None and self.unit != analytes[self.analyte].unit:
            return (
                "unit",
                f"threshold unit '{self.unit}' is not the analyte's canonical unit "
                f"'{analytes[self.analyte].unit}'",
            )
        return problem

    def threshold(self) -> str:
        return f"{self.op} {fmt(self.value)} {self.unit}"

    def decide(self, value: Normalised) -> tuple[Result, str]:
        """The result for the deciding value, and its reason."""
        result = compare(value, self.op, self.value)
        shown = f"{value.comparator or ''}{fmt(value.value)} {value.unit}"
        if result is Result.UNKNOWN:
            return result, f"{shown} may be on either side of {self.threshold()}"
        verb = "satisfies" if result is Result.MET else "fails"
        return result, f"{shown} {verb} {self.threshold()}"

    def outcome(self, lab: LabValue) -> Hashable:
        """What a value would decide: values that could each be the latest and agree on it
        decide together (trial-spec: unknown only when the choice changes the result)."""
        return self.decide(lab.normalised)[0] if lab.normalised is not None else same_value(lab)

    def evaluate(self, ctx: Context) -> CriterionResult:
        """The latest usable value decides; without one (or unusable), unknown with the reason."""
        pick = latest_lab(ctx, self.analyte, self.window_days, self.outcome)
        if pick.lab is None:
            return CriterionResult(Result.UNKNOWN, pick.problem or "no value")
        ev = (lab_evidence(pick.lab, ctx.as_of, threshold=self.threshold()),)
        norm = pick.lab.normalised
        if pick.problem is not None or norm is None:
            return CriterionResult(Result.UNKNOWN, pick.problem or "no usable value", ev)
        result, reason = self.decide(norm)
        return CriterionResult(result, reason, ev)


class LabRange(LabThreshold):
    """The latest usable value of `analyte` in the window within low..high, both inclusive."""

    kind: Literal["lab_range"]  # type: ignore[assignment]
    op: Op = ">="
    value: float = 0.0
    low: float
    high: float

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        if self.low > self.high:
            return ("low", "low is above high")
        return super().check(codesets, analytes, units)

    def threshold(self) -> str:
        return f"{fmt(self.low)} to {fmt(self.high)} {self.unit}"

    def decide(self, value: Normalised) -> tuple[Result, str]:
        result = all_of([compare(value, ">=", self.low), compare(value, "<=", self.high)])
        shown = f"{value.comparator or ''}{fmt(value.value)} {value.unit}"
        where = {
            Result.MET: "is within",
            Result.NOT_MET: "is outside",
            Result.UNKNOWN: "may be inside or outside",
        }[result]
        return result, f"{shown} {where} {self.threshold()}"


KINDS: tuple[type[Criterion], ...] = (
    NotImplementedCriterion,
    Alive,
    Age,
    Diagnosis,
    ConditionAbsent,
    LabThreshold,
    LabRange,
)


def criterion_models() -> dict[str, type[Criterion]]:
    """kind name -> model class, for every kind of every module."""
    # Imported here: these modules import this one for Criterion.
    from adapter.criteria import (
        child_pugh,
        clinical,
        coagulation,
        derived,
        history,
        observed,
        uln,
    )

    modules = (uln, derived, coagulation, child_pugh, history, clinical, observed)
    out: dict[str, type[Criterion]] = {}
    for cls in (*KINDS, *(k for m in modules for k in m.KINDS)):
        (name,) = typing.get_args(cls.model_fields["kind"].annotation)
        out[str(name)] = cls
    return out
