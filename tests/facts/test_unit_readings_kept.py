"""`Units.normalise` keeps how it read each unit (issue 15): the answers are those of a first
reading, whatever was read before, and the kept readings stay bounded."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.facts import units as units_module
from adapter.facts.units import UCUM_SYSTEM, Unconvertible, Units, load_synonyms

SYNONYMS = Path(__file__).resolve().parents[2] / "mappings" / "units.yaml"
TABLE = load_synonyms(SYNONYMS)
SHARED = Units(TABLE)

# (canonical unit, UCUM code, system, unit text, molar mass, [IU] as U)
READINGS = [
    ("mg/dL", "umol/L", UCUM_SYSTEM, "umol/L", 584.66, False),
    ("mg/dL", None, None, "µmol/L", 584.66, False),
    ("mg/dL", "mg/dL", "http://unitsofmeasure.org", "mg/dL", None, False),
    ("g/dL", None, None, "g/L", None, False),
    ("{INR}", None, None, None, None, False),
    ("{INR}", None, None, "%", None, False),
    ("U/L", "[IU]/L", UCUM_SYSTEM, "IU/L", None, True),
    ("10*9/L", None, None, "10^3/uL", None, False),
    ("mmol/L", None, None, "furlongs", None, False),
    ("mg/dL", "mg/dL", "http://example.org/units", None, None, False),
    ("Cel", "[degF]", UCUM_SYSTEM, "F", None, False),
    ("mg/dL", None, None, None, None, False),
]
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, -3.5, 1e-300, 1e300]),
)


def _normalise(units: Units, value: float, reading: tuple) -> object:  # type: ignore[type-arg]
    to, code, system, unit, mass, iu = reading
    return units.normalise(
        value, to=to, code=code, system=system, unit=unit, molar_mass=mass, iu_as_u=iu
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(VALUES, st.sampled_from(READINGS)), min_size=1, max_size=8))
def test_a_kept_reading_answers_as_a_first_reading_would(
    calls: list[tuple[float, tuple]],  # type: ignore[type-arg]
) -> None:
    for value, reading in calls:
        kept = _normalise(SHARED, value, reading)
        first = _normalise(Units(TABLE), value, reading)
        assert kept == first


def test_a_ratio_without_unit_still_refuses_a_value_that_is_not_finite() -> None:
    units = Units.load(SYNONYMS)
    taken = units.normalise(1.2, to="{INR}", code=None, system=None, unit=None)
    assert not isinstance(taken, Unconvertible)
    assert taken.value == 1.2
    refused = units.normalise(math.inf, to="{INR}", code=None, system=None, unit=None)
    assert refused == Unconvertible("the value is not a finite number")


def test_an_invalid_canonical_unit_fails_every_time() -> None:
    units = Units.load(SYNONYMS)
    for _ in range(2):
        with pytest.raises(ValueError, match="canonical unit"):
            units.normalise(1.0, to="not a unit((", code=None, system=None, unit="mg/dL")


def test_a_flood_of_unit_spellings_is_not_all_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(units_module, "_READINGS_KEPT", 20)
    units = Units.load(SYNONYMS)
    for n in range(50):
        units.normalise(1.0, to="mg/dL", code=None, system=None, unit=f"unit {n}")
    assert 0 < len(units._readings) <= 20
    again = units.normalise(1.0, to="mg/dL", code=None, system=None, unit="unit 3")
    assert again == Unconvertible("unit 'unit 3' is not a known unit")
