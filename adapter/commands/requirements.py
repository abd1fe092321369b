"""What a sweep asks of a FHIR server, judged against what it grants and declares.

Pure functions for `trial-adapter check` (adapter.commands.check): the SMART scopes each side
needs and which of them a token's granted `scope` lacks; what the source's searches and the sink's
writes need of a CapabilityStatement, and what it declares against them. The needs follow the
code that makes the requests: adapter.fhir.capability (SEARCHES, WRITES, `write_path`), the
sources and sinks, and SECURITY.md's list of scopes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from adapter.fhir.capability import SEARCHES, WRITES, ServerCapabilities, WritePath
from adapter.trials import Trial

#: what the server sink does with each type, as SMART v2 permissions (SECURITY.md); a
#: ResearchStudy found by an identifier search needs `s` as well (`needed_scopes`)
SINK_SCOPES: Mapping[str, str] = {
    "ResearchStudy": "cru",
    "ResearchSubject": "crus",
    "Provenance": "crs",
    "Device": "crs",
}

# system/<Type or *>.<permissions>[?query], v1 (read, write, *) and v2 (cruds) forms.
_SCOPE = re.compile(r"system/(?P<type>\*|[A-Z][A-Za-z]*)\.(?P<perms>read|write|\*|[cruds]+)(\?.*)?")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


def source_types(trials: Sequence[Trial]) -> tuple[str, ...]:
    """The types a sweep of `trials` reads: Patient and Condition, and what criteria read; every
    type the source can read when no trial is given."""
    if not trials:
        return tuple(SEARCHES)
    wanted = {"Patient", "Condition"}.union(*(trial.reads() for trial in trials))
    return tuple(t for t in SEARCHES if t in wanted) + tuple(sorted(wanted - set(SEARCHES)))


def needed_scopes(
    side: str, types: Sequence[str], caps: ServerCapabilities | None
) -> dict[str, str]:
    """Type -> SMART permissions the side needs (`rs` to read; SINK_SCOPES to write)."""
    if side == "source":
        return dict.fromkeys(types, "rs")
    needed = dict(SINK_SCOPES)
    if caps is not None and caps.write_path("ResearchStudy") is WritePath.CONDITIONAL:
        needed["ResearchStudy"] += "s"  # found by a search on identifier before it is created
    return needed


def missing_scopes(needed: Mapping[str, str], granted: Iterable[str]) -> list[str]:
    """The needed scopes (`system/Observation.rs`) that `granted` (v1 or v2 forms) lacks.

    A scope narrowed by a query (`system/Observation.rs?category=laboratory`) grants its
    permissions: SECURITY.md recommends such narrowing where a server offers it.
    """
    have: dict[str, set[str]] = defaultdict(set)
    for scope in granted:
        match = _SCOPE.fullmatch(scope)
        if match:
            have[match["type"]].update(_V1.get(match["perms"], match["perms"]))
    return [
        f"system/{kind}.{perms}"
        for kind, perms in needed.items()
        if not set(perms) <= have[kind] | have["*"]
    ]


def judge_capabilities(
    side: str, types: Sequence[str], caps: ServerCapabilities
) -> tuple[list[str], list[str]]:
    """(problems, notes): what the CapabilityStatement says against the side's requests, and what
    it leaves unsaid. Only a declared lack is a problem: a type it does not list is a note, since
    many servers list less than they do (sekmet lists no ResearchSubject, and takes them)."""
    problems: list[str] = []
    unlisted: list[str] = []
    notes: list[str] = []
    kinds = types if side == "source" else WRITES
    for kind in kinds:
        entry = caps.resource(kind)
        if entry is None:
            unlisted.append(kind)
            continue
        if side == "source":
            needed = ["search-type"]
            params = [p for p in SEARCHES.get(kind, ()) if not p.startswith("_")]
            # Common parameters (_id) are often left out of the list even where supported.
            missing = [p for p in params if p not in entry.search_params]
            if missing:
                problems.append(f"{kind}: no search parameter {', '.join(missing)}")
        else:
            path = caps.write_path(kind)
            needed = {
                WritePath.FIXED_ID: ["read", "update"],
                WritePath.CONDITIONAL: ["search-type", "create"],
                WritePath.POST: ["search-type", "create"],
            }[path]
            if kind == "ResearchSubject" and path is not WritePath.FIXED_ID:
                needed = [*needed, "update"]  # potential-candidate -> candidate, with If-Match
            if path is WritePath.FIXED_ID and not entry.update_create:
                problems.append(f"{kind}: PUT at a deterministic id, but no updateCreate")
            if kind == "ResearchSubject" and entry.versioning in (None, "no-version"):
                notes.append(f"{kind} not versioned: If-Match updates may be refused")
        lacking = [i for i in needed if not entry.supports(i)]
        if lacking:
            problems.append(f"{kind}: no {' or '.join(lacking)} interaction")
    if unlisted:
        how = "searched" if side == "source" else "written at deterministic ids"
        notes.append(f"{', '.join(unlisted)} not listed: {how}, unverified")
    return problems, notes


def describe_capabilities(side: str, types: Sequence[str], caps: ServerCapabilities) -> str:
    if side == "source":
        return "; ".join(f"{kind} by {', '.join(SEARCHES.get(kind, ()))}" for kind in types)
    return "; ".join(f"{kind} {caps.write_path(kind).value}" for kind in WRITES)
