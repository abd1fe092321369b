"""Code systems and code sets, matched on (system, code) by the trial-spec's grammar.

ICD-10, ICD-10-CM and ICD-10-PCS entries match their code and every code that extends it, dots
ignored (`C22.0` matches `C22.000x`); `C00-C97` is a range of three-character categories. Other
systems (SNOMED CT, LOINC, CPT, local codes) match exactly. `exclude` entries are subtracted.
"""

from __future__ import annotations

import re
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
    #: answers given so far: a sweep asks about the same few hundred codes for every patient
    #: and criterion, and an ICD answer costs a walk over the patterns
    _known: dict[Coding, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for side, patterns in (("in", self.include), ("out", self.exclude)):
            exact = frozenset(Coding(p.system, p.text) for p in patterns if p.kind == "exact")
            object.__setattr__(self, f"_exact_{side}", exact)
            object.__setattr__(self, f"_icd_{side}", tuple(p for p in patterns if p.kind == "icd"))
        object.__setattr__(self, "_known", {})

    def matches(self, coding: Coding) -> bool:
        known = self._known.get(coding)
        if known is None:
            known = self._known[coding] = self._matches(coding)
        return known

    def _matches(self, coding: Coding) -> bool:
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


def line_pattern(codesets: Iterable[CodeSet], exact: Iterable[Coding] = ()) -> str:
    """A regular expression (for bytes, as text) that a raw JSON line matches whenever it holds
    a `"code"` one of `codesets` includes, or one of the `exact` codes (issue 15: a folder source
    passes over the other lines of the cohort's Condition search after checking them whole).

    A superset, never less: systems and exclusions are not looked at; an ICD entry matches its
    characters in any case, with dots between them and up to 8 bytes of anything but letters,
    digits and quotes, or JSON escapes, before (`strip()`'s whitespace); a range matches its
    letters and any two characters. `\\u` escapes of the code's own characters (`\\u0045`) do
    not match: lines with one are the folder source's to parse whatever this says.
    """
    alternatives: set[str] = set()
    for codeset in codesets:
        for pattern in codeset.include:
            if pattern.kind == "exact":
                alternatives.add(re.escape(pattern.text) + '"')
            elif "-" in pattern.text:
                low, high = (re.escape(_icd_norm(x)[:1]) for x in pattern.text.split("-", 1))
                first = f"[{low}-{high}{low.lower()}-{high.lower()}]"
                alternatives.add(_LEAD + first + r"\.*[^\"]\.*[^\"]")
            else:
                alternatives.add(_LEAD + r"\.*".join(_any_case(c) for c in _icd_norm(pattern.text)))
    # Exact codes an ICD entry already matches need no alternative of their own.
    prefixes = [re.compile(a) for a in alternatives if a.startswith(_LEAD)]
    for coding in exact:
        if not any(p.match(coding.code) for p in prefixes):
            alternatives.add(re.escape(coding.code) + '"')
    if not alternatives:
        return "(?!)"
    return r'"code"\s*:\s*"(?:' + "|".join(sorted(alternatives)) + ")"


#: what `strip()` may remove before an ICD code: up to 8 bytes of whitespace in UTF-8 or as a JSON
#: escape (`\\t`), anything but a letter, digit or quote
_LEAD = r'(?:[^"\\A-Za-z0-9]|\\.){0,8}'


def _any_case(char: str) -> str:
    if char.isalpha() and char.isascii():
        return f"[{char.upper()}{char.lower()}]"
    return re.escape(char)
