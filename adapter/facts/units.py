"""Unit normalisation through UCUM, with pint and ucumvert doing the arithmetic.

A lab value is read in its UCUM `code` when the system is UCUM and the code parses, else in its
`unit` text through the synonym table (`mappings/units.yaml`), then converted to its analyte's
canonical unit (trial-spec, "Data rules"). Nothing here is a hand table of factors.

The UCUM parser and pint registry, and what they refuse, are in `adapter.facts.ucum`; this
module reads a quantity's unit (code or text), converts, and loads the synonym table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml

from adapter.errors import MappingError
from adapter.facts.model import Normalised
from adapter.facts.ucum import NOT_UCUM, PURE_ANNOTATIONS, Refused, Unit, engine

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ["UCUM_SYSTEM", "Unconvertible", "UnitReading", "Units"]

UCUM_SYSTEM = "http://unitsofmeasure.org"

_IU = re.compile(r"\[[iI]U\]")
_WHITESPACE = re.compile(r"\s+")
_SIGNIFICANT_DIGITS = 12
_SHOWN_CHARS = 40


@dataclass(frozen=True, slots=True)
class Unconvertible:
    """Why a value could not be put in the unit asked for; names no more than the unit text."""

    reason: str


@dataclass(frozen=True, slots=True)
class UnitReading:
    """How a unit was read: the UCUM code, and `via` (the UCUM code, or unit text and synonym)."""

    ucum: str
    via: str


def _key(text: str) -> str:
    return _WHITESPACE.sub(" ", text.strip())


def _shown(text: str) -> str:
    """Unit text for a message: quoted, and cut short (free text is not a unit)."""
    text = _key(text)
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 3] + "..."
    return f"'{text}'"


def _round(value: float) -> float:
    """12 significant digits: removes float noise (90 g/L is 9.0 g/dL, not 8.999999999999998)."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{_SIGNIFICANT_DIGITS}g}")


def _pure_annotation_or_one(ucum: str) -> bool:
    return ucum.strip() == "1" or PURE_ANNOTATIONS.fullmatch(ucum.strip()) is not None


#: (source, target, unit as shown, canonical unit, how it was read, synonym's mapping file)
_Reading = tuple[Unit, Unit, str, str, str, str | None]
#: readings `Units.normalise` keeps before it starts again
_READINGS_KEPT = 4096


class Units:
    """Reads units (UCUM code, else unit text through the synonyms) and converts values.

    ```
    units = Units.load(Path("mappings/units.yaml"))
    units.normalise(34.2, to="mg/dL", code="umol/L", system=UCUM_SYSTEM, unit="umol/L",
                    molar_mass=584.66)   # Normalised(1.99953, "mg/dL", via="UCUM code 'umol/L'")
    ```
    """

    def __init__(
        self, synonyms: Mapping[str, str], origins: Mapping[str, str] | None = None
    ) -> None:
        """`synonyms`: unit text -> UCUM code, already validated (use `load`); `origins`: unit
        text -> the mapping file that gave it (named in how a value was read)."""
        self._exact = {_key(text): ucum.strip() for text, ucum in synonyms.items()}
        self._origins = {_key(text): origin for text, origin in (origins or {}).items()}
        folded: dict[str, str | None] = {}
        for text, ucum in self._exact.items():
            fold = text.casefold()
            # Spellings that differ only in case but mean different units are left to the
            # exact lookup.
            folded[fold] = ucum if folded.get(fold, ucum) == ucum else None
        self._folded = {text: ucum for text, ucum in folded.items() if ucum is not None}
        self._readings: dict[
            tuple[str, str | None, str | None, str | None, bool], _Reading | str | Unconvertible
        ] = {}

    @classmethod
    def load(cls, synonyms_file: Path) -> Units:
        """Read and check `mappings/units.yaml`; a bad file raises MappingError naming the entry."""
        return cls(load_synonyms(synonyms_file))

    def synonym_origin(self, text: str) -> str | None:
        """The mapping file of the synonym that `text` is read through, if any."""
        key = _key(text)
        if key in self._exact:
            return self._origins.get(key)
        fold = key.casefold()
        if fold not in self._folded or isinstance(engine().parse(key), Unit):
            return None  # read as UCUM itself, as `_read` does before trying case-folded text
        spelled = (s for s in self._exact if s.casefold() == fold and s in self._origins)
        return self._origins.get(next(spelled, ""))

    def is_valid(self, ucum: str) -> bool:
        """Whether `ucum` is UCUM this module reads (not a known misreading like `K/uL`)."""
        return isinstance(engine().parse(ucum.strip()), Unit)

    def compatible(
        self,
        ucum_a: str,
        ucum_b: str,
        *,
        molar_mass: float | None = None,
        iu_as_u: bool = False,
    ) -> bool:
        """Whether values in `ucum_a` convert to `ucum_b` (False when either is invalid)."""
        a = engine().parse(_iu(ucum_a, iu_as_u))
        b = engine().parse(_iu(ucum_b, iu_as_u))
        if isinstance(a, Refused) or isinstance(b, Refused):
            return False
        return engine().convert(1.0, a, b, _checked(molar_mass)) is not None

    def convert(
        self,
        value: float,
        from_ucum: str,
        to_ucum: str,
        *,
        molar_mass: float | None = None,
        iu_as_u: bool = False,
    ) -> float | Unconvertible:
        """`value` from one UCUM code to another, rounded to 12 significant digits.

        An invalid `from_ucum` is Unconvertible; an invalid `to_ucum` is a ValueError (it comes
        from a checked trial or analyte file, not from data).
        """
        target = _target(to_ucum, iu_as_u)
        source = engine().parse(_iu(from_ucum, iu_as_u))
        if isinstance(source, Refused):
            return Unconvertible(f"unit {_shown(from_ucum)} is not valid UCUM{_why(source)}")
        return _convert(value, source, target, _shown(from_ucum), to_ucum.strip(), molar_mass)

    def normalise(
        self,
        value: float,
        *,
        to: str,
        code: str | None,
        system: str | None,
        unit: str | None,
        comparator: str | None = None,
        molar_mass: float | None = None,
        iu_as_u: bool = False,
    ) -> Normalised | Unconvertible:
        """A valueQuantity in the canonical unit `to`, saying how its unit was read.

        The UCUM `code` when `system` is UCUM and the code parses; else the `unit` text through
        the synonyms, or as UCUM itself. With no unit at all, a value is taken as the canonical
        unit only when that is a pure annotation or 1 (`{INR}`). Mass <-> substance needs
        `molar_mass` (g/mol); `iu_as_u` takes [IU] as U. An invalid `to` is a ValueError.
        """
        key = (to, code, system, unit, iu_as_u)
        reading = self._readings.get(key)
        if reading is None:
            reading = self._reading(to, code, system, unit, iu_as_u)
            if len(self._readings) >= _READINGS_KEPT:
                self._readings.clear()  # unit spellings are few; a flood of them is not kept
            self._readings[key] = reading
        if isinstance(reading, Unconvertible):
            return reading
        if isinstance(reading, str):  # no unit, and the canonical unit is a ratio
            if not math.isfinite(value):
                return Unconvertible("the value is not a finite number")
            via = f"no unit; ratio taken as {reading}"
            return Normalised(_round(float(value)), reading, comparator, via)
        source, target, shown, canonical, via, origin = reading
        converted = _convert(value, source, target, shown, canonical, molar_mass)
        if isinstance(converted, Unconvertible):
            return converted
        return Normalised(converted, canonical, comparator, via, origin)

    def _reading(
        self, to: str, code: str | None, system: str | None, unit: str | None, iu_as_u: bool
    ) -> _Reading | str | Unconvertible:
        """How `normalise` reads a unit, whatever the value: the units to convert between and
        how they were read; the canonical unit when there is no unit and it is a ratio; or why
        not. The same every time for the same unit, so `normalise` keeps it."""
        canonical = to.strip()
        target = _target(canonical, iu_as_u)
        read = self._read(code, system, unit)
        if read is None:
            if not _pure_annotation_or_one(canonical):
                return Unconvertible("no unit")
            return canonical
        if isinstance(read, Unconvertible):
            return read
        ucum, via, shown = read
        if PURE_ANNOTATIONS.fullmatch(canonical) and not _pure_annotation_or_one(ucum):
            # `%` and `{ratio}` are both dimensionless, so UCUM would convert 70 % to 0.7: a
            # prothrombin activity in % (Quick) is not a PT ratio, nor is a score or an INR.
            return Unconvertible(f"unit {shown} is not convertible to {canonical}")
        source = engine().parse(_iu(ucum, iu_as_u))
        if isinstance(source, Refused):  # defensive: every way in was parsed already
            return Unconvertible(f"unit {shown} is not a known unit{_why(source)}")
        if iu_as_u and bool(_IU.search(ucum)) != bool(_IU.search(canonical)):
            # the analyte's policy: enzymes take [IU] as U, hCG takes U as [IU]
            via += "; [IU] taken as U" if _IU.search(ucum) else "; U taken as [IU]"
        origin = self.synonym_origin(unit) if unit and via.startswith("unit text") else None
        return source, target, shown, canonical, via, origin

    def reads_as(
        self, *, code: str | None, system: str | None, unit: str | None
    ) -> UnitReading | Unconvertible | None:
        """The UCUM a quantity's unit is read as, exactly as `normalise` reads it (the survey
        reports it per unit spelling); why not; None when there is no unit at all."""
        read = self._read(code, system, unit)
        if read is None or isinstance(read, Unconvertible):
            return read
        return UnitReading(read[0], read[1])

    def _read(
        self, code: str | None, system: str | None, unit: str | None
    ) -> tuple[str, str, str] | Unconvertible | None:
        """(UCUM code, how it was read, unit as shown), why not, or None when there is no unit."""
        code = (code or "").strip()
        text = _key(unit or "")
        refused = ""
        by_code: Unit | Refused | None = None
        if code and system == UCUM_SYSTEM:
            by_code = engine().parse(code)
            if isinstance(by_code, Unit):
                return code, f"UCUM code '{code}'", _shown(code)
            if _why(by_code):  # say why a code that is valid UCUM was set aside
                refused = f" (UCUM code {_shown(code)} not used: {by_code.reason})"
        if text:
            found = self._exact.get(text)
            if found is not None:
                return found, f"unit text '{text}' read as UCUM '{found}'{refused}", _shown(text)
            parsed = engine().parse(text)
            if isinstance(parsed, Unit):
                return text, f"unit text '{text}' read as UCUM{refused}", _shown(text)
            found = self._folded.get(text.casefold())
            if found is not None:
                return found, f"unit text '{text}' read as UCUM '{found}'{refused}", _shown(text)
            return Unconvertible(f"unit {_shown(text)} is not a known unit{_why(parsed)}")
        if code:
            if not isinstance(by_code, Refused):  # no UCUM system
                problem = "is not a UCUM code"
            elif _why(by_code):
                problem = f"is not read as UCUM{_why(by_code)}"
            else:
                problem = "is not valid UCUM"
            return Unconvertible(f"unit code {_shown(code)} {problem}, and there is no unit text")
        return None


def _why(refused: Refused) -> str:
    """' (reason)' when the reason says more than 'not valid UCUM'."""
    return "" if refused.reason == NOT_UCUM else f" ({refused.reason})"


def _iu(ucum: str, iu_as_u: bool) -> str:
    ucum = ucum.strip()
    return _IU.sub("U", ucum) if iu_as_u else ucum


def _target(ucum: str, iu_as_u: bool) -> Unit:
    target = engine().parse(_iu(ucum, iu_as_u))
    if isinstance(target, Refused):
        raise ValueError(f"canonical unit {_shown(ucum)} is not valid UCUM{_why(target)}")
    return target


def _checked(molar_mass: float | None) -> float | None:
    if molar_mass is not None and not (math.isfinite(molar_mass) and molar_mass > 0):
        raise ValueError(f"molar mass must be a positive number of g/mol, not {molar_mass}")
    return molar_mass


def _convert(
    value: float, source: Unit, target: Unit, shown: str, to: str, molar_mass: float | None
) -> float | Unconvertible:
    if not math.isfinite(value):
        return Unconvertible("the value is not a finite number")
    converted = engine().convert(float(value), source, target, _checked(molar_mass))
    if converted is None:
        return Unconvertible(f"unit {shown} is not convertible to {to}")
    if not math.isfinite(converted) or (converted == 0 and value != 0):
        # 1e308 in 10*12/L overflows, 1e-320 mg/dL underflows to 0: neither is the value
        return Unconvertible(f"the value in {shown} is out of range in {to}")
    return _round(converted)


def load_synonyms(path: Path) -> dict[str, str]:
    """unit text -> UCUM from a `synonyms:` mapping, every target checked."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(file, f"cannot be read: {exc}") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise MappingError(file, f"not valid YAML: {problem}", line=line) from exc
    if not isinstance(root, yaml.MappingNode):
        raise MappingError(file, "expected a mapping with the key 'synonyms'", line=_line(root))
    synonyms: yaml.Node | None = None
    for key, value in root.value:
        if not isinstance(key, yaml.ScalarNode) or key.value != "synonyms":
            raise MappingError(
                file,
                "unknown key (expected only 'synonyms')",
                line=_line(key),
                field=str(key.value),
            )
        synonyms = value
    if not isinstance(synonyms, yaml.MappingNode):
        raise MappingError(
            file, "'synonyms' must be a mapping of unit text to UCUM", line=_line(synonyms or root)
        )
    out: dict[str, str] = {}
    units = engine()
    for key, value in synonyms.value:
        line = _line(key)
        if not isinstance(key, yaml.ScalarNode) or not _key(key.value):
            raise MappingError(file, "a synonym must be non-empty unit text", line=line)
        spelled = _key(key.value)
        where = f"synonyms.{spelled}"
        if spelled in out:
            raise MappingError(file, "duplicate synonym", line=line, field=where)
        if (
            not isinstance(value, yaml.ScalarNode)
            or value.tag == "tag:yaml.org,2002:null"
            or not value.value.strip()
        ):
            raise MappingError(file, "the target must be a UCUM code", line=line, field=where)
        target = units.parse(value.value.strip())
        if isinstance(target, Refused):
            raise MappingError(
                file,
                f"target '{value.value.strip()}' is not valid UCUM{_why(target)}",
                line=line,
                field=where,
            )
        out[spelled] = target.code
    return out


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None
