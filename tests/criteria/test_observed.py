"""ecog, milan and blood_pressure_controlled as the spec writes them, on hand-made facts."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest
from factories import AS_OF, LOINC, codeset, condition, fdate, patient

from adapter.analytes import Analyte
from adapter.criteria.context import Context
from adapter.criteria.observed import BloodPressure, CodedScore, TumourBurden
from adapter.criteria.results import Result
from adapter.facts.model import (
    Coding,
    ConditionFact,
    LabValue,
    Normalised,
    PatientFacts,
    Recorded,
)

M, N, U = Result.MET, Result.NOT_MET, Result.UNKNOWN

ANALYTES = {
    "ecog": Analyte("ecog", "ECOG performance status", "{score}", None, None, False, {}),
    "tumour_size": Analyte("tumour_size", "tumour size", "cm", None, None, False, {}),
    "systolic_bp": Analyte("systolic_bp", "systolic BP", "mm[Hg]", None, None, False, {}),
    "diastolic_bp": Analyte("diastolic_bp", "diastolic BP", "mm[Hg]", None, None, False, {}),
}
CODESETS = {"hypertension": codeset("hypertension", "I10-I15")}

ECOG_ANSWERS = {
    LOINC: {
        "LA9622-7": 0,
        "LA9623-5": 1,
        "LA9624-3": 2,
        "LA9625-0": 3,
        "LA9626-8": 4,
        "LA9627-6": 5,
    }
}
ECOG = CodedScore(
    id="ecog", kind="coded_score", analyte="ecog", window_days=90, max_score=1, answers=ECOG_ANSWERS
)
MILAN = TumourBurden(
    id="milan",
    kind="tumour_burden",
    analyte="tumour_size",
    unit="cm",
    window_days=90,
    single_max=5,
    multiple_max=3,
    multiple_max_count=3,
)
BP = BloodPressure(
    id="blood_pressure_controlled",
    kind="blood_pressure",
    systolic_analyte="systolic_bp",
    diastolic_analyte="diastolic_bp",
    unit="mm[Hg]",
    systolic_below=140,
    diastolic_below=90,
    window_days=30,
    hypertension_codeset="hypertension",
)


def reading(
    analyte: str,
    value: float | None,
    when: str | None,
    unit: str,
    *,
    ref: str = "Observation/o1",
    comparator: str | None = None,
    answers: tuple[Coding, ...] = (),
    problem: str | None = None,
    status: str = "final",
    recorded: bool = True,
) -> LabValue:
    """A LabValue as the fact builder makes it; value None with answers is a coded value."""
    norm = None if value is None or problem else Normalised(value, unit, comparator, "UCUM code")
    rec = Recorded(value, unit, unit, comparator) if recorded and value is not None else None
    return LabValue(
        analyte=analyte,
        reference=ref,
        code=Coding(LOINC, "x"),
        status=status,
        date=fdate(when),
        recorded=rec,
        normalised=norm,
        problem=None if norm else (problem or "no valueQuantity"),
        value_codes=answers,
    )


def make_ctx(
    labs: tuple[LabValue, ...] = (),
    conditions: tuple[ConditionFact, ...] = (),
    as_of: date = AS_OF,
) -> Context:
    return Context(
        PatientFacts(patient(), labs=labs, conditions=conditions), as_of, CODESETS, ANALYTES
    )


# -- ecog ------------------------------------------------------------------------------------------
def ecog(
    value: float | None = None, answer: str | None = None, when: str = "2026-06-03", **kw: object
) -> LabValue:
    answers = (Coding(LOINC, answer),) if answer else ()
    return reading("ecog", value, when, "{score}", answers=answers, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lab", "expected"),
    [
        (ecog(0), M),
        (ecog(1), M),
        (ecog(2), N),
        (ecog(5), N),
        (ecog(answer="LA9622-7"), M),
        (ecog(answer="LA9623-5"), M),
        (ecog(answer="LA9624-3"), N),
        (ecog(answer="LA9627-6"), N),
        (ecog(1, answer="LA9623-5"), M),  # value and answer agree
        (ecog(1, answer="LA9624-3"), U),  # value and answer disagree
        (ecog(answer="LA6576-8"), U),  # not an ECOG answer
        (ecog(1.5), U),  # not a whole score
        (ecog(-1), U),
        (ecog(2, comparator="<"), U),
        (ecog(problem="unit 'mg' is not convertible to {score}"), U),
    ],
)
def test_ecog_0_or_1_is_met_and_2_or_more_is_not(lab, expected):
    """ecog: valueInteger or LOINC answers LA9622-7 (0) ... LA9627-6 (5); <= 1 is met."""
    result = ECOG.evaluate(make_ctx((lab,)))
    assert result.result is expected
    assert result.evidence[0].reference == "Observation/o1"


def test_coded_ecog_evidence_shows_the_answer_and_the_reason_the_score():
    """demo-13: ECOG coded 1."""
    result = ECOG.evaluate(make_ctx((ecog(answer="LA9623-5"),)))
    assert result.reason == "ECOG performance status 1 on 2026-06-03 (<= 1)"
    ev = result.evidence[0]
    assert (ev.recorded_code, ev.date, ev.threshold, ev.note) == (
        f"{LOINC}|LA9623-5",
        "2026-06-03",
        "<= 1",
        None,
    )


def test_ecog_2_reason_says_it_is_above_the_limit():
    """demo-38: ECOG 2."""
    result = ECOG.evaluate(make_ctx((ecog(2),)))
    assert result.reason == "ECOG performance status 2 on 2026-06-03 is above 1"
    assert result.evidence[0].normalised_value == 2


@pytest.mark.parametrize(
    ("when", "expected"),
    [("2026-03-17", M), ("2026-03-16", U), ("2026-02-15", U), ("2026-03", U)],
)
def test_ecog_in_the_last_90_days_only(when, expected):
    """demo-19: an ECOG 120 days old is not in the 90-day window."""
    result = ECOG.evaluate(make_ctx((ecog(0, when=when),)))
    assert result.result is expected
    if when == "2026-02-15":
        assert result.reason == "no ECOG performance status in the 90 days before 2026-06-15"
        assert result.evidence[0].reference == "Patient/p1"


def test_the_latest_ecog_decides_and_an_unreadable_one_does_not_fall_back():
    """The latest decides; an unreadable latest is unknown, not the older value."""
    older, newer = ecog(0, when="2026-05-01", ref="Observation/a"), ecog(2, ref="Observation/b")
    assert ECOG.evaluate(make_ctx((older, newer))).result is N
    unreadable = ecog(answer="LA0000-0", ref="Observation/b")
    result = ECOG.evaluate(make_ctx((older, unreadable)))
    assert result.result is U
    assert "is not one the trial knows" in result.reason


def test_same_time_coded_ecog_values_agree_or_are_unknown():
    """Same-timestamp values: agreeing ones decide, disagreeing ones are unknown."""
    when = "2026-06-03T09:00:00+08:00"
    a = ecog(answer="LA9623-5", when=when, ref="Observation/a")
    same = ecog(1, when=when, ref="Observation/b")
    other = ecog(answer="LA9624-3", when=when, ref="Observation/c")
    assert ECOG.evaluate(make_ctx((a, same))).result is M
    result = ECOG.evaluate(make_ctx((a, other)))
    assert result.result is U
    assert result.reason == "two ECOG performance status values with the same timestamp disagree"


def test_a_partial_ecog_date_that_could_be_the_latest_is_unknown():
    """A partial date whose span could make it the latest gives unknown."""
    labs = (ecog(0, when="2026-06-03"), ecog(3, when="2026-06", ref="Observation/p"))
    result = ECOG.evaluate(make_ctx(labs, as_of=date(2026, 6, 30)))
    assert result.result is U
    assert result.reason == "a partial date (2026-06) could be the latest"


def test_an_ecog_with_a_partial_date_across_the_window_edge_is_unknown():
    """'2026-03' crosses the 90-day window start (2026-03-17)."""
    result = ECOG.evaluate(make_ctx((ecog(0, when="2026-03"),)))
    assert result.result is U
    assert "partial date crosses the window" in result.reason


@pytest.mark.parametrize("status", ["preliminary", "registered", "entered-in-error"])
def test_ecog_with_an_unusable_status_is_ignored(status):
    """Only final, amended and corrected Observations count."""
    result = ECOG.evaluate(make_ctx((ecog(3, status=status), ecog(1, when="2026-05-01"))))
    assert result.result is M


# -- milan -----------------------------------------------------------------------------------------
IMAGING = "2026-05-26T14:00:00+08:00"


def lesion(size: float | None, ref: str, when: str = IMAGING, **kw: object) -> LabValue:
    return reading("tumour_size", size, when, "cm", ref=ref, **kw)  # type: ignore[arg-type]


def lesions(*sizes: float, when: str = IMAGING) -> tuple[LabValue, ...]:
    return tuple(lesion(s, f"Observation/t{i}", when) for i, s in enumerate(sizes, 1))


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ((5.0,), M),  # one lesion up to 5 cm
        ((5.01,), N),
        ((6.2,), N),  # demo-39
        ((3.0, 3.0), M),  # two lesions, each up to 3 cm
        ((2.5, 1.8), M),  # demo-09 (25 and 18 mm, converted by the fact builder)
        ((3.0, 3.1), N),
        ((2.0, 2.0, 2.0), M),
        ((1.0, 1.0, 3.01), N),
        ((1.0, 1.0, 1.0, 1.0), N),  # four lesions
    ],
)
def test_milan_one_lesion_up_to_5_cm_or_up_to_3_lesions_up_to_3_cm(sizes, expected):
    """milan: n = 1 and s <= 5 cm, or 2 <= n <= 3 and every lesion <= 3 cm."""
    result = MILAN.evaluate(make_ctx(lesions(*sizes)))
    assert result.result is expected
    assert len(result.evidence) == len(sizes)
    assert result.evidence[0].date == IMAGING


def test_milan_reason_counts_lesions_and_names_the_largest():
    """The reason reads like the rule."""
    assert MILAN.evaluate(make_ctx(lesions(6.2))).reason == (
        "1 lesion on 2026-05-26, largest 6.2 cm: beyond a single lesion <= 5 cm"
    )
    assert MILAN.evaluate(make_ctx(lesions(2.5, 1.8))).reason == (
        "2 lesions on 2026-05-26, largest 2.5 cm: within each of 2 lesions <= 3 cm"
    )
    assert MILAN.evaluate(make_ctx(lesions(1, 1, 1, 1))).reason == (
        "4 lesions on 2026-05-26, largest 1 cm: more than 3"
    )
    ev = MILAN.evaluate(make_ctx(lesions(2.5))).evidence[0]
    assert ev.threshold == "1 lesion <= 5 cm, or 2 to 3 lesions each <= 3 cm"


def test_only_the_latest_imaging_day_counts():
    """An older scan with a large lesion does not decide; lesions the same day at other times do."""
    labs = (
        lesion(7.0, "Observation/old", when="2026-04-01"),
        lesion(2.0, "Observation/a", when="2026-05-26T09:00:00+08:00"),
        lesion(2.5, "Observation/b", when="2026-05-26T15:30:00+08:00"),
    )
    result = MILAN.evaluate(make_ctx(labs))
    assert result.result is M
    assert [e.reference for e in result.evidence] == ["Observation/a", "Observation/b"]


@pytest.mark.parametrize(
    ("size", "comparator", "expected"),
    [(1.0, "<", M), (5.0, "<=", M), (4.0, ">", U), (5.0, ">", N)],
)
def test_a_size_with_a_comparator_is_an_interval(size, comparator, expected):
    """'<1 cm' is within 5 cm; '>4 cm' may be either side."""
    labs = (lesion(size, "Observation/t1", comparator=comparator),)
    assert MILAN.evaluate(make_ctx(labs)).result is expected


def test_a_tumour_size_parent_without_a_value_is_the_same_lesion_as_its_component():
    """demo-12: 21889-1 with component 33728-7: one lesion, the component's size."""
    labs = (
        lesion(None, "Observation/t1"),  # the 21889-1 parent: no value of its own
        lesion(2.4, "Observation/t1"),  # its 33728-7 component
    )
    result = MILAN.evaluate(make_ctx(labs))
    assert result.result is M
    assert result.reason.startswith("1 lesion")
    assert len(result.evidence) == 1


def test_an_unusable_size_on_the_latest_day_is_unknown():
    """No fall-back to a usable size from an older scan, nor to the other lesions that day."""
    labs = (
        lesion(2.0, "Observation/old", when="2026-04-01"),
        lesion(2.0, "Observation/a"),
        lesion(9.0, "Observation/b", problem="unit 'px' is not convertible to cm"),
    )
    result = MILAN.evaluate(make_ctx(labs))
    assert result.result is U
    assert "Observation/b: unit 'px' is not convertible to cm" in result.reason
    assert lesion(None, "Observation/c").problem == "no valueQuantity"
    lone = MILAN.evaluate(make_ctx((lesion(None, "Observation/c"),)))
    assert lone.result is U


@pytest.mark.parametrize(
    ("labs", "reason"),
    [
        ((), "no tumour size in the 90 days before 2026-06-15"),
        (lesions(2.0, when="2026-03-16"), "no tumour size in the 90 days before 2026-06-15"),
        (
            lesions(2.0, when="2026-05"),
            "no tumour size in the 90 days before 2026-06-15 with a full date: only partial dates",
        ),
        (
            (lesion(2.0, "Observation/a"), lesion(2.0, "Observation/p", when="2026-05")),
            "a partial date (2026-05) could be on or after the latest imaging day 2026-05-26",
        ),
    ],
)
def test_milan_without_usable_tumour_size_data_is_unknown(labs, reason):
    """demo-20: no tumour-size Observation; also too old, or partial dates."""
    result = MILAN.evaluate(make_ctx(labs))
    assert (result.result, result.reason) == (U, reason)
    assert result.evidence


def test_a_partial_imaging_date_before_the_latest_day_does_not_matter():
    """'2026-04' ends before the latest imaging day."""
    labs = (lesion(9.0, "Observation/p", when="2026-04"), lesion(2.0, "Observation/a"))
    assert MILAN.evaluate(make_ctx(labs)).result is M


# -- blood pressure -------------------------------------------------------------------------------
BP_TIME = "2026-06-10T09:10:00+08:00"


def panel(
    systolic: float | None,
    diastolic: float | None,
    when: str = BP_TIME,
    ref: str = "Observation/bp",
) -> tuple[LabValue, ...]:
    """A BP panel: both components share the Observation's reference and date."""
    return (
        reading("systolic_bp", systolic, when, "mm[Hg]", ref=ref),
        reading("diastolic_bp", diastolic, when, "mm[Hg]", ref=ref),
    )


def separate(
    systolic: float, diastolic: float, s_when: str = BP_TIME, d_when: str = BP_TIME
) -> tuple[LabValue, ...]:
    return (
        reading("systolic_bp", systolic, s_when, "mm[Hg]", ref="Observation/sbp"),
        reading("diastolic_bp", diastolic, d_when, "mm[Hg]", ref="Observation/dbp"),
    )


HTN = condition("I10")


@pytest.mark.parametrize(
    ("systolic", "diastolic", "expected"),
    [(139, 89, M), (140, 89, N), (139, 90, N), (158, 96, N), (118, 72, M), (132, 82, M)],
)
def test_bp_139_89_is_controlled_and_140_is_not(systolic, diastolic, expected):
    """blood_pressure_controlled: systolic < 140 and diastolic < 90."""
    result = BP.evaluate(make_ctx(panel(systolic, diastolic)))
    assert result.result is expected
    s, d = result.evidence
    assert (s.reference, s.normalised_value, s.threshold) == (
        "Observation/bp",
        systolic,
        "< 140 mm[Hg]",
    )
    assert (d.reference, d.normalised_value, d.threshold) == (
        "Observation/bp",
        diastolic,
        "< 90 mm[Hg]",
    )


def test_bp_reason_shows_each_component_and_its_limit():
    """The reason names each side, its value, date and limit."""
    assert BP.evaluate(make_ctx(panel(158, 96))).reason == (
        f"systolic 158 mm[Hg] on {BP_TIME} at or over 140; "
        f"diastolic 96 mm[Hg] on {BP_TIME} at or over 90"
    )
    assert BP.evaluate(make_ctx(panel(132, 82))).reason == (
        f"systolic 132 mm[Hg] on {BP_TIME} under 140; diastolic 82 mm[Hg] on {BP_TIME} under 90"
    )


@pytest.mark.parametrize(
    ("s_when", "d_when"),
    [
        (BP_TIME, BP_TIME),  # demo-08: separate Observations, same timestamp
        ("2026-06-10T01:10:00Z", BP_TIME),  # the same instant in another offset
        ("2026-06-10", "2026-06-10"),
        ("2026-06-10T09:11:00+08:00", BP_TIME),
        ("2026-06-10", BP_TIME),
        ("2026-05-20", BP_TIME),
    ],
)
def test_systolic_and_diastolic_are_judged_apart_whenever_they_were_taken(s_when, d_when):
    """Trial-spec v2: each component stands alone; the latest of each decides, even when they
    come from different times."""
    labs = separate(150, 80, s_when, d_when)
    assert BP.evaluate(make_ctx(labs)).result is N
    assert BP.evaluate(make_ctx(labs, (HTN,))).result is N
    assert BP.evaluate(make_ctx(separate(130, 80, s_when, d_when))).result is M


def test_the_latest_reading_of_each_side_decides():
    """A newer controlled panel beats an older high one, and the other way round."""
    old = panel(150, 95, when="2026-05-20", ref="Observation/old")
    new = panel(120, 80, when="2026-06-10", ref="Observation/new")
    assert BP.evaluate(make_ctx(old + new)).result is M
    old_ok = panel(120, 80, when="2026-05-20", ref="Observation/old")
    new_high = panel(145, 80, when="2026-06-10", ref="Observation/new")
    result = BP.evaluate(make_ctx(old_ok + new_high))
    assert result.result is N
    assert {e.reference for e in result.evidence} == {"Observation/new"}


def test_a_lone_newer_systolic_replaces_the_older_panels_systolic():
    """Trial-spec v2: an older 120/80 does not decide over a newer lone systolic 172."""
    labs = (
        *panel(120, 80, when="2026-06-01", ref="Observation/pair"),
        reading("systolic_bp", 172, "2026-06-12", "mm[Hg]", ref="Observation/lone"),
    )
    result = BP.evaluate(make_ctx(labs))
    assert result.result is N
    assert [e.reference for e in result.evidence] == ["Observation/lone", "Observation/pair"]


def test_a_diastolic_without_a_value_is_no_reading_and_the_systolic_still_decides():
    """Trial-spec v2: a panel with systolic 172 and a diastolic with dataAbsentReason is not_met
    (it used to count as 'no blood pressure', so met)."""
    half = panel(172, None, when="2026-06-12", ref="Observation/half")
    assert BP.evaluate(make_ctx(half)).result is N
    # the missing diastolic lets an earlier one decide
    labs = (*panel(120, 95, when="2026-06-01", ref="Observation/old"), *panel(130, None))
    result = BP.evaluate(make_ctx(labs))
    assert result.result is N
    assert "diastolic 95 mm[Hg] on 2026-06-01 at or over 90" in result.reason


def test_an_implausible_reading_is_no_reading():
    """Trial-spec v2 plausibility: outside the bounds a value is as if it had none."""
    labs = (
        *panel(120, 80, when="2026-06-01", ref="Observation/old"),
        replace(reading("systolic_bp", None, BP_TIME, "mm[Hg]"), implausible=True),
    )
    assert BP.evaluate(make_ctx(labs)).result is M


@pytest.mark.parametrize(
    ("labs", "conditions", "expected"),
    [
        ((), (), M),
        ((), (HTN,), U),
        (panel(136, 84, when="2026-04-26"), (HTN,), U),  # demo-23: 50 days old
        (panel(136, 84, when="2026-05-16"), (HTN,), M),  # as-of - 30 days: inside
        (panel(136, 84, when="2026-05-15"), (HTN,), U),
        ((), (condition("I10", clinical="resolved"),), M),
        ((), (condition("I10", verification="refuted"),), M),
        ((), (condition("I15.0"),), U),
        (panel(128, None), (), M),  # one under, the other absent, no hypertension
        (panel(128, None), (HTN,), U),  # ... with active hypertension
        (panel(None, 70), (HTN,), U),
    ],
)
def test_absent_readings_are_met_without_active_hypertension_and_unknown_with_it(
    labs, conditions, expected
):
    """Both under, or one under and one absent, or both absent, with no active hypertension."""
    result = BP.evaluate(make_ctx(labs, conditions))
    assert result.result is expected
    assert result.evidence
    if expected is U and not labs:
        assert result.evidence[0].reference == conditions[0].reference
        assert result.evidence[0].note == "clinicalStatus active"


def test_no_reading_reasons_name_both_sides_and_hypertension():
    """The reason says what was looked for and why it decides."""
    assert BP.evaluate(make_ctx(())).reason == (
        "no systolic blood pressure in the 30 days before 2026-06-15; no diastolic blood "
        "pressure in the 30 days before 2026-06-15; no active hypertension Condition"
    )
    assert BP.evaluate(make_ctx((), (HTN,))).reason.endswith(
        "active hypertension: an absent reading could be high"
    )


def test_an_unreadable_unit_in_the_latest_reading_is_unknown():
    """The latest reading decides; an unnormalisable one gives unknown, no fall-back."""
    labs = (
        *panel(120, 80, when="2026-06-01", ref="Observation/old"),
        reading("systolic_bp", 15, BP_TIME, "kPa", problem="unit 'cmH2O' is not convertible"),
        reading("diastolic_bp", 80, BP_TIME, "mm[Hg]"),
    )
    result = BP.evaluate(make_ctx(labs))
    assert result.result is U
    assert "cannot be read: unit 'cmH2O' is not convertible" in result.reason


def test_an_unreadable_reading_does_not_hide_a_high_other_side():
    """Either side at or over its limit is not_met, whatever the other."""
    labs = (
        reading("systolic_bp", 15, BP_TIME, "kPa", problem="unit 'kPa?' unknown"),
        reading("diastolic_bp", 95, BP_TIME, "mm[Hg]"),
    )
    assert BP.evaluate(make_ctx(labs)).result is N


def test_same_time_readings_that_cannot_be_told_apart_are_unknown_when_they_disagree():
    """Two readings of one side at the same timestamp: unknown when they disagree."""
    labs = (
        *panel(120, 80, ref="Observation/a"),
        reading("systolic_bp", 15, BP_TIME, "kPa", problem="unit 'kPa?' unknown", ref="x"),
    )
    assert BP.evaluate(make_ctx(labs)).result is U
    a = panel(120, 80, ref="Observation/a")
    b = panel(150, 80, ref="Observation/b")
    result = BP.evaluate(make_ctx(a + b))
    assert result.result is U
    assert result.reason.startswith("two systolic blood pressure values with the same timestamp")
    assert BP.evaluate(make_ctx(a + panel(120, 80, ref="Observation/b"))).result is M


def test_a_bp_comparator_across_the_limit_is_unknown():
    """'>130' systolic may be either side of 140."""
    labs = (
        reading("systolic_bp", 130, BP_TIME, "mm[Hg]", comparator=">", ref="Observation/bp"),
        reading("diastolic_bp", 80, BP_TIME, "mm[Hg]", ref="Observation/bp"),
    )
    result = BP.evaluate(make_ctx(labs))
    assert result.result is U
    assert result.reason.startswith(f"systolic >130 mm[Hg] on {BP_TIME} may be on either side")


@pytest.mark.parametrize(
    ("labs", "expected_reason"),
    [
        (
            panel(120, 80, when="2026-05"),
            "no systolic blood pressure in the 30 days before 2026-06-15 for certain: a partial "
            "date crosses the window edge",
        ),
        (
            panel(120, 80) + panel(150, 95, when="2026-06", ref="Observation/p"),
            "a partial date (2026-06)",
        ),
    ],
)
def test_partial_bp_dates_that_could_matter_are_unknown(labs, expected_reason):
    """A partial date that crosses the window edge, or could be the latest, gives unknown."""
    result = BP.evaluate(make_ctx(labs))
    assert result.result is U
    assert result.reason.startswith(expected_reason)


def test_a_partial_bp_date_that_would_not_change_the_result_does_not_matter():
    """Trial-spec fine print: unknown only when the choice changes the result."""
    labs = panel(120, 80) + panel(125, 85, when="2026-06", ref="Observation/p")
    assert BP.evaluate(make_ctx(labs)).result is M


# -- load-time checks ------------------------------------------------------------------------------
def test_threshold_units_must_be_the_analytes_canonical_units():
    """A unit that is not the analyte's canonical one fails at load, naming the field."""
    assert MILAN.check({}, ANALYTES, None) is None  # type: ignore[arg-type]
    assert MILAN.model_copy(update={"unit": "mm"}).check({}, ANALYTES, None)[0] == "unit"  # type: ignore[arg-type,index]
    assert BP.check(CODESETS, ANALYTES, None) is None  # type: ignore[arg-type]
    problem = BP.model_copy(update={"unit": "kPa"}).check(CODESETS, ANALYTES, None)  # type: ignore[arg-type]
    assert problem == (
        "unit",
        "threshold unit 'kPa' is not the canonical unit 'mm[Hg]' of analyte 'systolic_bp'",
    )
    assert BP.check({}, ANALYTES, None)[0] == "codeset"  # type: ignore[arg-type,index]
    assert ECOG.analytes() == {"ecog"}
    assert BP.analytes() == {"systolic_bp", "diastolic_bp"}
    assert BP.codesets() == {"hypertension"}
    assert MILAN.analytes() == {"tumour_size"}


def test_answers_are_optional_for_a_score_read_from_valueinteger():
    """A coded_score without an answer map reads valueInteger only."""
    plain = CodedScore(id="ecog", kind="coded_score", analyte="ecog", window_days=90, max_score=1)
    assert plain.evaluate(make_ctx((ecog(1),))).result is M
    assert plain.evaluate(make_ctx((ecog(answer="LA9623-5"),))).result is U
