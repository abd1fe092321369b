"""The first trial's criteria as the spec writes them, on hand-made facts."""

from __future__ import annotations

import pytest
from factories import CODESETS, ICD10, ICD10CM, condition, ctx, lab, patient

from adapter.criteria.kinds import (
    Age,
    Alive,
    ConditionAbsent,
    Diagnosis,
    LabRange,
    LabThreshold,
    NotImplementedCriterion,
)
from adapter.criteria.results import Result

M, N, U = Result.MET, Result.NOT_MET, Result.UNKNOWN

AGE = Age(id="age", kind="age", min_years=18, max_years=75)
HB = LabThreshold(
    id="hemoglobin",
    kind="lab_threshold",
    analyte="hemoglobin",
    op=">=",
    value=9.0,
    unit="g/dL",
    window_days=30,
)
BILI = LabThreshold(
    id="bilirubin_total",
    kind="lab_threshold",
    analyte="bilirubin_total",
    op="<",
    value=2.0,
    unit="mg/dL",
    window_days=30,
)


@pytest.mark.parametrize(
    ("birth", "expected"),
    [
        ("2008-06-15", M),  # 18 on the 18th birthday (the as-of day)
        ("2008-06-16", N),  # 18 tomorrow
        ("1950-06-16", M),  # 75, one day before turning 76
        ("1950-06-15", N),  # 76 on the as-of day
        ("1980", M),  # partial, wholly inside
        ("2008", U),  # partial year straddles the 18th birthday
        ("2008-06", U),
        ("1950-06", U),
        ("1940", N),
        (None, U),
    ],
)
def test_age_is_in_completed_years_and_partial_dates_that_straddle_are_unknown(birth, expected):
    """age: 18 <= age <= 75 at as-of; a partial birthDate straddling a limit is unknown."""
    assert AGE.evaluate(ctx(info=patient(birth))).result is expected


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, M),
        ({"deceased_boolean": True}, N),
        ({"deceased_boolean": False}, M),
        ({"deceased_date": "2026-06-15"}, N),  # on as-of
        ({"deceased_date": "2026-06-16T00:10:00+08:00"}, M),  # after as-of
        ({"deceased_date": "2026-06"}, U),
        ({"deceased_date": "2026-05"}, N),
    ],
)
def test_alive_is_not_met_when_deceased_on_or_before_as_of(kw, expected):
    """alive: deceasedBoolean true or deceasedDateTime on/before as-of is not_met."""
    from factories import fdate

    if "deceased_date" in kw:
        kw = {"deceased_date": fdate(kw["deceased_date"])}
    crit = Alive(id="alive", kind="alive")
    assert crit.evaluate(ctx(info=patient(**kw))).result is expected


DX = Diagnosis(id="hcc_diagnosis", kind="diagnosis", confirmed="hcc", possible="possible_hcc")


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ((condition("C22.0"),), M),
        ((condition("C22.000x", system=ICD10),), M),  # China's local extension
        ((condition("C22.0", clinical="recurrence"),), M),
        ((condition("C22.0", clinical=None),), M),  # no clinicalStatus counts as active
        ((condition("C22.0", clinical="resolved"),), N),
        ((condition("C22.0", verification="refuted"),), N),
        ((condition("C22.0", verification="entered-in-error"),), N),
        ((condition("C22.9"),), U),  # possible_hcc only: the coordinator confirms the type
        ((condition("C22.9"), condition("C22.0")), M),
        ((condition("C22.1"),), N),  # intrahepatic bile duct carcinoma is not HCC
        ((), N),
    ],
)
def test_hcc_diagnosis_needs_an_active_hcc_condition(conditions, expected):
    """hcc_diagnosis: met / unknown for possible_hcc only / not_met."""
    assert DX.evaluate(ctx(conditions=conditions)).result is expected


META = ConditionAbsent(
    id="no_extrahepatic_metastasis",
    kind="condition_absent",
    codeset="extrahepatic_metastasis",
    active_only=True,
)


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ((), M),
        ((condition("C78.0"),), N),  # secondary of lung
        ((condition("C78.7"),), M),  # secondary of liver is intrahepatic
        ((condition("C79.51"),), N),
        ((condition("C77.9", clinical="resolved"),), M),  # only active ones count
        ((condition("C7B.02"),), M),  # secondary carcinoid of the liver
        ((condition("C7B.1"),), N),
    ],
)
def test_extrahepatic_metastasis_counts_only_active_secondaries_outside_the_liver(
    conditions, expected
):
    """no_extrahepatic_metastasis: C77, C78 except C78.7, C79, C7B except C7B.02, active."""
    result = META.evaluate(ctx(conditions=conditions))
    assert result.result is expected
    if expected is N:
        assert result.evidence[0].reference == conditions[0].reference


@pytest.mark.parametrize(
    ("value", "comparator", "expected"),
    [
        (9.0, None, M),  # 9.0 g/dL is met
        (8.99, None, N),
        (12.0, None, M),
        (9.5, "<", U),  # <9.5 may be either side
        (9.0, "<", N),  # every value below 9
        (9.0, ">=", M),
        (8.0, ">", U),
        (9.0, ">", M),
        (9.0, "<=", U),
    ],
)
def test_hemoglobin_threshold_with_comparators_as_intervals(value, comparator, expected):
    """hemoglobin >= 9.0 g/dL; a comparator makes an interval decided only when wholly on a side."""
    labs = (lab("hemoglobin", value, "2026-06-10T08:00:00+08:00", comparator=comparator),)
    assert HB.evaluate(ctx(labs=labs)).result is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.99954, M), (2.0, N), (1.2, M), (2.34, N)],
)
def test_bilirubin_below_two_mg_per_dl(value, expected):
    """bilirubin_total < 2.0 mg/dL (34.2 umol/L normalises to 1.9995 and meets it)."""
    labs = (lab("bilirubin_total", value, "2026-06-01", unit="mg/dL"),)
    assert BILI.evaluate(ctx(labs=labs)).result is expected


def test_the_latest_value_decides_not_the_best():
    """A fresh low value beats an older good one."""
    labs = (
        lab("hemoglobin", 12.0, "2026-06-01", ref="Observation/old"),
        lab("hemoglobin", 8.0, "2026-06-10", ref="Observation/new"),
    )
    result = HB.evaluate(ctx(labs=labs))
    assert result.result is N
    assert result.evidence[0].reference == "Observation/new"


@pytest.mark.parametrize(
    "status", ["preliminary", "entered-in-error", "registered", "cancelled", "unknown"]
)
def test_unusable_statuses_are_ignored(status):
    """Only final, amended, corrected Observations are used."""
    labs = (
        lab("hemoglobin", 12.0, "2026-06-01"),
        lab("hemoglobin", 5.0, "2026-06-10", status=status, ref="Observation/bad"),
    )
    assert HB.evaluate(ctx(labs=labs)).result is M


@pytest.mark.parametrize("status", ["amended", "corrected"])
def test_amended_and_corrected_are_usable(status):
    """amended and corrected count like final."""
    labs = (lab("hemoglobin", 8.0, "2026-06-10", status=status),)
    assert HB.evaluate(ctx(labs=labs)).result is N


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("2026-05-16", M),  # as-of - 30 days: inside
        ("2026-05-15", U),  # 31 days before: outside, so no value
        ("2026-06-15T23:59:00-10:00", M),  # calendar date in its own offset
        ("2026-06-16T00:30:00+14:00", U),  # after as-of: ignored
        ("2026-06", U),  # partial month crosses as-of
        ("2026-05", U),  # partial month crosses the window start
    ],
)
def test_the_window_is_calendar_days_in_the_timestamps_own_offset(when, expected):
    """An item is in an N-day window when as-of - N <= its calendar date <= as-of."""
    labs = (lab("hemoglobin", 12.0, when),)
    assert HB.evaluate(ctx(labs=labs)).result is expected


def test_unknown_unit_on_the_latest_value_does_not_fall_back_to_an_older_one():
    """The latest usable Observation decides; an unnormalisable latest value gives unknown."""
    labs = (
        lab("hemoglobin", 12.0, "2026-06-01"),
        lab("hemoglobin", 7.0, "2026-06-10", problem="unit 'mmol' is not convertible to g/dL"),
    )
    result = HB.evaluate(ctx(labs=labs))
    assert result.result is U
    assert "mmol" in result.reason


def test_same_timestamp_values_that_disagree_give_unknown():
    """Observations with the same timestamp that disagree are unknown."""
    labs = (
        lab("hemoglobin", 12.0, "2026-06-10T08:00:00Z", ref="Observation/a"),
        lab("hemoglobin", 8.0, "2026-06-10T08:00:00Z", ref="Observation/b"),
    )
    assert HB.evaluate(ctx(labs=labs)).result is U


def test_same_timestamp_values_that_agree_decide():
    """Duplicates that agree are fine."""
    labs = (
        lab("hemoglobin", 12.0, "2026-06-10T08:00:00Z", ref="Observation/a"),
        lab("hemoglobin", 12.0, "2026-06-10T08:00:00Z", ref="Observation/b"),
    )
    assert HB.evaluate(ctx(labs=labs)).result is M


def test_a_partial_date_that_could_be_the_latest_gives_unknown():
    """A partial date whose span could make it the latest is unknown."""
    labs = (
        lab("hemoglobin", 12.0, "2026-06-10"),
        lab("hemoglobin", 7.0, "2026-06", ref="Observation/partial"),
    )
    assert HB.evaluate(ctx(labs=labs, as_of=__import__("datetime").date(2026, 6, 30))).result is U


def test_unknown_reason_names_the_analyte_the_window_and_the_day():
    """'no hemoglobin in the 30 days before 2026-06-15'."""
    result = HB.evaluate(ctx())
    assert result.result is U
    assert result.reason == "no hemoglobin in the 30 days before 2026-06-15"


def test_lab_evidence_carries_value_unit_date_threshold_and_marks_labs_older_than_7_days():
    """Evidence: reference, recorded and normalised value and unit, date, threshold."""
    result = HB.evaluate(ctx(labs=(lab("hemoglobin", 9.5, "2026-06-01"),)))
    ev = result.evidence[0]
    assert (ev.reference, ev.normalised_value, ev.normalised_unit, ev.date, ev.threshold) == (
        "Observation/o1",
        9.5,
        "g/dL",
        "2026-06-01",
        ">= 9 g/dL",
    )
    assert "older than 7 days" in (ev.note or "")


def test_not_implemented_criteria_are_unknown_with_that_reason():
    """Criteria the engine does not decide yet say so."""
    result = NotImplementedCriterion(id="milan", kind="not_implemented").evaluate(ctx())
    assert (result.result, result.reason) == (U, "not yet implemented")


def test_codesets_fixture_is_consistent():
    """Guard: the factories' code sets are the spec's."""
    assert CODESETS["hcc"].matches_any(condition("C22.0").codes)
    assert ICD10CM != ICD10


def test_an_unreadable_deceased_date_is_unknown():
    """deceasedDateTime present but unparseable: the patient may be deceased."""
    info = patient(deceased_unreadable=True)
    assert Alive(id="alive", kind="alive").evaluate(ctx(info=info)).result is U


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("2026-06-10T08:00:00Z", "2026-06-10T09:00:00Z", N),  # later instant decides
        ("2026-06-10", "2026-06-10T09:00:00Z", U),  # date-only and timed, same day: ambiguous
        ("2026-06-09", "2026-06-10", N),  # different days: the later day decides
    ],
)
def test_same_day_values_order_by_instant(first, second, expected):
    """Timestamps order values within a day; a date-only value on the same day is ambiguous."""
    labs = (
        lab("hemoglobin", 12.0, first, ref="Observation/a"),
        lab("hemoglobin", 8.0, second, ref="Observation/b"),
    )
    assert HB.evaluate(ctx(labs=labs)).result is expected


def test_same_timestamp_with_one_unusable_value_is_unknown():
    """A same-timestamp duplicate without a usable value disagrees."""
    labs = (
        lab("hemoglobin", 12.0, "2026-06-10T08:00:00Z", ref="Observation/a"),
        lab("hemoglobin", None, "2026-06-10T08:00:00Z", ref="Observation/b", problem="no value"),
    )
    assert HB.evaluate(ctx(labs=labs)).result is U


@pytest.mark.parametrize(
    ("value", "comparator", "expected"),
    [(9.0, None, N), (9.5, None, M), (9.0, ">", M), (10.0, "<", U), (9.0, "<=", N)],
)
def test_strictly_greater_than_threshold(value, comparator, expected):
    """op '>' with intervals."""
    crit = LabThreshold(
        id="x",
        kind="lab_threshold",
        analyte="hemoglobin",
        op=">",
        value=9.0,
        unit="g/dL",
        window_days=30,
    )
    labs = (lab("hemoglobin", value, "2026-06-10", comparator=comparator),)
    assert crit.evaluate(ctx(labs=labs)).result is expected


RANGE = LabRange(
    id="hba1c",
    kind="lab_range",
    analyte="hemoglobin",
    low=7.0,
    high=10.0,
    unit="g/dL",
    window_days=365,
)


@pytest.mark.parametrize(
    ("value", "comparator", "expected"),
    [
        (7.0, None, M),
        (10.0, None, M),
        (6.99, None, N),
        (10.01, None, N),
        (8.0, ">", U),
        (6.0, "<", N),
    ],
)
def test_lab_range_is_inclusive_at_both_ends(value, comparator, expected):
    """lab_range: low <= value <= high, both inclusive; intervals decided when wholly on a side."""
    labs = (lab("hemoglobin", value, "2026-01-10", comparator=comparator),)
    assert RANGE.evaluate(ctx(labs=labs)).result is expected


def test_lab_range_without_a_usable_value_is_unknown():
    """No value in the window, or an unusable one: unknown."""
    assert RANGE.evaluate(ctx()).result is U
    bad = (lab("hemoglobin", 7.5, "2026-06-01", problem="unit 'x' is not a known unit"),)
    result = RANGE.evaluate(ctx(labs=bad))
    assert result.result is U
    assert "unit 'x'" in result.reason


def test_lab_range_with_low_above_high_fails_its_check():
    """A reversed range is a trial-file mistake caught at load."""
    crit = LabRange(
        id="r", kind="lab_range", analyte="hemoglobin", low=10, high=7, unit="g/dL", window_days=30
    )
    assert crit.check({}, {}, None) == ("low", "low is above high")  # type: ignore[arg-type]
