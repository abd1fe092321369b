"""Judging a tally against the trials' mappings: what reads each code, what might, what cannot.

Pure: a `Tally`, the loaded trials, their `Units`, the hints and the known systems in; a `Survey`
out. Suggestions are never mappings: they go to the report and, commented out, to the draft.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from adapter.analytes import Analyte
from adapter.codes import CodeSet
from adapter.facts.model import Coding
from adapter.facts.units import Unconvertible, UnitReading, Units
from adapter.survey.hints import Hint
from adapter.survey.tally import CodeTally, Tally, UnitKey
from adapter.trials import Trial

#: the system of codes sent without one
NO_SYSTEM = ""


@dataclass(frozen=True, slots=True)
class KnownSystems:
    """Code systems the mappings declare: their URLs and other spellings, and URL -> alias."""

    urls: frozenset[str]
    aliases: Mapping[str, str]
    #: a system's URL -> its other spellings, as the (merged) mappings state them
    equivalents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def alias_of(self, url: str) -> str | None:
        return self.aliases.get(url)


@dataclass(frozen=True, slots=True)
class UnitRow:
    """One unit spelling of a code: as written, how often, and whether (and as what) it reads."""

    unit: str | None
    code: str | None
    system: str | None
    count: int
    parses: bool
    ucum: str | None = None
    via: str | None = None
    problem: str | None = None
    #: whether it converts to the mapped analyte's unit (None: no analyte, or does not parse)
    converts: bool | None = None

    @property
    def spelling(self) -> str:
        return self.unit or self.code or "(no unit)"


@dataclass(frozen=True, slots=True)
class Suggestion:
    analyte: str
    why: str


@dataclass(frozen=True, slots=True)
class CodeRow:
    """One Observation code (system as the data writes it)."""

    system: str
    code: str
    display: str | None
    count: int
    as_component: int
    with_value: int
    value_types: dict[str, int]
    units: tuple[UnitRow, ...]
    analyte: str | None
    needed_by: tuple[str, ...]
    suggested: tuple[Suggestion, ...]
    system_known: bool


@dataclass(frozen=True, slots=True)
class SetMatch:
    resource_type: str
    system: str
    code: str
    display: str | None
    count: int


@dataclass(frozen=True, slots=True)
class CodeSetRow:
    """A code set of the trials, and the Condition and Procedure codes of the data in it."""

    name: str
    trials: tuple[str, ...]
    counts: dict[str, int]
    codes: tuple[SetMatch, ...]


@dataclass(frozen=True, slots=True)
class UnknownSystem:
    system: str
    looks_like: str
    alias: str
    #: resources (or components) per type coded in it
    counts: dict[str, int]
    codes: int


@dataclass(frozen=True, slots=True)
class UnparsedUnit:
    """A unit spelling that reads as no UCUM, the codes it came with, and a guess if one reads."""

    unit: str
    count: int
    problem: str
    codes: tuple[tuple[str, str], ...]
    guess: str | None


@dataclass(frozen=True, slots=True)
class Survey:
    trials: tuple[str, ...]
    read: dict[str, int]
    observations: tuple[CodeRow, ...]
    codesets: tuple[CodeSetRow, ...]
    unknown_systems: tuple[UnknownSystem, ...]
    unparsed_units: tuple[UnparsedUnit, ...]
    uncoded: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Mapped:
    analyte: Analyte
    code_mass: float | None


def analyse(
    tally: Tally,
    trials: Sequence[Trial],
    units: Units,
    hints: Mapping[str, Hint],
    known: KnownSystems,
) -> Survey:
    """The survey of `tally` for `trials` (at least one)."""
    aliases: dict[str, str] = {}
    index: dict[Coding, _Mapped] = {}
    analytes: dict[str, Analyte] = {}
    needed_by: dict[str, list[str]] = {}
    for trial in trials:
        aliases.update(trial.system_aliases)
        for name in sorted(trial.analytes):
            analyte = trial.analytes[name]
            analytes.setdefault(name, analyte)
            for coding, mass in analyte.codes.items():
                index.setdefault(coding, _Mapped(analyte, mass))
        for name in sorted(trial.needed_analytes()):
            needed_by.setdefault(name, []).append(trial.id)
    known_urls = known.urls | frozenset(aliases) | frozenset(aliases.values())
    known_urls |= frozenset(c.system for c in index)
    for trial in trials:
        for cs in trial.codesets.values():
            known_urls |= frozenset(p.system for p in (*cs.include, *cs.exclude))

    rows = []
    for key, entry in tally.observations.items():
        system, code = key
        mapped = index.get(Coding(aliases.get(system, system), code))
        unit_rows = tuple(_unit_rows(entry, units, mapped, aliases))
        suggested: tuple[Suggestion, ...] = ()
        if mapped is None:
            suggested = _suggest(
                entry, code, unit_rows, units, hints, analytes, needed_by, system in known_urls
            )
        analyte_id = mapped.analyte.id if mapped else None
        rows.append(
            CodeRow(
                system=system,
                code=code,
                display=entry.display(),
                count=entry.count,
                as_component=entry.as_component,
                with_value=entry.count
                - entry.value_types["none"]
                - entry.value_types["dataAbsentReason"],
                value_types=dict(sorted(entry.value_types.items())),
                units=unit_rows,
                analyte=analyte_id,
                needed_by=tuple(needed_by.get(analyte_id, ())) if analyte_id else (),
                suggested=suggested,
                system_known=system in known_urls,
            )
        )
    rows.sort(key=lambda r: (-r.count, r.system, r.code))
    return Survey(
        trials=tuple(t.id for t in trials),
        read=dict(sorted(tally.read.items())),
        observations=tuple(rows),
        codesets=_codesets(tally, trials, aliases),
        unknown_systems=_unknown_systems(tally, known_urls, known),
        unparsed_units=_unparsed(rows, units, analytes),
        uncoded=dict(sorted(tally.uncoded.items())),
    )


def _reading(units: Units, key: UnitKey, aliases: Mapping[str, str]) -> UnitReading | str | None:
    """The unit's UCUM reading, why it does not read, or None for a quantity with no unit."""
    unit, code, system = key
    if system is not None:
        system = aliases.get(system, system)  # UCUM's OID form is UCUM
    read = units.reads_as(code=code, system=system, unit=unit)
    if isinstance(read, Unconvertible):
        return read.reason
    return read


def _unit_rows(
    entry: CodeTally, units: Units, mapped: _Mapped | None, aliases: Mapping[str, str]
) -> list[UnitRow]:
    rows = []
    for key, count in sorted(entry.units.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        read = _reading(units, key, aliases)
        if isinstance(read, UnitReading):
            converts = None
            if mapped is not None:
                converts = _converts(units, read.ucum, mapped.analyte, mapped.code_mass)
            rows.append(UnitRow(*key, count, True, read.ucum, _via(read.via), None, converts))
        elif read is None and mapped is not None and _no_unit_reads(units, mapped.analyte):
            # A value without a unit is read as the analyte says: BP components as mm[Hg] (its
            # unit_if_missing), ratios such as the INR as the ratio itself.
            taken = mapped.analyte.unit_if_missing or mapped.analyte.unit
            rows.append(
                UnitRow(*key, count, False, taken, f"no unit; taken as {taken}", None, True)
            )
        else:
            rows.append(UnitRow(*key, count, False, problem=read or "no unit"))
    return rows


def _no_unit_reads(units: Units, analyte: Analyte) -> bool:
    if analyte.unit_if_missing is not None:
        return True
    return analyte.unit.strip() == "1" or bool(re.fullmatch(r"(\{[^{}]*\})+", analyte.unit.strip()))


def _via(via: str) -> str:
    """'UCUM code', 'UCUM text' or 'synonym': how the spelling was read, shortly."""
    if via.startswith("UCUM code"):
        return "UCUM code"
    return "synonym" if " read as UCUM '" in via else "UCUM text"


def _converts(units: Units, ucum: str, analyte: Analyte, code_mass: float | None) -> bool:
    if code_mass is not None:  # a related substance (urea for BUN) goes through mmol/L
        return units.compatible(ucum, "mmol/L", molar_mass=code_mass)
    return units.compatible(
        ucum, analyte.unit, molar_mass=analyte.molar_mass, iu_as_u=analyte.iu_as_u
    )


def _dimensionless(units: Units, ucum: str) -> bool:
    return units.compatible(ucum, "1")


def _suggest(
    entry: CodeTally,
    code: str,
    unit_rows: Sequence[UnitRow],
    units: Units,
    hints: Mapping[str, Hint],
    analytes: Mapping[str, Analyte],
    needed_by: Mapping[str, Sequence[str]],
    system_known: bool,
) -> tuple[Suggestion, ...]:
    """Needed analytes an unmapped code looks like: by its words, else (local codes) its unit."""
    texts = [*entry.displays, code]
    readable = [r for r in unit_rows if r.parses and r.ucum]
    out: list[Suggestion] = []
    for name in sorted(needed_by):
        hint, analyte = hints.get(name), analytes.get(name)
        if hint is None or analyte is None:
            continue
        if hint.found(texts) is None:  # no word, or a `not` word in a display or the code
            continue
        word = hint.found(entry.displays)  # what the display says first, then the code
        fits = [r for r in readable if _converts(units, r.ucum or "", analyte, None)]
        if readable and not fits:
            continue  # every unit reads, none as this analyte: another test with a like name
        if word is not None:
            why = f"display {_short(entry)!r} has {word!r} ({analyte.name})"
        else:
            why = f"code {code!r} has {hint.found([code])!r} ({analyte.name})"
        if fits:
            why += f"; unit {fits[0].spelling!r} converts to {analyte.unit}"
        elif any(not r.parses for r in unit_rows):
            why += "; its unit does not parse (see unparsed units)"
        elif not unit_rows:
            why += "; no unit given"
        out.append(Suggestion(name, why))
    if out or system_known:
        return tuple(out)
    # A local code whose text names no analyte: only a unit of the right dimension speaks for it.
    # Dimensionless units (%, ratios, scores) would fit too many analytes to say anything.
    for name in sorted(needed_by):
        analyte = analytes.get(name)
        if analyte is None or _dimensionless(units, analyte.unit):
            continue
        fits = [
            r
            for r in readable
            if not _dimensionless(units, r.ucum or "")
            and _converts(units, r.ucum or "", analyte, None)
        ]
        if fits:
            why = f"unit {fits[0].spelling!r} converts to {analyte.unit} ({analyte.name}); "
            out.append(Suggestion(name, why + "no word of the code names an analyte"))
    return tuple(out)


def _short(entry: CodeTally) -> str:
    display = entry.display() or ""
    return display if len(display) <= 60 else display[:57] + "..."


def _codesets(
    tally: Tally, trials: Sequence[Trial], aliases: Mapping[str, str]
) -> tuple[CodeSetRow, ...]:
    owners: dict[str, list[str]] = {}
    sets: dict[str, CodeSet] = {}
    for trial in trials:
        for name, cs in trial.codesets.items():
            owners.setdefault(name, []).append(trial.id)
            sets.setdefault(name, cs)
    matches: dict[str, list[SetMatch]] = {name: [] for name in sets}
    for kind, table in sorted(tally.coded.items()):
        for (system, code), entry in table.items():
            coding = Coding(aliases.get(system, system), code)
            for name, cs in sets.items():
                if cs.matches(coding):
                    matches[name].append(SetMatch(kind, system, code, entry.display(), entry.count))
    rows = []
    for name in sorted(sets):
        found = sorted(matches[name], key=lambda m: (m.resource_type, -m.count, m.system, m.code))
        counts: Counter[str] = Counter()
        for m in found:
            counts[m.resource_type] += m.count
        rows.append(
            CodeSetRow(name, tuple(owners[name]), dict(sorted(counts.items())), tuple(found))
        )
    return tuple(rows)


_OID = re.compile(r"urn:oid:[0-2](\.\d+)+")
_NOT_ALIAS = re.compile(r"[^a-z0-9]+")


def looks_like(system: str) -> str:
    """What an unknown system seems to be, for the reader: a guess from its spelling."""
    lowered = system.lower()
    if system == NO_SYSTEM:
        return "no system: codes without a system are never read"
    if lowered.startswith("http://snomed.info/sct/") or lowered.startswith("http://snomed.info/x"):
        return "a SNOMED CT edition URI (the edition belongs in Coding.version)"
    if "icd-10" in lowered or "icd10" in lowered:
        return "an ICD-10 edition (national or local)"
    if "loinc" in lowered:
        return "a LOINC spelling the mappings do not list"
    if _OID.fullmatch(system):
        return "an OID not listed in systems.yaml"
    return "a local code system"


def alias_for(system: str) -> str:
    """A systems.yaml name made from a system URL (`http://hospital.example.cn/lab` ->
    `hospital-example-cn-lab`)."""
    text = system.lower()
    for prefix in ("urn:oid:", "urn:", "https://", "http://", "www."):
        text = text.removeprefix(prefix)
    name = _NOT_ALIAS.sub("-", text).strip("-")[:60].strip("-")
    return ("oid-" + name if system.lower().startswith("urn:oid:") else name) or "local"


def _unknown_systems(
    tally: Tally, known_urls: frozenset[str], known: KnownSystems
) -> tuple[UnknownSystem, ...]:
    counts: dict[str, Counter[str]] = {}
    codes: dict[str, set[str]] = {}
    tables = [("Observation", tally.observations), *sorted(tally.coded.items())]
    for kind, table in tables:
        for (system, code), entry in table.items():
            if system in known_urls:
                continue
            counts.setdefault(system, Counter())[kind] += entry.count
            codes.setdefault(system, set()).add(code)
    taken = set(known.aliases.values())
    out = []
    for system in sorted(counts):
        alias = alias_for(system)
        base, n = alias, 2
        while alias in taken:
            alias, n = f"{base}-{n}", n + 1
        taken.add(alias)
        out.append(
            UnknownSystem(
                system,
                looks_like(system),
                alias,
                dict(sorted(counts[system].items())),
                len(codes[system]),
            )
        )
    return tuple(out)


_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")


def guess_ucum(text: str, units: Units) -> str | None:
    """A UCUM code for unit text that reads as none, when a few common rewrites make it valid:
    a times sign (U+00D7) or `x` before a power of ten dropped, `^` and superscripts as `*`,
    micro signs and `mc` as u, `cu mm` as mm3. Only a guess: the draft offers it commented out."""
    s = text.strip().replace("\u00d7", "x").replace("µ", "u").replace("μ", "u")
    s = re.sub(r"^x\s*(?=10)", "", s)
    s = re.sub(r"10\s*[\^~]\s*(\d+)", r"10*\1", s)
    s = re.sub(r"10([⁰¹²³⁴⁵⁶⁷⁸⁹]+)", lambda m: "10*" + m.group(1).translate(_SUPERSCRIPTS), s)
    s = re.sub(r"10\((\d+)\)", r"10*\1", s)
    s = re.sub(r"\bmc(?=[gLlm])", "u", s)
    s = re.sub(r"cu\.?\s*mm|cumm|cmm", "mm3", s)
    s = s.replace(" ", "")
    s = re.sub(r"/l$", "/L", s)
    if s and s != text and units.is_valid(s):
        return s
    return None


def _unparsed(
    rows: Sequence[CodeRow], units: Units, analytes: Mapping[str, Analyte]
) -> tuple[UnparsedUnit, ...]:
    found: dict[str, tuple[int, str, list[tuple[str, str]], list[str]]] = {}
    for row in rows:
        for u in row.units:
            if u.parses or (u.unit is None and u.code is None):
                continue
            spelling = u.spelling
            count, problem, codes, targets = found.get(spelling, (0, u.problem or "", [], []))
            codes.append((row.system, row.code))
            target = row.analyte or (row.suggested[0].analyte if row.suggested else None)
            if target is not None and target in analytes:
                targets.append(target)
            found[spelling] = (count + u.count, problem, codes, targets)
    out = []
    for spelling, (count, problem, codes, targets) in sorted(
        found.items(), key=lambda kv: (-kv[1][0], kv[0])
    ):
        guess = guess_ucum(spelling, units)
        if guess is not None and targets:
            a = analytes[targets[0]]
            if not units.compatible(guess, a.unit, molar_mass=a.molar_mass, iu_as_u=a.iu_as_u):
                guess = None
        out.append(UnparsedUnit(spelling, count, problem, tuple(codes), guess))
    return tuple(out)
