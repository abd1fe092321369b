"""Properties of the criteria engine (issue 11), fed end to end from random FHIR JSON.

Whatever the facts, every criterion of a trial gives met, not_met, unknown or manual with a
reason; the status follows from the automated ones (trial-spec, "Results and statuses"); the
verdict is the same for the same input; evidence numbers are finite; and no date at the edges of
the calendar (0001-01-01, 9999-12-31) raises, for any as-of the CLI accepts.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from strategies import (
    AS_OF_MAX,
    AS_OF_MIN,
    HCC_TRIAL,
    T2DM_TRIAL,
    answer_codings,
    as_of_dates,
    condition,
    lab_history,
    observation,
    patient,
    procedure,
    trial,
)

from adapter.criteria.evaluate import evaluate_patient, in_cohort
from adapter.criteria.results import PatientVerdict, Result, Status, status_of
from adapter.facts.dates import parse_fhir_date
from adapter.facts.extract import FactBuilder, condition_fact, patient_info, procedure_fact
from adapter.facts.model import LabValue, Normalised, PatientFacts, Recorded, ReferenceRange
from adapter.trials import Trial

Json = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One patient's resources, and the day they are judged on."""

    as_of: date
    patient: Json
    observations: list[Json]
    conditions: list[Json]
    procedures: list[Json]


@st.composite
def cases(draw: st.DrawFn, trial_name: str, as_of: st.SearchStrategy[date] | None = None) -> Case:
    """A patient's resources with dates around a random as-of (so windows hold data), and some
    of any date at all."""
    day = draw(as_of or as_of_dates())
    return Case(
        day,
        draw(patient(day)),
        draw(lab_history(trial_name, day)),
        draw(st.lists(condition(trial_name, day), max_size=4)),
        draw(st.lists(procedure(trial_name, day), max_size=2)),
    )


BUILDERS: dict[str, FactBuilder] = {}


def facts_of(t: Trial, case: Case) -> PatientFacts:
    """FHIR JSON -> facts as the sweep builds them (adapter.sweep.run_sweep)."""
    builder = BUILDERS.get(t.id)
    if builder is None:
        builder = FactBuilder(t.analytes, t.units, t.needed_analytes(), t.system_aliases)
        BUILDERS[t.id] = builder
    return PatientFacts(
        patient_info(case.patient),
        labs=tuple(lab for res in case.observations for lab in builder.observation(res)),
        conditions=tuple(condition_fact(res, t.system_aliases) for res in case.conditions),
        procedures=tuple(procedure_fact(res, t.system_aliases) for res in case.procedures),
    )


def verdict_of(t: Trial, facts: PatientFacts, as_of: date) -> PatientVerdict:
    return evaluate_patient(
        facts,
        as_of=as_of,
        criteria=t.criteria,
        manual=[(m.id, m.description) for m in t.manual],
        codesets=t.codesets,
        analytes=t.analytes,
    )


def assert_well_formed(t: Trial, verdict: PatientVerdict) -> None:
    """Every criterion has a result and a reason; the status follows from the automated ones."""
    automated = [c.id for c in t.criteria]
    manual = [m.id for m in t.manual]
    assert list(verdict.criteria) == automated + manual
    for cid, outcome in verdict.criteria.items():
        assert outcome.result in set(Result)
        assert (outcome.result is Result.MANUAL) == (cid in manual)
        assert isinstance(outcome.reason, str)
        assert outcome.reason.strip(), cid
        for ev in outcome.evidence:
            for number in (ev.recorded_value, ev.normalised_value):
                assert number is None or math.isfinite(number), (cid, ev)
    assert verdict.status in set(Status)
    assert verdict.status is status_of(verdict.criteria[c] for c in automated)


def check(trial_name: str, case: Case) -> None:
    t = trial(trial_name)
    facts = facts_of(t, case)
    verdict = verdict_of(t, facts, case.as_of)
    assert_well_formed(t, verdict)
    # deterministic: the same facts give the same verdict, and so do facts built again
    assert verdict_of(t, facts, case.as_of) == verdict
    assert verdict_of(t, facts_of(t, case), case.as_of) == verdict
    in_cohort(facts, t.cohort, case.as_of)


@given(cases(HCC_TRIAL))
def test_every_hcc_criterion_decides_with_a_reason(case: Case) -> None:
    check(HCC_TRIAL, case)


@given(cases(T2DM_TRIAL))
def test_every_criterion_of_a_second_trial_decides_with_a_reason(case: Case) -> None:
    check(T2DM_TRIAL, case)


# -- any facts the fact builder may give ---------------------------------------------------------
@st.composite
def built_facts(draw: st.DrawFn, trial_name: str) -> tuple[date, PatientFacts]:
    """Facts as the fact builder may give them, without FHIR JSON: every value finite, in its
    canonical unit, within its analyte's plausibility bounds (any float from 0 up where the
    mappings give none: a PT ratio of 5e-324 or 1e308), most of them from one day's draw."""
    t = trial(trial_name)
    as_of = draw(as_of_dates())
    draw_day = as_of - timedelta(days=draw(st.integers(0, 31)))
    names = [name for name in sorted(t.needed_analytes()) if draw(st.booleans())]
    labs = []
    for name in names:
        analyte = t.analytes[name]
        low = analyte.plausible_low if analyte.plausible_low is not None else 0.0
        high = analyte.plausible_high if analyte.plausible_high is not None else sys.float_info.max
        extremes = [v for v in (low, high, 5e-324, 1e-310, 1e-300, 1e300) if low <= v <= high]
        value = draw(st.one_of(st.floats(min_value=low, max_value=high), st.sampled_from(extremes)))
        comparator = draw(st.sampled_from([None] * 6 + ["<", "<=", ">", ">="]))
        day = draw(st.sampled_from([draw_day] * 4 + [as_of - timedelta(days=40)]))
        when = draw(st.sampled_from([day.isoformat(), f"{day.isoformat()}T08:00:00+08:00"]))
        uln = draw(st.one_of(st.none(), st.floats(min_value=0, max_value=sys.float_info.max)))
        norm = Normalised(value, analyte.unit, comparator, f"UCUM code '{analyte.unit}'")
        labs.append(
            LabValue(
                analyte=name,
                reference=f"Observation/{name}",
                code=min(analyte.codes, key=lambda c: (c.system, c.code)),
                status=draw(st.sampled_from(["final", "amended"])),
                date=parse_fhir_date(when),
                recorded=Recorded(value, analyte.unit, analyte.unit, comparator),
                normalised=norm,
                reference_ranges=(
                    () if uln is None else (ReferenceRange(high=Normalised(uln, analyte.unit)),)
                ),
                value_codes=tuple(draw(st.lists(st.sampled_from(answer_codings()), max_size=1))),
            )
        )
    info = patient_info(draw(patient(as_of)))
    return as_of, PatientFacts(info, labs=tuple(labs))


@given(built_facts(HCC_TRIAL))
def test_any_values_the_fact_builder_may_give_are_decided_with_a_reason(
    case: tuple[date, PatientFacts],
) -> None:
    """The engine's side of the contract: finite, plausible values in canonical units, however
    large or small, never crash a criterion (PT / a ratio of 5e-324 was an infinite control)."""
    as_of, facts = case
    t = trial(HCC_TRIAL)
    verdict = verdict_of(t, facts, as_of)
    assert_well_formed(t, verdict)
    assert verdict_of(t, facts, as_of) == verdict


# -- the edges of the calendar ---------------------------------------------------------------------
EDGE_DATES = (
    "0001",
    "0001-01",
    "0001-01-01",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-14:00",
    "9999",
    "9999-12",
    "9999-12-31",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:60Z",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999+14:00",
)
edge_as_of = st.one_of(
    st.sampled_from(
        [AS_OF_MIN, AS_OF_MAX, date(1900, 1, 2), date(2999, 12, 30), date(1900, 2, 28)]
    ),
    as_of_dates(),
)


def _dated(res: Json, fields: tuple[str, ...], text: str) -> Json:
    return {**res, **dict.fromkeys(fields, text)}


@st.composite
def edge_cases(draw: st.DrawFn, trial_name: str) -> Case:
    """Every fact dated at the first or last day of the calendar; as-of near its own limits."""
    day = draw(edge_as_of)
    edge = st.sampled_from(EDGE_DATES)
    pat = draw(patient(day))
    pat = {**pat, "birthDate": draw(edge)}
    if draw(st.booleans()):
        pat["deceasedDateTime"] = draw(edge)
    obs = [
        _dated(res, ("effectiveDateTime", "issued"), draw(edge))
        for res in draw(st.lists(observation(trial_name, day), max_size=4))
    ]
    conds = [
        {
            **_dated(res, ("onsetDateTime", "recordedDate"), draw(edge)),
            draw(st.sampled_from(["abatementDateTime", "onsetDateTime"])): draw(edge),
            "abatementAge": {"value": draw(st.sampled_from([0, 1, 80, 150, 1e9])), "unit": "a"},
        }
        for res in draw(st.lists(condition(trial_name, day), max_size=3))
    ]
    procs = [
        _dated(res, ("performedDateTime",), draw(edge))
        for res in draw(st.lists(procedure(trial_name, day), max_size=2))
    ]
    return Case(day, pat, obs, conds, procs)


@given(edge_cases(HCC_TRIAL))
@example(
    Case(
        AS_OF_MAX,
        {"resourceType": "Patient", "id": "p1", "birthDate": "9999-12-31"},
        [],
        [
            {
                "resourceType": "Condition",
                "id": "1",
                "code": {
                    "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C22.0"}]
                },
                "abatementAge": {"value": 1, "unit": "a"},
            }
        ],
        [],
    )
)
def test_dates_at_the_edges_of_the_calendar_never_overflow(case: Case) -> None:
    """0001-01-01 and 9999-12-31, with offsets up to +-14:00, as birth, onset, abatement,
    procedure and lab dates: no OverflowError anywhere in the evaluation."""
    check(HCC_TRIAL, case)


@given(edge_cases(T2DM_TRIAL))
def test_dates_at_the_edges_of_the_calendar_never_overflow_in_a_second_trial(case: Case) -> None:
    check(T2DM_TRIAL, case)
