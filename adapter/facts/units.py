"""Unit normalisation through UCUM, with pint and ucumvert doing the arithmetic.

A lab value is read in its UCUM `code` when the system is UCUM and the code parses, else in its
`unit` text through the synonym table (`mappings/units.yaml`), then converted to its analyte's
canonical unit (trial-spec, "Data rules"). Nothing here is a hand table of factors.

What this module adds on top of ucumvert 0.3.2, and why:
- one pint registry, built once and lazily, with quantities made by
  `UcumToPintTransformer(ureg=...)` on it (`PintUcumRegistry.from_ucum()` returns quantities of
  pint's application registry, which do not mix with ours);
- UCUM's arbitrary units (`[IU]`, `[arb'U]`, ...) get a dimension each: ucumvert defines them as
  the number 1, which would let `[IU]/L` convert to `10*9/L`. UCUM refuses any conversion of them;
- an annotation alone (`{INR}`) is the number 1 (ucumvert returns the bare token);
- a few strings that are valid UCUM but never mean that in lab data are refused (`_MISREAD`):
  `K/uL` (kelvin), `10.3/uL` (10 x 3), `pH` (picohenry), `mg%` (read as a mass)... The synonym
  table maps them before any parser sees them.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from adapter.errors import MappingError
from adapter.facts.model import Normalised

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["UCUM_SYSTEM", "Unconvertible", "UnitReading", "Units"]

UCUM_SYSTEM = "http://unitsofmeasure.org"

#: Valid UCUM that lab data never means: the simple unit (prefix + atom) as written, and what a
#: UCUM parser would make of it. People write K/uL (thousands), G/L and T/L (giga, tera per
#: litre, French usage), C and F (degrees), b/min (beats), u/L (enzyme units), pH (the scale,
#: UCUM [pH]), ft (feet, UCUM [ft_i]); M for mega only by a slip of case (Mg/dL for mg/dL).
_MISREAD = {
    "K": "kelvin",
    "G": "gauss",
    "T": "tesla",
    "C": "coulomb",
    "F": "farad",
    "b": "barn",
    "u": "atomic mass unit",
    "pH": "picohenry",
    "ft": "femtotonne",
    "Mg": "megagram",
    "ML": "megalitre",
    "Ml": "megalitre",
    "Mmol": "megamole",
    "MU": "mega enzyme unit",
}
#: UCUM atoms misread by ucumvert 0.3.2 whatever their prefix: `g%` (gram percent, = g/dL in
#: UCUM) becomes gram x percent, a mass.
_MISREAD_ATOMS = {"g%": "a mass (gram x percent)"}
#: `10.3/uL` is UCUM for 10 x 3 per microlitre; nobody means that. Annotations and bracketed
#: atoms are removed first (`{1.73_m2}` is fine).
_DECIMAL_FACTOR = re.compile(r"\d\.\d")
_ANNOTATION_OR_BRACKETS = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")
_PURE_ANNOTATIONS = re.compile(r"(\{[^{}]*\})+")
_IU = re.compile(r"\[[iI]U\]")
_WHITESPACE = re.compile(r"\s+")
_SIGNIFICANT_DIGITS = 12
_SHOWN_CHARS = 40
_NOT_UCUM = "not valid UCUM"
_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Unconvertible:
    """Why a value could not be put in the unit asked for; names no more than the unit text."""

    reason: str


@dataclass(frozen=True, slots=True)
class UnitReading:
    """How a unit was read: the UCUM code, and `via` (the UCUM code, or unit text and synonym)."""

    ucum: str
    via: str


@dataclass(frozen=True, slots=True)
class _Unit:
    """A parsed UCUM code: `factor` times the pint `units` (e.g. 10*3/uL is 1 x _10**3/uL)."""

    code: str
    factor: float
    units: Any  # pint.Unit of the module's registry; never leaves this module


@dataclass(frozen=True, slots=True)
class _Refused:
    reason: str


class _Ucum:
    """The one pint registry, UCUM parser and transformer; build through `_ucum()`."""

    def __init__(self) -> None:
        # Imported here: building the registry takes about a second, and most imports of this
        # module (tests of other parts, `--help`) never need it.
        import pint
        import ucumvert
        from ucumvert import UcumToPintTransformer, get_ucum_parser
        from ucumvert.ucum_pint import MAPPINGS_UCUM_TO_PINT
        from ucumvert.xml_util import get_units_with_full_definition

        arbitrary = [u.code_cs for u in get_units_with_full_definition() if u.is_arbitrary]
        pint_names = {str(MAPPINGS_UCUM_TO_PINT.get(c, c)).strip("[]") for c in arbitrary}
        defs = Path(ucumvert.__file__).with_name("pint_ucum_defs.txt")
        lines = defs.read_text(encoding="utf-8").splitlines()
        self.ureg: Any = pint.UnitRegistry()
        self.ureg.load_definitions(_own_dimensions(lines, pint_names))
        self._parser: Any = get_ucum_parser()
        self._transformer: Any = UcumToPintTransformer(ureg=self.ureg)
        self._cache: dict[str, _Unit | _Refused] = {}
        self._lock = threading.Lock()
        for code in arbitrary:
            unit = self.parse(code)
            if isinstance(unit, _Refused) or unit.units.dimensionless:
                # A ucumvert upgrade changed its definitions file: fail loudly rather than let
                # arbitrary units convert to plain numbers.
                raise RuntimeError(f"UCUM arbitrary unit {code} has no dimension of its own")

    def parse(self, code: str) -> _Unit | _Refused:
        """The code as a unit, or why not; cached."""
        with self._lock:
            found = self._cache.get(code)
        if found is None:
            found = self._parse(code)
            with self._lock:
                if len(self._cache) < _CACHE_LIMIT:  # unit text is free text: stay bounded
                    self._cache[code] = found
        return found

    def _parse(self, code: str) -> _Unit | _Refused:
        from lark import Token
        from lark.exceptions import LarkError
        from ucumvert import parse_ucum

        try:
            tree = parse_ucum(code, self._parser)
        except LarkError:
            return _Refused(_NOT_UCUM)
        misread = _misreading(code, tree)
        if misread:
            return _Refused(misread)
        try:
            result = self._transformer.transform(tree)
        except LarkError:  # lark wraps whatever the transformer raised (pint's errors too)
            return _Refused("not a unit ucumvert knows")
        if isinstance(result, Token) or _PURE_ANNOTATIONS.fullmatch(code):
            # ucumvert 0.3.2 returns the bare token for `{INR}`: an annotation alone is 1.
            return _Unit(code, 1.0, self.ureg.dimensionless)
        if isinstance(result, int | float):  # `{a}.{b}`, `{a}/{b}`: annotations only
            return _Unit(code, float(result), self.ureg.dimensionless)
        return _Unit(code, float(result.magnitude), result.units)

    def convert(
        self, value: float, src: _Unit, dst: _Unit, molar_mass: float | None
    ) -> float | None:
        """`value` in `src` expressed in `dst`, unrounded; None when the dimensions differ."""
        import pint

        try:
            quantity = self.ureg.Quantity(value * src.factor, src.units)
            candidates = [quantity]
            if molar_mass is not None:
                per_mole = self.ureg.Quantity(molar_mass, "gram / mole")
                candidates += [quantity * per_mole, quantity / per_mole]
            for candidate in candidates:
                if candidate.is_compatible_with(dst.units):
                    return float(candidate.to(dst.units).magnitude) / dst.factor
        except (pint.DimensionalityError, pint.OffsetUnitCalculusError):
            return None  # pint refuses (e.g. a prefix on an offset unit): not convertible
        return None


def _own_dimensions(lines: Iterable[str], names: set[str]) -> list[str]:
    """ucumvert's definitions with each arbitrary unit made a base unit of its own dimension.

    `international_unit = 1 = _ = i.U. = IU = iU` becomes
    `international_unit = [international_unit] = _ = i.U. = IU = iU`.
    """
    out = []
    for line in lines:
        body = line.partition("#")[0]
        parts = [p.strip() for p in body.split("=")]
        if not line.startswith(("@", " ", "\t")) and len(parts) >= 2:
            spelled = {parts[0], *parts[2:]} - {"_"}
            if spelled & names:
                line = " = ".join([parts[0], f"[{parts[0]}]", *parts[2:]])
        out.append(line)
    return out


def _misreading(code: str, tree: Any) -> str:
    """Why valid UCUM `code` (parsed as `tree`) must not be read as UCUM here, or ''."""
    from lark import Token, Tree

    bare = _ANNOTATION_OR_BRACKETS.sub("", code)
    if _DECIMAL_FACTOR.search(bare):
        return "a decimal point is UCUM multiplication ('10.3' would be read as 30)"
    for node in tree.iter_subtrees() if isinstance(tree, Tree) else ():
        if node.data != "simple_unit":
            continue
        tokens = [str(t) for t in node.children if isinstance(t, Token)]
        spelled = "".join(tokens)
        if spelled in _MISREAD:
            return f"'{spelled}' would be read as {_MISREAD[spelled]}"
        if tokens and tokens[-1] in _MISREAD_ATOMS:
            return f"'{spelled}' would be read as {_MISREAD_ATOMS[tokens[-1]]}"
    return ""


_ENGINE: _Ucum | None = None
_ENGINE_LOCK = threading.Lock()


def _ucum() -> _Ucum:
    """The module's one registry, built on first use."""
    global _ENGINE
    if _ENGINE is None:
        with _ENGINE_LOCK:
            if _ENGINE is None:
                _ENGINE = _Ucum()
    return _ENGINE


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
    return ucum.strip() == "1" or _PURE_ANNOTATIONS.fullmatch(ucum.strip()) is not None


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
        if fold not in self._folded or isinstance(_ucum().parse(key), _Unit):
            return None  # read as UCUM itself, as `_read` does before trying case-folded text
        spelled = (s for s in self._exact if s.casefold() == fold and s in self._origins)
        return self._origins.get(next(spelled, ""))

    def is_valid(self, ucum: str) -> bool:
        """Whether `ucum` is UCUM this module reads (not a known misreading like `K/uL`)."""
        return isinstance(_ucum().parse(ucum.strip()), _Unit)

    def compatible(
        self,
        ucum_a: str,
        ucum_b: str,
        *,
        molar_mass: float | None = None,
        iu_as_u: bool = False,
    ) -> bool:
        """Whether values in `ucum_a` convert to `ucum_b` (False when either is invalid)."""
        a = _ucum().parse(_iu(ucum_a, iu_as_u))
        b = _ucum().parse(_iu(ucum_b, iu_as_u))
        if isinstance(a, _Refused) or isinstance(b, _Refused):
            return False
        return _ucum().convert(1.0, a, b, _checked(molar_mass)) is not None

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
        source = _ucum().parse(_iu(from_ucum, iu_as_u))
        if isinstance(source, _Refused):
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
        canonical = to.strip()
        target = _target(canonical, iu_as_u)
        read = self._read(code, system, unit)
        if read is None:
            if not _pure_annotation_or_one(canonical):
                return Unconvertible("no unit")
            if not math.isfinite(value):
                return Unconvertible("the value is not a finite number")
            via = f"no unit; ratio taken as {canonical}"
            return Normalised(_round(float(value)), canonical, comparator, via)
        if isinstance(read, Unconvertible):
            return read
        ucum, via, shown = read
        if _PURE_ANNOTATIONS.fullmatch(canonical) and not _pure_annotation_or_one(ucum):
            # `%` and `{ratio}` are both dimensionless, so UCUM would convert 70 % to 0.7: a
            # prothrombin activity in % (Quick) is not a PT ratio, nor is a score or an INR.
            return Unconvertible(f"unit {shown} is not convertible to {canonical}")
        source = _ucum().parse(_iu(ucum, iu_as_u))
        if isinstance(source, _Refused):  # defensive: every way in was parsed already
            return Unconvertible(f"unit {shown} is not a known unit{_why(source)}")
        if iu_as_u and bool(_IU.search(ucum)) != bool(_IU.search(canonical)):
            # the analyte's policy: enzymes take [IU] as U, hCG takes U as [IU]
            via += "; [IU] taken as U" if _IU.search(ucum) else "; U taken as [IU]"
        converted = _convert(value, source, target, shown, canonical, molar_mass)
        if isinstance(converted, Unconvertible):
            return converted
        origin = self.synonym_origin(unit) if unit and via.startswith("unit text") else None
        return Normalised(converted, canonical, comparator, via, origin)

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
        by_code: _Unit | _Refused | None = None
        if code and system == UCUM_SYSTEM:
            by_code = _ucum().parse(code)
            if isinstance(by_code, _Unit):
                return code, f"UCUM code '{code}'", _shown(code)
            if _why(by_code):  # say why a code that is valid UCUM was set aside
                refused = f" (UCUM code {_shown(code)} not used: {by_code.reason})"
        if text:
            found = self._exact.get(text)
            if found is not None:
                return found, f"unit text '{text}' read as UCUM '{found}'{refused}", _shown(text)
            parsed = _ucum().parse(text)
            if isinstance(parsed, _Unit):
                return text, f"unit text '{text}' read as UCUM{refused}", _shown(text)
            found = self._folded.get(text.casefold())
            if found is not None:
                return found, f"unit text '{text}' read as UCUM '{found}'{refused}", _shown(text)
            return Unconvertible(f"unit {_shown(text)} is not a known unit{_why(parsed)}")
        if code:
            if not isinstance(by_code, _Refused):  # no UCUM system
                problem = "is not a UCUM code"
            elif _why(by_code):
                problem = f"is not read as UCUM{_why(by_code)}"
            else:
                problem = "is not valid UCUM"
            return Unconvertible(f"unit code {_shown(code)} {problem}, and there is no unit text")
        return None


def _why(refused: _Refused) -> str:
    """' (reason)' when the reason says more than 'not valid UCUM'."""
    return "" if refused.reason == _NOT_UCUM else f" ({refused.reason})"


def _iu(ucum: str, iu_as_u: bool) -> str:
    ucum = ucum.strip()
    return _IU.sub("U", ucum) if iu_as_u else ucum


def _target(ucum: str, iu_as_u: bool) -> _Unit:
    target = _ucum().parse(_iu(ucum, iu_as_u))
    if isinstance(target, _Refused):
        raise ValueError(f"canonical unit {_shown(ucum)} is not valid UCUM{_why(target)}")
    return target


def _checked(molar_mass: float | None) -> float | None:
    if molar_mass is not None and not (math.isfinite(molar_mass) and molar_mass > 0):
        raise ValueError(f"molar mass must be a positive number of g/mol, not {molar_mass}")
    return molar_mass


def _convert(
    value: float, source: _Unit, target: _Unit, shown: str, to: str, molar_mass: float | None
) -> float | Unconvertible:
    if not math.isfinite(value):
        return Unconvertible("the value is not a finite number")
    converted = _ucum().convert(float(value), source, target, _checked(molar_mass))
    if converted is None:
        return Unconvertible(f"unit {shown} is not convertible to {to}")
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
    units = _ucum()
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
        if isinstance(target, _Refused):
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
