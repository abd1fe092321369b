"""How a lab value is shown to people: comparator kept, rounded to the precision it was recorded
with, units as people write them (issue 12: `>400` showed as `400`, `39.000000001 g/L` and
`10*9/L` reached the coordinator).

Every function reads the evidence as results.json holds it (`evidence["recorded"]`,
`evidence["normalised"]`), so that the CSVs, `explain` and report.html show the same text from
the same document. Rounding is for the eye only: criteria were decided on the unrounded values,
which results.json keeps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

#: A JSON parser drops trailing zeros (`1.0` reads as 1, `3.90` as 3.9), so the precision it
#: leaves may be a figure short: a value is never rounded to fewer than two figures (1.0 mg/dL
#: creatinine is `88` umol/L, not `90`), though no zero is added for them (a score 1 stays `1`).
MIN_FIGURES = 2
#: The magnitudes written out in full (`10600`, `0.000012`); beyond them, `1.06e+25`.
_PLAIN_EXPONENTS = range(-7, 21)

Shown = tuple[str, str]


def shown_value(recorded: object, normalised: object) -> Shown:
    """(value, unit) a person reads for one piece of evidence: the normalised value where there
    is one (what the criterion compared with its threshold), else the recorded one as written,
    else ("", ""). `recorded` and `normalised` are the evidence's `recorded` and `normalised`
    objects of results.json; anything else counts as absent."""
    value, unit = normalised_text(recorded, normalised)
    if value:
        return value, unit
    return recorded_text(recorded)


def recorded_text(recorded: object) -> Shown:
    """(value, unit) as the source wrote them: the comparator kept (`>400`), the number as
    recorded, the unit text (Quantity.unit), else the unit code. ("", "") without a number."""
    rec = recorded if isinstance(recorded, Mapping) else {}
    value = _number(rec.get("value"))
    if value is None:
        return "", ""
    unit = _text(rec.get("unit")) or _text(rec.get("code"))
    return _comparator(rec) + number_text(value), unit


def normalised_text(recorded: object, normalised: object) -> Shown:
    """(value, unit) in the analyte's canonical unit: the recorded comparator kept (conversions
    are positive factors, so it keeps its direction), the number rounded to the significant
    figures of the recorded one (3.9 g/dL -> `39` g/L; 34.2 umol/L -> `2.00` mg/dL, its zeros
    kept: they are measured), the unit for people (`unit_text`).

    A value computed from others (no recorded number: a derived count, a PT prolongation) is
    shown as computed. ("", "") without a normalised number.
    """
    rec = recorded if isinstance(recorded, Mapping) else {}
    norm = normalised if isinstance(normalised, Mapping) else {}
    value = _number(norm.get("value"))
    if value is None:
        return "", ""
    source = _number(rec.get("value"))
    if source is None:
        text = number_text(value)
    else:
        figures = significant_figures(source)
        text = rounded(value, max(figures, MIN_FIGURES))
        if figures < MIN_FIGURES and "." in text and "e" not in text:
            # The floor's extra figure is no measurement: its trailing zero goes (`1.0` -> `1`).
            text = text.removesuffix("0").removesuffix(".")
    return _comparator(rec) + text, unit_text(_text(norm.get("unit")))


def number_text(value: float) -> str:
    """A number as JSON would write it, shortest form: 400.0 -> `400`, 3.9 -> `3.9`, 1e-05."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return f"{value:g}"
    text = repr(float(value))
    return text.removesuffix(".0")


def significant_figures(value: float) -> int:
    """The significant figures of `value` as recorded: every digit of its shortest form but
    leading zeros (`0.75` has 2, `4` has 1, `400` has 3: an integer's zeros are taken as
    measured, so that a rounding never takes away what may have been); 1 for zero."""
    text = number_text(value).lstrip("-")
    mantissa = text.split("e")[0]
    digits = mantissa.replace(".", "").lstrip("0")
    return max(len(digits), 1)


def rounded(value: float, figures: int) -> str:
    """`value` rounded half up to `figures` significant figures, its zeros kept as measured
    (39.000000001 with 2 -> `39`, 1.9995372 with 3 -> `2.00`, 10608.0 with 3 -> `10600`)."""
    if not math.isfinite(value):
        return number_text(value)
    if value == 0:
        return "0"
    # A double holds 17 significant digits at most; more would only ask Decimal for noise.
    figures = min(max(figures, 1), 17)
    exact = Decimal(number_text(value))
    step = Decimal(1).scaleb(exact.adjusted() - figures + 1)
    near = exact.quantize(step, rounding=ROUND_HALF_UP)
    if near.adjusted() not in _PLAIN_EXPONENTS:
        return f"{float(near):.{figures}g}"
    # Rounding up may add a figure (9.96 with 2 -> 10.0): the step is then one place too fine.
    if len(near.as_tuple().digits) > figures:
        near = near.quantize(step.scaleb(1), rounding=ROUND_HALF_UP)
    return format(near, "f")


def unit_text(ucum: str) -> str:
    """A canonical UCUM unit as people write it: `10*9/L` -> `10^9/L`, `[IU]/L` -> `IU/L`,
    `mm[Hg]` -> `mmHg`, an annotation alone (`{INR}`, `{score}`) -> its text. ASCII only
    (`umol/L` stays): a spreadsheet that opens the CSV as Windows-1252 garbles `µ`."""
    text = ucum.replace("10*", "10^").replace("[", "").replace("]", "")
    return text.replace("{", "").replace("}", "").replace("_", " ")


def _number(value: object) -> float | None:
    """A JSON number (never `true`, which Python counts as 1), finite or not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _comparator(recorded: Mapping[str, Any]) -> str:
    comparator = recorded.get("comparator")
    return comparator if comparator in ("<", "<=", ">", ">=") else ""
