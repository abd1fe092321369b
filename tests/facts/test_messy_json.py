"""FHIR JSON of the wrong shape, and numbers that are no usable number: each once crashed the fact
builder (issue 11, found by tests/properties). Unusable values are kept with a reason."""

from __future__ import annotations

import math
from typing import Any

import pytest

from adapter.facts.extract import FactBuilder, condition_fact, patient_info, procedure_fact
from adapter.trials import load_trial

TRIAL = load_trial("hcc-ablation-lenvatinib-pd1")
BUILDER = FactBuilder(TRIAL.analytes, TRIAL.units, frozenset(TRIAL.analytes))
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
HEMOGLOBIN = {"coding": [{"system": LOINC, "code": "718-7"}]}


def obs(**fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": HEMOGLOBIN,
        "effectiveDateTime": "2026-06-10",
        "valueQuantity": {"value": 12, "unit": "g/dL", "system": UCUM, "code": "g/dL"},
        **fields,
    }


@pytest.mark.parametrize("coding", [True, 5, 1.5, None, "718-7", {"code": "718-7"}])
def test_a_coding_that_is_not_an_array_is_no_coding(coding: object) -> None:
    """`coding: true` raised TypeError ('bool' object is not iterable); a string was read
    character by character."""
    assert BUILDER.observation(obs(code={"coding": coding})) == []


@pytest.mark.parametrize("component", [7, True, "x", {"code": HEMOGLOBIN}])
def test_components_that_are_not_an_array_leave_the_observations_own_value(
    component: object,
) -> None:
    (lab,) = BUILDER.observation(obs(component=component))
    assert lab.normalised is not None
    assert lab.normalised.value == 12


@pytest.mark.parametrize("applies_to", [3, True, "male"])
def test_reference_range_applies_to_of_the_wrong_type_is_none(applies_to: object) -> None:
    rr = [{"high": {"value": 17, "unit": "g/dL"}, "appliesTo": applies_to}]
    (lab,) = BUILDER.observation(obs(referenceRange=rr))
    (entry,) = lab.reference_ranges
    assert entry.applies_to == ()
    assert entry.high is not None


@pytest.mark.parametrize("comparator", [["<"], {"value": "<"}, 1, None, "≤"])
def test_a_comparator_that_is_not_one_of_the_four_is_none(comparator: object) -> None:
    """A list or an object as comparator raised TypeError (unhashable in the set lookup)."""
    quantity = {"value": 12, "unit": "g/dL", "comparator": comparator}
    (lab,) = BUILDER.observation(obs(valueQuantity=quantity))
    assert lab.recorded is not None
    assert lab.recorded.comparator is None
    assert lab.normalised is not None


@pytest.mark.parametrize(
    "value", [10**400, -(10**400), 2**1024, math.nan, math.inf, -math.inf], ids=repr
)
def test_a_value_that_is_no_finite_number_is_unusable_with_its_reason(value: object) -> None:
    """10**400 (a JSON parser with big integers) raised OverflowError in float(); NaN and the
    infinities were kept as the recorded value, and shown as evidence. Now: no number recorded,
    and the reason says why; the Observation is still reported, never dropped."""
    quantity = {"value": value, "unit": "g/dL", "system": UCUM, "code": "g/dL"}
    (lab,) = BUILDER.observation(obs(valueQuantity=quantity))
    assert lab.normalised is None
    assert lab.recorded is not None
    assert lab.recorded.value is None
    assert lab.problem == "valueQuantity is not a finite number"


def test_a_value_integer_too_large_for_a_float_is_unusable() -> None:
    ecog = {"coding": [{"system": LOINC, "code": "89247-1"}]}
    res = obs(code=ecog, valueInteger=10**400)
    del res["valueQuantity"]
    (lab,) = BUILDER.observation(res)
    assert lab.normalised is None
    assert lab.problem == "valueInteger is not a finite number"


@pytest.mark.parametrize("value", [-12, -0.5, -1e-9])
def test_a_negative_value_is_implausible_whatever_the_analyte(value: float) -> None:
    """Trial-spec v2: a negative value is never plausible; it is unusable, with the reason."""
    quantity = {"value": value, "unit": "g/dL", "system": UCUM, "code": "g/dL"}
    (lab,) = BUILDER.observation(obs(valueQuantity=quantity))
    assert lab.normalised is None
    assert lab.implausible
    assert "implausible" in (lab.problem or "")


@pytest.mark.parametrize("high", [math.nan, math.inf, 10**400, -40, -0.5], ids=repr)
def test_a_reference_range_high_that_is_no_plausible_number_is_a_problem_not_absent(
    high: object,
) -> None:
    """A NaN or negative ULN must not pass for 'no referenceRange' (that would use the default
    ULN silently): like an unconvertible high, it gives an unknown ULN, with the reason."""
    alt = {"coding": [{"system": LOINC, "code": "1742-6"}]}
    value = {"value": 30, "unit": "U/L", "system": UCUM, "code": "U/L"}
    rr = [{"high": {"value": high, "unit": "U/L"}, "low": {"value": -5, "unit": "U/L"}}]
    (lab,) = BUILDER.observation(obs(code=alt, valueQuantity=value, referenceRange=rr))
    (entry,) = lab.reference_ranges
    assert entry.high is None
    assert entry.low is None
    assert entry.high_problem == "reference range high is not a plausible number"


@pytest.mark.parametrize("junk", [5, True, "x", {"url": "u"}])
def test_patient_arrays_of_the_wrong_type_are_empty(junk: object) -> None:
    """`extension`, `identifier` and a nested `extension` that are not arrays raised TypeError."""
    info = patient_info(
        {
            "resourceType": "Patient",
            "id": "p1",
            "gender": "female",
            "identifier": junk,
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-sexParameterForClinicalUse",
                    "extension": junk,
                },
            ],
        }
    )
    assert info.identifiers == ()
    assert info.sex == "female"
    assert patient_info({"resourceType": "Patient", "id": "p1", "extension": junk}).sex is None


@pytest.mark.parametrize("junk", [2, False, "stage", 1e300])
def test_condition_and_procedure_fields_of_the_wrong_type_are_absent(junk: object) -> None:
    cond = condition_fact(
        {
            "resourceType": "Condition",
            "id": "c1",
            "code": {"coding": junk},
            "stage": junk,
            "clinicalStatus": {"coding": junk},
            "abatementAge": {"value": 10**400, "unit": "a"},
        }
    )
    assert (cond.codes, cond.stage_codes, cond.clinical_status) == ((), (), None)
    assert cond.abatement is None  # an age too large for a float is no age
    proc = procedure_fact({"resourceType": "Procedure", "id": "p", "code": {"coding": junk}})
    assert proc.codes == ()
