"""FHIR JSON -> facts: what the fact builder reads, and how it reads messy real shapes."""

from __future__ import annotations

from typing import Any

import pytest

from adapter.facts.extract import (
    FactBuilder,
    condition_fact,
    observation_date,
    patient_info,
    procedure_fact,
)
from adapter.trials import load_trial

TRIAL = load_trial("hcc-ablation-lenvatinib-pd1")
BUILDER = FactBuilder(TRIAL.analytes, TRIAL.units, frozenset(TRIAL.analytes))
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"


def obs(code: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-06-10T08:00:00+08:00",
    }
    base.update(fields)
    return base


def qty(value: float, unit: str | None = None, code: str | None = None, **kw: Any) -> dict:
    q: dict[str, Any] = {"value": value}
    if unit is not None:
        q["unit"] = unit
    if code is not None:
        q |= {"system": UCUM, "code": code}
    return q | kw


@pytest.mark.parametrize(
    ("code", "quantity", "analyte", "value", "unit"),
    [
        ("718-7", qty(90, "g/L", "g/L"), "hemoglobin", 9.0, "g/dL"),
        ("59260-0", qty(5.586, "mmol/L", "mmol/L"), "hemoglobin", 5.586 * 16114.5 / 10_000, "g/dL"),
        (
            "14631-6",
            qty(34.2, "umol/L", "umol/L"),
            "bilirubin_total",
            34.2 * 584.66 / 10_000,
            "mg/dL",
        ),
        ("777-3", qty(150, "K/uL"), "platelets", 150.0, "10*9/L"),
        ("777-3", qty(150, "10*3/uL", "10*3/uL"), "platelets", 150.0, "10*9/L"),
        ("751-8", qty(1500, "/mm3"), "neutrophils", 1.5, "10*9/L"),
        ("14937-7", qty(5.0, "mmol/L", "mmol/L"), "bun", 5.0 * 28.014 / 10, "mg/dL"),
        ("3091-6", qty(30, "mg/dL", "mg/dL"), "bun", 30 * 10 / 60.06 * 28.014 / 10, "mg/dL"),
        ("14682-9", qty(88.4, "umol/L", "umol/L"), "creatinine", 88.4 * 113.12 / 10_000, "mg/dL"),
        ("1742-6", qty(35, "IU/L"), "alt", 35.0, "U/L"),
        (
            "1558-6",
            qty(144.128, "mg/dL", "mg/dL"),
            "glucose_fasting",
            144.128 * 10 / 180.16,
            "mmol/L",
        ),
        ("33728-7", qty(25, "mm", "mm"), "tumour_size", 2.5, "cm"),
    ],
)
def test_values_are_normalised_to_the_analytes_canonical_unit(code, quantity, analyte, value, unit):
    """Every unit in the spec's table converts, with the analyte's own molar mass, unrounded.

    Expectations are the spec's arithmetic written out (molar masses of its table); the adapter
    keeps 12 significant digits, so they must agree to far better than any threshold needs."""
    (lab,) = BUILDER.observation(obs(code, valueQuantity=quantity))
    assert lab.analyte == analyte
    assert lab.normalised is not None, lab.problem
    assert lab.normalised.value == pytest.approx(value, rel=1e-11)
    assert lab.normalised.unit == unit


def test_unknown_unit_is_kept_with_its_reason():
    """'unit mmol is not convertible to g/dL' style reasons reach the evidence."""
    (lab,) = BUILDER.observation(obs("718-7", valueQuantity=qty(8.2, "mmol")))
    assert lab.normalised is None
    assert "mmol" in (lab.problem or "")


def test_a_panel_gives_one_value_per_component_and_a_unitless_bp_is_mm_hg():
    """BP panel 85354-9: systolic and diastolic components; no unit is taken as mm[Hg]."""
    panel = obs(
        "85354-9",
        component=[
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": 132},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": qty(82, "mm[Hg]", "mm[Hg]"),
            },
        ],
    )
    labs = {lab.analyte: lab for lab in BUILDER.observation(panel)}
    assert set(labs) == {"systolic_bp", "diastolic_bp"}
    assert labs["systolic_bp"].normalised is not None
    assert labs["systolic_bp"].normalised.value == 132
    assert "taken as mm[Hg]" in labs["systolic_bp"].normalised.via
    assert labs["systolic_bp"].reference == labs["diastolic_bp"].reference


def test_a_tumour_size_panel_uses_its_component_not_the_empty_panel():
    """mCODE TumorSize 21889-1 with component 33728-7."""
    panel = obs(
        "21889-1",
        component=[
            {
                "code": {"coding": [{"system": LOINC, "code": "33728-7"}]},
                "valueQuantity": qty(31, "mm", "mm"),
            }
        ],
    )
    (lab,) = BUILDER.observation(panel)
    assert (lab.analyte, lab.normalised and lab.normalised.value) == ("tumour_size", 3.1)


def test_nyha_class_is_recognised_by_its_answer_whatever_the_code():
    """Any Observation whose value is a NYHA class code counts."""
    o = obs(
        "75275-8",
        valueCodeableConcept={
            "coding": [{"system": "http://snomed.info/sct", "code": "421704003"}]
        },
    )
    (lab,) = BUILDER.observation(o)
    assert lab.analyte == "nyha_class"
    assert lab.value_codes[0].code == "421704003"


def test_ecog_answer_codes_are_kept_as_value_codes():
    """ECOG as a LOINC answer."""
    o = obs("89247-1", valueCodeableConcept={"coding": [{"system": LOINC, "code": "LA9623-5"}]})
    (lab,) = BUILDER.observation(o)
    assert lab.value_codes[0].code == "LA9623-5"


def test_ecog_as_value_integer_is_a_unitless_score():
    """valueInteger reaches the engine as a number in {score}."""
    (lab,) = BUILDER.observation(obs("89247-1", valueInteger=1))
    assert lab.normalised is not None
    assert (lab.normalised.value, lab.normalised.unit) == (1.0, "{score}")


def test_a_site_local_lab_code_maps_to_its_analyte():
    """mappings/local-codes.yaml: example-site-lab HGB is hemoglobin."""
    o = obs("x", valueQuantity=qty(11, "g/dL", "g/dL"))
    o["code"] = {"coding": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "code": "HGB"}]}
    (lab,) = BUILDER.observation(o)
    assert lab.analyte == "hemoglobin"


def test_codes_no_criterion_needs_give_no_values():
    """Body height is skipped."""
    assert BUILDER.observation(obs("8302-2", valueQuantity=qty(170, "cm", "cm"))) == []


def test_reference_range_high_is_normalised_and_a_unitless_high_takes_the_value_unit():
    """ULN from the Observation's own referenceRange, converted to the canonical unit."""
    o = obs(
        "14682-9",
        valueQuantity=qty(90, "umol/L", "umol/L"),
        referenceRange=[{"low": {"value": 53}, "high": {"value": 106.08}}],
    )
    (lab,) = BUILDER.observation(o)
    (rr,) = lab.reference_ranges
    assert rr.high is not None
    assert rr.high.value == pytest.approx(106.08 * 113.12 / 10_000, rel=1e-11)


def test_reference_range_with_an_unconvertible_high_keeps_the_problem():
    """An unconvertible high gives unknown later; its reason is kept."""
    o = obs(
        "1742-6",
        valueQuantity=qty(30, "U/L", "U/L"),
        referenceRange=[
            {
                "high": {"value": 40, "unit": "furlongs"},
                "appliesTo": [
                    {"coding": [{"system": "http://snomed.info/sct", "code": "248153007"}]}
                ],
                "age": {"low": {"value": 18, "unit": "a"}, "high": {"value": 216, "unit": "mo"}},
            }
        ],
    )
    (lab,) = BUILDER.observation(o)
    (rr,) = lab.reference_ranges
    assert rr.high is None
    assert "furlongs" in (rr.high_problem or "")
    assert rr.applies_to[0].code == "248153007"
    assert (rr.age_low_years, rr.age_high_years) == (18, 18)


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"effectiveDateTime": "2026-06-01"}, "2026-06-01"),
        ({"effectivePeriod": {"start": "2026-05-01"}}, "2026-05-01"),
        ({"effectiveInstant": "2026-05-02T10:00:00Z"}, "2026-05-02T10:00:00Z"),
        ({"issued": "2026-05-03T10:00:00Z"}, "2026-05-03T10:00:00Z"),
        ({}, None),
    ],
)
def test_observation_date_precedence(fields, text):
    """effectiveDateTime, else effectivePeriod.start, else effectiveInstant, else issued."""
    o = obs("718-7")
    del o["effectiveDateTime"]
    o.update(fields)
    when = observation_date(o)
    assert (when.text if when else None) == text


def test_patient_condition_and_procedure_facts():
    """The few fields the criteria read, with wrong shapes treated as absent."""
    p = patient_info(
        {
            "resourceType": "Patient",
            "id": "p1",
            "birthDate": "1960-02",
            "gender": "female",
            "deceasedDateTime": "garbage",
            "identifier": [{"system": "urn:mrn", "value": "123"}, {"value": "x"}],
        }
    )
    assert p.birth_date is not None
    assert p.birth_date.first_day.isoformat() == "1960-02-01"
    assert p.deceased_unreadable
    assert p.identifiers == (("urn:mrn", "123"),)
    c = condition_fact(
        {
            "resourceType": "Condition",
            "id": "c1",
            "clinicalStatus": {"coding": [{"code": "recurrence"}]},
            "onsetPeriod": {"start": "2025-01-05"},
            "recordedDate": "2025-02-01",
            "stage": [{"summary": {"coding": [{"system": "s", "code": "x"}]}}],
        }
    )
    assert (c.clinical_status, c.onset and c.onset.text) == ("recurrence", "2025-01-05")
    assert c.stage_codes[0].code == "x"
    pr = procedure_fact(
        {
            "resourceType": "Procedure",
            "id": "pr",
            "status": "completed",
            "performedPeriod": {"start": "2024-03-01"},
        }
    )
    assert pr.performed is not None
    assert pr.performed.text == "2024-03-01"
