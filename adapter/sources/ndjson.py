"""The folder source's NDJSON reading: a file's lines to resources, in one process or with
worker processes (issue 15). `FolderSource` (`adapter.sources.files`) holds the counters and
decides which way a query reads; this module applies the same rules either way.

In one process (`read_ndjson`) a file is streamed line by line. With workers (`read_scanned`),
`adapter.sources.scan` has already dropped, in another process, the lines the pre-checks rule out,
and hands back the others with their numbers: they are parsed here, in order, by the same `take`,
so resources, counters and unreadable items are those of the one-process read.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections import Counter
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

from adapter.errors import IncompleteInputError
from adapter.sources.base import (
    Query,
    Resource,
    UnreadableItem,
    count_foreign,
    is_foreign,
    patient_id_of,
)
from adapter.sources.prechecks import (
    Precheck,
    code_needles,
    line_regex,
    may_be_wanted_patient,
    may_belong,
    may_hold_code,
    passes_over,
    prefilter,
)
from adapter.sources.scan import BOM, Scanned, open_stream
from adapter.sources.unreadable import parse_line, patient_named_by, record

if TYPE_CHECKING:
    from pathlib import Path

# Lines read between two turns given to the event loop: parsing is CPU-bound and runs in the
# loop's thread, so a 90k-line file would otherwise hold it for a second.
LINES_PER_TURN = 1000

# Resources, and None where the event loop gets a turn, returning how many lines of the type the
# file holds. One at a time, not in lists: a list of a thousand parsed resources outlives the
# young GC generation and made reading 2.5 times slower.
FileStream = Generator[Resource | None, None, int]


class _Tally:
    """One file's reading so far."""

    __slots__ = ("code_skipped", "confirmed", "dropped", "present", "shown", "unreadable")

    def __init__(self) -> None:
        self.present = self.unreadable = self.dropped = self.code_skipped = 0
        # Lines are pre-checked only once one has been parsed as the type: a file holding only
        # other types (or nothing wanted) must still fail as empty, not pass unread.
        self.confirmed = False
        self.shown: str | None = None


class NdjsonReading:
    """What `FolderSource` does with NDJSON lines; its counters are described there."""

    skipped: Counter[str]
    other_patients: Counter[str]
    code_skipped: Counter[str]
    foreign: Counter[str]
    _foreign_seen: set[tuple[str, str]]
    unreadable: list[UnreadableItem]
    _unreadable_seen: set[tuple[str, int]]

    def read_ndjson(self, path: Path, query: Query, precheck: Precheck | None = None) -> FileStream:
        """The file's resources, read here; returns how many lines of the type it holds.

        A line `precheck` says cannot be wanted is skipped unparsed, as `may_belong` does.
        """
        tally = _Tally()
        wanted_bytes = prefilter(query)
        belongs = may_be_wanted_patient if query.resource_type == "Patient" else may_belong
        needles = code_needles(query.line_codes)
        pattern = line_regex(query.line_pattern) if query.patients is None else None
        # Lines dropped unparsed are added to the counters at the end (also when the caller
        # stops early), as a Counter costs more per line than the check itself.
        dropped = code_skipped = 0
        try:
            for number, line in enumerate(lines(path), 1):
                if number % LINES_PER_TURN == 0:
                    yield None
                if number == 1 and line.startswith(BOM):
                    line = line[len(BOM) :]
                if not line or line.isspace():
                    continue
                if tally.confirmed:
                    if wanted_bytes is not None and not belongs(line, wanted_bytes):
                        dropped += 1
                        continue
                    if needles is not None and not may_hold_code(line, needles):
                        code_skipped += 1
                        continue
                    if pattern is not None and passes_over(line, pattern, query.resource_type):
                        code_skipped += 1
                        continue
                    if precheck is not None and not precheck(line):
                        tally.present += 1
                        continue
                resource = self.take(tally, path, number, line, query)
                if resource is not None:
                    yield resource
        finally:
            tally.dropped += dropped
            tally.code_skipped += code_skipped
            self._count(query, tally)
        return _present(path, query, tally)

    def read_scanned(self, path: Path, query: Query, parts: Iterator[Scanned | None]) -> FileStream:
        """The file's resources from the lines workers scanned (`parts`, in order)."""
        tally = _Tally()
        wanted_bytes = prefilter(query)
        belongs = may_be_wanted_patient if query.resource_type == "Patient" else may_belong
        needles = code_needles(query.line_codes)
        pattern = line_regex(query.line_pattern) if query.patients is None else None
        offset = 0
        try:
            for scanned in parts:
                if scanned is None:
                    yield None
                    continue
                tally.dropped += scanned.dropped
                tally.code_skipped += scanned.code_skipped
                for index, (number, line, checked) in enumerate(scanned.lines, 1):
                    if index % LINES_PER_TURN == 0:
                        yield None
                    if not checked and tally.confirmed:
                        # An earlier part confirmed the type: checked as in one process.
                        if wanted_bytes is not None and not belongs(line, wanted_bytes):
                            tally.dropped += 1
                            continue
                        if needles is not None and not may_hold_code(line, needles):
                            tally.code_skipped += 1
                            continue
                        if pattern is not None and passes_over(line, pattern, query.resource_type):
                            tally.code_skipped += 1
                            continue
                    resource = self.take(tally, path, offset + number, line, query)
                    if resource is not None:
                        yield resource
                offset += scanned.lines_read
                if scanned.error is not None:
                    raise _read_error(path, *scanned.error)
        finally:
            self._count(query, tally)
        return _present(path, query, tally)

    def take(
        self, tally: _Tally, path: Path, number: int, line: bytes, query: Query
    ) -> Resource | None:
        """The line parsed, when it is a wanted resource; else None, counted or recorded."""
        resource_type = query.resource_type
        resource = parse_line(line)
        if isinstance(resource, str):
            tally.unreadable += 1
            tally.shown = tally.shown or shown(path)
            # A Patient line names other patients only (`link`): its own id may be the
            # corrupt part, so nobody's data can be ruled out.
            owner = None if resource_type == "Patient" else patient_named_by(line)
            item = UnreadableItem(tally.shown, number, resource, owner)
            record(self.unreadable, self._unreadable_seen, item)
            return None
        if resource.get("resourceType") != resource_type:
            self.skipped[f"{path.name}: resourceType is not {resource_type}"] += 1
            return None
        tally.present += 1
        tally.confirmed = True
        wanted = query.patients
        if is_foreign(resource):
            count_foreign(self.foreign, self._foreign_seen, resource)
        elif wanted is None or patient_id_of(resource) in wanted:
            return resource
        else:
            self.other_patients[resource_type] += 1
        return None

    def _count(self, query: Query, tally: _Tally) -> None:
        if tally.dropped:
            self.other_patients[query.resource_type] += tally.dropped
        if tally.code_skipped:
            self.code_skipped[query.resource_type] += tally.code_skipped


def _present(path: Path, query: Query, tally: _Tally) -> int:
    present = tally.present + tally.dropped + tally.code_skipped
    if not present:
        # A truncated copy or an export cut short: not a type with nothing to say. Nor is a
        # file with no readable line of the type: a wrong or wholly damaged file.
        what = f"{tally.unreadable} unreadable lines" if tally.unreadable else "empty"
        raise IncompleteInputError(
            f"{shown(path)}: {what}, no readable {query.resource_type} resources in the file"
        )
    return present


def lines(path: Path) -> Iterator[bytes]:
    """The file's lines, never all in memory; read errors become IncompleteInputError."""
    try:
        with open_stream(str(path)) as stream:
            yield from stream
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise _read_error(path, "gzip", "") from exc
    except OSError as exc:
        raise _read_error(path, "os", why(exc)) from exc


def _read_error(path: Path, kind: str, reason: str) -> IncompleteInputError:
    if kind == "gzip":
        return IncompleteInputError(f"{shown(path)}: not gzip, or corrupt or truncated gzip data")
    return IncompleteInputError(f"{shown(path)}: cannot read ({reason})")


def why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


#: Bulk Data file names (`Observation.ndjson`, `Observation.000.ndjson.gz`, `Patient_1.json`)
_TYPE_NAMED = re.compile(r"[A-Z][A-Za-z]{0,63}([._-]\d+)*\.(ndjson|json)(\.gz)?")


def shown(path: Path) -> str:
    """A file as messages show it. Files named after their resource type are shown whole; other
    names may name a patient (Synthea writes `Given_Family_<uuid>.json`), so such a file is
    shown by its folder and its place in name order (`ls | sed -n Np` finds it)."""
    if _TYPE_NAMED.fullmatch(path.name):
        return str(path)
    try:
        names = sorted(p.name for p in path.parent.iterdir())
        place = f"file {names.index(path.name) + 1} of {len(names)} in name order"
    except (OSError, ValueError):
        place = "a file"
    return f"{path.parent}/({place}; its name is not shown: it may name a patient)"
