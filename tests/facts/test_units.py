"""Unit normalisation: every unit of the spec's analyte table, and the ways real data is messy."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from adapter.errors import MappingError
from adapter.facts.model import Normalised
from adapter.facts.units import UCUM_SYSTEM, Unconvertible, Units

UCUM = UCUM_SYSTEM
SYNONYMS = Path(__file__).resolve().parents[2] / "mappings" / "units.yaml"

# molar masses the analyte mappings give (g/mol); the spec's table
HEMOGLOBIN = 16114.5
BILIRUBIN = 584.66
UREA_NITROGEN = 28.014  # 2 N per urea: 1 mmol/L urea = 2.8014 mg/dL BUN
UREA = 60.056
CREATININE = 113.12
GLUCOSE = 180.16


@pytest.fixture(scope="module")
def units() -> Units:
    return Units.load(SYNONYMS)


def value_of(result: Normalised | Unconvertible) -> float:
    assert isinstance(result, Normalised), result
    return result.value


def read(
    units: Units,
    value: float,
    code: str | None,
    text: str | None,
    to: str,
    **kwargs: Any,
) -> Normalised | Unconvertible:
    """A valueQuantity with a UCUM code (when given) and unit text."""
    system = UCUM if code is not None else None
    return units.normalise(value, to=to, code=code, system=system, unit=text, **kwargs)


@pytest.mark.parametrize(
    ("value", "code", "text", "to", "expected"),
    [
        (9.0, "g/dL", "g/dL", "g/dL", 9.0),
        (90, "g/L", "g/L", "g/dL", 9.0),
        (9.0, None, "g/dl", "g/dL", 9.0),
        (9.0, "g/dL", "g/dL", "g/L", 90.0),
        (1, "mmol/L", "mmol/L", "g/dL", 1.61145),
        (5.585, None, "mmol/l", "g/dL", 8.99994825),
        (9.0, "g/dL", "g/dL", "mmol/L", pytest.approx(90 / 16.1145, rel=1e-11)),
    ],
)
def test_hemoglobin_converts_between_g_per_dl_g_per_l_and_mmol_per_l(
    units: Units, value: float, code: str | None, text: str, to: str, expected: float
) -> None:
    """Hemoglobin: g/dL <-> g/L by prefix, <-> mmol/L by the monomer's 16,114.5 g/mol."""
    result = read(units, value, code, text, to, molar_mass=HEMOGLOBIN)
    assert value_of(result) == expected


@pytest.mark.parametrize("to", ["10*9/L", "10*3/uL"])
@pytest.mark.parametrize(
    ("value", "code", "text"),
    [
        (1.5, "10*9/L", "10*9/L"),
        (1.5, "10*3/uL", "10*3/uL"),
        (1500, "/mm3", "/mm3"),
        (1500, "/uL", "/uL"),
        (1.5, "K/uL", "K/uL"),  # Synthea writes this as a UCUM code
        (1.5, None, "K/uL"),
        (1.5, None, "x10^9/L"),
        (1.5, None, "10^9/L"),
        (1.5, None, "10*3/ul"),
        (1.5, None, "10.3/uL"),
        (1.5, None, "thou/uL"),
        (1500, None, "cells/mm3"),
        (1500, None, "cells/uL"),
        (1.5, None, "G/L"),
    ],
)
def test_neutrophil_and_platelet_counts_convert_between_every_spelling(
    units: Units, value: float, code: str | None, text: str, to: str
) -> None:
    """1 10*9/L = 1 10*3/uL = 1000 /mm3 (= /uL), whatever the source wrote."""
    assert value_of(read(units, value, code, text, to)) == 1.5


def test_a_count_converts_to_per_cubic_millimetre(units: Units) -> None:
    """The neutrophil threshold 1.5 10*9/L is 1,500 /mm3."""
    assert units.convert(1.5, "10*9/L", "/mm3") == 1500.0


@pytest.mark.parametrize(
    ("value", "code", "text", "expected"),
    [
        (28, "g/L", "g/L", 28.0),
        (2.8, "g/dL", "g/dL", 28.0),
        (3.5, None, "g/dl", 35.0),
        (3.5, None, "G/DL", 35.0),
    ],
)
def test_albumin_in_g_per_dl_is_converted_to_g_per_l(
    units: Units, value: float, code: str | None, text: str, expected: float
) -> None:
    """Albumin's canonical unit is g/L: 1 g/dL = 10 g/L."""
    assert value_of(read(units, value, code, text, "g/L")) == expected


@pytest.mark.parametrize(
    ("value", "code", "text", "expected"),
    [
        (34.2, "umol/L", "umol/L", 1.9995372),
        (34.2, None, "µmol/L", 1.9995372),
        (34.2, None, "umol/l", 1.9995372),
        (1.2, "mg/dL", "mg/dL", 1.2),
    ],
)
def test_bilirubin_in_umol_per_l_is_converted_before_the_threshold(
    units: Units, value: float, code: str | None, text: str, expected: float
) -> None:
    """34.2 umol/L is 1.9995 mg/dL (584.66 g/mol, unrounded), so it meets < 2.0 mg/dL."""
    result = value_of(read(units, value, code, text, "mg/dL", molar_mass=BILIRUBIN))
    assert result == expected
    assert result < 2.0


@pytest.mark.parametrize(
    ("value", "code", "text", "expected"),
    [
        (45, "U/L", "U/L", 45.0),
        (45, None, "U/l", 45.0),
        (45, "[IU]/L", "IU/L", 45.0),
        (45, "IU/L", "IU/L", 45.0),  # Synthea: not UCUM, read through the unit text
        (0.045, "kU/L", "kU/L", 45.0),
        (0.75, "ukat/L", "ukat/L", 45.0),
    ],
)
def test_alt_and_ast_in_iu_per_l_are_taken_as_u_per_l_by_policy(
    units: Units, value: float, code: str | None, text: str, expected: float
) -> None:
    """ALT/AST: [IU]/L counts as U/L when the analyte says so (iu_as_u)."""
    assert value_of(read(units, value, code, text, "U/L", iu_as_u=True)) == expected


def test_iu_is_not_u_without_the_policy(units: Units) -> None:
    """UCUM alone refuses [IU] -> U: [IU] is an arbitrary unit."""
    result = read(units, 45, "[IU]/L", "IU/L", "U/L")
    assert result == Unconvertible("unit '[IU]/L' is not convertible to U/L")


def test_the_evidence_says_iu_was_taken_as_u(units: Units) -> None:
    """The policy shows in `via`."""
    result = read(units, 45, None, "IU/L", "U/L", iu_as_u=True)
    assert isinstance(result, Normalised)
    assert result.via == "unit text 'IU/L' read as UCUM '[IU]/L'; [IU] taken as U"


@pytest.mark.parametrize(
    ("value", "code", "text", "expected"),
    [
        (1, "mmol/L", "mmol/L", 2.8014),
        (7.14, "mmol/L", "mmol/L", 20.001996),
        (20, "mg/dL", "mg/dL", 20.0),
    ],
)
def test_urea_nitrogen_in_mmol_per_l_becomes_mg_per_dl_of_nitrogen(
    units: Units, value: float, code: str, text: str, expected: float
) -> None:
    """BUN: 1 mmol/L = 2.801 mg/dL, with the nitrogen of urea's molar mass (28.014 g/mol)."""
    result = read(units, value, code, text, "mg/dL", molar_mass=UREA_NITROGEN)
    assert value_of(result) == expected


def test_urea_in_mg_per_dl_reaches_bun_through_mmol_per_l(units: Units) -> None:
    """1 mg/dL urea = 0.4665 mg/dL BUN: urea's mmol/L equals urea nitrogen's mmol/L."""
    mmol = units.convert(10, "mg/dL", "mmol/L", molar_mass=UREA)
    assert isinstance(mmol, float)
    bun = units.convert(mmol, "mmol/L", "mg/dL", molar_mass=UREA_NITROGEN)
    assert bun == pytest.approx(4.665, abs=1e-3)


@pytest.mark.parametrize(
    ("value", "code", "text", "to", "expected"),
    [
        (88.4, "umol/L", "umol/L", "mg/dL", 0.9999808),
        (88.4, None, "μmol/L", "mg/dL", 0.9999808),
        (1.2, "mg/dL", "mg/dL", "umol/L", pytest.approx(12 / 113.12 * 1000, rel=1e-11)),
    ],
)
def test_creatinine_converts_with_its_molar_mass(
    units: Units, value: float, code: str | None, text: str, to: str, expected: float
) -> None:
    """Creatinine: 113.12 g/mol, 1 mg/dL = 88.40 umol/L."""
    result = read(units, value, code, text, to, molar_mass=CREATININE)
    assert value_of(result) == expected


@pytest.mark.parametrize(
    ("value", "code", "text", "expected"),
    [
        (8.0, "mmol/L", "mmol/L", 8.0),
        (8.0, None, "mmol/l", 8.0),
        (180.16, "mg/dL", "mg/dL", 10.0),
        (144, None, "mg/dl", pytest.approx(144 / 18.016, rel=1e-11)),
    ],
)
def test_fasting_glucose_in_mg_per_dl_is_converted_to_mmol_per_l(
    units: Units, value: float, code: str | None, text: str, expected: float
) -> None:
    """Glucose: 180.16 g/mol, 1 mmol/L = 18.016 mg/dL."""
    result = read(units, value, code, text, "mmol/L", molar_mass=GLUCOSE)
    assert value_of(result) == expected


@pytest.mark.parametrize(
    ("code", "text", "via"),
    [
        ("{INR}", "{INR}", "UCUM code '{INR}'"),
        ("{ratio}", "ratio", "UCUM code '{ratio}'"),
        ("1", None, "UCUM code '1'"),
        (None, "INR", "unit text 'INR' read as UCUM '{INR}'"),
        (None, None, "no unit; ratio taken as {INR}"),
    ],
)
def test_inr_is_a_unitless_ratio(
    units: Units, code: str | None, text: str | None, via: str
) -> None:
    """{INR} is the number 1; a missing unit is accepted for a ratio."""
    assert read(units, 1.8, code, text, "{INR}") == Normalised(1.8, "{INR}", None, via)


@pytest.mark.parametrize("to", ["g/dL", "s", "mm[Hg]"])
def test_a_missing_unit_is_accepted_only_for_a_ratio(units: Units, to: str) -> None:
    """Units are converted, never assumed: no unit is only the canonical unit for {INR} or 1."""
    assert read(units, 9.0, None, None, to) == Unconvertible("no unit")


@pytest.mark.parametrize(
    ("value", "code", "text", "expected"),
    [
        (13.5, "s", "s", 13.5),
        (13.5, None, "sec", 13.5),
        (13.5, None, "seconds", 13.5),
        (0.25, "min", "min", 15.0),
    ],
)
def test_prothrombin_time_is_read_in_seconds(
    units: Units, value: float, code: str | None, text: str, expected: float
) -> None:
    """PT: canonical s; `sec` is not UCUM (it would not parse)."""
    assert value_of(read(units, value, code, text, "s")) == expected


@pytest.mark.parametrize(
    ("value", "code", "text", "expected"),
    [
        (120, "mm[Hg]", "mm[Hg]", 120.0),
        (120, "mm[Hg]", "mmHg", 120.0),
        (120, None, "mmHg", 120.0),
        (120, None, "mm Hg", 120.0),
        (16, "kPa", "kPa", pytest.approx(16000 / 133.322387415, rel=1e-11)),
    ],
)
def test_blood_pressure_is_read_in_mm_hg(
    units: Units, value: float, code: str | None, text: str, expected: float
) -> None:
    """BP: canonical mm[Hg]; HL7 examples write `mmHg` and `mm Hg`."""
    assert value_of(read(units, value, code, text, "mm[Hg]")) == expected


@pytest.mark.parametrize(
    ("value", "code", "text", "expected"),
    [
        (25, "mm", "mm", 2.5),
        (2.5, "cm", "cm", 2.5),
        (2, "[in_i]", "in", 5.08),
    ],
)
def test_tumour_size_in_mm_is_converted_to_cm(
    units: Units, value: float, code: str, text: str, expected: float
) -> None:
    """Milan criteria are in cm; lesion sizes in mm are converted."""
    assert value_of(read(units, value, code, text, "cm")) == expected


@pytest.mark.parametrize(
    ("value", "code", "text"),
    [
        (5, "[IU]/L", "IU/L"),
        (5, "m[IU]/mL", "mIU/mL"),
        (5, None, "mIU/mL"),
        (5, None, "IU/L"),
        (0.005, "[IU]/mL", "IU/mL"),
    ],
)
def test_hcg_in_miu_per_ml_is_converted_to_iu_per_l(
    units: Units, value: float, code: str | None, text: str
) -> None:
    """hCG: 1 mIU/mL = 1 [IU]/L, the same arbitrary unit (no policy needed)."""
    assert value_of(read(units, value, code, text, "[IU]/L")) == 5.0


@pytest.mark.parametrize("to", ["mL/min/{1.73_m2}", "mL/min"])
@pytest.mark.parametrize(
    ("code", "text"),
    [
        ("mL/min/{1.73_m2}", "mL/min/{1.73_m2}"),
        ("mL/min", "mL/min"),
        ("mL/min/{1.73_m2}", "mL/min/1.73m2"),  # HL7 example
        (None, "mL/min/1.73m2"),
        (None, "mL/min/1.73 m2"),
    ],
)
def test_egfr_body_surface_annotation_is_unitless(
    units: Units, code: str | None, text: str, to: str
) -> None:
    """UCUM annotations are unitless: mL/min/{1.73_m2} compares as mL/min."""
    assert value_of(read(units, 60, code, text, to)) == 60.0


@pytest.mark.parametrize(("ucum", "expected"), [("%", 40.0), ("1", 0.4), ("{ratio}", 0.4)])
def test_percent_is_one_hundredth(units: Units, ucum: str, expected: float) -> None:
    """% is 1/100: 40 % is 40 %, or 0.4."""
    assert units.convert(40, "%", ucum) == expected


def test_percent_spelled_out_is_read_as_percent(units: Units) -> None:
    """`percent` is not UCUM; the synonyms map it."""
    assert value_of(read(units, 40, None, "percent", "%")) == 40.0


@pytest.mark.parametrize("code", ["K/uL", None])
def test_k_per_ul_is_thousands_not_kelvin(units: Units, code: str | None) -> None:
    """`K/uL` is valid UCUM for kelvin per microlitre; the synonyms read it as 10*3/uL."""
    result = read(units, 250, code, "K/uL", "10*9/L")
    assert isinstance(result, Normalised)
    assert result.value == 250.0
    assert result.via.startswith("unit text 'K/uL' read as UCUM '10*3/uL'")


def test_k_per_ul_as_a_ucum_code_without_unit_text_is_not_read(units: Units) -> None:
    """With no unit text to fall back on, a code that would be kelvin is not a unit."""
    result = read(units, 250, "K/uL", None, "10*9/L")
    assert isinstance(result, Unconvertible)
    assert result.reason == (
        "unit code 'K/uL' is not read as UCUM ('K' would be read as kelvin),"
        " and there is no unit text"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.3/uL", 7.0), ("10.9/L", 7.0), ("10*3/uL", 7.0), ("/uL", 0.007)],
)
def test_decimal_power_of_ten_is_read_through_the_synonyms_not_multiplied(
    units: Units, text: str, expected: float
) -> None:
    """`10.3/uL` is 10^3/uL (a lost caret), never UCUM's 10 x 3 = 30 /uL."""
    assert value_of(read(units, 7, None, text, "10*9/L")) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("xyz", "unit 'xyz' is not a known unit"),
        ("units", "unit 'units' is not a known unit"),
        ("pH", "unit 'pH' is not a known unit ('pH' would be read as picohenry)"),
        ("1.73", "unit '1.73' is not a known unit (a decimal point is UCUM multiplication"),
        ("x" * 80, "unit '" + "x" * 37 + "...' is not a known unit"),
    ],
)
def test_unknown_unit_is_unconvertible_with_its_reason(
    units: Units, text: str, reason: str
) -> None:
    """Unit text that is neither a synonym nor UCUM gives a reason naming only the unit."""
    result = read(units, 1.0, None, text, "g/dL")
    assert isinstance(result, Unconvertible)
    assert result.reason.startswith(reason)


@pytest.mark.parametrize(
    ("code", "to"),
    [("mmol/L", "g/dL"), ("mg/dL", "umol/L"), ("umol/L", "mg/dL")],
)
def test_mmol_without_molar_mass_is_unconvertible(units: Units, code: str, to: str) -> None:
    """Mass <-> substance needs the analyte's molar mass: never a global table."""
    assert read(units, 5, code, code, to) == Unconvertible(
        f"unit '{code}' is not convertible to {to}"
    )


@pytest.mark.parametrize(
    ("code", "to"),
    [("mg/dL", "s"), ("10*9/L", "g/L"), ("[IU]/L", "10*9/L"), ("[IU]/L", "/L"), ("%", "[IU]")],
)
def test_different_dimensions_are_unconvertible(units: Units, code: str, to: str) -> None:
    """No conversion across dimensions; UCUM's arbitrary units ([IU]) convert to nothing else."""
    assert read(units, 5, code, code, to, molar_mass=100.0) == Unconvertible(
        f"unit '{code}' is not convertible to {to}"
    )


@pytest.mark.parametrize("comparator", ["<", "<=", ">", ">=", None])
def test_comparator_is_kept(units: Units, comparator: str | None) -> None:
    """A comparator survives conversion (factors are positive)."""
    result = read(
        units, 34.2, "umol/L", "umol/L", "mg/dL", molar_mass=BILIRUBIN, comparator=comparator
    )
    assert isinstance(result, Normalised)
    assert result.comparator == comparator


@pytest.mark.parametrize(
    ("code", "system", "text", "to", "expected", "via"),
    [
        ("10*3/uL", UCUM, "K/mm3", "10*9/L", 4.0, "UCUM code '10*3/uL'"),
        ("g/L", UCUM, "g/dL", "g/dL", 0.4, "UCUM code 'g/L'"),
        ("g/L", "http://example.org/units", "g/dL", "g/dL", 4.0, "unit text 'g/dL' read as UCUM"),
        ("g/L", None, "g/dL", "g/dL", 4.0, "unit text 'g/dL' read as UCUM"),
        (
            "258813002",
            "http://snomed.info/sct",
            "mmol/L",
            "mmol/L",
            4.0,
            "unit text 'mmol/L' read as UCUM",
        ),
        ("mmoll", UCUM, "mmol/l", "mmol/L", 4.0, "unit text 'mmol/l' read as UCUM"),
    ],
)
def test_ucum_code_is_preferred_over_unit_text(
    units: Units, code: str, system: str | None, text: str, to: str, expected: float, via: str
) -> None:
    """The code decides when its system is UCUM and it parses; otherwise the unit text."""
    result = units.normalise(4, to=to, code=code, system=system, unit=text)
    assert result == Normalised(expected, to, None, via)


@pytest.mark.parametrize(
    ("text", "to", "via"),
    [
        ("g/l", "g/L", "unit text 'g/l' read as UCUM"),  # never G/L (10*9/L) by case
        ("G/L", "10*9/L", "unit text 'G/L' read as UCUM '10*9/L'"),
        ("MMOL/L", "mmol/L", "unit text 'MMOL/L' read as UCUM 'mmol/L'"),
        ("Mmol/L", "mmol/L", "unit text 'Mmol/L' read as UCUM 'mmol/L'"),  # not megamole
        ("k/ul", "10*9/L", "unit text 'k/ul' read as UCUM '10*3/uL'"),
        (" mm  Hg ", "mm[Hg]", "unit text 'mm Hg' read as UCUM 'mm[Hg]'"),
    ],
)
def test_case_insensitive_synonyms_come_after_ucum(
    units: Units, text: str, to: str, via: str
) -> None:
    """Exact synonym (whitespace trimmed), then the text as UCUM, then any case."""
    assert read(units, 1, None, text, to) == Normalised(1.0, to, None, via)


def test_float_noise_is_rounded_to_twelve_significant_digits(units: Units) -> None:
    """90 g/L is exactly 9.0 g/dL, and 10*9/L is exactly 10*3/uL."""
    assert units.convert(90, "g/L", "g/dL") == 9.0
    assert units.convert(0.1, "10*9/L", "10*3/uL") == 0.1
    assert units.convert(3, "mL", "L") == 0.003


@pytest.mark.parametrize(
    ("ucum", "valid"),
    [
        ("10*9/L", True),
        ("10*3/uL", True),
        ("/uL", True),
        ("[IU]/L", True),
        ("U/L", True),
        ("mm[Hg]", True),
        ("%", True),
        ("s", True),
        ("cm", True),
        ("mm", True),
        ("g/dL", True),
        ("mmol/L", True),
        ("umol/L", True),
        ("mg/dL", True),
        ("mL/min/{1.73_m2}", True),
        ("{INR}", True),
        ("1", True),
        ("K/uL", False),
        ("10.3/uL", False),
        ("mg%", False),
        ("mmHg", False),
        ("sec", False),
        ("", False),
    ],
)
def test_is_valid_accepts_ucum_and_refuses_misreadings(
    units: Units, ucum: str, valid: bool
) -> None:
    """What trial and analyte files may name as units."""
    assert units.is_valid(ucum) is valid


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "expected"),
    [
        ("g/dL", "g/L", {}, True),
        ("mmol/L", "g/dL", {}, False),
        ("mmol/L", "g/dL", {"molar_mass": HEMOGLOBIN}, True),
        ("[IU]/L", "U/L", {}, False),
        ("[IU]/L", "U/L", {"iu_as_u": True}, True),
        ("mL/min/{1.73_m2}", "mL/min", {}, True),
        ("{INR}", "1", {}, True),
        ("K/uL", "10*9/L", {}, False),
        ("nonsense", "g/L", {}, False),
    ],
)
def test_compatible_says_whether_convert_would_succeed(
    units: Units, a: str, b: str, kwargs: dict[str, Any], expected: bool
) -> None:
    """compatible() is convert() without the number."""
    assert units.compatible(a, b, **kwargs) is expected
    assert isinstance(units.convert(1, a, b, **kwargs), float) is expected


def test_convert_refuses_an_invalid_canonical_unit(units: Units) -> None:
    """A bad canonical unit is a programming error, not data: it raises."""
    with pytest.raises(ValueError, match="canonical unit 'mmHg' is not valid UCUM"):
        units.convert(1, "mm[Hg]", "mmHg")
    with pytest.raises(ValueError, match="canonical unit 'K/uL'"):
        units.normalise(1, to="K/uL", code="10*3/uL", system=UCUM, unit=None)


def test_a_value_that_is_not_finite_is_unconvertible(units: Units) -> None:
    """NaN never becomes a lab value."""
    assert read(units, float("nan"), "g/L", "g/L", "g/dL") == Unconvertible(
        "the value is not a finite number"
    )


@pytest.mark.parametrize(
    ("content", "line", "field", "reason"),
    [
        ('synonyms:\n  "K/uL": "10*3/uL"\n  "kelvins": "K/uL"\n', 3, "synonyms.kelvins", "K"),
        ('synonyms:\n  "mmHg": "mmHg"\n', 2, "synonyms.mmHg", "not valid UCUM"),
        ('synonyms:\n  "sec": "s"\n  " sec": "s"\n', 3, "synonyms.sec", "duplicate"),
        ('synonyms:\n  "sec":\n', 2, "synonyms.sec", "must be a UCUM code"),
        ('synonyms:\n  "sec": ["s"]\n', 2, "synonyms.sec", "must be a UCUM code"),
        ('synonym:\n  "sec": "s"\n', 1, "synonym", "unknown key"),
        ("synonyms: s\n", 1, "", "must be a mapping"),
        ("- sec\n", 1, "", "expected a mapping"),
        ('synonyms:\n  "sec": "s\n', 3, "", "not valid YAML"),
        ("", None, "", "expected a mapping"),
    ],
)
def test_bad_synonyms_file_raises_mapping_error(
    tmp_path: Path, content: str, line: int | None, field: str, reason: str
) -> None:
    """A bad entry stops the load, naming file, line and entry."""
    path = tmp_path / "units.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        Units.load(path)
    assert caught.value.file == str(path)
    assert caught.value.line == line
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_missing_synonyms_file_raises_mapping_error(tmp_path: Path) -> None:
    """An unreadable file is a MappingError too."""
    with pytest.raises(MappingError, match="cannot be read"):
        Units.load(tmp_path / "absent.yaml")


def test_every_synonym_in_the_shipped_table_reads_as_its_target(units: Units) -> None:
    """The shipped table loads; each entry is used as written."""
    import yaml

    table = yaml.safe_load(SYNONYMS.read_text(encoding="utf-8"))["synonyms"]
    for text, ucum in table.items():
        result = units.normalise(1, to=ucum, code=None, system=None, unit=text)
        assert result == Normalised(1.0, ucum, None, f"unit text '{text}' read as UCUM '{ucum}'")


# (UCUM code, unit text) pairs seen in /work/shared/data (HL7 R4 examples, Synthea R4), with
# what they must read as: a UCUM unit to convert to, or None when they must stay unknown.
SEEN_IN_DATA = [
    ("mmol/L", "mmol/l", "mmol/L"),
    ("mL/min/{1.73_m2}", "mL/min/1.73m2", "mL/min"),
    ("mm[Hg]", "mmHg", "mm[Hg]"),
    ("mm[Hg]", "mm Hg", "mm[Hg]"),
    ("kPa", "kPa", "kPa"),
    ("g/dL", "g/dl", "g/dL"),
    ("%", "%", "%"),
    ("%", "% (sample/positive control)", "%"),
    ("kg/m2", "kg/m2", "kg/m2"),
    ("cm", "cm", "cm"),
    ("a", "yrs", "a"),
    ("[in_i]", "in", "[in_i]"),
    ("Cel", "C", "Cel"),
    (None, "degrees C", "Cel"),
    ("[lb_av]", "lbs", "[lb_av]"),
    ("10*12/L", "10^12/L", "10*12/L"),
    ("/min", "beats/minute", "/min"),
    ("/min", "breaths/minute", "/min"),
    (None, "g", "g"),
    ("{score}", None, "{score}"),
    ("mg/dL", "mg/dL", "mg/dL"),
    ("10*3/uL", "10*3/uL", "10*9/L"),
    ("10*6/uL", "10*6/uL", "10*12/L"),
    ("U/L", "U/L", "U/L"),
    ("fL", "fL", "fL"),
    ("pg", "pg", "pg"),
    ("kU/L", "kU/L", "U/L"),
    ("mg/g", "mg/g", "mg/g"),
    ("{count}", "{count}", "1"),
    ("ng/mL", "ng/mL", "ng/mL"),
    ("pg/mL", "pg/mL", "pg/mL"),
    ("(score)", "(score)", "{score}"),
    ("{T-score}", "{T-score}", "1"),
    ("{nominal}", "{nominal}", "1"),
    ("K/uL", "K/uL", "10*9/L"),
    ("M/uL", "M/uL", "10*12/L"),
    ("IU/L", "IU/L", "[IU]/L"),
    ("ng/dl", "ng/dl", "ng/dL"),
    ("m[IU]/L", "m[IU]/L", "[IU]/L"),
    ("mm", "mm", "mm"),
    ("pH", "pH", None),  # picohenry as UCUM; [pH] is logarithmic and ucumvert cannot read it
    ("units", "units", None),  # which units? not guessed
    ("g/cm-2", "g/cm²", "g.cm2"),  # HL7 bone density example: the code says g.cm2 (sic)
]


@pytest.mark.parametrize(("code", "text", "to"), SEEN_IN_DATA)
def test_every_unit_seen_in_the_shared_data_is_read(
    units: Units, code: str | None, text: str | None, to: str | None
) -> None:
    """Each unit of the sample data parses as UCUM or has a synonym (or is knowingly unknown)."""
    result = units.normalise(1, to=to or "1", code=code, system=UCUM if code else None, unit=text)
    if to is None:
        assert isinstance(result, Unconvertible)
    else:
        assert isinstance(result, Normalised), result


def _quantities(path: Path) -> set[tuple[str | None, str | None, str | None]]:
    opener = gzip.open if path.suffix == ".gz" else open
    seen: set[tuple[str | None, str | None, str | None]] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("valueQuantity", "low", "high") and isinstance(value, dict):
                    seen.add((value.get("code"), value.get("system"), value.get("unit")))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    with opener(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            walk(json.loads(line))
    return seen


@pytest.mark.data
def test_every_unit_in_the_shared_observations_is_listed_above(
    units: Units, shared_data: Path
) -> None:
    """Guards SEEN_IN_DATA against new sample data: each quantity's unit is read or listed."""
    files = [
        shared_data / "hl7-examples" / "ndjson" / "Observation.ndjson",
        shared_data / "synthea-r4-100" / "Observation.ndjson",
        shared_data / "synthea-r4-615" / "Observation.ndjson.gz",
    ]
    known_unknown = {(code, text) for code, text, to in SEEN_IN_DATA if to is None}
    for path in files:
        for code, system, text in _quantities(path):
            if (code is None and text is None) or (code, text) in known_unknown:
                continue
            result = units.normalise(1, to="1", code=code, system=system, unit=text)
            if isinstance(result, Unconvertible):
                assert "not convertible" in result.reason, (path.name, code, text, result)


def test_one_registry_is_built_once_and_shared() -> None:
    """Loading twice reuses the lazily built pint registry (it takes about a second)."""
    from adapter.facts.ucum import engine

    first = Units.load(SYNONYMS)
    second = Units.load(SYNONYMS)
    assert first.convert(1, "g/dL", "g/L") == second.convert(1, "g/dL", "g/L") == 10.0
    assert engine() is engine()


@pytest.mark.parametrize("canonical", ["{ratio}", "{INR}", "{score}"])
def test_a_percent_is_not_taken_for_a_ratio_score_or_inr(units: Units, canonical: str) -> None:
    """Quick prothrombin activity in % must not become a PT ratio of 0.7 (both dimensionless)."""
    result = units.normalise(70, to=canonical, code="%", system=UCUM, unit="%")
    assert isinstance(result, Unconvertible)
    assert "not convertible" in result.reason
    same = units.normalise(1.2, to=canonical, code=canonical, system=UCUM, unit=None)
    assert isinstance(same, Normalised)
    assert same.value == 1.2
