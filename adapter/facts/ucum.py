"""The UCUM parser and the one pint registry that convert lab units (ucumvert 0.3.2 and pint).

What this module adds on top of ucumvert 0.3.2, and why:
- one pint registry, built once and lazily, with quantities made by
  `UcumToPintTransformer(ureg=...)` on it (`PintUcumRegistry.from_ucum()` returns quantities of
  pint's application registry, which do not mix with ours);
- UCUM's arbitrary units (`[IU]`, `[arb'U]`, ...) get a dimension each: ucumvert defines them as
  the number 1, which would let `[IU]/L` convert to `10*9/L`. UCUM refuses any conversion of them;
- an annotation alone (`{INR}`) is the number 1 (ucumvert returns the bare token);
- a few strings that are valid UCUM but never mean that in lab data are refused (`_MISREAD`):
  `K/uL` (kelvin), `10.3/uL` (10 x 3), `pH` (picohenry), `mg%` (read as a mass)... The synonym
  table maps them before any parser sees them;
- units whose scale a float cannot hold (`10*400`, `10*-400/L`) are refused too: pint would raise
  OverflowError on them, or turn a count into 0.

`adapter.facts.units` is the public side (reading a quantity's unit, converting, synonyms).
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

NOT_UCUM = "not valid UCUM"
_OUT_OF_RANGE = "its scale is beyond the range of a float"
_CACHE_LIMIT = 4096

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
PURE_ANNOTATIONS = re.compile(r"(\{[^{}]*\})+")
#: values from this size to its inverse are converted with a kept factor (`UcumEngine.convert`)
_ORDINARY = 1e-100
_UNKNOWN: Any = object()


@dataclass(frozen=True, slots=True)
class Unit:
    """A parsed UCUM code: `factor` times the pint `units` (e.g. 10*3/uL is 1 x _10**3/uL)."""

    code: str
    factor: float
    units: Any  # pint.Unit of the one registry; never leaves adapter.facts


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


class UcumEngine:
    """The one pint registry, UCUM parser and transformer; build through `engine()`."""

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
        self._cache: dict[str, Unit | Refused] = {}
        self._factors: dict[tuple[str, float, str, float, float | None], float | None] = {}
        self._lock = threading.Lock()
        for code in arbitrary:
            unit = self.parse(code)
            if isinstance(unit, Refused) or unit.units.dimensionless:
                # A ucumvert upgrade changed its definitions file: fail loudly rather than let
                # arbitrary units convert to plain numbers.
                raise RuntimeError(f"UCUM arbitrary unit {code} has no dimension of its own")

    def parse(self, code: str) -> Unit | Refused:
        """The code as a unit, or why not; cached."""
        with self._lock:
            found = self._cache.get(code)
        if found is None:
            found = self._parse(code)
            with self._lock:
                if len(self._cache) < _CACHE_LIMIT:  # unit text is free text: stay bounded
                    self._cache[code] = found
        return found

    def _parse(self, code: str) -> Unit | Refused:
        from lark import Token
        from lark.exceptions import LarkError
        from ucumvert import parse_ucum

        try:
            tree = parse_ucum(code, self._parser)
        except LarkError:
            return Refused(NOT_UCUM)
        misread = _misreading(code, tree)
        if misread:
            return Refused(misread)
        try:
            result = self._transformer.transform(tree)
        except LarkError:  # lark wraps whatever the transformer raised (pint's errors too)
            return Refused("not a unit ucumvert knows")
        if isinstance(result, Token) or PURE_ANNOTATIONS.fullmatch(code):
            # ucumvert 0.3.2 returns the bare token for `{INR}`: an annotation alone is 1.
            return Unit(code, 1.0, self.ureg.dimensionless)
        if isinstance(result, int | float):  # `{a}.{b}`, `{a}/{b}`: annotations only
            result = self.ureg.Quantity(result, self.ureg.dimensionless)
        try:
            factor = float(result.magnitude)
            scale = factor * float(self.ureg.get_root_units(result.units)[0])
        except OverflowError:  # `1000...0` (400 digits), `10*400`: ints a float cannot hold
            return Refused(_OUT_OF_RANGE)
        if not math.isfinite(scale) or scale == 0:  # `10*308/L` is inf m-3, `10*-400/L` is 0
            return Refused(_OUT_OF_RANGE)
        return Unit(code, factor, result.units)

    def convert(self, value: float, src: Unit, dst: Unit, molar_mass: float | None) -> float | None:
        """`value` in `src` expressed in `dst`, unrounded; None when the dimensions differ.

        A conversion through pint costs about 40 us, most of a lab value's cost (issue 15), and
        a sweep makes the same few conversions thousands of times: the factor of a conversion
        that is a plain product (no offset: 0 stays 0, and 2 becomes twice what 1 becomes) is
        kept, and values of ordinary size are multiplied by it. It may differ from pint's own
        result in the last bit, far below the 12 digits values are rounded to.
        """
        if not _ORDINARY <= abs(value) <= 1 / _ORDINARY:
            return self._convert(value, src, dst, molar_mass)
        key = (src.code, src.factor, dst.code, dst.factor, molar_mass)
        with self._lock:
            factor = self._factors.get(key, _UNKNOWN)
        if factor is _UNKNOWN:
            factor = self._factor(src, dst, molar_mass)
            with self._lock:
                if len(self._factors) < _CACHE_LIMIT:
                    self._factors[key] = factor
        if factor is None:  # not a plain product, or not convertible: pint says which
            return self._convert(value, src, dst, molar_mass)
        return value * float(factor)

    def _factor(self, src: Unit, dst: Unit, molar_mass: float | None) -> float | None:
        """The factor of a conversion that is a plain product, else None."""
        one, two, zero = (self._convert(v, src, dst, molar_mass) for v in (1.0, 2.0, 0.0))
        if one is None or two is None or zero != 0 or not math.isfinite(one) or one == 0:
            return None
        return one if math.isclose(two, 2 * one, rel_tol=1e-13) else None

    def _convert(
        self, value: float, src: Unit, dst: Unit, molar_mass: float | None
    ) -> float | None:
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
        except (pint.DimensionalityError, pint.OffsetUnitCalculusError, OverflowError):
            # pint refuses (a prefix on an offset unit), or the two scales together overflow
            return None
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


_ENGINE: UcumEngine | None = None
_ENGINE_LOCK = threading.Lock()


def engine() -> UcumEngine:
    """The module's one registry, built on first use."""
    global _ENGINE
    if _ENGINE is None:
        with _ENGINE_LOCK:
            if _ENGINE is None:
                _ENGINE = UcumEngine()
    return _ENGINE
