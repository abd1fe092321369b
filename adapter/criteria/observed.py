"""Observations that are not a plain lab threshold: a coded score (ECOG), tumour burden (Milan),
and blood pressure pairs; with the helpers that choose readings for them and for clinical.py.

Trial-spec, data rules and fine print: only status-usable Observations count; an item is in an
N-day window by the calendar date of its timestamp; a partial date that crosses the window edge,
or could make it the latest, gives unknown; the latest decides, with no fall-back when it cannot
be read; same-timestamp readings that disagree give unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from pydantic import Field

from adapter.criteria.context import Context
from adapter.criteria.history import condition_evidence, patient_evidence
from adapter.criteria.kinds import Criterion, Problem
from adapter.criteria.labs import compare, fmt, in_window
from adapter.criteria.latest import choose_latest, same_value
from adapter.criteria.results import CriterionResult, Evidence, Result, all_of
from adapter.facts.dates import FhirDate
from adapter.facts.model import Coding, LabValue, Normalised

if TYPE_CHECKING:
    from adapter.analytes import Analyte
    from adapter.codes import CodeSet
    from adapter.facts.units import Units

T = TypeVar("T")

#: system -> code -> number (a score, a class): coded answers as a trial file writes them
CodeNumbers = dict[str, dict[str, int]]


# -- choosing readings ---------------------------------------------------------------------------
def analyte_name(ctx: Context, analyte: str) -> str:
    """The analyte's name as people read it ('ECOG performance status')."""
    return ctx.analytes[analyte].name if analyte in ctx.analytes else analyte


@dataclass(frozen=True, slots=True)
class Reading(Generic[T]):
    """The deciding value and what was read from it, or why there is none."""

    lab: LabValue | None
    value: T | None = None
    problem: str | None = None
    #: nothing at all in (or across the edge of) the window, as opposed to an ambiguous choice
    absent: bool = False


def latest_reading(
    ctx: Context,
    analytes: Collection[str],
    days: int,
    read: Callable[[LabValue], T | None],
    *,
    what: str,
    only_readable: bool = False,
) -> Reading[T]:
    """The latest usable value of any of `analytes` in the window, and `read` of it.

    Like labs.latest_lab, but across several analytes (serum hCG as presence or quantity) and for
    coded values: candidates for the latest agree when `read` gives the same for them.
    `only_readable` skips values `read` cannot interpret before choosing (the NYHA rule: "the
    latest Observation whose value is one of the NYHA codes").
    """
    inside, straddling = in_window(ctx, analytes, days)
    if only_readable:
        inside = [lab for lab in inside if read(lab) is not None]
        straddling = [lab for lab in straddling if read(lab) is not None]

    def as_read(lab: LabValue) -> Hashable:
        value = read(lab)
        return ("read", value) if value is not None else same_value(lab)

    # Coded readings agree, and decide alike, when `read` gives the same for them.
    choice = choose_latest(
        inside,
        straddling,
        what=what,
        none=f"no {what} in the {days} days before {ctx.as_of.isoformat()}",
        outcome=as_read,
        agree=as_read,
    )
    if choice.lab is None:
        return Reading(None, problem=choice.problem, absent=choice.absent)
    value = read(choice.lab)
    if value is None:
        return Reading(choice.lab, problem=unreadable(choice.lab, what))
    return Reading(choice.lab, value)


def _dated(lab: LabValue) -> FhirDate:
    assert lab.date is not None  # in_window keeps dated values only
    return lab.date


def unreadable(lab: LabValue, what: str) -> str:
    """Why a value cannot be used, in a coordinator's words."""
    if lab.value_codes:
        shown = ", ".join(c.token() for c in lab.value_codes)
        return f"the latest {what} answer ({shown}) is not one the trial knows"
    return f"the latest {what} cannot be read: {lab.problem or 'no usable value'}"


def has_value(lab: LabValue) -> bool:
    """A value was recorded (a panel's parent with only components has none)."""
    return lab.recorded is not None and lab.recorded.value is not None


def shown(norm: Normalised) -> str:
    return f"{norm.comparator or ''}{fmt(norm.value)}"


def reading_evidence(
    lab: LabValue,
    *,
    threshold: str | None = None,
    note: str | None = None,
    answer: Coding | None = None,
) -> Evidence:
    """Evidence for an Observation that is not a lab draw (no 'redraw' note, unlike lab_evidence);
    a coded answer is shown as its token."""
    rec = lab.recorded
    norm = lab.normalised
    default_note = norm.via if norm is not None else (None if answer else lab.problem)
    return Evidence(
        reference=lab.reference,
        recorded_value=rec.value if rec else None,
        recorded_unit=rec.unit if rec else None,
        recorded_code=answer.token() if answer else (rec.code if rec else None),
        recorded_comparator=rec.comparator if rec else None,
        normalised_value=norm.value if norm else None,
        normalised_unit=norm.unit if norm else None,
        date=lab.date.text if lab.date else None,
        threshold=threshold,
        note=note or default_note,
    )


def code_lookup(table: Mapping[str, Mapping[str, int]], codes: Collection[Coding]) -> set[int]:
    """Every number the codings map to (system -> code -> number)."""
    return {table[c.system][c.code] for c in codes if c.code in table.get(c.system, {})}


def first_coded(table: Mapping[str, Collection[str]], codes: Collection[Coding]) -> Coding | None:
    return next((c for c in codes if c.code in table.get(c.system, ())), None)


def _unit_problem(analytes: Mapping[str, Analyte], names: Collection[str], unit: str) -> Problem:
    for name in names:
        if analytes[name].unit != unit:
            return (
                "unit",
                f"threshold unit '{unit}' is not the canonical unit '{analytes[name].unit}' "
                f"of analyte '{name}'",
            )
    return None


# -- coded score (ECOG) --------------------------------------------------------------------------
class CodedScore(Criterion):
    """The latest score of `analyte` in the window: met if <= max_score, not_met above it.

    The score is the value (valueInteger, normalised to the analyte's annotation unit) or a coded
    answer mapped through `answers` (system -> code -> score). A value that is not a whole
    number, or an answer not in the map, or both that disagree, is unreadable: unknown.
    """

    kind: Literal["coded_score"]
    analyte: str
    window_days: int = Field(gt=0, le=3650)
    max_score: int = Field(ge=0)
    answers: CodeNumbers = Field(default_factory=dict)

    def analytes(self) -> frozenset[str]:
        return frozenset({self.analyte})

    def _score(self, lab: LabValue) -> int | None:
        scores = code_lookup(self.answers, lab.value_codes)
        norm = lab.normalised
        if norm is not None:
            value = float(norm.value)
            if norm.comparator is not None or not value.is_integer() or value < 0:
                return None
            scores.add(int(value))
        return scores.pop() if len(scores) == 1 else None

    def evaluate(self, ctx: Context) -> CriterionResult:
        name = analyte_name(ctx, self.analyte)
        pick = latest_reading(ctx, {self.analyte}, self.window_days, self._score, what=name)
        threshold = f"<= {self.max_score}"
        if pick.lab is None:
            note = f"no usable {name} in the {self.window_days}-day window"
            return CriterionResult(
                Result.UNKNOWN, pick.problem or note, (patient_evidence(ctx, note),)
            )
        answer = first_coded(self.answers, pick.lab.value_codes)
        ev = (reading_evidence(pick.lab, threshold=threshold, answer=answer),)
        if pick.value is None:
            return CriterionResult(Result.UNKNOWN, pick.problem or unreadable(pick.lab, name), ev)
        score = pick.value
        on = _dated(pick.lab).text
        if score <= self.max_score:
            return CriterionResult(Result.MET, f"{name} {score} on {on} ({threshold})", ev)
        return CriterionResult(
            Result.NOT_MET, f"{name} {score} on {on} is above {self.max_score}", ev
        )


# -- tumour burden (Milan) -----------------------------------------------------------------------
class TumourBurden(Criterion):
    """Tumour sizes on the latest imaging day in the window: n lesions (one Observation each), s
    the largest. met if n == 1 and s <= single_max, or 2 <= n <= multiple_max_count and every
    lesion <= multiple_max; not_met otherwise; unknown with no data or an unusable size that day.

    A lesion is one Observation (reference); its values are its dimensions (an mCODE TumorSize
    parent without a value of its own is skipped), and each must pass the threshold.
    """

    kind: Literal["tumour_burden"]
    analyte: str
    unit: str
    window_days: int = Field(gt=0, le=3650)
    single_max: float = Field(gt=0)
    multiple_max: float = Field(gt=0)
    multiple_max_count: int = Field(ge=2)

    def analytes(self) -> frozenset[str]:
        return frozenset({self.analyte})

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        return super().check(codesets, analytes, units) or _unit_problem(
            analytes, [self.analyte], self.unit
        )

    def evaluate(self, ctx: Context) -> CriterionResult:
        name = analyte_name(ctx, self.analyte)
        inside, straddling = in_window(ctx, {self.analyte}, self.window_days)
        exact = [lab for lab in inside if _dated(lab).is_exact_day]
        none = f"no {name} in the {self.window_days} days before {ctx.as_of.isoformat()}"
        if not exact:
            partial = [*inside, *straddling]
            if partial:
                return CriterionResult(
                    Result.UNKNOWN,
                    f"{none} with a full date: only partial dates",
                    tuple(reading_evidence(lab) for lab in partial),
                )
            return CriterionResult(Result.UNKNOWN, none, (patient_evidence(ctx, none),))
        day = max(_dated(lab).first_day for lab in exact)
        for lab in (*inside, *straddling):
            if not _dated(lab).is_exact_day and _dated(lab).last_day >= day:
                return CriterionResult(
                    Result.UNKNOWN,
                    f"a partial date ({_dated(lab).text}) could be on or after the latest "
                    f"imaging day {day.isoformat()}",
                    (reading_evidence(lab),),
                )
        lesions: dict[str, list[LabValue]] = {}
        for lab in exact:
            if _dated(lab).first_day == day:
                lesions.setdefault(lab.reference, []).append(lab)
        n = len(lesions)
        limit = self.single_max if n == 1 else self.multiple_max
        threshold = (
            f"1 lesion <= {fmt(self.single_max)} {self.unit}, or 2 to {self.multiple_max_count} "
            f"lesions each <= {fmt(self.multiple_max)} {self.unit}"
        )
        ev: list[Evidence] = []
        dims: list[Normalised] = []
        problems: list[str] = []
        for ref, labs in lesions.items():
            valued = [lab for lab in labs if has_value(lab)] or labs
            for lab in valued:
                ev.append(reading_evidence(lab, threshold=threshold))
                if lab.normalised is None:
                    problems.append(f"{ref}: {lab.problem or 'no usable size'}")
                else:
                    dims.append(lab.normalised)
        on = day.isoformat()
        if problems:
            return CriterionResult(
                Result.UNKNOWN, f"unusable {name} on {on}: {'; '.join(problems)}", tuple(ev)
            )
        largest = max(dims, key=lambda d: d.value)
        summary = f"{n} lesion{'s' if n > 1 else ''} on {on}, largest {shown(largest)} {self.unit}"
        if n > self.multiple_max_count:
            return CriterionResult(
                Result.NOT_MET, f"{summary}: more than {self.multiple_max_count}", tuple(ev)
            )
        result = all_of(compare(d, "<=", limit) for d in dims)
        rule = (
            f"a single lesion <= {fmt(limit)} {self.unit}"
            if n == 1
            else f"each of {n} lesions <= {fmt(limit)} {self.unit}"
        )
        verdict = {
            Result.MET: f"within {rule}",
            Result.NOT_MET: f"beyond {rule}",
            Result.UNKNOWN: f"a size may be on either side of {rule}",
        }[result]
        return CriterionResult(result, f"{summary}: {verdict}", tuple(ev))


# -- blood pressure ------------------------------------------------------------------------------
def is_reading(lab: LabValue) -> bool:
    """A reading has a value: a panel's parent, a dataAbsentReason or an implausible value is
    none (trial-spec v2, blood pressure: an earlier reading may then decide)."""
    return has_value(lab) and not lab.implausible


@dataclass(frozen=True, slots=True)
class _Component:
    """One side of the blood pressure: its result (None: no reading), reason and evidence."""

    result: Result | None
    reason: str
    evidence: tuple[Evidence, ...]


class BloodPressure(Criterion):
    """Systolic and diastolic judged apart (trial-spec v2), each by its latest reading in the
    window, a panel component or a single Observation alike: met when both are under their limit,
    or one is and the other is absent, or both are absent, without an active
    `hypertension_codeset` Condition; not_met when either is at or over its limit; unknown when a
    reading is absent with active hypertension, or the latest one cannot be read (no fall-back).
    """

    kind: Literal["blood_pressure"]
    systolic_analyte: str
    diastolic_analyte: str
    unit: str
    systolic_below: float = Field(gt=0)
    diastolic_below: float = Field(gt=0)
    window_days: int = Field(gt=0, le=3650)
    hypertension_codeset: str

    def analytes(self) -> frozenset[str]:
        return frozenset({self.systolic_analyte, self.diastolic_analyte})

    def codesets(self) -> frozenset[str]:
        return frozenset({self.hypertension_codeset})

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        return super().check(codesets, analytes, units) or _unit_problem(
            analytes, [self.systolic_analyte, self.diastolic_analyte], self.unit
        )

    def _component(self, ctx: Context, side: str, analyte: str, below: float) -> _Component:
        inside, straddling = in_window(ctx, {analyte}, self.window_days)
        threshold = f"< {fmt(below)} {self.unit}"

        def judge(lab: LabValue) -> object:
            norm = lab.normalised
            return compare(norm, "<", below) if norm is not None else ("unreadable", lab.problem)

        choice = choose_latest(
            [lab for lab in inside if is_reading(lab)],
            [lab for lab in straddling if is_reading(lab)],
            what=f"{side} blood pressure",
            none=f"no {side} blood pressure in the {self.window_days} days before "
            f"{ctx.as_of.isoformat()}",
            outcome=judge,
        )
        if choice.absent:
            return _Component(None, choice.problem or "", ())
        if choice.lab is None:
            return _Component(Result.UNKNOWN, choice.problem or "", ())
        lab = choice.lab
        ev = (reading_evidence(lab, threshold=threshold),)
        norm = lab.normalised
        on = _dated(lab).text
        if norm is None:
            why = lab.problem or "no usable value"
            return _Component(Result.UNKNOWN, f"the latest {side} ({on}) cannot be read: {why}", ev)
        result = compare(norm, "<", below)
        value = f"{side} {shown(norm)} {self.unit} on {on}"
        where = {
            Result.MET: f"under {fmt(below)}",
            Result.NOT_MET: f"at or over {fmt(below)}",
            Result.UNKNOWN: f"may be on either side of {fmt(below)}",
        }[result]
        return _Component(result, f"{value} {where}", ev)

    def evaluate(self, ctx: Context) -> CriterionResult:
        sides = (
            self._component(ctx, "systolic", self.systolic_analyte, self.systolic_below),
            self._component(ctx, "diastolic", self.diastolic_analyte, self.diastolic_below),
        )
        ev = tuple(e for side in sides for e in side.evidence)
        reason = "; ".join(side.reason for side in sides)
        results = {side.result for side in sides}
        if Result.NOT_MET in results:
            return CriterionResult(Result.NOT_MET, reason, ev)
        if Result.UNKNOWN in results:
            return CriterionResult(Result.UNKNOWN, reason, ev)
        if None not in results:
            return CriterionResult(Result.MET, reason, ev)
        htn = list(ctx.conditions_in(self.hypertension_codeset, active_only=True))
        if not htn:
            note = f"{reason}; no active {self.hypertension_codeset} Condition"
            return CriterionResult(Result.MET, note, ev or (patient_evidence(ctx, note),))
        htn_ev = tuple(condition_evidence(ctx, c, self.hypertension_codeset) for c in htn)
        return CriterionResult(
            Result.UNKNOWN,
            f"{reason}; active {self.hypertension_codeset}: an absent reading could be high",
            ev + htn_ev,
        )


KINDS: tuple[type[Criterion], ...] = (CodedScore, TumourBurden, BloodPressure)
