"""What every criterion reads: one patient's facts, the as-of day, the trial's sets and analytes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta

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
            if active_only and not is_active(cond):
                continue
            if cs.matches_any(cond.codes) is not None:
                yield cond


def is_active(cond: ConditionFact) -> bool:
    """Active: clinicalStatus active, recurrence or relapse; no clinicalStatus counts as active."""
    return cond.clinical_status is None or cond.clinical_status in ACTIVE_STATUSES


def window_start(as_of: date, days: int) -> date:
    return as_of - timedelta(days=days)


def placement(when: FhirDate, start: date, end: date) -> str:
    """'inside', 'outside' or 'straddles' the window start..end (calendar days, inclusive)."""
    if when.first_day >= start and when.last_day <= end:
        return "inside"
    if when.last_day < start or when.first_day > end:
        return "outside"
    return "straddles"
