"""Units whose scale, or values whose size, a float cannot hold (issue 11, found by
tests/properties): refused with a reason, never an OverflowError, an infinity or a false zero."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from adapter.facts.model import Normalised
from adapter.facts.ucum import engine
from adapter.facts.units import UCUM_SYSTEM, Unconvertible, Units

SYNONYMS = Path(__file__).resolve().parents[2] / "mappings" / "units.yaml"


@pytest.fixture(scope="module")
def units() -> Units:
    return Units.load(SYNONYMS)


@pytest.mark.parametrize(
    "code",
    [
        "10*400",  # pint raised OverflowError converting it to its root units
        "10*309/L",
        "1" + "0" * 400,  # ucumvert's factor is an int: float() raised OverflowError
        "10*-400/L",  # 1e-400 per litre is 0.0 as a float: every count became 0
    ],
    ids=["10*400", "10*309/L", "1e400 as digits", "10*-400/L"],
)
def test_a_unit_whose_scale_is_beyond_a_float_is_refused(units: Units, code: str) -> None:
    assert not units.is_valid(code)
    for how in (
        {"code": code, "system": UCUM_SYSTEM, "unit": None},
        {"code": None, "system": None, "unit": code},
    ):
        result = units.normalise(5, to="10*9/L", **how)  # type: ignore[arg-type]
        assert isinstance(result, Unconvertible)
        assert "beyond the range of a float" in result.reason


def test_ordinary_powers_of_ten_still_read(units: Units) -> None:
    assert units.is_valid("10*12/L")
    result = units.normalise(5, to="10*9/L", code="10*12/L", system=UCUM_SYSTEM, unit=None)
    assert isinstance(result, Normalised)
    assert result.value == 5000


@pytest.mark.parametrize(
    ("value", "code", "to"),
    [
        (1e308, "10*12/L", "10*9/L"),
        (1.7976931348623157e308, "kg/L", "g/dL"),
        (5e-324, "mg/dL", "g/dL"),
        (1e-320, "ng/dL", "g/dL"),
    ],
)
def test_a_value_that_overflows_or_underflows_in_conversion_is_unconvertible(
    units: Units, value: float, code: str, to: str
) -> None:
    """1e308 in 10*12/L is infinite in 10*9/L; 5e-324 mg/dL is 0 in g/dL. Neither is the value."""
    result = units.normalise(value, to=to, code=code, system=UCUM_SYSTEM, unit=None)
    assert isinstance(result, Unconvertible)
    assert "out of range" in result.reason


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_value_that_is_no_finite_number_is_unconvertible(units: Units, value: float) -> None:
    result = units.normalise(value, to="g/dL", code="g/L", system=UCUM_SYSTEM, unit=None)
    assert isinstance(result, Unconvertible)


def test_zero_stays_zero(units: Units) -> None:
    result = units.normalise(0, to="g/dL", code="g/L", system=UCUM_SYSTEM, unit=None)
    assert isinstance(result, Normalised)
    assert result.value == 0


def test_the_registry_is_built_once() -> None:
    assert engine() is engine()
