"""Facts dated at the edges of the calendar, and numbers out of any plausible range, through the
engine (issue 11, found by tests/properties): no OverflowError or ValueError, and unusable data
gives unknown with its reason."""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import pytest

from adapter.criteria.context import is_active
from adapter.criteria.evaluate import evaluate_patient
from adapter.criteria.results import Result
from adapter.facts.dates import parse_fhir_date
from adapter.facts.extract import FactBuilder, condition_fact, patient_info, procedure_fact
from adapter.facts.model import Abatement, Coding, ConditionFact, PatientFacts
from adapter.trials import load_trial

TRIAL = load_trial("hcc-ablation-lenvatinib-pd1")
BUILDER = FactBuilder(TRIAL.analytes, TRIAL.units, TRIAL.needed_analytes(), TRIAL.system_aliases)
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
AS_OF_MIN, AS_OF_MAX = date(1900, 1, 1), date(2999, 12, 31)


def ended_at_age(years: float) -> ConditionFact:
    return ConditionFact(
        "Condition/c1", (Coding(ICD10CM, "C22.0"),), None, None, abatement=Abatement(years=years)
    )


@pytest.mark.parametrize("birth", ["9999-12-31", "9999", "9996-02-29", "9999-12-31T23:59:59-14:00"])
@pytest.mark.parametrize("years", [0.5, 1, 100, 150])
def test_an_abatement_age_past_the_calendars_end_has_not_ended_by_as_of(
    birth: str, years: float
) -> None:
    """birthDate 9999-12-31 + abatementAge 1 a raised ValueError (year 10000 is out of range),
    and stopped the patient. A Condition that ends after the calendar's end is still active."""
    when = parse_fhir_date(birth)
    assert is_active(ended_at_age(years), AS_OF_MAX, when)


def test_an_abatement_age_still_ends_a_condition_in_the_calendar() -> None:
    assert not is_active(ended_at_age(10), date(2026, 6, 15), parse_fhir_date("1990-01-01"))


def resources(edge: str) -> dict[str, Any]:
    hcc = {"coding": [{"system": ICD10CM, "code": "C22.0"}]}
    return {
        "patient": {
            "resourceType": "Patient",
            "id": "p1",
            "birthDate": edge,
            "deceasedDateTime": edge,
        },
        "conditions": [
            {
                "resourceType": "Condition",
                "id": "c1",
                "code": hcc,
                "onsetDateTime": edge,
                "abatementAge": {"value": 1, "unit": "a"},
            },
            {"resourceType": "Condition", "id": "c2", "code": hcc, "abatementDateTime": edge},
        ],
        "procedures": [
            {
                "resourceType": "Procedure",
                "id": "pr1",
                "status": "completed",
                "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "47370"}]},
                "performedDateTime": edge,
            }
        ],
        "observations": [
            {
                "resourceType": "Observation",
                "id": f"o{n}",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": code}]},
                "effectiveDateTime": edge,
                "issued": edge,
                "valueQuantity": {"value": 1.0, "unit": unit},
            }
            for n, (code, unit) in enumerate(
                [("718-7", "g/dL"), ("5902-2", "s"), ("5894-1", "{ratio}"), ("6690-2", "10*9/L")]
            )
        ],
    }


@pytest.mark.parametrize(
    "edge",
    [
        "0001-01-01",
        "0001-01-01T00:00:00+14:00",
        "0001",
        "9999-12-31",
        "9999-12-31T23:59:60Z",
        "9999-12-31T23:59:59-14:00",
        "9999",
    ],
)
@pytest.mark.parametrize("as_of", [AS_OF_MIN, AS_OF_MAX])
def test_every_fact_dated_at_the_calendars_edge_is_evaluated(edge: str, as_of: date) -> None:
    """Birth, death, onset, abatement, procedure and lab dates of 0001-01-01 or 9999-12-31, with
    as-of at either end of what the CLI accepts: every criterion decides, nothing overflows."""
    res = resources(edge)
    facts = PatientFacts(
        patient_info(res["patient"]),
        labs=tuple(lab for o in res["observations"] for lab in BUILDER.observation(o)),
        conditions=tuple(condition_fact(c, TRIAL.system_aliases) for c in res["conditions"]),
        procedures=tuple(procedure_fact(p, TRIAL.system_aliases) for p in res["procedures"]),
    )
    verdict = evaluate_patient(
        facts,
        as_of=as_of,
        criteria=TRIAL.criteria,
        manual=[(m.id, m.description) for m in TRIAL.manual],
        codesets=TRIAL.codesets,
        analytes=TRIAL.analytes,
    )
    assert all(r.reason for r in verdict.criteria.values())


@pytest.mark.parametrize(
    ("high", "reason"),
    [
        (math.nan, "reference range high is not a plausible number"),
        (10**400, "reference range high is not a plausible number"),
        (-40, "reference range high is not a plausible number"),
        # finite, but past ALT's plausibility bounds (0-50000 U/L): any value would pass under it
        (1e308, "reference range high is implausible"),
        (60000, "reference range high is implausible"),
    ],
    ids=repr,
)
def test_an_unusable_reference_range_high_makes_the_uln_criterion_unknown(
    high: object, reason: str
) -> None:
    """Not the default ULN in silence: unknown, and the reason says the ULN could not be used."""
    o = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "1742-6"}]},
        "effectiveDateTime": "2026-06-10",
        "valueQuantity": {"value": 30, "unit": "U/L"},
        "referenceRange": [{"high": {"value": high, "unit": "U/L"}}],
    }
    facts = PatientFacts(
        patient_info({"resourceType": "Patient", "id": "p1", "birthDate": "1970"}),
        labs=tuple(BUILDER.observation(o)),
    )
    (alt,) = [c for c in TRIAL.criteria if c.id == "alt"]
    verdict = evaluate_patient(
        facts,
        as_of=date(2026, 6, 15),
        criteria=[alt],
        manual=[],
        codesets=TRIAL.codesets,
        analytes=TRIAL.analytes,
    )
    result = verdict.criteria["alt"]
    assert result.result is Result.UNKNOWN
    assert reason in result.reason


def pt_and_ratio(ratio: float, pt_range: list[dict[str, Any]] | None = None) -> PatientFacts:
    pt = {
        "resourceType": "Observation",
        "id": "pt",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "5902-2"}]},
        "effectiveDateTime": "2026-06-10",
        "valueQuantity": {"value": 15, "unit": "s"},
        **({"referenceRange": pt_range} if pt_range else {}),
    }
    same_day_ratio = {
        **pt,
        "id": "ratio",
        "code": {"coding": [{"system": LOINC, "code": "5894-1"}]},
        "valueQuantity": {"value": ratio, "unit": "{ratio}"},
    }
    labs = BUILDER.observation(pt) + (BUILDER.observation(same_day_ratio) if ratio else [])
    return PatientFacts(
        patient_info({"resourceType": "Patient", "id": "p1", "birthDate": "1970"}),
        labs=tuple(labs),
    )


@pytest.mark.parametrize("ratio", [5e-324, 1e-310, 1e-300, 1e300])
def test_a_control_pt_that_is_no_plausible_time_gives_no_prolongation(ratio: float) -> None:
    """PT / a ratio of 5e-324 is an infinite control: the prolongation was -inf, which no
    Child-Pugh band holds (ValueError: min() of an empty sequence). A control that is not a
    plausible prothrombin time (5-300 s) now gives no prolongation, with the reason."""
    verdict = evaluate_patient(
        pt_and_ratio(ratio),
        as_of=date(2026, 6, 15),
        criteria=[c for c in TRIAL.criteria if c.id in ("coagulation", "child_pugh")],
        manual=[],
        codesets=TRIAL.codesets,
        analytes=TRIAL.analytes,
    )
    coagulation = verdict.criteria["coagulation"]
    assert coagulation.result is Result.UNKNOWN
    assert "control PT" in coagulation.reason
    child_pugh = verdict.criteria["child_pugh"]
    assert child_pugh.result is Result.UNKNOWN  # the INR/PT item scores 1 to 3 points
    assert "control PT" in child_pugh.reason


def test_a_reference_range_midpoint_that_is_no_plausible_time_gives_no_prolongation() -> None:
    """(1e308 + 1.7e308) / 2 overflowed to inf; and such a range gives no control PT at all."""
    rr = [{"low": {"value": 1e308, "unit": "s"}, "high": {"value": 1.7e308, "unit": "s"}}]
    verdict = evaluate_patient(
        pt_and_ratio(0, rr),
        as_of=date(2026, 6, 15),
        criteria=[c for c in TRIAL.criteria if c.id == "coagulation"],
        manual=[],
        codesets=TRIAL.codesets,
        analytes=TRIAL.analytes,
    )
    result = verdict.criteria["coagulation"]
    assert result.result is Result.UNKNOWN
    # the high of 1.7e308 s is past PT's plausibility bounds (5-300 s): the range is unusable
    assert "control PT from the referenceRange: reference range high is implausible" in (
        result.reason
    )
