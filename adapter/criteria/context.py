"""What every criterion reads: one patient's facts, the as-of day, the trial's sets and analytes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import MAXYEAR, date, timedelta

from adapter.analytes import Analyte
from adapter.codes import CodeSet
from adapter.facts.dates import FhirDate
from adapter.facts.model import ConditionFact, PatientFacts

#: Condition.clinicalStatus codes that make a Condition active (trial-spec, data rules)
ACTIVE_STATUSES = frozenset({"active", "recurrence", "relapse"})
#: Condition.verificationStatus codes that make a Condition not count
DISCOUNTED_VERIFICATION = frozenset({"refuted", "entered-in-error"})


@dataclass(frozen=True, slots=True)
class Context:
    facts: PatientFacts
    as_of: date
    codesets: Mapping[str, CodeSet]
    analytes: Mapping[str, Analyte]

    def conditions_in(self, codeset: str, *, active_only: bool) -> Iterator[ConditionFact]:
        """Counting Conditions of the patient in `codeset` (active ones only, when asked)."""
        cs = self.codesets[codeset]
        for cond in self.facts.conditions:
            if cond.verification_status in DISCOUNTED_VERIFICATION:
                continue
            if active_only and not is_active(cond, self.as_of, self.facts.patient.birth_date):
                continue
            if cs.matches_any(cond.codes) is not None:
                yield cond


def is_active(cond: ConditionFact, as_of: date, birth_date: FhirDate | None = None) -> bool:
    """Active: clinicalStatus active, recurrence or relapse.

    A Condition with no clinicalStatus counts as active unless it has ended (trial-spec v2): an
    abatementDateTime or abatementPeriod end on or before as-of (the whole span of a partial
    date), an abatementString or abatementBoolean true, or an abatementAge or abatementRange that
    birthDate puts on or before as-of (the latest day it may be, for a partial birthDate).
    """
    if cond.clinical_status is not None:
        return cond.clinical_status in ACTIVE_STATUSES
    ended = cond.abatement
    if ended is None:
        return True
    if ended.ended:
        return False
    if ended.date is not None:
        return ended.date.last_day > as_of
    if ended.years is not None and birth_date is not None and 0 <= ended.years <= 150:
        return _plus_years(birth_date.last_day, ended.years) > as_of
    return True


def _plus_years(day: date, years: float) -> date:
    """`day` moved on by `years`; past the calendar's last day (a birthDate of 9999) it is that
    last day, which is after any as-of."""
    whole = int(years)
    if day.year + whole > MAXYEAR:
        return date.max
    try:
        moved = day.replace(year=day.year + whole)
    except ValueError:  # 29 February
        moved = day.replace(year=day.year + whole, day=28)
    try:
        return moved + timedelta(days=round((years - whole) * 365.25))
    except OverflowError:
        return date.max


def window_start(as_of: date, days: int) -> date:
    return as_of - timedelta(days=days)


def placement(when: FhirDate, start: date, end: date) -> str:
    """'inside', 'outside' or 'straddles' the window start..end (calendar days, inclusive)."""
    if when.first_day >= start and when.last_day <= end:
        return "inside"
    if when.last_day < start or when.first_day > end:
        return "outside"
    return "straddles"
