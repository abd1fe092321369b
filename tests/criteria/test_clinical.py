"""cardiac_function, diabetes_glucose_controlled and not_pregnant as the spec writes them."""

from __future__ import annotations

from datetime import date

import pytest
from factories import AS_OF, LOINC, codeset, condition, fdate, patient

from adapter.analytes import Analyte
from adapter.codes import CodePattern, CodeSet
from adapter.criteria.clinical import CardiacFunction, ConditionalLab, NotPregnant
from adapter.criteria.context import Context
from adapter.criteria.results import Result
from adapter.facts.model import (
    Coding,
    ConditionFact,
    LabValue,
    Normalised,
    PatientFacts,
    PatientInfo,
    Recorded,
)

M, N, U = Result.MET, Result.NOT_MET, Result.UNKNOWN
SNOMED = "http://snomed.info/sct"

ANALYTES = {
    "nyha_class": Analyte("nyha_class", "NYHA functional class", "{class}", None, None, False, {}),
    "glucose_fasting": Analyte(
        "glucose_fasting", "Glucose, fasting", "mmol/L", 180.16, None, False, {}
    ),
    "hcg_presence": Analyte("hcg_presence", "hCG presence", "{presence}", None, None, False, {}),
    "hcg_quantity": Analyte("hcg_quantity", "hCG", "[IU]/L", None, None, False, {}),
}
CODESETS = {
    "coronary_heart_disease": codeset("coronary_heart_disease", "I20-I25"),
    "heart_failure": codeset("heart_failure", "I50", "I11.0", "I13.0"),
    "diabetes": codeset("diabetes", "E08-E14"),
    "pregnancy": CodeSet(
        "pregnancy",
        (
            *codeset("p", "Z33.1", "O00-O9A").include,
            CodePattern(SNOMED, "77386006", "exact"),
        ),
    ),
}

NYHA = {SNOMED: {"420300004": 1, "421704003": 2, "420913000": 3, "422293003": 4}}
CLASS_CODE = {v: k for k, v in NYHA[SNOMED].items()}
CARDIAC = CardiacFunction(
    id="cardiac_function",
    kind="cardiac_function",
    coronary_codeset="coronary_heart_disease",
    heart_failure_codeset="heart_failure",
    nyha_analyte="nyha_class",
    nyha_window_days=365,
    nyha_classes=NYHA,
    max_nyha_class=2,
)
GLUCOSE = ConditionalLab(
    id="diabetes_glucose_controlled",
    kind="conditional_lab",
    condition_codeset="diabetes",
    analyte="glucose_fasting",
    op="<=",
    value=8.0,
    unit="mmol/L",
    window_days=30,
)
PREGNANT = NotPregnant(
    id="not_pregnant",
    kind="not_pregnant",
    pregnancy_codeset="pregnancy",
    presence_analyte="hcg_presence",
    quantity_analyte="hcg_quantity",
    unit="[IU]/L",
    positive_at=5,
    positive_codes={SNOMED: ["10828004"], LOINC: ["LA6576-8"]},
    negative_codes={SNOMED: ["260385009"], LOINC: ["LA6577-6"]},
    window_days=7,
    max_age_requiring_test=55,
)


def observed(
    analyte: str,
    when: str | None,
    *,
    value: float | None = None,
    unit: str = "",
    comparator: str | None = None,
    answers: tuple[Coding, ...] = (),
    ref: str = "Observation/o1",
    problem: str | None = None,
) -> LabValue:
    norm = None if value is None or problem else Normalised(value, unit, comparator, "UCUM code")
    return LabValue(
        analyte=analyte,
        reference=ref,
        code=Coding(LOINC, "x"),
        status="final",
        date=fdate(when),
        recorded=Recorded(value, unit, unit, comparator) if value is not None else None,
        normalised=norm,
        problem=None if norm else (problem or "no valueQuantity"),
        value_codes=answers,
    )


def make_ctx(
    labs: tuple[LabValue, ...] = (),
    conditions: tuple[ConditionFact, ...] = (),
    info: PatientInfo | None = None,
    as_of: date = AS_OF,
) -> Context:
    facts = PatientFacts(info or patient(), labs=labs, conditions=conditions)
    return Context(facts, as_of, CODESETS, ANALYTES)


# -- cardiac_function -----------------------------------------------------------------------------
def heart_failure(nyha: int | None = None, clinical: str | None = "active") -> ConditionFact:
    stage = (Coding(SNOMED, CLASS_CODE[nyha]),) if nyha else ()
    return ConditionFact(
        "Condition/hf",
        (Coding("http://hl7.org/fhir/sid/icd-10-cm", "I50.9"),),
        clinical,
        None,
        onset=fdate("2023-11-02"),
        stage_codes=stage,
    )


def nyha_obs(nyha: int, when: str = "2026-01-10", ref: str = "Observation/nyha") -> LabValue:
    return observed("nyha_class", when, answers=(Coding(SNOMED, CLASS_CODE[nyha]),), ref=ref)


@pytest.mark.parametrize(
    ("conditions", "labs", "expected"),
    [
        ((), (), M),  # neither
        ((condition("I25.10"),), (), N),  # demo-49: active coronary heart disease
        ((condition("I21.9"),), (), N),
        ((condition("I25.10", clinical="resolved"),), (), M),
        ((condition("I25.10"), heart_failure(2)), (), N),
        ((heart_failure(),), (), U),  # demo-22: heart failure with no NYHA class
        ((heart_failure(1),), (), M),
        ((heart_failure(2),), (), M),  # demo-13: NYHA II in Condition.stage
        ((heart_failure(3),), (), N),
        ((heart_failure(4),), (), N),
        ((heart_failure(),), (nyha_obs(2),), M),
        ((heart_failure(),), (nyha_obs(3),), N),
        ((heart_failure(2),), (nyha_obs(2),), M),
        ((heart_failure(3),), (nyha_obs(4),), N),
        ((heart_failure(1),), (nyha_obs(3),), U),  # the undated stage and the Observation disagree
        ((heart_failure(3),), (nyha_obs(2),), U),
        ((heart_failure(clinical="resolved"),), (nyha_obs(4),), M),
        ((condition("I11.0"),), (), U),  # hypertensive heart disease with heart failure
        ((condition("I11.9"),), (), M),
    ],
)
def test_cardiac_function_no_coronary_disease_and_heart_failure_only_with_nyha_i_or_ii(
    conditions, labs, expected
):
    """cardiac_function: met / not_met / unknown as the spec's table."""
    result = CARDIAC.evaluate(make_ctx(labs, conditions))
    assert result.result is expected
    assert result.evidence


@pytest.mark.parametrize(
    ("when", "expected"),
    [("2025-06-15", N), ("2025-06-14", U), ("2025-06", U)],
)
def test_a_nyha_observation_counts_within_365_days(when, expected):
    """The NYHA Observation must be in the 365 days before as-of."""
    result = CARDIAC.evaluate(make_ctx((nyha_obs(3, when=when),), (heart_failure(),)))
    assert result.result is expected


def test_the_latest_nyha_observation_decides():
    """An older class III is superseded by a newer class II."""
    labs = (
        nyha_obs(3, "2025-10-01", "Observation/old"),
        nyha_obs(2, "2026-03-01", "Observation/new"),
    )
    result = CARDIAC.evaluate(make_ctx(labs, (heart_failure(),)))
    assert result.result is M
    assert result.reason == (
        "active heart_failure, NYHA class II (Observation/new on 2026-03-01): NYHA class <= II"
    )
    assert [e.reference for e in result.evidence] == ["Condition/hf", "Observation/new"]
    assert result.evidence[1].recorded_code == f"{SNOMED}|421704003"


def test_an_observation_without_a_nyha_answer_is_skipped():
    """'The latest Observation whose value is one of the NYHA codes'."""
    labs = (
        nyha_obs(2, "2026-01-10"),
        observed("nyha_class", "2026-06-01", answers=(Coding(SNOMED, "84114007"),), ref="x"),
    )
    assert CARDIAC.evaluate(make_ctx(labs, (heart_failure(),))).result is M


def test_same_time_nyha_observations_that_disagree_are_unknown():
    """Two NYHA classes at the same timestamp: unknown, whatever the stage says."""
    labs = (nyha_obs(2, "2026-01-10", "Observation/a"), nyha_obs(3, "2026-01-10", "Observation/b"))
    result = CARDIAC.evaluate(make_ctx(labs, (heart_failure(2),)))
    assert result.result is U
    assert "same timestamp disagree" in result.reason


def test_disagreeing_stage_and_observation_reason_names_both():
    """The coordinator sees both classes and why neither decides."""
    result = CARDIAC.evaluate(make_ctx((nyha_obs(3),), (heart_failure(1),)))
    assert result.reason == (
        "active heart_failure, NYHA class I (Condition/hf stage (undated)); class III "
        "(Observation/nyha on 2026-01-10): they disagree about NYHA class <= II and which is "
        "current is unknown (a stage has no date)"
    )
    assert result.evidence[0].note == "clinicalStatus active; NYHA class I in stage (undated)"


def test_heart_failure_without_nyha_reason_says_where_it_looked():
    """demo-22."""
    result = CARDIAC.evaluate(make_ctx((), (heart_failure(),)))
    assert result.reason == (
        "active heart_failure with no NYHA class (no Condition.stage, and no NYHA functional "
        "class in the 365 days before 2026-06-15)"
    )
    assert result.evidence[0].note == "clinicalStatus active; no NYHA stage"


def test_nyha_iii_reason_says_above_class_ii():
    """not_met reads 'above class II'."""
    result = CARDIAC.evaluate(make_ctx((), (heart_failure(3),)))
    assert result.reason == (
        "active heart_failure, NYHA class III (Condition/hf stage (undated)): above class II"
    )


def test_cardiac_function_declares_its_sets_and_analyte():
    """The fact builder and the loader need them."""
    assert CARDIAC.analytes() == {"nyha_class"}
    assert CARDIAC.codesets() == {"coronary_heart_disease", "heart_failure"}
    assert CARDIAC.check(CODESETS, ANALYTES, None) is None  # type: ignore[arg-type]


# -- diabetes_glucose_controlled ------------------------------------------------------------------
def glucose(value: float, when: str = "2026-06-10T07:40:00-05:00") -> LabValue:
    return observed("glucose_fasting", when, value=value, unit="mmol/L", ref="Observation/glu")


DIABETES = condition("E11.9")


@pytest.mark.parametrize(
    ("conditions", "labs", "expected"),
    [
        ((), (), M),  # not diabetic
        ((DIABETES,), (glucose(8.0),), M),
        ((DIABETES,), (glucose(6.8),), M),  # demo-10: 122 mg/dL
        ((DIABETES,), (glucose(8.01),), N),
        ((DIABETES,), (glucose(11.2),), N),  # demo-51
        ((DIABETES,), (), U),
        ((DIABETES,), (glucose(6.9, when="2026-05-06"),), U),  # demo-24: 40 days old
        ((condition("E11.9", clinical="resolved"),), (glucose(11.2),), M),
        ((condition("E10.9", verification="refuted"),), (), M),
        ((condition("E08.9"),), (glucose(9.0),), N),  # CM E08
    ],
)
def test_diabetic_needs_fasting_glucose_at_most_8_mmol_per_l(conditions, labs, expected):
    """diabetes_glucose_controlled: if active diabetes, latest fasting glucose <= 8.0 mmol/L."""
    result = GLUCOSE.evaluate(make_ctx(labs, conditions))
    assert result.result is expected
    assert result.evidence


def test_diabetic_glucose_evidence_has_the_condition_and_the_lab():
    """Evidence: the diabetes Condition and the deciding glucose with its threshold."""
    result = GLUCOSE.evaluate(make_ctx((glucose(11.2),), (DIABETES,)))
    assert result.reason == "active diabetes: 11.2 mmol/L fails <= 8 mmol/L"
    cond, lab = result.evidence
    assert cond.reference == "Condition/E11.9"
    assert (lab.reference, lab.normalised_value, lab.threshold) == (
        "Observation/glu",
        11.2,
        "<= 8 mmol/L",
    )


def test_not_diabetic_reason_and_no_diabetic_without_glucose_reason():
    """'not diabetic' / 'diabetic, no glucose'."""
    assert GLUCOSE.evaluate(make_ctx()).reason == (
        "no active diabetes Condition: the lab is not required"
    )
    assert GLUCOSE.evaluate(make_ctx((), (DIABETES,))).reason == (
        "active diabetes: no glucose, fasting in the 30 days before 2026-06-15"
    )


def test_conditional_lab_checks_its_unit_against_the_analyte():
    """A threshold unit other than the canonical one fails at load."""
    assert GLUCOSE.check(CODESETS, ANALYTES, None) is None  # type: ignore[arg-type]
    bad = GLUCOSE.model_copy(update={"unit": "mg/dL"})
    assert bad.check(CODESETS, ANALYTES, None)[0] == "unit"  # type: ignore[arg-type,index]
    assert GLUCOSE.check({}, ANALYTES, None)[0] == "codeset"  # type: ignore[arg-type,index]
    assert GLUCOSE.analytes() == {"glucose_fasting"}
    assert GLUCOSE.codesets() == {"diabetes"}


# -- not_pregnant ---------------------------------------------------------------------------------
def person(gender: str | None = "female", birth: str | None = "1978-03-02") -> PatientInfo:
    return patient(birth, gender=gender)


def presence(code: str, system: str = SNOMED, when: str = "2026-06-13", **kw: object) -> LabValue:
    return observed("hcg_presence", when, answers=(Coding(system, code),), **kw)  # type: ignore[arg-type]


def quantity(
    value: float, comparator: str | None = None, when: str = "2026-06-12", **kw: object
) -> LabValue:
    return observed(
        "hcg_quantity",
        when,
        value=value,
        unit="[IU]/L",
        comparator=comparator,
        **kw,  # type: ignore[arg-type]
    )


NEGATIVE = presence("260385009")
POSITIVE = presence("10828004")


@pytest.mark.parametrize(
    ("info", "labs", "conditions", "expected"),
    [
        (person("male"), (), (), M),
        (person("male"), (POSITIVE,), (), M),
        # trial-spec v2: for a male, sex decides; the pregnancy code is noted, not counted
        (person("male"), (), (condition("Z33.1"),), M),
        (person("female"), (), (condition("Z33.1"),), N),
        (person(birth="1978-03-02"), (NEGATIVE,), (), M),  # demo-02: woman 48
        (person(birth="1978-03-02"), (POSITIVE,), (), N),  # demo-50
        (person(birth="1978-03-02"), (), (), U),
        (person(birth="1950-06-16"), (), (), M),  # demo-09: aged 75
        (person(birth="1964-04-04"), (), (), M),  # demo-31: aged 62
        (person(birth="1964-04-04"), (), (condition("O09.90"),), N),  # at any age
        (person(birth="1964-04-04"), (), (condition("Z33.1", clinical="resolved"),), M),
        (person(None), (), (), U),  # gender absent: as female
        (person("other"), (NEGATIVE,), (), M),
        (person("unknown"), (), (), U),
        (person(birth=None), (NEGATIVE,), (), M),  # age unknown: a test is required
        (person(birth=None), (), (), U),
        (person(birth="1970"), (), (), U),  # aged 55 or 56: a test is required
        (person(birth="1969"), (), (), M),  # 56 or 57
    ],
)
def test_not_pregnant_by_gender_age_condition_and_hcg(info, labs, conditions, expected):
    """not_pregnant: male met; female over 55 met; female <= 55 needs a negative hCG."""
    result = PREGNANT.evaluate(make_ctx(labs, conditions, info))
    assert result.result is expected
    assert result.evidence


@pytest.mark.parametrize(
    ("birth", "expected"),
    [("1971-06-15", U), ("1971-06-16", U), ("1970-06-16", U), ("1970-06-15", M)],
)
def test_woman_aged_55_without_hcg_in_7_days_is_unknown(birth, expected):
    """55 requires a test; 56 on the as-of day does not."""
    result = PREGNANT.evaluate(make_ctx((), (), person(birth=birth)))
    assert result.result is expected
    if expected is U:
        assert result.reason.endswith("no serum hCG in the 7 days before 2026-06-15")
        assert result.evidence[0].note == (
            f"female aged {55 if birth != '1971-06-16' else 54}: a negative serum hCG is "
            "required at 55 or younger"
        )


@pytest.mark.parametrize(
    ("lab", "expected"),
    [
        (presence("260385009"), M),
        (presence("10828004"), N),
        (presence("LA6577-6", LOINC), M),
        (presence("LA6576-8", LOINC), N),
        (presence("LA6577-6", SNOMED), U),  # right code, wrong system
        (presence("260385009", when="2026-06-08"), M),  # as-of - 7 days
        (presence("260385009", when="2026-06-07"), U),  # demo-18: too old
        (presence("10828004", when="2026-06-07"), U),
        (quantity(4.9), M),
        (quantity(5.0), N),
        (quantity(2, "<"), M),  # demo-13
        (quantity(10, "<"), U),  # demo-29: <10 straddles 5
        (quantity(5, "<"), M),
        (quantity(5, ">="), N),
        (quantity(4, ">"), U),
        (observed("hcg_quantity", "2026-06-12", answers=(Coding(SNOMED, "260385009"),)), M),
        (quantity(3.0, problem="unit 'ng/mL' is not convertible to [IU]/L"), U),
    ],
)
def test_the_latest_serum_hcg_in_7_days_decides(lab, expected):
    """hCG: presence answers (SNOMED / LOINC) or a quantity (>= 5 [IU]/L positive)."""
    result = PREGNANT.evaluate(make_ctx((lab,), (), person()))
    assert result.result is expected


def test_a_presence_answer_that_is_both_positive_and_negative_is_unknown():
    """Contradictory codings in one answer cannot be read."""
    lab = observed(
        "hcg_presence",
        "2026-06-13",
        answers=(Coding(SNOMED, "10828004"), Coding(LOINC, "LA6577-6")),
    )
    result = PREGNANT.evaluate(make_ctx((lab,), (), person()))
    assert result.result is U
    assert "is not one the trial knows" in result.reason


def test_the_latest_of_presence_and_quantity_decides():
    """A newer negative quantity beats an older positive presence test, and the reverse."""
    older_pos = presence("10828004", when="2026-06-10", ref="Observation/old")
    newer_neg = quantity(1.0, when="2026-06-14", ref="Observation/new")
    result = PREGNANT.evaluate(make_ctx((older_pos, newer_neg), (), person()))
    assert result.result is M
    assert result.reason == "female aged 48: negative serum hCG (1 [IU]/L) on 2026-06-14"
    assert [e.reference for e in result.evidence] == ["Patient/p1", "Observation/new"]
    older_neg = quantity(1.0, when="2026-06-10", ref="Observation/old")
    newer_pos = presence("10828004", when="2026-06-14", ref="Observation/new")
    result = PREGNANT.evaluate(make_ctx((older_neg, newer_pos), (), person()))
    assert result.result is N
    assert result.reason == "female aged 48: positive serum hCG (10828004) on 2026-06-14"
    assert result.evidence[1].recorded_code == f"{SNOMED}|10828004"


def test_hcg_reasons_for_an_interval_and_for_an_old_test():
    """'<10' may be either side of 5; a 10-day-old test is not in the window."""
    result = PREGNANT.evaluate(make_ctx((quantity(10, "<"),), (), person()))
    assert result.reason == (
        "female aged 48: serum hCG <10 [IU]/L on 2026-06-12 may be on either side of 5 [IU]/L"
    )
    assert result.evidence[1].threshold == "negative; a quantity >= 5 [IU]/L is positive"
    old = presence("260385009", when="2026-06-05")
    result = PREGNANT.evaluate(make_ctx((old,), (), person(None)))
    assert result.reason == (
        "sex absent (as female) aged 48: no serum hCG in the 7 days before 2026-06-15"
    )


def test_male_and_over_55_reasons():
    """Reasons a coordinator reads."""
    assert PREGNANT.evaluate(make_ctx((), (), person("male"))).reason == "male"
    assert PREGNANT.evaluate(make_ctx((), (), person(birth="1964-04-04"))).reason == (
        "female aged 62: over 55, no pregnancy test required"
    )
    result = PREGNANT.evaluate(make_ctx((), (condition("77386006", system=SNOMED),), person()))
    assert (result.result, result.reason) == (N, "active pregnancy Condition")
    assert result.evidence[0].recorded_code == f"{SNOMED}|77386006"


def test_not_pregnant_checks_unit_and_codes_at_load():
    """Unit must be the quantity analyte's; a code cannot be both positive and negative."""
    assert PREGNANT.check(CODESETS, ANALYTES, None) is None  # type: ignore[arg-type]
    bad_unit = PREGNANT.model_copy(update={"unit": "m[IU]/mL"})
    assert bad_unit.check(CODESETS, ANALYTES, None)[0] == "unit"  # type: ignore[arg-type,index]
    both = PREGNANT.model_copy(update={"negative_codes": {SNOMED: ["10828004"]}})
    assert both.check(CODESETS, ANALYTES, None) == (  # type: ignore[arg-type]
        "positive_codes",
        "codes both positive and negative: ['10828004']",
    )
    assert PREGNANT.check({}, ANALYTES, None)[0] == "codeset"  # type: ignore[arg-type,index]
    assert PREGNANT.analytes() == {"hcg_presence", "hcg_quantity"}
    assert PREGNANT.codesets() == {"pregnancy"}
