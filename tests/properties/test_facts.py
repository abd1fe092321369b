"""Properties of FHIR JSON -> facts (issue 11): messy input never crashes the fact builder.

An unusable value (no number, NaN, an infinity, a number too large for a float, a negative or
implausible one, an unknown unit, a field of the wrong type) gives a LabValue with the reason it
cannot be used, never an exception and never a normalised value that is not a plausible, finite
number in the analyte's canonical unit (trial-spec v2, plausibility).
"""

from __future__ import annotations

import calendar
import math
from datetime import date
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import (
    HCC_TRIAL,
    T2DM_TRIAL,
    UCUM,
    any_number,
    condition,
    fhir_date_text,
    json_tree,
    lab_number,
    observation,
    odd_text,
    patient,
    procedure,
    trial,
    unit_texts,
    units,
    valid_fhir_date,
)

from adapter.facts.dates import FhirDate, parse_fhir_date
from adapter.facts.extract import FactBuilder, condition_fact, patient_info, procedure_fact
from adapter.facts.model import (
    Coding,
    ConditionFact,
    LabValue,
    Normalised,
    PatientInfo,
    ProcedureFact,
)
from adapter.facts.units import Unconvertible

HCC = trial(HCC_TRIAL)
BUILDER = FactBuilder(HCC.analytes, HCC.units, HCC.needed_analytes(), HCC.system_aliases)
T2DM = trial(T2DM_TRIAL)
T2DM_BUILDER = FactBuilder(T2DM.analytes, T2DM.units, T2DM.needed_analytes(), T2DM.system_aliases)
OBSERVATION_FIELDS = (
    "code",
    "status",
    "valueQuantity",
    "valueInteger",
    "valueCodeableConcept",
    "dataAbsentReason",
    "referenceRange",
    "component",
    "effectiveDateTime",
    "effectivePeriod",
    "effectiveInstant",
    "issued",
    "meta",
)


def finite_or_none(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def assert_usable_or_explained(lab: LabValue, analytes: dict[str, Any]) -> None:
    """The fact builder's contract for one value: usable and plausible, or a reason why not."""
    analyte = analytes[lab.analyte]
    assert isinstance(lab.status, str)
    assert isinstance(lab.code, Coding)
    assert lab.date is None or isinstance(lab.date, FhirDate)
    if lab.recorded is not None:
        assert finite_or_none(lab.recorded.value)
    norm = lab.normalised
    if norm is None:
        assert isinstance(lab.problem, str)
        assert lab.problem
    else:
        assert lab.problem is None
        assert not lab.implausible
        assert math.isfinite(norm.value)
        assert norm.unit == analyte.unit
        assert analyte.plausible(norm.value)
        # never normalised from a negative raw value (conversions are positive factors)
        assert lab.recorded is not None
        assert lab.recorded.value is not None
        assert lab.recorded.value >= 0
    if lab.implausible:
        assert lab.problem is not None
        assert "implausible" in lab.problem
    for rr in lab.reference_ranges:
        for bound in (rr.low, rr.high):
            assert bound is None or (math.isfinite(bound.value) and bound.unit == analyte.unit)
        assert finite_or_none(rr.age_low_years)
        assert finite_or_none(rr.age_high_years)


# -- dates -----------------------------------------------------------------------------------------
@given(st.one_of(fhir_date_text(), json_tree, odd_text))
@example("2021-02-30")
@example("9999-12-31T23:59:59-14:00")
@example("0001-01-01T00:00:00+14:00")
@example("2016-12-31T23:59:60Z")
def test_any_date_text_parses_to_a_span_or_to_none(text: object) -> None:
    """parse_fhir_date never raises: a day span (first <= last), or None when unreadable."""
    parsed = parse_fhir_date(text)
    if parsed is None:
        return
    assert parsed.first_day <= parsed.last_day
    if parsed.instant is not None:
        assert parsed.is_exact_day
        # the calendar date in the timestamp's own offset (trial-spec, window rule)
        assert parsed.instant.date() == parsed.first_day
    parsed.sort_key()


@given(valid_fhir_date())
@example(("0001-01-01T00:00:00+14:00", date(1, 1, 1), date(1, 1, 1)))
@example(("9999-12-31T23:59:59-14:00", date(9999, 12, 31), date(9999, 12, 31)))
@example(("2016-12-31T23:59:60Z", date(2016, 12, 31), date(2016, 12, 31)))
@example(("2026-06-15T08:00:00.123456789+08:00", date(2026, 6, 15), date(2026, 6, 15)))
def test_every_valid_fhir_date_is_read_with_its_span(case: tuple[str, date, date]) -> None:
    """Every precision (year, month, day, time), offsets -14:00..+14:00, Z, fractional and leap
    seconds, years 0001 and 9999: read, with the calendar days it stands for."""
    text, first, last = case
    parsed = parse_fhir_date(text)
    assert parsed is not None, text
    assert (parsed.first_day, parsed.last_day) == (first, last)


@given(
    st.integers(1, 9999),
    st.integers(1, 12),
    st.data(),
    st.sampled_from(["", "T10:00:00Z", "T10:00:00+08:00"]),
)
def test_days_that_are_not_in_the_calendar_are_not_dates(
    year: int, month: int, data: st.DataObject, time: str
) -> None:
    """2021-02-30, 2023-04-31: unreadable, not moved to a neighbouring day."""
    day = data.draw(st.integers(calendar.monthrange(year, month)[1] + 1, 99))
    assert parse_fhir_date(f"{year:04d}-{month:02d}-{day:02d}{time}") is None


# -- units -----------------------------------------------------------------------------------------
CANONICAL = sorted(
    {(a.unit, a.molar_mass, a.iu_as_u) for a in (*HCC.analytes.values(), *T2DM.analytes.values())},
    key=str,
)


@given(
    st.sampled_from(CANONICAL),
    any_number,
    st.one_of(st.none(), units()),
    st.one_of(st.none(), units()),
    st.sampled_from([UCUM, None, "urn:local"]),
    st.sampled_from([None, "<", ">="]),
)
def test_normalise_gives_a_finite_value_or_a_reason(
    canonical: tuple[str, float | None, bool],
    value: Any,
    code: str | None,
    unit: str | None,
    system: str | None,
    comparator: str | None,
) -> None:
    """Any number in any unit text: a finite value in the canonical unit, or Unconvertible."""
    to, molar_mass, iu_as_u = canonical
    try:
        number = float(value)
    except OverflowError:
        number = math.inf  # what the fact builder must never pass: it has to refuse it itself
    result = HCC.units.normalise(
        number,
        to=to,
        code=code,
        system=system,
        unit=unit,
        comparator=comparator,
        molar_mass=molar_mass,
        iu_as_u=iu_as_u,
    )
    if isinstance(result, Unconvertible):
        assert result.reason
    else:
        assert isinstance(result, Normalised)
        assert math.isfinite(result.value)
        assert result.unit == to.strip()


@given(
    st.sampled_from(CANONICAL),
    st.sampled_from(unit_texts()),
    st.floats(min_value=1e-3, max_value=1e6),
    st.sampled_from([2.0, 10.0, 0.5]),
)
def test_conversion_is_proportional(
    canonical: tuple[str, float | None, bool], unit: str, value: float, factor: float
) -> None:
    """Lab units are ratio scales: k times the value converts to k times the result."""
    to, molar_mass, iu_as_u = canonical
    kw: dict[str, Any] = {"to": to, "code": None, "system": None, "unit": unit}
    one = HCC.units.normalise(value, molar_mass=molar_mass, iu_as_u=iu_as_u, **kw)
    many = HCC.units.normalise(value * factor, molar_mass=molar_mass, iu_as_u=iu_as_u, **kw)
    if isinstance(one, Unconvertible) or isinstance(many, Unconvertible):
        assert isinstance(one, Unconvertible)
        assert isinstance(many, Unconvertible)
        return
    assert many.value == pytest.approx(one.value * factor, rel=1e-9)


# -- the fact builder ------------------------------------------------------------------------------
@given(observation(HCC_TRIAL))
def test_observations_give_usable_values_or_reasons(res: dict[str, Any]) -> None:
    """Any Observation of a code the trial reads: each value usable, or unusable with a reason."""
    for lab in BUILDER.observation(res):
        assert_usable_or_explained(lab, HCC.analytes)


@given(observation(T2DM_TRIAL))
def test_observations_of_a_second_trial_give_usable_values_or_reasons(res: dict[str, Any]) -> None:
    for lab in T2DM_BUILDER.observation(res):
        assert_usable_or_explained(lab, T2DM.analytes)


@given(
    observation(HCC_TRIAL),
    st.dictionaries(st.sampled_from(OBSERVATION_FIELDS), json_tree, min_size=1, max_size=3),
)
def test_any_field_of_any_shape_is_read_as_absent_or_unusable(
    res: dict[str, Any], junk: dict[str, Any]
) -> None:
    """A random JSON tree in place of any field: no crash, and the contract still holds."""
    for lab in BUILDER.observation({**res, **junk}):
        assert_usable_or_explained(lab, HCC.analytes)


@given(
    st.sampled_from(sorted(HCC.needed_analytes())),
    st.one_of(any_number, lab_number.map(lambda n: -n - 1e-9)),
    st.booleans(),
)
@example("hemoglobin", 10**400, True)
@example("hemoglobin", -(10**400), True)
@example("platelets", math.nan, True)
@example("albumin", -math.inf, False)
@example("ecog", 2**1024, False)
def test_a_value_that_is_not_a_finite_plausible_number_is_unusable(
    analyte: str, value: Any, as_integer: bool
) -> None:
    """NaN, infinities, integers too large for a float, negative numbers: each Observation still
    gives its LabValue, unusable with a reason (reported for the patient), never dropped."""
    coding = next(iter(HCC.analytes[analyte].codes))
    unit = HCC.analytes[analyte].unit
    value_field: dict[str, Any] = (
        {"valueInteger": value}
        if as_integer and isinstance(value, int)
        else {"valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}
    )
    res = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": coding.system, "code": coding.code}]},
        "effectiveDateTime": "2026-06-10",
        **value_field,
    }
    labs = BUILDER.observation(res)
    assert labs, "a value of a needed code is never silently dropped"
    for lab in labs:
        assert_usable_or_explained(lab, HCC.analytes)
        number = lab.recorded.value if lab.recorded else None
        if lab.normalised is not None:
            assert number is not None
            assert math.isfinite(number)
            assert number >= 0


@given(condition(HCC_TRIAL))
def test_conditions_never_crash(res: dict[str, Any]) -> None:
    fact = condition_fact(res, HCC.system_aliases)
    assert isinstance(fact, ConditionFact)
    assert all(isinstance(c.system, str) and isinstance(c.code, str) for c in fact.codes)
    assert fact.clinical_status is None or isinstance(fact.clinical_status, str)
    if fact.abatement is not None:
        assert finite_or_none(fact.abatement.years)


@given(procedure(HCC_TRIAL))
def test_procedures_never_crash(res: dict[str, Any]) -> None:
    fact = procedure_fact(res, HCC.system_aliases)
    assert isinstance(fact, ProcedureFact)
    assert fact.status is None or isinstance(fact.status, str)


@given(patient())
def test_patients_never_crash(res: dict[str, Any]) -> None:
    info = patient_info(res)
    assert isinstance(info, PatientInfo)
    assert info.recorded_sex in (None, "male", "female", "unknown")
    assert info.gender is None or isinstance(info.gender, str)
    assert info.deceased_boolean in (None, True, False)
    # a deceasedDateTime that is present but unreadable is said to be so, never dropped
    if res.get("deceasedDateTime") is not None and info.deceased_date is None:
        assert info.deceased_unreadable
