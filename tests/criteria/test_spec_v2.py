"""Trial-spec version 2, rule by rule, on FHIR JSON read through the bundled trial definition.

Each test names the v2 rule it checks. Resources are read the way a sweep reads them (facts built
with the trial's system aliases, analytes and units), then the trial's own criteria decide.
"""

# ruff: noqa: RUF001  (the multiplication sign in unit text is the point of the tests)
from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from adapter.criteria.evaluate import evaluate_patient
from adapter.criteria.results import Result
from adapter.facts.extract import FactBuilder, condition_fact, patient_info, procedure_fact
from adapter.facts.model import Coding, PatientFacts
from adapter.trials import load_trial

M, N, U = Result.MET, Result.NOT_MET, Result.UNKNOWN
AS_OF = date(2026, 6, 15)
TRIAL = load_trial("hcc-ablation-lenvatinib-pd1")
BUILDER = FactBuilder(TRIAL.analytes, TRIAL.units, TRIAL.needed_analytes(), TRIAL.system_aliases)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD9CM = "http://hl7.org/fhir/sid/icd-9-cm"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"

Json = dict[str, Any]
_ids = iter(range(1, 1_000_000))


def patient(gender: str = "male", birth: str = "1970-01-01", **extra: Any) -> Json:
    return {"resourceType": "Patient", "id": "p", "gender": gender, "birthDate": birth, **extra}


def cond(code: str, system: str = ICD10CM, clinical: str | None = "active", **extra: Any) -> Json:
    res: Json = {
        "resourceType": "Condition",
        "id": f"c{next(_ids)}",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": system, "code": code}]},
        **extra,
    }
    if clinical:
        res["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": clinical}]}
    return res


def obs(code: str, value: float | None, unit: str | None, when: str, **extra: Any) -> Json:
    res: Json = {
        "resourceType": "Observation",
        "id": f"o{next(_ids)}",
        "status": extra.pop("status", "final"),
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": extra.pop("system", LOINC), "code": code}]},
        "effectiveDateTime": when,
        **extra,
    }
    if value is not None:
        q: Json = {"value": value}
        if unit is not None:
            q.update(unit=unit, system=UCUM, code=unit)
        res["valueQuantity"] = q
    return res


def component(code: str, value: float | None) -> Json:
    part: Json = {"code": {"coding": [{"system": LOINC, "code": code}]}}
    if value is None:
        part["dataAbsentReason"] = {"coding": [{"code": "not-performed"}]}
    else:
        part["valueQuantity"] = {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}
    return part


def bp_panel(systolic: float | None, diastolic: float | None, when: str) -> Json:
    res = obs("85354-9", None, None, when)
    res["component"] = [component("8480-6", systolic), component("8462-4", diastolic)]
    return res


def procedure(code: str, system: str, when: str) -> Json:
    return {
        "resourceType": "Procedure",
        "id": f"pr{next(_ids)}",
        "status": "completed",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": system, "code": code}]},
        "performedDateTime": when,
    }


def verdicts(*resources: Json, who: Json | None = None, as_of: date = AS_OF) -> dict[str, Any]:
    """criterion id -> its CriterionResult, for one patient read from FHIR JSON."""
    aliases = TRIAL.system_aliases
    facts = PatientFacts(
        patient_info(who or patient()),
        labs=tuple(
            v
            for r in resources
            if r["resourceType"] == "Observation"
            for v in BUILDER.observation(r)
        ),
        conditions=tuple(
            condition_fact(r, aliases) for r in resources if r["resourceType"] == "Condition"
        ),
        procedures=tuple(
            procedure_fact(r, aliases) for r in resources if r["resourceType"] == "Procedure"
        ),
    )
    verdict = evaluate_patient(
        facts,
        as_of=as_of,
        criteria=TRIAL.criteria,
        manual=[(m.id, m.description) for m in TRIAL.manual],
        codesets=TRIAL.codesets,
        analytes=TRIAL.analytes,
    )
    return dict(verdict.criteria)


# -- latest means latest instant -----------------------------------------------------------------
def test_latest_compares_instants_not_local_calendar_days():
    """v2 'Latest' compares instants: 8.4 at 23:30Z on the 10th is later than 10.5 at 07:00+08:00
    on the 11th (23:00Z on the 10th)."""
    got = verdicts(
        obs("718-7", 10.5, "g/dL", "2026-06-11T07:00:00+08:00"),
        obs("718-7", 8.4, "g/dL", "2026-06-10T23:30:00Z"),
    )["hemoglobin"]
    assert got.result is N
    assert got.evidence[0].recorded_value == 8.4


def test_offsets_can_reverse_calendar_days_two_days_apart():
    """Offsets span 28 hours: 23:30-14:00 on the 8th is after 00:10+14:00 on the 10th."""
    got = verdicts(
        obs("718-7", 12.0, "g/dL", "2026-06-10T00:10:00+14:00"),
        obs("718-7", 8.0, "g/dL", "2026-06-08T23:30:00-14:00"),
    )["hemoglobin"]
    assert got.result is N


@pytest.mark.parametrize(
    ("dated", "timed", "expected"),
    [
        (12.0, 8.6, U),  # the date without a time could be before or after: the choice matters
        (12.0, 11.0, M),  # both meet the threshold: the choice does not change the result
        (8.0, 8.6, N),
    ],
)
def test_a_date_without_a_time_on_a_timed_values_day_is_unknown_only_when_it_matters(
    dated, timed, expected
):
    """v2: a date without a time on the same day as a timed value could be either."""
    got = verdicts(
        obs("718-7", timed, "g/dL", "2026-06-10T09:00:00-05:00"),
        obs("718-7", dated, "g/dL", "2026-06-10"),
    )["hemoglobin"]
    assert got.result is expected
    if expected is U:
        assert got.reason == "a date without a time (2026-06-10) could be the latest"


# -- corrections -----------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["amended", "corrected"])
def test_an_amended_result_replaces_the_final_one_it_corrects(status):
    """v2 Corrections: amended or corrected replaces final at the same effective time."""
    when = "2026-06-10T08:00:00+08:00"
    got = verdicts(
        obs("718-7", 8.0, "g/dL", when, issued="2026-06-10T10:00:00+08:00"),
        obs("718-7", 9.6, "g/dL", when, status=status, issued="2026-06-10T09:00:00+08:00"),
    )["hemoglobin"]
    assert got.result is M
    assert got.evidence[0].recorded_value == 9.6


def test_among_equal_statuses_the_later_issued_decides():
    """v2 Corrections: among equals, the later `issued` decides."""
    when = "2026-06-10T08:00:00+08:00"
    got = verdicts(
        obs("777-3", 42, "10*9/L", when, issued="2026-06-10T09:00:00+08:00"),
        obs("777-3", 135, "10*9/L", when, issued="2026-06-10T11:00:00+08:00"),
    )["platelets"]
    assert got.result is M


def test_still_equal_and_disagreeing_is_unknown():
    """v2 Corrections: same status, same issued, different values: unknown."""
    when = "2026-06-10T08:00:00+08:00"
    got = verdicts(
        obs("777-3", 42, "10*9/L", when, issued=when),
        obs("777-3", 135, "10*9/L", when, issued=when),
    )["platelets"]
    assert got.result is U
    assert "same timestamp disagree" in got.reason


# -- blood pressure per component -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        # a panel with systolic 172 and a diastolic with dataAbsentReason
        ((bp_panel(172, None, "2026-06-10"),), N),
        # an older 120/80 and a newer lone systolic 172
        ((bp_panel(120, 80, "2026-06-01"), obs("8480-6", 172, "mm[Hg]", "2026-06-10")), N),
        # 168/98 coded sitting
        (
            (obs("8459-0", 168, "mm[Hg]", "2026-06-10"), obs("8453-3", 98, "mm[Hg]", "2026-06-10")),
            N,
        ),
        # standing, supine, non-invasive, and the 35094-2 panel
        ((obs("8460-8", 150, "mm[Hg]", "2026-06-10"),), N),
        (
            (obs("8461-6", 120, "mm[Hg]", "2026-06-10"), obs("8455-8", 95, "mm[Hg]", "2026-06-10")),
            N,
        ),
        (
            (
                obs("76534-7", 128, "mm[Hg]", "2026-06-10"),
                obs("76535-4", 78, "mm[Hg]", "2026-06-10"),
            ),
            M,
        ),
        # a lone systolic under the limit, no diastolic, no hypertension
        ((obs("8480-6", 128, "mm[Hg]", "2026-06-10"),), M),
    ],
)
def test_blood_pressure_judges_each_component_by_its_own_latest_reading(resources, expected):
    """v2 blood_pressure_controlled: systolic and diastolic judged apart, every reading code."""
    assert verdicts(*resources)["blood_pressure_controlled"].result is expected


def test_a_blood_pressure_panel_coded_35094_2_is_read_by_its_components():
    """v2: panel 85354-9, 55284-4 or 35094-2."""
    panel = bp_panel(150, 80, "2026-06-10")
    panel["code"]["coding"][0]["code"] = "35094-2"
    assert verdicts(panel)["blood_pressure_controlled"].result is N
    assert any(c.code == "35094-2" for c in TRIAL.observation_codes())


# -- hepatic encephalopathy and ascites as hospitals coded them ---------------------------------
@pytest.mark.parametrize(
    ("code", "system"),
    [
        ("K72.90", ICD10CM),
        ("K72.91", ICD10CM),
        ("K72.00", ICD10CM),
        ("K72.10", ICD10CM),
        ("K70.40", ICD10CM),
        ("K71.11", ICD10CM),
        ("K76.82", ICD10CM),
        ("K72.9", ICD10),
        ("K70.4", ICD10),
        ("13920009", SNOMED),
        ("59927004", SNOMED),
    ],
)
def test_hepatic_failure_codes_count_as_hepatic_encephalopathy(code, system):
    """v2: until FY2023 US coders recorded hepatic encephalopathy as hepatic failure."""
    assert TRIAL.codesets["hepatic_encephalopathy"].matches(Coding(system, code))


@pytest.mark.parametrize("code", ["R18.8", "K70.11", "K70.31", "K71.51"])
def test_combination_codes_that_include_ascites_count_for_ascites(code):
    """v2: CM combination codes that include ascites."""
    assert TRIAL.codesets["ascites"].matches(Coding(ICD10CM, code))


def test_child_pugh_c_from_hepatic_failure_and_alcoholic_cirrhosis_with_ascites():
    """v2: K72.90 + K70.31 with bilirubin 1.6 (1), albumin 30 g/L (2), INR 2.4 (3): 10 to 12."""
    got = verdicts(
        cond("K72.90"),
        cond("K70.31"),
        obs("1975-2", 1.6, "mg/dL", "2026-06-10"),
        obs("1751-7", 30, "g/L", "2026-06-10"),
        obs("6301-6", 2.4, "{INR}", "2026-06-10"),
    )["child_pugh"]
    assert got.result is N


# -- SNOMED-only problem lists --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("criterion", "code", "clinical"),
    [
        ("no_other_malignancy", "363406005", "resolved"),  # colon cancer, any clinicalStatus
        ("cardiac_function", "22298006", "active"),  # myocardial infarction
        ("cardiac_function", "399211009", "active"),  # history of myocardial infarction
        ("cardiac_function", "53741008", "active"),
        ("no_autoimmune_disease", "69896004", "active"),  # rheumatoid arthritis
        ("no_extrahepatic_metastasis", "94260004", "active"),
        ("no_extrahepatic_metastasis", "314994000", "active"),
        ("no_organ_transplant", "161665007", "active"),
    ],
)
def test_snomed_only_problem_lists_are_excluded(criterion, code, clinical):
    """v2: SNOMED 'X and its descendants' as published expansions."""
    assert verdicts(cond(code, SNOMED, clinical))[criterion].result is N


@pytest.mark.parametrize("code", ["94381002", "285613005", "1691000119104", "107831000119101"])
def test_secondary_of_liver_is_neither_another_malignancy_nor_extrahepatic(code):
    """v2: other_malignancy excepts 94381002 and the secondaries; metastasis excepts liver."""
    got = verdicts(cond(code, SNOMED))
    assert got["no_other_malignancy"].result is M
    assert got["no_extrahepatic_metastasis"].result is M


def test_a_liver_cancer_spread_elsewhere_is_an_extrahepatic_metastasis():
    """315000005 Metastasis from malignant tumor of liver: the spread is outside the liver."""
    got = verdicts(cond("315000005", SNOMED))
    assert got["no_extrahepatic_metastasis"].result is N
    assert got["no_other_malignancy"].result is M


# -- pregnancy ------------------------------------------------------------------------------------
def test_a_males_pregnancy_code_does_not_exclude():
    """v2 not_pregnant: for a male, sex decides (met) and the evidence notes the code."""
    got = verdicts(cond("72892002", SNOMED))["not_pregnant"]
    assert got.result is M
    assert any("not counted" in (e.note or "") for e in got.evidence)


def test_a_females_pregnancy_code_excludes():
    """An active pregnancy Condition is not_met at any age for a female."""
    got = verdicts(cond("79586000", SNOMED), who=patient("female", "1960-01-01"))
    assert got["not_pregnant"].result is N


@pytest.mark.parametrize(
    ("extension", "expected"),
    [
        # the birth-sex extension says female: an hCG is required
        ({"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
          "valueCode": "F"}, U),
        # sex for clinical use: female-typical
        ({"url": "http://hl7.org/fhir/StructureDefinition/patient-sexParameterForClinicalUse",
          "extension": [{"url": "value", "valueCodeableConcept": {"coding": [{
              "system": "http://terminology.hl7.org/CodeSystem/sex-parameter-for-clinical-use",
              "code": "female-typical"}]}}]}, U),
        ({"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
          "valueCode": "M"}, M),
    ],
)  # fmt: skip
def test_sex_is_the_extension_where_present_else_gender(extension, expected):
    """Fine print, not_pregnant: the birth-sex or sex-for-clinical-use extension decides."""
    who = patient("male", "1990-01-01", extension=[extension])
    assert verdicts(who=who)["not_pregnant"].result is expected


# -- abatement ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("abatement", "expected"),
    [
        ({"abatementDateTime": "2014-01-10"}, M),
        ({"abatementPeriod": {"start": "2013-01-01", "end": "2014-01-10"}}, M),
        ({"abatementString": "resolved in childhood"}, M),
        ({"abatementBoolean": True}, M),
        ({"abatementAge": {"value": 30, "unit": "a"}}, M),  # born 1970: ended 2000
        ({"abatementAge": {"value": 70, "unit": "a"}}, N),  # ends in 2040
        ({"abatementRange": {"low": {"value": 20}, "high": {"value": 30}}}, M),
        ({"abatementRange": {"low": {"value": 50}, "high": {"value": 60}}}, N),  # until 2030
        ({"abatementDateTime": "2026-07-01"}, N),  # after as-of: still active
        ({"abatementBoolean": False}, N),
        ({}, N),
    ],
)
def test_abatement_without_a_clinical_status_ends_a_condition(abatement, expected):
    """v2: a Condition with no clinicalStatus but an abatement is history, not active."""
    got = verdicts(cond("E05.0", clinical=None, **abatement))
    assert got["no_autoimmune_disease"].result is expected


def test_a_clinical_status_wins_over_an_abatement():
    """Only a Condition without clinicalStatus is judged by its abatement."""
    got = verdicts(cond("E05.0", clinical="active", abatementDateTime="2014-01-10"))
    assert got["no_autoimmune_disease"].result is N


# -- early recurrence ---------------------------------------------------------------------------
RESECTION = procedure("47120", "http://www.ama-assn.org/go/cpt", "2025-09-01")


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        # a routine admission re-coded C22.0 a month after resection, a later one in range
        ((cond("C22.0", onsetDateTime="2025-10-01"), cond("C22.0", onsetDateTime="2026-05-01")), U),
        # the same, and a later Condition coded as a recurrence
        (
            (
                cond("C22.0", onsetDateTime="2025-10-01"),
                cond("C22.0", clinical="recurrence", onsetDateTime="2026-05-01"),
            ),
            M,
        ),
        # only the post-operative re-coding: no possible R in the range
        ((cond("C22.0", onsetDateTime="2025-10-01"),), N),
        # the earliest onset after P is in the range
        ((cond("C22.0", onsetDateTime="2026-01-15"), cond("C22.0", onsetDateTime="2026-05-01")), M),
        # a recurrence-coded Condition too soon decides, whatever the other onsets
        (
            (
                cond("C22.0", clinical="relapse", onsetDateTime="2025-10-01"),
                cond("C22.0", onsetDateTime="2026-05-01"),
            ),
            N,
        ),
    ],
)
def test_early_recurrence_reads_post_operative_re_coding_as_possible_not_certain(
    conditions, expected
):
    """v2 early_recurrence: hospitals re-code C22.0 at every admission."""
    got = verdicts(RESECTION, *conditions)["early_recurrence"]
    assert got.result is expected, got.reason


@pytest.mark.parametrize("code", ["50.22", "50.3", "50.23", "50.24", "50.25", "50.26", "5022"])
def test_icd9cm_liver_procedures_are_radical_treatments(code):
    """v2: ICD-9-CM procedures (used in China)."""
    got = verdicts(procedure(code, ICD9CM, "2025-09-01"), cond("C22.0", onsetDateTime="2026-01-15"))
    assert got["early_recurrence"].result is M


# -- WHO Z85.0 ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "system", "expected"),
    [
        ("Z85.0", ICD10, U),  # WHO: may be the liver cancer itself
        ("Z85.000x", ICD10, U),  # China's extension
        ("Z85.05", ICD10CM, M),  # CM: history of liver cancer
        ("Z85.038", ICD10CM, N),  # CM: history of another large-intestine cancer
        ("Z85.3", ICD10, N),  # WHO: history of breast cancer
    ],
)
def test_who_z85_0_makes_other_malignancy_unknown(code, system, expected):
    """v2 no_other_malignancy: only WHO Z85.0 gives unknown (the coordinator reads it)."""
    got = verdicts(cond(code, system, clinical="resolved"))["no_other_malignancy"]
    assert got.result is expected


def test_a_who_z85_0_beside_another_cancer_is_not_met():
    """Another malignancy decides whatever the Z85.0."""
    got = verdicts(cond("Z85.0", ICD10), cond("C50.9", ICD10))["no_other_malignancy"]
    assert got.result is N


# -- OID forms ------------------------------------------------------------------------------------
def test_oid_forms_of_the_standard_systems_are_the_same_systems():
    """v2: urn:oid forms of LOINC, ICD-10-CM, UCUM read like their URLs."""
    got = verdicts(
        cond("C22.0", "urn:oid:2.16.840.1.113883.6.90"),
        obs("718-7", 8.0, None, "2026-06-10", system="urn:oid:2.16.840.1.113883.6.1")
        | {
            "valueQuantity": {
                "value": 8.0,
                "code": "g/dL",
                "system": "urn:oid:2.16.840.1.113883.6.8",
            }
        },
    )
    assert got["hcc_diagnosis"].result is M
    assert got["hemoglobin"].result is N


def test_the_cohort_query_lists_both_forms_of_every_system():
    """v2 Cohort: the server query lists the exact codes under every system form."""
    tokens = {(c.system, c.code) for c in TRIAL.cohort_tokens()}
    assert ("http://hl7.org/fhir/sid/icd-10-cm", "C22.0") in tokens
    assert ("urn:oid:2.16.840.1.113883.6.90", "C22.0") in tokens
    assert ("urn:oid:2.16.840.1.113883.6.3", "C22.0") in tokens
    assert ("urn:oid:2.16.840.1.113883.6.96", "109841003") in tokens


# -- plausibility ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "value", "unit", "criterion"),
    [
        ("1751-7", -50, "g/L", "albumin"),
        ("1751-7", 10e31, "g/L", "albumin"),
        ("718-7", 131, "g/dL", "hemoglobin"),  # a g/L number sent as g/dL
        ("777-3", 6000, "10*9/L", "platelets"),
        ("1975-2", -1, "mg/dL", "bilirubin_total"),
    ],
)
def test_an_implausible_latest_value_is_unknown_with_no_fall_back(code, value, unit, criterion):
    """v2 Plausibility: outside the bounds a value is unusable, as if it had no value."""
    got = verdicts(
        obs(code, value, unit, "2026-06-12"),
        obs(code, {"g/L": 39, "g/dL": 12, "10*9/L": 150, "mg/dL": 1.0}[unit], unit, "2026-06-01"),
    )[criterion]
    assert got.result is U
    assert "implausible value" in got.reason


# -- new codes and unit spellings -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "value", "unit", "criterion", "expected"),
    [
        ("30313-1", 8.0, "g/dL", "hemoglobin", N),
        ("30350-3", 12.0, "g/dL", "hemoglobin", M),
        ("30351-1", 12.0, "g/dL", "hemoglobin", M),
        ("13056-7", 40, "10*9/L", "platelets", N),
        ("49497-1", 140, "10*9/L", "platelets", M),
        ("61152-5", 25, "g/L", "albumin", N),
        ("21232-4", 3.0, "mg/dL", "creatinine", N),
        ("12961-9", 40, "mg/dL", "bun", N),
        ("59570-2", 5.0, "mmol/L", "bun", M),  # 14.0 mg/dL BUN
    ],
)
def test_v2_loinc_codes_are_read(code, value, unit, criterion, expected):
    """v2: more LOINC codes for hemoglobin, platelets, albumin, BUN, creatinine."""
    assert verdicts(obs(code, value, unit, "2026-06-10"))[criterion].result is expected


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (obs("45194-8", 40, "[IU]/L", "2026-06-12"), N),
        (obs("20415-6", 2, "[IU]/L", "2026-06-12"), M),
        (
            obs("2110-5", None, None, "2026-06-12")
            | {"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "260385009"}]}},
            M,
        ),
        (obs("19180-9", 2, "[IU]/L", "2026-06-12"), U),  # free beta-hCG is not a pregnancy test
        (obs("2106-3", 2, "[IU]/L", "2026-06-12"), U),  # urine: not the protocol's blood test
    ],
)
def test_v2_serum_hcg_codes_are_read_and_others_are_not(resource, expected):
    """v2: hCG quantity 45194-8, 20415-6 and presence 2110-5; free beta and urine are not."""
    got = verdicts(resource, who=patient("female", "1990-01-01"))["not_pregnant"]
    assert got.result is expected


def test_v2_fasting_glucose_in_venous_blood_is_read():
    """v2: fasting glucose 1557-8 (mg/dL), for a diabetic patient."""
    got = verdicts(cond("E11.9"), obs("1557-8", 180.16, "mg/dL", "2026-06-10"))
    assert got["diabetes_glucose_controlled"].result is N  # 10.0 mmol/L > 8.0


def test_v2_neutrophil_percent_and_leukocyte_codes_derive_the_count():
    """v2: ANC = WBC x % / 100 from 23761-0 and 804-5 on the same day."""
    got = verdicts(
        obs("804-5", 5.0, "10*9/L", "2026-06-10"), obs("23761-0", 40, "%", "2026-06-10")
    )["neutrophils"]
    assert got.result is M  # 2.0 >= 1.5


def test_v2_inr_code_is_read_for_coagulation():
    """v2: INR 38875-1."""
    got = verdicts(obs("38875-1", 1.1, "{INR}", "2026-06-10"))["coagulation"]
    assert got.result is M


@pytest.mark.parametrize(
    ("code", "value", "unit_text", "criterion", "expected"),
    [
        ("777-3", 168, "×10^9/L", "platelets", M),
        ("777-3", 40, "×10⁹/L", "platelets", N),
        ("777-3", 168, "10~9/L", "platelets", M),
        ("777-3", 168, "x10(9)/L", "platelets", M),
        ("777-3", 168, "K/cu mm", "platelets", M),
        ("777-3", 168, "thou/mcL", "platelets", M),
        ("777-3", 168, "10^3/mcL", "platelets", M),
        ("777-3", 168, "x10E3/µL", "platelets", M),
        ("777-3", 168, "Gpt/L", "platelets", M),
        ("777-3", 168000, "/cmm", "platelets", M),
        ("751-8", 1.2, "×10^9/L", "neutrophils", N),
        ("1742-6", 3.6, "µkat/L", "alt", N),  # 216 U/L >= 5 x 40
        ("1742-6", 0.45, "µkat/L", "alt", M),
    ],
)
def test_unit_spellings_of_laboratory_systems_are_read(code, value, unit_text, criterion, expected):
    """v2: spellings seen in laboratory systems (unit text, no UCUM code)."""
    res = obs(code, None, None, "2026-06-10")
    res["valueQuantity"] = {"value": value, "unit": unit_text}
    assert verdicts(res)[criterion].result is expected


def test_seconds_in_chinese_are_seconds():
    """v2: 秒 (seconds) for a prothrombin time."""
    res = obs("5902-2", None, None, "2026-06-10")
    res["valueQuantity"] = {"value": 12.6, "unit": "秒"}
    res["referenceRange"] = [{"low": {"value": 11.0, "unit": "秒"}, "high": {"value": 14.5}}]
    got = verdicts(res)["coagulation"]
    assert got.result is M


@pytest.mark.parametrize("unit_text", ["U/L", "mIU/mL", "IU/L"])
def test_hcg_in_u_per_l_or_miu_per_ml_is_iu_per_l(unit_text):
    """v2 policy: hCG in U/L or mIU/mL is [IU]/L."""
    res = obs("21198-7", None, None, "2026-06-12")
    res["valueQuantity"] = {"value": 40, "unit": unit_text}
    got = verdicts(res, who=patient("female", "1990-01-01"))["not_pregnant"]
    assert got.result is N


def test_the_eighth_manual_criterion_is_vascular_invasion():
    """v2: no_major_vascular_invasion is manual (Milan also excludes macrovascular invasion)."""
    assert verdicts()["no_major_vascular_invasion"].result is Result.MANUAL
