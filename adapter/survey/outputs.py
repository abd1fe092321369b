"""The survey's outputs: the table on stdout, `survey.json` and the draft `site-mappings.yaml`.

All three hold codes, code displays, unit text and counts only. The draft loads as it is written
and changes nothing: every suggestion in it is a comment until someone accepts it by uncommenting
its line. Its collections are YAML flow collections spread over lines (`local_codes: [` ... `]`)
so that an uncommented line is a valid entry, and an all-commented one is an empty collection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from adapter.report.files import write_private
from adapter.survey.analyse import NO_SYSTEM, CodeRow, KnownSystems, Survey, UnitRow

SURVEY_JSON = "survey.json"
DRAFT = "site-mappings.yaml"
_DISPLAY_WIDTH = 44
_SNOMED = "http://snomed.info/sct"


@dataclass(frozen=True, slots=True)
class Sample:
    """How much of one resource type was read."""

    read: int
    limit: int | None
    complete: bool


def survey_json(survey: Survey, source: str, sample: Mapping[str, Sample]) -> dict[str, Any]:
    """survey.json: per Observation code `system, code, display, count, units, analyte,
    suggested` (issue 9) and more; code sets, unknown systems and unit spellings that do not
    parse."""
    return {
        "source": source,
        "trials": list(survey.trials),
        "sample": {
            kind: {"read": s.read, "limit": s.limit, "complete": s.complete}
            for kind, s in sorted(sample.items())
        },
        "observations": [_code_json(row) for row in survey.observations],
        "unparsed_units": [
            {
                "unit": u.unit,
                "count": u.count,
                "problem": u.problem,
                "codes": [{"system": s or None, "code": c} for s, c in u.codes],
                "guess": u.guess,
            }
            for u in survey.unparsed_units
        ],
        "codesets": [
            {
                "name": cs.name,
                "trials": list(cs.trials),
                "counts": cs.counts,
                "codes": [
                    {
                        "resource_type": m.resource_type,
                        "system": m.system or None,
                        "code": m.code,
                        "display": m.display,
                        "count": m.count,
                    }
                    for m in cs.codes
                ],
            }
            for cs in survey.codesets
        ],
        "unknown_systems": [
            {
                "system": u.system or None,
                "looks_like": u.looks_like,
                "suggested_alias": u.alias,
                "counts": u.counts,
                "codes": u.codes,
            }
            for u in survey.unknown_systems
        ],
        "uncoded": survey.uncoded,
    }


def _code_json(row: CodeRow) -> dict[str, Any]:
    return {
        "system": row.system or None,
        "code": row.code,
        "display": row.display,
        "count": row.count,
        "as_component": row.as_component,
        "with_value": row.with_value,
        "value_types": row.value_types,
        "units": [_unit_json(u) for u in row.units],
        "analyte": row.analyte,
        "needed_by": list(row.needed_by),
        "suggested": [{"analyte": s.analyte, "why": s.why} for s in row.suggested],
        "system_known": row.system_known,
    }


def _unit_json(u: UnitRow) -> dict[str, Any]:
    return {
        "unit": u.unit,
        "code": u.code,
        "system": u.system,
        "count": u.count,
        "parses": u.parses,
        "ucum": u.ucum,
        "via": u.via,
        "problem": u.problem,
        "converts": u.converts,
    }


def table(survey: Survey, sample: Mapping[str, Sample]) -> str:
    """The plain-text report for stdout."""
    read = ", ".join(
        f"{kind} {s.read:,}" + ("" if s.complete else f" (sample limit {s.limit:,})")
        for kind, s in sorted(sample.items())
    )
    lines = [f"survey of {read or 'nothing'}; trials: {', '.join(survey.trials)}", ""]
    lines.append(f"{'count':>7}  {'code':<34} {'display':<{_DISPLAY_WIDTH}} units -> analyte")
    for row in survey.observations:
        code = _code_label(row)
        display = _cut(row.display or "", _DISPLAY_WIDTH)
        units = ", ".join(_unit_label(u) for u in row.units) or "-"
        if row.analyte:
            target = row.analyte
        elif row.suggested:
            target = "suggest " + "/".join(s.analyte for s in row.suggested) + "?"
        else:
            target = "-"
        lines.append(f"{row.count:>7}  {code:<34} {display:<{_DISPLAY_WIDTH}} {units} -> {target}")
    if survey.unparsed_units:
        lines += ["", "unit spellings that do not parse:"]
        for u in survey.unparsed_units:
            codes = ", ".join(_token(s, c) for s, c in u.codes[:4])
            more = f" and {len(u.codes) - 4} more" if len(u.codes) > 4 else ""
            guess = f"; perhaps UCUM {u.guess!r}" if u.guess else ""
            lines.append(f"  {u.unit!r} ({u.count:,}): {u.problem}; on {codes}{more}{guess}")
    matched = [cs for cs in survey.codesets if cs.codes]
    lines += ["", "Condition and Procedure codes in the trials' code sets:"]
    for cs in matched:
        counts = ", ".join(f"{k} {n:,}" for k, n in cs.counts.items())
        codes = ", ".join(f"{_token(m.system, m.code)} ({m.count:,})" for m in cs.codes[:5])
        more = f" and {len(cs.codes) - 5} more" if len(cs.codes) > 5 else ""
        lines.append(f"  {cs.name}: {counts}: {codes}{more}")
    empty = [cs.name for cs in survey.codesets if not cs.codes]
    if not matched:
        lines.append("  none")
    if empty:
        lines.append(f"  no code of the data in: {', '.join(empty)}")
    lines += ["", "code systems the adapter does not know:"]
    for system in survey.unknown_systems:
        counts = ", ".join(f"{k} {n:,}" for k, n in system.counts.items())
        codes = f"{system.codes} code" + ("" if system.codes == 1 else "s")
        name = system.system or "(no system)"
        lines.append(f"  {name}: {system.looks_like}; {codes}; {counts}")
    if not survey.unknown_systems:
        lines.append("  none")
    return "\n".join(lines)


def _code_label(row: CodeRow) -> str:
    return _cut(_token(row.system, row.code), 34)


def _token(system: str, code: str) -> str:
    short = {"http://loinc.org": "loinc", _SNOMED: "sct"}.get(system, system)
    return f"{short}|{code}" if system != NO_SYSTEM else f"(no system)|{code}"


def _unit_label(u: UnitRow) -> str:
    mark = "ok" if u.parses else "NOT READ"
    if u.parses and u.converts is False:
        mark = "wrong unit"
    elif not u.parses and u.converts:
        mark = u.via or "read"
    return f"{u.spelling} ({u.count:,}, {mark})"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def draft_yaml(survey: Survey, known: KnownSystems, source: str) -> str:
    """The draft site-mappings.yaml: `systems`, `local_codes`, `synonyms` (and `equivalents`
    for SNOMED CT edition URIs), every entry commented out."""
    unknown = {u.system: u for u in survey.unknown_systems if u.system != NO_SYSTEM}
    needed_systems: set[str] = set()
    code_lines: list[str] = []
    for row in survey.observations:
        if not row.suggested or row.system == NO_SYSTEM:
            continue
        alias = known.alias_of(row.system)
        if alias is None:
            if row.system not in unknown:
                continue
            alias = unknown[row.system].alias
            needed_systems.add(row.system)
        for s in row.suggested:
            entry = f"{{system: {alias}, code: {_q(row.code)}, analyte: {s.analyte}}},"
            code_lines.append(f"  # {entry}  # {row.count:,} seen; {_comment(s.why)}")
    system_lines = []
    editions = []
    for system, u in unknown.items():
        if u.looks_like.startswith("a SNOMED CT edition"):
            editions.append(system)
        note = "; NEEDED by local_codes below" if system in needed_systems else ""
        entry = f"{u.alias}: {{urls: [{_q(system)}], match: exact}},"
        counts = ", ".join(f"{k} {n:,}" for k, n in u.counts.items())
        system_lines.append(f"  # {entry}  # {_comment(u.looks_like)}; {counts}{note}")
    synonym_lines = []
    for p in survey.unparsed_units:
        on = ", ".join(_token(s, c) for s, c in p.codes[:3])
        if p.guess:
            target, note = _q(p.guess), "a guess: check it"
        else:
            target, note = '"?"', "write its UCUM code in place of ?"
        synonym_lines.append(
            f"  # {_q(p.unit)}: {target},  # {p.count:,} seen on {_comment(on)}; {note}"
        )
    out = [
        "# Draft site mappings written by `trial-adapter survey`",
        f"# of {_comment(source)}, for the trials {', '.join(survey.trials)}.",
        "# Put it in the site folder as site-mappings.yaml (`--site-mappings DIR`). As written it",
        "# changes nothing: every suggestion is a comment. To accept one, delete the `# ` in front",
        "# of its line, and in front of its code system's line under `systems` when that is marked",
        "# NEEDED. Check each against the laboratory's catalogue first: suggestions are guesses",
        "# from display words and units, never mappings.",
        "systems: {",
        *(system_lines or ["  # (every code system of the data is known)"]),
        "}",
        "local_codes: [",
        *(code_lines or ["  # (no suggestion)"]),
        "]",
        "synonyms: {",
        *(synonym_lines or ["  # (every unit spelling of the data parses)"]),
        "}",
    ]
    if editions:
        # A site's `equivalents` entry replaces the whole list: keep the spellings known already.
        spellings = dict.fromkeys((*known.equivalents.get(_SNOMED, ()), *editions))
        urls = ", ".join(_q(e) for e in spellings)
        out += [
            "equivalents: {",
            f"  # {_q(_SNOMED)}: [{urls}],  # SNOMED CT edition URIs used as the system",
            "}",
        ]
    return "\n".join(out) + "\n"


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are YAML's)."""
    return _escape(json.dumps(text, ensure_ascii=False))


def _comment(text: str) -> str:
    return _escape(" ".join(text.split()))


# What YAML 1.1 may not hold raw (C1 controls, as in mis-decoded UTF-8) or reads as a line break
# (NEL, U+2028, U+2029), anywhere in the file: written as `\uXXXX`, an escape of both JSON and YAML.
_NOT_RAW = re.compile(
    r"[^\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


def _escape(text: str) -> str:
    return _NOT_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def write_outputs(
    out_dir: Path, survey: Survey, known: KnownSystems, source: str, sample: Mapping[str, Sample]
) -> Sequence[Path]:
    """survey.json and site-mappings.yaml in `out_dir`, owner-only (0600 files, 0700 folder)."""
    doc = survey_json(survey, source, sample)
    paths = (out_dir / SURVEY_JSON, out_dir / DRAFT)
    write_private(paths[0], orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    write_private(paths[1], draft_yaml(survey, known, source).encode())
    return paths
