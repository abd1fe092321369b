"""Observations that are not a plain lab threshold: a coded score (ECOG), tumour burden (Milan),
and blood pressure pairs; with the helpers that choose readings for them and for clinical.py.

Trial-spec, data rules and fine print: only status-usable Observations count; an item is in an
N-day window by the calendar date of its timestamp; a partial date that crosses the window edge,
or could make it the latest, gives unknown; the latest decides, with no fall-back when it cannot
be read; same-timestamp readings that disagree give unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from pydantic import Field

from adapter.criteria.context import Context, placement, window_start
from adapter.criteria.history import condition_evidence, patient_evidence
from adapter.criteria.kinds import Criterion, Problem
from adapter.criteria.labs import USABLE_STATUSES, compare, fmt
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


def later_key(when: FhirDate) -> tuple[date, float]:
    """Sort key for 'latest': the last day it may be, then its instant within that day."""
    day, moment = when.sort_key()
    return (day, moment.timestamp())


def same_time(a: FhirDate, b: FhirDate) -> bool:
    """Same exact day and no instant that tells them apart (as labs.latest_lab compares)."""
    if a.first_day != b.first_day or not (a.is_exact_day and b.is_exact_day):
        return False
    return a.instant is None or b.instant is None or a.instant == b.instant


def could_be_later(other: FhirDate, latest: FhirDate) -> bool:
    """A partial date whose span reaches the latest one's day: it may be the later of the two."""
    both_exact = other.is_exact_day and latest.is_exact_day
    return not both_exact and other.last_day >= latest.first_day


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
    coded values: two values at the same time agree when `read` gives the same for both.
    `only_readable` skips values `read` cannot interpret before choosing (the NYHA rule: "the
    latest Observation whose value is one of the NYHA codes").
    """
    inside, straddling = in_window(ctx, analytes, days)
    if only_readable:
        inside = [lab for lab in inside if read(lab) is not None]
        straddling = [lab for lab in straddling if read(lab) is not None]
    none = f"no {what} in the {days} days before {ctx.as_of.isoformat()}"
    if not inside:
        if straddling:
            return Reading(None, problem=f"{none} for certain: a partial date crosses the window")
        return Reading(None, problem=none, absent=True)
    latest = max(inside, key=lambda lab: later_key(_dated(lab)))
    for other in (*inside, *straddling):
        if other is latest:
            continue
        if could_be_later(_dated(other), _dated(latest)):
            partial = _dated(latest) if _dated(other).is_exact_day else _dated(other)
            return Reading(None, problem=f"a partial date ({partial.text}) could be the latest")
        if same_time(_dated(other), _dated(latest)) and read(other) != read(latest):
            return Reading(None, problem=f"two {what} values with the same timestamp disagree")
    value = read(latest)
    if value is None:
        return Reading(latest, problem=unreadable(latest, what))
    return Reading(latest, value)


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
@dataclass(frozen=True, slots=True)
class _Pair:
    systolic: LabValue
    diastolic: LabValue

    @property
    def when(self) -> FhirDate:
        return _dated(self.systolic)


class BloodPressure(Criterion):
    """The latest complete pair in the window: systolic < systolic_below and diastolic <
    diastolic_below is met, either at or above is not_met. No pair: met without an active
    `hypertension_codeset` Condition, unknown with one.

    A pair is the two components of one panel (same Observation), or a systolic and a diastolic
    Observation with the same timestamp (equal date text, or equal instant). A reading with no
    value (a panel parent, a dataAbsentReason) is not part of a pair; one whose unit cannot be
    read is, and makes the pair unknown with no fall-back.
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

    def _pairs(self, ctx: Context) -> tuple[list[_Pair], list[_Pair]]:
        s_in, s_out = in_window(ctx, {self.systolic_analyte}, self.window_days)
        d_in, d_out = in_window(ctx, {self.diastolic_analyte}, self.window_days)
        inside: list[_Pair] = []
        straddling: list[_Pair] = []
        for s in filter(has_value, (*s_in, *s_out)):
            for d in filter(has_value, (*d_in, *d_out)):
                sd, dd = _dated(s), _dated(d)
                same = s.reference == d.reference or sd.text == dd.text
                if not same and (sd.instant is None or sd.instant != dd.instant):
                    continue
                pair = _Pair(s, d)
                (inside if s in s_in and d in d_in else straddling).append(pair)
        return inside, straddling

    def _decide(self, pair: _Pair) -> Result:
        s, d = pair.systolic.normalised, pair.diastolic.normalised
        if s is None or d is None:
            return Result.UNKNOWN
        return all_of([compare(s, "<", self.systolic_below), compare(d, "<", self.diastolic_below)])

    def evaluate(self, ctx: Context) -> CriterionResult:
        inside, straddling = self._pairs(ctx)
        window = f"in the {self.window_days} days before {ctx.as_of.isoformat()}"
        exact = [p for p in inside if p.when.is_exact_day]
        if not exact:
            if inside or straddling:
                partial = [*inside, *straddling]
                ev = tuple(
                    reading_evidence(lab) for p in partial for lab in (p.systolic, p.diastolic)
                )
                return CriterionResult(
                    Result.UNKNOWN, f"no blood pressure {window} with a full date", ev
                )
            return self._no_pair(ctx, window)
        latest = max(exact, key=lambda p: later_key(p.when))
        for other in (*inside, *straddling):
            if other is latest:
                continue
            if could_be_later(other.when, latest.when):
                return CriterionResult(
                    Result.UNKNOWN,
                    f"a blood pressure with a partial date ({other.when.text}) could be the latest",
                    self._evidence(other),
                )
            if same_time(other.when, latest.when) and self._decide(other) != self._decide(latest):
                return CriterionResult(
                    Result.UNKNOWN,
                    f"two blood pressures at {latest.when.text} disagree",
                    self._evidence(latest) + self._evidence(other),
                )
        ev = self._evidence(latest)
        s, d = latest.systolic.normalised, latest.diastolic.normalised
        if s is None or d is None:
            bad = latest.systolic if s is None else latest.diastolic
            return CriterionResult(
                Result.UNKNOWN,
                f"the latest blood pressure ({latest.when.text}) cannot be read: "
                f"{bad.problem or 'no usable value'}",
                ev,
            )
        result = self._decide(latest)
        bp = f"{shown(s)}/{shown(d)} {self.unit} on {latest.when.text}"
        limits = f"{fmt(self.systolic_below)}/{fmt(self.diastolic_below)}"
        if result is Result.MET:
            return CriterionResult(result, f"{bp}: below {limits}", ev)
        if result is Result.NOT_MET:
            return CriterionResult(result, f"{bp}: at or above {limits}", ev)
        return CriterionResult(result, f"{bp} may be on either side of {limits}", ev)

    def _evidence(self, pair: _Pair) -> tuple[Evidence, ...]:
        return (
            reading_evidence(pair.systolic, threshold=f"< {fmt(self.systolic_below)} {self.unit}"),
            reading_evidence(
                pair.diastolic, threshold=f"< {fmt(self.diastolic_below)} {self.unit}"
            ),
        )

    def _no_pair(self, ctx: Context, window: str) -> CriterionResult:
        htn = list(ctx.conditions_in(self.hypertension_codeset, active_only=True))
        if not htn:
            note = (
                f"no blood pressure pair {window}; no active {self.hypertension_codeset} Condition"
            )
            return CriterionResult(
                Result.MET,
                f"no blood pressure {window} and no active {self.hypertension_codeset}",
                (patient_evidence(ctx, note),),
            )
        ev = tuple(condition_evidence(ctx, cond, self.hypertension_codeset) for cond in htn)
        return CriterionResult(
            Result.UNKNOWN,
            f"active {self.hypertension_codeset} and no blood pressure {window}",
            ev,
        )


KINDS: tuple[type[Criterion], ...] = (CodedScore, TumourBurden, BloodPressure)
