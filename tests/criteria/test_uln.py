"""uln_multiple: ALT, AST < 5 x ULN; BUN, creatinine < 1.5 x ULN (trial-spec, fine print 'ULN')."""

from __future__ import annotations

from dataclasses import replace

import pytest
from factories import AS_OF, lab, patient

from adapter.analytes import Analyte
from adapter.criteria.context import Context
from adapter.criteria.results import Result
from adapter.criteria.uln import UlnMultiple
from adapter.facts.model import Coding, Normalised, PatientFacts, ReferenceRange

M, N, U = Result.MET, Result.NOT_MET, Result.UNKNOWN
SNOMED = "http://snomed.info/sct"
GENDER = "http://hl7.org/fhir/administrative-gender"
V3 = "http://terminology.hl7.org/CodeSystem/v3-AdministrativeGender"
MALE, FEMALE = Coding(SNOMED, "248153007"), Coding(SNOMED, "248152002")

ANALYTES = {
    "alt": Analyte("alt", "Alanine aminotransferase", "U/L", None, 40.0, True, {}),
    "creatinine": Analyte("creatinine", "Creatinine", "mg/dL", 113.12, 1.2, False, {}),
    "ggt": Analyte("ggt", "Gamma-glutamyl transferase", "U/L", None, None, True, {}),
}
ALT = UlnMultiple(id="alt", kind="uln_multiple", analyte="alt", op="<", multiple=5, window_days=30)
CREATININE = UlnMultiple(
    id="creatinine", kind="uln_multiple", analyte="creatinine", op="<", multiple=1.5, window_days=30
)


def rr(
    high: float | None = None,
    low: float | None = None,
    *,
    unit: str = "U/L",
    applies: tuple[Coding, ...] = (),
    ages: tuple[float | None, float | None] = (None, None),
    problem: str | None = None,
) -> ReferenceRange:
    return ReferenceRange(
        low=None if low is None else Normalised(low, unit),
        high=None if high is None else Normalised(high, unit),
        high_problem=problem,
        applies_to=applies,
        age_low_years=ages[0],
        age_high_years=ages[1],
    )


def obs(analyte, value, *ranges, unit="U/L", comparator=None, problem=None, when="2026-06-10"):
    """One Observation of `analyte` with its referenceRange entries, 5 days before as-of."""
    one = lab(
        analyte, value, when, unit=unit, comparator=comparator, problem=problem, ref="Observation/x"
    )
    return replace(one, reference_ranges=ranges)


def ctx(*labs, info=None):
    return Context(PatientFacts(info or patient(), labs=labs), AS_OF, {}, ANALYTES)


def test_alt_uses_the_observations_own_reference_range_before_the_default():
    """ULN = that Observation's referenceRange.high (35 U/L), not the default 40 U/L."""
    result = ALT.evaluate(ctx(obs("alt", 180, rr(35))))
    assert result.result is N  # 180 >= 5 x 35 = 175, though < 5 x 40
    ev = result.evidence[0]
    assert ev.uln_source == "referenceRange high 35 U/L of Observation/x"
    assert ev.threshold == "< 5 x ULN (175 U/L)"
    assert result.reason == "180 U/L fails < 5 x ULN (175 U/L)"


def test_alt_without_a_reference_range_uses_the_default_uln_and_says_so():
    """No referenceRange: the default ULN from the mappings, named in the evidence."""
    result = ALT.evaluate(ctx(obs("alt", 199)))
    assert result.result is M
    assert result.evidence[0].uln_source == "default ULN 40 U/L from mappings (no referenceRange)"
    assert result.evidence[0].threshold == "< 5 x ULN (200 U/L)"


@pytest.mark.parametrize(
    ("value", "comparator", "expected"),
    [
        (174.9, None, M),
        (175.0, None, N),  # at 5 x ULN is not below it
        (400.0, None, N),
        (175.0, "<", M),  # every value of <175 is below 175
        (175.0, "<=", U),
        (180.0, "<", U),  # <180 may be either side of 175
        (170.0, ">", U),
        (175.0, ">=", N),
    ],
)
def test_alt_below_5_x_uln_at_the_boundary_and_with_comparators(value, comparator, expected):
    """alt < 5 x ULN; a comparator makes an interval decided only when wholly on one side."""
    result = ALT.evaluate(ctx(obs("alt", value, rr(35), comparator=comparator)))
    assert result.result is expected


@pytest.mark.parametrize(
    ("value", "ranges", "expected"),
    [
        (1.79, (), M),
        (1.8, (), N),  # 1.5 x 1.2 is 1.8 exactly, not 1.7999999999999998
        (1.64, (rr(1.1, 0.6, unit="mg/dL"),), M),
        (1.65, (rr(1.1, 0.6, unit="mg/dL"),), N),
    ],
)
def test_creatinine_below_1_5_x_uln(value, ranges, expected):
    """creatinine < 1.5 x ULN, with the default 1.2 mg/dL or the Observation's own high."""
    result = CREATININE.evaluate(ctx(obs("creatinine", value, *ranges, unit="mg/dL")))
    assert result.result is expected


SEXED = (rr(31, applies=(FEMALE,)), rr(41, applies=(MALE,)))


@pytest.mark.parametrize(
    ("gender", "ranges", "source"),
    [
        ("male", SEXED, "referenceRange high 41 U/L"),
        ("female", SEXED, "referenceRange high 31 U/L"),
        ("female", (rr(41, applies=(Coding(GENDER, "male"),)), rr(31)), "referenceRange high 31"),
        (
            "male",
            (rr(31, applies=(Coding(V3, "F"),)), rr(41, applies=(Coding(V3, "M"),))),
            "high 41",
        ),
        ("male", (rr(50), rr(41, applies=(MALE,))), "referenceRange high 41"),  # fits, though 2nd
        ("other", (*SEXED, rr(45)), "referenceRange high 45 U/L"),  # the first without appliesTo
        (None, SEXED, "default ULN 40 U/L from mappings (no referenceRange entry with a high"),
        ("male", (rr(41, applies=(Coding(SNOMED, "413773004"),)),), "default ULN"),  # a race code
        ("male", (rr(41, applies=(MALE, Coding(SNOMED, "413773004"))),), "default ULN"),
    ],
)
def test_alt_uln_is_the_range_whose_applies_to_matches_the_patients_sex(gender, ranges, source):
    """Among several referenceRange entries, the one whose appliesTo fits, else the general one."""
    result = ALT.evaluate(ctx(obs("alt", 100, *ranges), info=patient(gender=gender)))
    assert source in (result.evidence[0].uln_source or "")


ADULT_AND_CHILD = (rr(50, ages=(0, 17)), rr(35, ages=(18, None)))


@pytest.mark.parametrize(
    ("birth", "ranges", "source"),
    [
        ("1970-01-01", ADULT_AND_CHILD, "referenceRange high 35 U/L"),
        ("2010-01-01", ADULT_AND_CHILD, "referenceRange high 50 U/L"),
        ("1970-01-01", (rr(50, ages=(0, 17)), rr(45)), "referenceRange high 45 U/L"),
        ("1970-01-01", (rr(30, ages=(18, 60)),), "referenceRange high 30 U/L"),
        ("1950-01-01", (rr(30, ages=(18, 60)),), "default ULN"),  # 76: no entry applies
        ("2008", ADULT_AND_CHILD, "default ULN"),  # 17 or 18: neither fits for certain
        (None, ADULT_AND_CHILD, "default ULN"),
        ("1970-01-01", (rr(30, ages=(18, 60), applies=(FEMALE,)), rr(38)), "high 38"),
    ],
)
def test_alt_uln_is_the_range_whose_age_matches_the_patient(birth, ranges, source):
    """An age-limited entry applies only when the patient's age at as-of is certainly within it."""
    result = ALT.evaluate(ctx(obs("alt", 100, *ranges), info=patient(birth)))
    assert source in (result.evidence[0].uln_source or "")


@pytest.mark.parametrize(
    ("ranges", "source"),
    [
        ((rr(None, 5), rr(35)), "referenceRange high 35 U/L"),
        ((rr(None, 5, applies=(MALE,)), rr(35)), "referenceRange high 35 U/L"),
        ((rr(None, 5),), "default ULN 40 U/L from mappings (no referenceRange entry with a high"),
    ],
)
def test_a_reference_range_without_a_high_passes_to_the_next_rule(ranges, source):
    """A range whose high is absent: the next applicable entry, else the default."""
    result = ALT.evaluate(ctx(obs("alt", 100, *ranges)))
    assert result.result is M
    assert (result.evidence[0].uln_source or "").startswith(source)


def test_an_unconvertible_reference_range_high_is_unknown():
    """A high that cannot be converted gives unknown, not the default."""
    problem = "reference range high: unit 'IU/mL' is not convertible to U/L"
    result = ALT.evaluate(ctx(obs("alt", 100, rr(None, problem=problem), rr(35))))
    assert result.result is U
    assert result.reason == f"ULN unknown: {problem} (Observation/x)"
    assert result.evidence[0].uln_source == result.reason
    assert result.evidence[0].threshold == "< 5 x ULN"


def test_no_reference_range_and_no_default_uln_is_unknown():
    """Without a referenceRange high or a default ULN there is nothing to compare with."""
    crit = UlnMultiple(
        id="ggt", kind="uln_multiple", analyte="ggt", op="<", multiple=3, window_days=30
    )
    result = crit.evaluate(ctx(obs("ggt", 10)))
    assert result.result is U
    assert result.reason == (
        "ULN unknown: no referenceRange on Observation/x and no default ULN in mappings"
    )


def test_no_alt_in_the_window_is_unknown_with_the_window_in_the_reason():
    """'no alanine aminotransferase in the 30 days before 2026-06-15'."""
    result = ALT.evaluate(ctx(obs("alt", 100, when="2026-05-01")))
    assert (result.result, result.evidence) == (U, ())
    assert result.reason == "no alanine aminotransferase in the 30 days before 2026-06-15"


def test_an_unreadable_latest_alt_is_unknown_with_its_evidence():
    """The latest value cannot be normalised: unknown, no fall-back to an older value."""
    problem = "unit 'ukat' is not convertible to U/L"
    older = replace(obs("alt", 20, when="2026-06-01"), reference="Observation/old")
    result = ALT.evaluate(ctx(older, obs("alt", 100, problem=problem)))
    assert result.result is U
    assert result.reason == problem
    assert (result.evidence[0].reference, result.evidence[0].note) == ("Observation/x", problem)


def test_uln_multiple_reads_its_analyte_and_checks_it_exists():
    """analytes() names what the fact builder must read; check() refuses an unknown one."""
    assert ALT.analytes() == frozenset({"alt"})
    assert ALT.check({}, ANALYTES, None) is None
    crit = UlnMultiple(
        id="x", kind="uln_multiple", analyte="lipase", op="<", multiple=3, window_days=7
    )
    assert crit.check({}, ANALYTES, None) == ("analyte", "unknown analyte 'lipase'")
