"""Who a sweep starts from (issue 13): `--cohort search`, `group:ID` or `file:PATH`.

`search`, the default, is the server-wide Condition search (`adapter.sweep.cohort_ids`). The two
other forms need no such search, which Epic and Oracle Health do not offer: they name candidates,
and the trial's cohort rules still apply to each candidate's own Conditions (the sweep's part).

- `group:ID`: the members of FHIR Group ID (an Epic registry, a Cerner population). A member
  counts when its entity is a local Patient (`Patient/x`, `Patient/x/_history/n`) and it is
  current on the as-of day: not `inactive`, its `period` not ended before as-of nor starting
  after it (by calendar day, partial dates by the days they may stand for: a member is dropped
  only when it is surely out). An unreadable period date keeps the member and is counted
  (`bad_period`): a member kept by mistake still meets the cohort rules and a person's review,
  one dropped by mistake is never seen. The Group's `type` and `actual` are not checked; only
  Patient entities count, whatever the Group says it holds.
- `file:PATH`: one Patient a line, UTF-8 (a BOM is fine), blank lines and `#` lines ignored. A
  line without `|` is a logical id, taken as it is (the sweep reports one that names no Patient).
  A line with `|` is `system|value` (split at the first `|`; an empty system is an identifier
  without one), resolved through `Source.patients_by_identifier` in one call and kept only when
  exactly one Patient carries exactly that pair: none is `unresolved`, two or more `ambiguous`
  (skipped, never guessed).

`Members` says what was skipped in counts and line numbers, never in patient data.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from adapter.errors import ConfigError, IncompleteInputError, UsageError
from adapter.facts.dates import parse_fhir_date
from adapter.fhir.resource_types import R4_RESOURCE_TYPES
from adapter.sources.base import identifier_pairs
from adapter.sources.rest import is_fhir_id

if TYPE_CHECKING:
    from adapter.sources.base import Resource, Source

CohortKind = Literal["search", "group", "file"]

#: what `--cohort` accepts, for messages
FORMS = "search, group:ID or file:PATH"
#: characters of a refused `--cohort` value shown back: enough to spot a typo, never a file's worth
_SHOWN = 40
#: line numbers listed in one `describe` line before the rest are counted
_LINES_SHOWN = 20
_BOM = b"\xef\xbb\xbf"
#: the `Members` fields results.json shows when not zero or empty
_SKIPS = (
    *("inactive", "ended", "not_started", "bad_period", "not_patients", "foreign", "duplicates"),
    *("unresolved_lines", "ambiguous_lines", "bad_lines"),
)


@dataclass(frozen=True, slots=True)
class CohortSpec:
    """One `--cohort` form: `group_id` is set for `group`, `path` for `file`."""

    kind: CohortKind
    group_id: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "group":
            return f"group:{self.group_id}"
        if self.kind == "file":
            return f"file:{self.path}"
        return "search"

    def describe(self) -> str:
        """The form for logs and results.json: a file by its name only (its folder may name the
        user who keeps it)."""
        if self.kind == "file" and self.path is not None:
            return f"file:{self.path.name}"
        return str(self)


def parse_cohort(text: str) -> CohortSpec:
    """The `--cohort` form `text` names; UsageError (exit 2) for anything else."""
    if text == "search":
        return CohortSpec("search")
    kind, colon, rest = text.partition(":")
    if colon and kind == "group":
        if not is_fhir_id(rest):
            raise UsageError(
                f"cohort form {_shown(text)}: group:ID needs a FHIR id "
                "(1 to 64 letters, digits, '-' or '.')"
            )
        return CohortSpec("group", group_id=rest)
    if colon and kind == "file":
        if not rest:
            raise UsageError("cohort form 'file:' needs a path (file:PATH)")
        return CohortSpec("file", path=Path(rest).expanduser())
    raise UsageError(f"unknown cohort form {_shown(text)} (use {FORMS})")


@dataclass(slots=True)
class Members:
    """The candidates a group or file cohort names, and what it skipped (never patient data).

    `cohort`: the form (`CohortSpec.describe`). `ids`: sorted, unique Patient ids. Group counts
    are of member entries: `inactive`, `ended` (period ended before as-of), `not_started` (period
    starts after as-of), `bad_period` (a date that does not parse: kept), `not_patients` (an
    entity of another type), `foreign` (another server's, or a reference nothing resolves). File
    lists are 1-based line numbers. `duplicates` counts entries or lines naming a Patient an
    earlier one named.
    """

    cohort: str
    ids: list[str] = field(default_factory=list)
    #: member entries (group) or lines naming a patient (file) read
    entries: int = 0
    inactive: int = 0
    ended: int = 0
    not_started: int = 0
    bad_period: int = 0
    not_patients: int = 0
    foreign: int = 0
    duplicates: int = 0
    unresolved_lines: list[int] = field(default_factory=list)
    ambiguous_lines: list[int] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """For results.json: the members, the entries or lines read, and every non-zero skip."""
        doc: dict[str, Any] = {"members": len(self.ids), "entries": self.entries}
        for name in _SKIPS:
            value = getattr(self, name)
            if value:
                doc[name] = list(value) if isinstance(value, list) else value
        return doc

    def describe(self) -> list[str]:
        """Log lines, each starting with the form: counts and line numbers only."""
        unit = "lines" if self.cohort.startswith("file:") else "entries"
        lines = [f"{self.cohort}: {len(self.ids)} patients from {self.entries} {unit}"]
        skipped = [
            (self.inactive, "inactive"),
            (self.ended, "ended before as-of"),
            (self.not_started, "not started by as-of"),
            (self.not_patients, "not a Patient"),
            (self.foreign, "another server's or unresolvable"),
            (self.duplicates, "naming a patient already listed"),
        ]
        shown = [f"{count} {why}" for count, why in skipped if count]
        if shown:
            lines.append(f"{self.cohort}: skipped " + ", ".join(shown))
        if self.bad_period:
            lines.append(
                f"{self.cohort}: {self.bad_period} members with an unreadable period date kept"
            )
        for numbers, what in (
            (self.unresolved_lines, "matched no Patient"),
            (self.ambiguous_lines, "matched more than one Patient (skipped)"),
            (self.bad_lines, "neither a FHIR id nor system|value (skipped)"),
        ):
            if numbers:
                lines.append(f"{self.cohort}: {_line_list(numbers)} {what}")
        return lines


async def read_members(spec: CohortSpec, source: Source, as_of: date) -> Members:
    """The candidates of a `group` or `file` cohort; the `search` one is `sweep.cohort_ids`'s.

    A Group the source lacks is IncompleteInputError (exit 1), as any input the sweep needs and
    the source lacks; a cohort file that cannot be read, or is not UTF-8, is ConfigError (exit 2).
    """
    if spec.kind == "group" and spec.group_id is not None:
        group = await source.group(spec.group_id)
        if group is None:
            raise IncompleteInputError(f"Group {spec.group_id} not found in the source")
        return group_members(group, as_of, cohort=spec.describe())
    if spec.kind == "file" and spec.path is not None:
        return await file_members(spec.path, source, cohort=spec.describe())
    raise ValueError(f"read_members reads group and file cohorts, not {spec.kind}")


def group_members(group: Resource, as_of: date, *, cohort: str = "group") -> Members:
    """The Patients current in `group` on `as_of`, member entries walked in order."""
    members = Members(cohort)
    taken: set[str] = set()
    entries = group.get("member")
    for member in entries if isinstance(entries, list) else ():
        members.entries += 1
        if not isinstance(member, dict):
            members.foreign += 1
            continue
        entity = member.get("entity")
        kind, pid = _local_reference(entity.get("reference") if isinstance(entity, dict) else None)
        if pid is None:
            if kind is None:
                members.foreign += 1
            else:
                members.not_patients += 1
            continue
        if member.get("inactive") is True:
            members.inactive += 1
            continue
        status = _period_status(member.get("period"), as_of)
        if status == "ended":
            members.ended += 1
            continue
        if status == "not_started":
            members.not_started += 1
            continue
        if status == "bad":
            members.bad_period += 1
        if pid in taken:
            members.duplicates += 1
        taken.add(pid)
    members.ids = sorted(taken)
    return members


async def file_members(path: Path, source: Source, *, cohort: str = "file") -> Members:
    """The Patients a cohort file names (see the module docstring), streamed line by line."""
    members = Members(cohort)
    # Patient per line, in file order: an id, or the identifier resolved below.
    named: list[tuple[int, str | tuple[str, str]]] = []
    for number, line in _cohort_lines(path):
        if not line or line.startswith("#"):
            continue
        members.entries += 1
        if "|" in line:
            system, _, value = line.partition("|")
            if not value:
                members.bad_lines.append(number)
            else:
                named.append((number, (system, value)))
        elif is_fhir_id(line):
            named.append((number, line))
        else:
            members.bad_lines.append(number)
    owners = await _resolve({token for _, token in named if isinstance(token, tuple)}, source)
    taken: set[str] = set()
    for number, token in named:
        if isinstance(token, str):
            pid = token
        else:
            found = owners.get(token, set())
            if len(found) != 1:
                (members.ambiguous_lines if found else members.unresolved_lines).append(number)
                continue
            (pid,) = found
        if pid in taken:
            members.duplicates += 1
        taken.add(pid)
    members.ids = sorted(taken)
    return members


async def _resolve(tokens: set[tuple[str, str]], source: Source) -> dict[tuple[str, str], set[str]]:
    """Each identifier -> the ids of the Patients carrying exactly it. A source may answer with
    more (a server's token match can ignore case); only exact pairs count here."""
    owners: dict[tuple[str, str], set[str]] = defaultdict(set)
    if not tokens:
        return owners
    async for patient in source.patients_by_identifier(sorted(tokens)):
        pid = patient.get("id")
        if not isinstance(pid, str) or not is_fhir_id(pid):
            continue
        for pair in identifier_pairs(patient):
            if pair in tokens:
                owners[pair].add(pid)
    return owners


def _cohort_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each line; ConfigError when the file cannot be read or a
    line is not UTF-8 (the message names the line, never its bytes)."""
    try:
        with path.open("rb") as stream:
            for number, raw in enumerate(stream, 1):
                if number == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    # `from None`: the exception holds the line's bytes.
                    raise ConfigError(
                        f"{path}:{number}: not valid UTF-8 (a --cohort file is UTF-8 text)"
                    ) from None
                yield number, text.strip()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"{path}: cannot read the --cohort file ({why})") from exc


PeriodStatus = Literal["current", "ended", "not_started", "bad"]


def _period_status(period: object, as_of: date) -> PeriodStatus:
    """Whether a member's period surely ended before `as_of` or starts after it, by calendar
    day; a partial date is out only when every day it may stand for is."""
    if period is None:
        return "current"
    if not isinstance(period, dict):
        return "bad"
    status: PeriodStatus = "current"
    for key in ("end", "start"):
        text = period.get(key)
        if text is None:
            continue
        when = parse_fhir_date(text)
        if when is None:
            status = "bad"
        elif key == "end" and when.last_day < as_of:
            return "ended"
        elif key == "start" and when.first_day > as_of:
            return "not_started"
    return status


def _local_reference(reference: object) -> tuple[str | None, str | None]:
    """(type, Patient id) of a member reference: ("Patient", id) for a local Patient, (type,
    None) for a local resource of another type, (None, None) for another server's (absolute:
    sources make their own references relative) or anything unresolvable (no reference, a
    `#contained` or conditional one, a malformed id)."""
    if not isinstance(reference, str) or ":" in reference:
        return None, None
    parts = reference.split("/")
    if len(parts) == 4 and parts[2] == "_history" and is_fhir_id(parts[3]):
        parts = parts[:2]
    if len(parts) != 2 or parts[0] not in R4_RESOURCE_TYPES or not is_fhir_id(parts[1]):
        return None, None
    if parts[0] != "Patient":
        return parts[0], None
    return "Patient", parts[1]


def _line_list(numbers: list[int]) -> str:
    head = ", ".join(str(n) for n in numbers[:_LINES_SHOWN])
    more = len(numbers) - _LINES_SHOWN
    word = "line" if len(numbers) == 1 else "lines"
    return f"{word} {head}" + (f" and {more} more" if more > 0 else "")


def _shown(text: str) -> str:
    """A refused value as a message shows it: its first characters, quoted and escaped."""
    return repr(text[:_SHOWN]) + ("..." if len(text) > _SHOWN else "")
