"""Evaluating one patient against a trial: every criterion, then the status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from adapter.analytes import Analyte
from adapter.codes import CodeSet
from adapter.criteria.context import Context
from adapter.criteria.kinds import Criterion
from adapter.criteria.results import CriterionResult, PatientVerdict, Result, status_of
from adapter.facts.model import PatientFacts


def evaluate_patient(
    facts: PatientFacts,
    *,
    as_of: date,
    criteria: Sequence[Criterion],
    manual: Sequence[tuple[str, str]],
    codesets: Mapping[str, CodeSet],
    analytes: Mapping[str, Analyte],
) -> PatientVerdict:
    """All automated criteria decide the status; manual ones are listed and never decide."""
    ctx = Context(facts, as_of, codesets, analytes)
    results: dict[str, CriterionResult] = {c.id: c.evaluate(ctx) for c in criteria}
    status = status_of(results.values())
    for manual_id, description in manual:
        results[manual_id] = CriterionResult(
            Result.MANUAL, f"confirmed by the coordinator at screening: {description}"
        )
    return PatientVerdict(facts.patient.reference, status, results)


def in_cohort(facts: PatientFacts, cohort: Sequence[CodeSet], as_of: date) -> bool:
    """An active, counting Condition in one of the cohort's code sets."""
    ctx = Context(facts, as_of, {cs.name: cs for cs in cohort}, {})
    return any(next(ctx.conditions_in(cs.name, active_only=True), None) for cs in cohort)
