"""Code systems and code sets, matched on (system, code) by the trial-spec's grammar.

ICD-10, ICD-10-CM and ICD-10-PCS entries match their code and every code that extends it, dots
ignored (`C22.0` matches `C22.000x`); `C00-C97` is a range of three-character categories. Other
systems (SNOMED CT, LOINC, CPT, local codes) match exactly. `exclude` entries are subtracted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from adapter.facts.model import Coding

MatchKind = Literal["exact", "icd"]


@dataclass(frozen=True, slots=True)
class CodePattern:
    """One entry of a code set: a code, a code prefix or a category range, in one system."""

    system: str
    text: str
    kind: MatchKind

    def matches(self, coding: Coding) -> bool:
        if coding.system != self.system:
            return False
        if self.kind == "exact":
            return coding.code == self.text
        return icd_matches(self.text, coding.code)


def _icd_norm(code: str) -> str:
    return code.strip().rstrip("*").replace(".", "").upper()


def icd_matches(pattern: str, code: str) -> bool:
    """The ICD grammar: prefix after dropping dots, or a range of three-character categories."""
    c = _icd_norm(code)
    p = pattern.strip()
    if "-" in p:
        low, high = (_icd_norm(x) for x in p.split("-", 1))
        # Categories are compared as text: `C00-C97` holds C4A and C7A, `O00-O9A` holds O9A.
        return len(c) >= 3 and low[:3] <= c[:3] <= high[:3]
    return bool(c) and c.startswith(_icd_norm(p))


@dataclass(frozen=True, slots=True)
class CodeSet:
    name: str
    include: tuple[CodePattern, ...]
    exclude: tuple[CodePattern, ...] = ()
    #: exact codes a server search lists in addition to the exact codes of `include`
    search_variants: tuple[Coding, ...] = ()
    #: exact codes as a set (value-set expansions hold thousands), ICD patterns as a list
    _exact_in: frozenset[Coding] = field(init=False, repr=False, compare=False)
    _exact_out: frozenset[Coding] = field(init=False, repr=False, compare=False)
    _icd_in: tuple[CodePattern, ...] = field(init=False, repr=False, compare=False)
    _icd_out: tuple[CodePattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for side, patterns in (("in", self.include), ("out", self.exclude)):
            exact = frozenset(Coding(p.system, p.text) for p in patterns if p.kind == "exact")
            object.__setattr__(self, f"_exact_{side}", exact)
            object.__setattr__(self, f"_icd_{side}", tuple(p for p in patterns if p.kind == "icd"))

    def matches(self, coding: Coding) -> bool:
        included = coding in self._exact_in or any(p.matches(coding) for p in self._icd_in)
        return (
            included
            and coding not in self._exact_out
            and not any(p.matches(coding) for p in self._icd_out)
        )

    def matches_any(self, codings: Iterable[Coding]) -> Coding | None:
        """The first coding in the set, or None."""
        for coding in codings:
            if self.matches(coding):
                return coding
        return None

    def search_tokens(self) -> frozenset[Coding]:
        """Exact codes for a server token search (ranges cannot be searched: skipped)."""
        tokens = {
            Coding(p.system, p.text.rstrip("*"))
            for p in self.include
            if p.kind == "exact" or "-" not in p.text
        }
        tokens.update(self.search_variants)
        return frozenset(tokens)
