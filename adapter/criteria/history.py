"""History criteria: early recurrence after a radical treatment, and a condition-or-procedure
exclusion (organ transplant); with the evidence helpers for Conditions and Procedures.

Dates are spans of calendar days (a partial `2025-03` spans March); every comparison is made on
the whole span, and one that could go either way gives unknown (trial-spec: "unknown: ... an
ambiguous date").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from adapter.criteria.context import Context
from adapter.criteria.kinds import Criterion, Problem
from adapter.criteria.results import CriterionResult, Evidence, Result
from adapter.facts.dates import FhirDate
from adapter.facts.model import ConditionFact, ProcedureFact

if TYPE_CHECKING:
    from adapter.analytes import Analyte
    from adapter.codes import CodeSet
    from adapter.facts.units import Units

#: Procedure.status values that are not a procedure that happened (planned, refused, mistaken)
NOT_PERFORMED = frozenset({"preparation", "not-done", "entered-in-error"})


def condition_date(cond: ConditionFact) -> FhirDate | None:
    """onsetDateTime, else onsetPeriod.start (both in `onset`), else recordedDate."""
    return cond.onset or cond.recorded_date


def condition_evidence(
    ctx: Context,
    cond: ConditionFact,
    codeset: str,
    *,
    note: str | None = None,
    threshold: str | None = None,
) -> Evidence:
    coding = ctx.codesets[codeset].matches_any(cond.codes)
    when = condition_date(cond)
    status = f"clinicalStatus {cond.clinical_status or 'absent'}"
    return Evidence(
        reference=cond.reference,
        recorded_code=coding.token() if coding else None,
        date=when.text if when else None,
        threshold=threshold,
        note=f"{status}; {note}" if note else status,
    )


def procedure_evidence(
    ctx: Context, proc: ProcedureFact, codeset: str, *, note: str | None = None
) -> Evidence:
    coding = ctx.codesets[codeset].matches_any(proc.codes)
    status = f"status {proc.status or 'absent'}"
    return Evidence(
        reference=proc.reference,
        recorded_code=coding.token() if coding else None,
        date=proc.performed.text if proc.performed else None,
        note=f"{status}; {note}" if note else status,
    )


def patient_evidence(ctx: Context, note: str) -> Evidence:
    """Evidence for a result decided by absent data: the patient, and what was looked for."""
    return Evidence(reference=ctx.facts.patient.reference, note=note)


def day_text(when: FhirDate) -> str:
    """A date as a reason shows it: the calendar day, or the partial date as written."""
    return when.first_day.isoformat() if when.is_exact_day else when.text


def add_years(day: date, years: int) -> date:
    """The same calendar day `years` later; 29 February becomes 28 February (the shorter span)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


class EarlyRecurrence(Criterion):
    """Recurrence R between P + min_days and P + max_years, P the latest completed treatment.

    P: the latest completed (`status == completed`) Procedure in `procedure_codeset` performed on
    or before as-of. Trial-spec v2: when a counting Condition in `condition_codeset` after P has
    clinicalStatus recurrence or relapse, R is the earliest onset among those. Otherwise every
    onset after P of an active one is a possible R (hospitals re-code at each admission): met
    when the earliest is in the range, unknown when it is before and a later one is in it,
    not_met when none is. A Condition's date is its onset, else recordedDate; onset on P's own
    day is not after P. Partial dates are spans: P
    lies between the latest possible earliest day and the latest possible last day of the
    candidates; a Condition whose span may fall on either side of P gives unknown, as does a
    range check the spans cannot settle.
    """

    kind: Literal["early_recurrence"]
    procedure_codeset: str
    condition_codeset: str
    min_days: int = Field(ge=0)
    max_years: int = Field(gt=0)

    def reads(self) -> frozenset[str]:
        return frozenset({"Condition", "Procedure"})

    def codesets(self) -> frozenset[str]:
        return frozenset({self.procedure_codeset, self.condition_codeset})

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        problem = super().check(codesets, analytes, units)
        if problem is None and self.min_days >= 365 * self.max_years:
            return ("min_days", "min_days is not below max_years")
        return problem

    def evaluate(self, ctx: Context) -> CriterionResult:
        treatment = self.procedure_codeset
        cs = ctx.codesets[treatment]
        done = [
            p for p in ctx.facts.procedures if p.status == "completed" and cs.matches_any(p.codes)
        ]
        undated = [p for p in done if p.performed is None]
        dated = [p for p in done if p.performed and p.performed.first_day <= ctx.as_of]
        certain = [p for p in dated if _day(p).last_day <= ctx.as_of]
        if undated:
            return CriterionResult(
                Result.UNKNOWN,
                f"a completed {treatment} Procedure has no performed date: it could be the latest",
                tuple(procedure_evidence(ctx, p, treatment) for p in undated),
            )
        if not certain:
            if dated:
                return CriterionResult(
                    Result.UNKNOWN,
                    f"every completed {treatment} Procedure may be after "
                    f"{ctx.as_of.isoformat()} (partial dates)",
                    tuple(procedure_evidence(ctx, p, treatment) for p in dated),
                )
            return CriterionResult(
                Result.UNKNOWN,
                f"no completed {treatment} Procedure on or before {ctx.as_of.isoformat()}",
                (patient_evidence(ctx, f"no completed {treatment} Procedure"),),
            )
        # P is the latest of the candidates' actual days: within [p_lo, p_hi].
        p_lo = max(_day(p).first_day for p in certain)
        p_hi = max(min(_day(p).last_day, ctx.as_of) for p in dated)
        latest = [p for p in dated if min(_day(p).last_day, ctx.as_of) >= p_lo]
        p_text = " or ".join(sorted({day_text(_day(p)) for p in latest}))
        p_ev = tuple(
            procedure_evidence(ctx, p, treatment, note="P: the latest radical treatment")
            for p in latest
        )
        after: list[tuple[ConditionFact, FhirDate]] = []
        for cond in ctx.conditions_in(self.condition_codeset, active_only=True):
            when = condition_date(cond)
            if when is None or when.last_day <= p_lo:
                continue  # undated, or not after P
            if when.first_day <= p_hi:
                return CriterionResult(
                    Result.UNKNOWN,
                    f"the {self.condition_codeset} Condition dated {day_text(when)} may be "
                    f"before or after the treatment on {p_text}",
                    (*p_ev, condition_evidence(ctx, cond, self.condition_codeset)),
                )
            after.append((cond, when))
        if not after:
            return CriterionResult(
                Result.UNKNOWN,
                f"no active {self.condition_codeset} Condition with onset after the treatment on "
                f"{p_text}",
                p_ev,
            )
        span = _Range(p_lo, p_hi, self.min_days, self.max_years)
        recurred = [(c, w) for c, w in after if c.clinical_status in RECURRED]
        if recurred:
            # trial-spec v2: R is the earliest onset among the Conditions coded as a recurrence.
            return self._decide_recurrence(ctx, recurred, span, p_text, p_ev)
        return self._decide_recodings(ctx, after, span, p_text, p_ev)

    def _decide_recurrence(
        self,
        ctx: Context,
        recurred: list[tuple[ConditionFact, FhirDate]],
        span: _Range,
        p_text: str,
        p_ev: tuple[Evidence, ...],
    ) -> CriterionResult:
        r_lo = min(when.first_day for _, when in recurred)
        r_hi = min(when.last_day for _, when in recurred)
        earliest = [(c, w) for c, w in recurred if w.first_day <= r_hi]
        r_text = " or ".join(sorted({day_text(w) for _, w in earliest}))
        ev = (*p_ev, *self._r_evidence(ctx, earliest, span, "R: recurrence after P"))
        gap = f"recurrence {r_text} after the treatment on {p_text}"
        if span.p_lo == span.p_hi and r_lo == r_hi:
            gap = (
                f"recurrence {r_text}, {(r_lo - span.p_lo).days} days after the treatment on "
                f"{p_text}"
            )
        where = span.place(r_lo, r_hi)
        if where == "before":
            return CriterionResult(Result.NOT_MET, f"{gap}: sooner than {self.min_days} days", ev)
        if where == "after":
            return CriterionResult(Result.NOT_MET, f"{gap}: later than {self.max_years} years", ev)
        if where == "in":
            return CriterionResult(
                Result.MET, f"{gap}: within {self.min_days} days to {self.max_years} years", ev
            )
        return CriterionResult(
            Result.UNKNOWN,
            f"{gap}: partial dates may put it on either side of {span.threshold()}",
            ev,
        )

    def _decide_recodings(
        self,
        ctx: Context,
        after: list[tuple[ConditionFact, FhirDate]],
        span: _Range,
        p_text: str,
        p_ev: tuple[Evidence, ...],
    ) -> CriterionResult:
        """No Condition says recurrence: every active one after P is a possible R (hospitals
        re-code C22.0 at every admission, so the first may be a post-operative stay)."""
        places = [(c, w, span.place(w.first_day, w.last_day)) for c, w in after]
        first_last = min(w.last_day for _, w in after)
        earliest = [(c, w, where) for c, w, where in places if w.first_day <= first_last]
        ev = (*p_ev, *self._r_evidence(ctx, [(c, w) for c, w, _ in places], span, None))
        dates = ", ".join(sorted({day_text(w) for _, w in after}))
        named = f"{self.condition_codeset} onsets after the treatment on {p_text}: {dates}"
        if all(where == "in" for _, _, where in earliest):
            first = " or ".join(sorted({day_text(w) for _, w, _ in earliest}))
            return CriterionResult(
                Result.MET,
                f"{named}; the earliest ({first}) is within {self.min_days} days to "
                f"{self.max_years} years",
                ev,
            )
        if not any(where in ("in", "maybe") for _, _, where in places):
            return CriterionResult(
                Result.NOT_MET,
                f"{named}; none is within {self.min_days} days to {self.max_years} years "
                f"({span.threshold()})",
                ev,
            )
        if all(where == "before" for _, _, where in earliest):
            return CriterionResult(
                Result.UNKNOWN,
                f"{named}; the earliest is sooner than {self.min_days} days (it may be a "
                "post-operative re-coding, not a recurrence) and a later one is in range: the "
                "coordinator confirms the recurrence date",
                ev,
            )
        return CriterionResult(
            Result.UNKNOWN,
            f"{named}; partial dates may put the earliest on either side of {span.threshold()}",
            ev,
        )

    def _r_evidence(
        self,
        ctx: Context,
        conds: list[tuple[ConditionFact, FhirDate]],
        span: _Range,
        note: str | None,
    ) -> tuple[Evidence, ...]:
        return tuple(
            condition_evidence(
                ctx,
                c,
                self.condition_codeset,
                note=note or f"a possible R: {span.place(w.first_day, w.last_day)} the range",
                threshold=span.threshold(),
            )
            for c, w in conds
        )


#: clinicalStatus codes that say a Condition is a recurrence (trial-spec v2, early_recurrence)
RECURRED = frozenset({"recurrence", "relapse"})


@dataclass(frozen=True, slots=True)
class _Range:
    """P + min_days <= R <= P + max_years, with P known to lie within p_lo..p_hi."""

    p_lo: date
    p_hi: date
    min_days: int
    max_years: int

    def threshold(self) -> str:
        if self.p_lo == self.p_hi:
            low = self.p_lo + timedelta(days=self.min_days)
            return f"{low.isoformat()} <= R <= {add_years(self.p_lo, self.max_years).isoformat()}"
        return f"P + {self.min_days} days <= R <= P + {self.max_years} years"

    def place(self, first: date, last: date) -> str:
        """'before', 'in' or 'after' the range for certain, else 'maybe', for R in first..last."""
        if last < self.p_lo + timedelta(days=self.min_days):
            return "before"
        if first > add_years(self.p_hi, self.max_years):
            return "after"
        if first >= self.p_hi + timedelta(days=self.min_days) and last <= add_years(
            self.p_lo, self.max_years
        ):
            return "in"
        return "maybe"


def _day(proc: ProcedureFact) -> FhirDate:
    assert proc.performed is not None
    return proc.performed


class ConditionOrProcedureAbsent(Criterion):
    """No counting Condition in `condition_codeset` (any clinicalStatus, or active ones only) and
    no Procedure in `procedure_codeset` performed on or before as-of.

    A Procedure counts unless its status says it did not happen (preparation, not-done,
    entered-in-error); one with no date counts (history of); one whose partial date may be after
    as-of gives unknown when nothing else decides.
    """

    kind: Literal["condition_or_procedure_absent"]
    condition_codeset: str
    procedure_codeset: str
    active_only: bool

    def reads(self) -> frozenset[str]:
        return frozenset({"Condition", "Procedure"})

    def codesets(self) -> frozenset[str]:
        return frozenset({self.condition_codeset, self.procedure_codeset})

    def evaluate(self, ctx: Context) -> CriterionResult:
        which = "active " if self.active_only else ""
        conds = list(ctx.conditions_in(self.condition_codeset, active_only=self.active_only))
        cs = ctx.codesets[self.procedure_codeset]
        procs = [
            p
            for p in ctx.facts.procedures
            if p.status not in NOT_PERFORMED
            and cs.matches_any(p.codes)
            and (p.performed is None or p.performed.first_day <= ctx.as_of)
        ]
        certain = [p for p in procs if p.performed is None or p.performed.last_day <= ctx.as_of]
        ev = (
            *(condition_evidence(ctx, c, self.condition_codeset) for c in conds),
            *(procedure_evidence(ctx, p, self.procedure_codeset) for p in procs),
        )
        if conds or certain:
            found = []
            if conds:
                found.append(f"{which}{self.condition_codeset} Condition")
            if certain:
                found.append(f"{self.procedure_codeset} Procedure")
            return CriterionResult(Result.NOT_MET, " and ".join(found), ev)
        if procs:
            return CriterionResult(
                Result.UNKNOWN,
                f"a {self.procedure_codeset} Procedure may be after {ctx.as_of.isoformat()}",
                ev,
            )
        none = (
            f"no {which}{self.condition_codeset} Condition and no {self.procedure_codeset} "
            "Procedure"
        )
        return CriterionResult(Result.MET, none, (patient_evidence(ctx, none),))


KINDS: tuple[type[Criterion], ...] = (EarlyRecurrence, ConditionOrProcedureAbsent)
