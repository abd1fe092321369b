"""A conversion that is a plain product is made with its kept factor (issue 15): the values are
pint's to the 12 digits the adapter rounds to, and what is no plain product still goes through
pint whole."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.facts.ucum import Unit, engine
from adapter.facts.units import _round

PAIRS = [
    ("mg/dL", "umol/L", 113.12),
    ("g/dL", "g/L", None),
    ("10*3/uL", "10*9/L", None),
    ("mmol/L", "mg/dL", 180.16),
    ("U/L", "ukat/L", None),
    ("%", "1", None),
]


def _unit(code: str) -> Unit:
    unit = engine().parse(code)
    assert isinstance(unit, Unit)
    return unit


@pytest.mark.parametrize(("src", "dst", "mass"), PAIRS)
@settings(deadline=None)
@given(value=st.floats(min_value=1e-6, max_value=1e9) | st.floats(min_value=-1e9, max_value=-1e-6))
def test_a_kept_factor_gives_pints_value_to_twelve_digits(src, dst, mass, value) -> None:  # type: ignore[no-untyped-def]
    a, b = _unit(src), _unit(dst)
    kept = engine().convert(value, a, b, mass)
    whole = engine()._convert(value, a, b, mass)
    assert (kept is None) == (whole is None)
    if kept is not None and whole is not None:
        assert _round(kept) == pytest.approx(_round(whole), rel=1e-11)


def test_an_offset_conversion_is_never_a_kept_factor() -> None:
    celsius, fahrenheit = _unit("Cel"), _unit("[degF]")
    assert engine()._factor(celsius, fahrenheit, None) is None
    assert engine().convert(20.0, celsius, fahrenheit, None) == pytest.approx(68.0)
    assert engine().convert(100.0, celsius, fahrenheit, None) == pytest.approx(212.0)


def test_other_dimensions_stay_unconvertible() -> None:
    assert engine().convert(1.0, _unit("mg/dL"), _unit("s"), None) is None
    assert engine().convert(1.0, _unit("mg/dL"), _unit("s"), None) is None  # (kept: None)


def test_values_out_of_the_ordinary_go_through_pint() -> None:
    a, b = _unit("mg/dL"), _unit("g/L")
    for value in (0.0, 1e-300, 1e300, -1e300):
        assert engine().convert(value, a, b, None) == engine()._convert(value, a, b, None)
