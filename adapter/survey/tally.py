"""Counting what resources are coded with: codes, displays, unit spellings, kinds of value.

A tally keeps only codes, code displays, unit text and counts: never an id, a reference, a value,
a date or a name, so nothing in it (or in what is made from it) is patient data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: (system as the resource writes it, "" when absent; code)
CodeKey = tuple[str, str]
#: a valueQuantity's (unit text, code, system), each None when absent
UnitKey = tuple[str | None, str | None, str | None]
#: the resource types a survey reads besides Observation
CODED_TYPES = ("Condition", "Procedure")


@dataclass
class CodeTally:
    """One code: how often it was seen, as what, with which units and values."""

    count: int = 0
    #: times it coded a component rather than the Observation itself
    as_component: int = 0
    displays: Counter[str] = field(default_factory=Counter)
    #: value[x] type ("Quantity", "CodeableConcept"...), "dataAbsentReason", or "none"
    value_types: Counter[str] = field(default_factory=Counter)
    units: Counter[UnitKey] = field(default_factory=Counter)

    def display(self) -> str | None:
        """The display written most often (ties: the first in text order)."""
        if not self.displays:
            return None
        return min(self.displays.items(), key=lambda kv: (-kv[1], kv[0]))[0]


@dataclass
class Tally:
    """What a sample of resources is coded with, per resource type."""

    read: Counter[str] = field(default_factory=Counter)
    observations: dict[CodeKey, CodeTally] = field(default_factory=dict)
    #: Condition and Procedure codes, per type
    coded: dict[str, dict[CodeKey, CodeTally]] = field(default_factory=dict)
    #: resources (or components) whose code has no coding with a code
    uncoded: Counter[str] = field(default_factory=Counter)

    def add(self, resource: Mapping[str, Any]) -> None:
        """Count one resource (Observation, Condition or Procedure; others are ignored)."""
        kind = resource.get("resourceType")
        if kind == "Observation":
            self.read[kind] += 1
            self._observation(resource)
        elif kind in CODED_TYPES:
            assert isinstance(kind, str)
            self.read[kind] += 1
            table = self.coded.setdefault(kind, {})
            if not _count_codes(table, resource.get("code")):
                self.uncoded[kind] += 1

    def add_all(self, resources: Iterable[Mapping[str, Any]]) -> None:
        for resource in resources:
            self.add(resource)

    def _observation(self, resource: Mapping[str, Any]) -> None:
        components = resource.get("component")
        parts = (
            [c for c in components if isinstance(c, Mapping)]
            if isinstance(components, list)
            else []
        )
        self._part(resource, component=False)
        for part in parts:
            self._part(part, component=True)

    def _part(self, part: Mapping[str, Any], *, component: bool) -> None:
        entries = _codes(part.get("code"))
        if not entries:
            self.uncoded["Observation component" if component else "Observation"] += 1
            return
        value_type = _value_type(part)
        unit = _unit(part.get("valueQuantity"))
        for key, display in entries:
            entry = self.observations.setdefault(key, CodeTally())
            entry.count += 1
            entry.as_component += component
            if display:
                entry.displays[display] += 1
            entry.value_types[value_type] += 1
            if unit is not None:
                entry.units[unit] += 1


def _codes(concept: object) -> list[tuple[CodeKey, str | None]]:
    """Each coding's (system, code) once, with its display; codings without a code are skipped."""
    if not isinstance(concept, Mapping):
        return []
    out: dict[CodeKey, str | None] = {}
    for coding in concept.get("coding") or ():
        if not isinstance(coding, Mapping):
            continue
        code, system, display = coding.get("code"), coding.get("system"), coding.get("display")
        if not isinstance(code, str) or not code.strip():
            continue
        key = (system if isinstance(system, str) else "", code)
        if key not in out or out[key] is None:
            out[key] = _clean(display) if isinstance(display, str) else None
    return list(out.items())


def _count_codes(table: dict[CodeKey, CodeTally], concept: object) -> bool:
    entries = _codes(concept)
    for key, display in entries:
        entry = table.setdefault(key, CodeTally())
        entry.count += 1
        if display:
            entry.displays[display] += 1
    return bool(entries)


def _value_type(part: Mapping[str, Any]) -> str:
    for key in part:
        if key.startswith("value") and len(key) > len("value") and key[5].isupper():
            return key[len("value") :]
    return "dataAbsentReason" if "dataAbsentReason" in part else "none"


def _unit(quantity: object) -> UnitKey | None:
    if not isinstance(quantity, Mapping):
        return None
    unit, code, system = quantity.get("unit"), quantity.get("code"), quantity.get("system")
    key = (
        unit if isinstance(unit, str) and unit.strip() else None,
        code if isinstance(code, str) and code.strip() else None,
        system if isinstance(system, str) and system.strip() else None,
    )
    return key  # (None, None, None): a quantity with no unit at all, counted as such


_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


def _clean(text: str) -> str:
    """Display text with zero-width characters removed and whitespace collapsed (Synthea writes
    `Mass/\\u200bvolume`) so spellings of one display count together."""
    return " ".join(text.translate(_INVISIBLE).split())
