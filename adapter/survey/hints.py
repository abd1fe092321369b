"""The words that suggest an analyte for an unmapped lab code (`mappings/hints.yaml`).

Latin-script words match whole words, ignoring case; words in other scripts (Chinese) match
anywhere, since those scripts do not separate words. A site folder's `hints.yaml` adds words.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from adapter import mapfiles
from adapter.errors import MappingError

HINTS_FILE = "hints.yaml"

_NON_WORD = re.compile(r"[\W_]+")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


class _HintModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # A list inside the list (a YAML alias such as `*not_blood`) is joined in.
    words: list[str | list[str]] = Field(min_length=1)
    not_: list[str | list[str]] = Field(default=[], alias="not")


class HintsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: lists that several analytes use through YAML aliases
    shared: dict[str, list[str]] = {}
    hints: dict[str, _HintModel] = {}


@dataclass(frozen=True, slots=True)
class Hint:
    """An analyte's words, and the words that rule a text out."""

    analyte: str
    words: tuple[str, ...]
    not_words: tuple[str, ...] = ()

    def found(self, texts: Iterable[str]) -> str | None:
        """The first of `words` in any of `texts`, unless a `not` word is in one of them."""
        prepared = [_prepare(t) for t in texts if t]
        if any(_contains(p, w) for p in prepared for w in self.not_words):
            return None
        for word in self.words:
            if any(_contains(p, word) for p in prepared):
                return word
        return None


def _prepare(text: str) -> tuple[str, str]:
    """(text casefolded, the same as space-separated words with spaces at both ends)."""
    folded = text.translate(_INVISIBLE).casefold()
    return folded, f" {_NON_WORD.sub(' ', folded).strip()} "


def _contains(prepared: tuple[str, str], word: str) -> bool:
    folded, spaced = prepared
    if not word.isascii():
        return word.casefold() in folded
    words = _NON_WORD.sub(" ", word.casefold()).strip()
    return bool(words) and f" {words} " in spaced


def _flat(items: list[str | list[str]]) -> tuple[str, ...]:
    out: list[str] = []
    for item in items:
        out.extend([item] if isinstance(item, str) else item)
    return tuple(dict.fromkeys(w.strip() for w in out if w.strip()))


def load_hints(
    mappings_dir: Path, site_dir: Path | None, analytes: Collection[str]
) -> dict[str, Hint]:
    """Hints per analyte id, the site's words added to the bundled ones; a file that names an
    analyte no mapping defines is a MappingError (file, line, field). Missing files are empty."""
    words: dict[str, list[str]] = {}
    nots: dict[str, list[str]] = {}
    for folder in (mappings_dir, site_dir):
        path = folder / HINTS_FILE if folder is not None else None
        if path is None or not path.is_file():
            continue
        data, lines = mapfiles.read_yaml(path)
        model = mapfiles.validate(HintsFile, data, path, lines)
        for name, hint in model.hints.items():
            if name not in analytes:
                raise MappingError(
                    str(path),
                    f"unknown analyte '{name}'",
                    line=mapfiles.line_of(lines, ("hints", name)),
                    field=f"hints.{name}",
                )
            words.setdefault(name, []).extend(_flat(hint.words))
            nots.setdefault(name, []).extend(_flat(hint.not_))
    return {
        name: Hint(name, tuple(dict.fromkeys(w)), tuple(dict.fromkeys(nots.get(name, ()))))
        for name, w in words.items()
    }
