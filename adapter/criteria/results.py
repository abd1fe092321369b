"""Three-valued results, evidence, and patient statuses (trial-spec, 'Results and statuses')."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class Result(enum.StrEnum):
    MET = "met"
    NOT_MET = "not_met"
    UNKNOWN = "unknown"
    MANUAL = "manual"


class Status(enum.StrEnum):
    CANDIDATE = "candidate"
    POTENTIAL_CANDIDATE = "potential-candidate"
    INELIGIBLE = "ineligible"


def any_of(results: Iterable[Result]) -> Result:
    """Kleene OR: met if any is met, not_met only if every one is not_met, else unknown."""
    seen = list(results)
    if Result.MET in seen:
        return Result.MET
    if seen and all(r is Result.NOT_MET for r in seen):
        return Result.NOT_MET
    return Result.UNKNOWN


def all_of(results: Iterable[Result]) -> Result:
    """Kleene AND: not_met if any is not_met, met only if every one is met, else unknown."""
    seen = list(results)
    if Result.NOT_MET in seen:
        return Result.NOT_MET
    if all(r is Result.MET for r in seen):
        return Result.MET
    return Result.UNKNOWN


def negate(result: Result) -> Result:
    if result is Result.MET:
        return Result.NOT_MET
    if result is Result.NOT_MET:
        return Result.MET
    return Result.UNKNOWN


def implies(condition: Result, consequence: Result) -> Result:
    """Kleene 'if X then Y' = (not X) or Y."""
    return any_of([negate(condition), consequence])


@dataclass(frozen=True, slots=True)
class Evidence:
    """One piece of data behind a result, as the report shows it."""

    reference: str | None = None
    recorded_value: float | None = None
    recorded_unit: str | None = None
    recorded_code: str | None = None
    recorded_comparator: str | None = None
    normalised_value: float | None = None
    normalised_unit: str | None = None
    date: str | None = None
    threshold: str | None = None
    uln_source: str | None = None
    note: str | None = None
    #: the mapping file of each code, unit synonym, ULN and bound used (`what: file`)
    mapping_sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CriterionResult:
    result: Result
    reason: str
    evidence: tuple[Evidence, ...] = ()


@dataclass(frozen=True, slots=True)
class PatientVerdict:
    patient: str
    status: Status
    #: criterion id -> result, in the trial's order (automated first, then manual)
    criteria: Mapping[str, CriterionResult] = field(default_factory=dict)


def status_of(automated: Iterable[CriterionResult]) -> Status:
    """Patient status from the automated criteria only; manual ones never change it."""
    results = [c.result for c in automated]
    if Result.NOT_MET in results:
        return Status.INELIGIBLE
    if all(r is Result.MET for r in results):
        return Status.CANDIDATE
    return Status.POTENTIAL_CANDIDATE
