"""The folder source: resources from the files at the top of one folder.

Two kinds of file are read, in name order; anything else (README, subfolders, hidden files) is
ignored:

- NDJSON in Bulk Data naming, plain or gzipped: `Patient.ndjson`, `Observation.000.ndjson`,
  `Observation.1.ndjson.gz`. The resource type is the name's part before the first dot; a line of
  another type is skipped and counted in `skipped`. Files are streamed line by line.
- JSON (`*.json`): a Bundle of any type, or a single resource. References to an entry's `fullUrl`
  (`urn:uuid:...` or absolute) are made relative (`Patient/123`), as a server would after a
  transaction. Each file is read whole: in practice they hold one patient each.

`fetch` filters by `Query.patients` but never by `Query.codes`: the sweep re-checks every code on
the client, and a source may return more than the codes match. Resources whose subject is another
server's patient (an absolute reference that no Bundle entry resolves) are left out and counted.

Incomplete input fails the fetch with `IncompleteInputError` rather than answering with fewer
resources, since a patient whose data is missing can look eligible (issue 10): a folder without
FHIR files; a type fetched that no file holds (no `<Type>*.ndjson` file, and none in the JSON
files); an NDJSON file of the type that holds none (empty, or not one readable line); a file that
cannot be read, corrupt or truncated gzip.

One unreadable line is not a missing file (issue 11): a line that is not JSON, not valid UTF-8 or
not an object, and a JSON file that does not parse, is skipped and recorded once in `unreadable`
(file and line, never the content), with the Patient its bytes surely name
(`adapter.sources.unreadable`); the sweep decides what that means for the run. A line the
patient pre-check drops unparsed (`adapter.sources.prechecks`: it names other patients only) is
not recorded, as it cannot be a wanted patient's; every line is parsed when the query names no
patients, as the cohort's Condition search does. Nor is a line of a wanted patient that holds
none of `Query.line_codes` (counted in `code_skipped`).

Speed (issue 15): a query naming patients over enough NDJSON bytes is scanned by worker processes
(`adapter.sources.workers`, `adapter.sources.scan`), plain files in byte ranges; they drop the lines
the pre-checks rule out and hand back the rest, which are parsed here in file and line order by the
same code as in one process (`adapter.sources.ndjson`), so resources, counters and unreadable items
do not depend on how the files were read.

Cohorts without a Condition search (issue 13, `adapter.cohorts`): `group` reads the Group with
the id from the `Group*.ndjson` files and the JSON files (Bundle references made relative as for
any resource); several different Groups with the id fail with `IncompleteInputError`, as does an
absent one when an unreadable Group line may be it. `patients_by_identifier` reads the Patient
files as the Patient fetch does, and skips unparsed the NDJSON lines whose bytes cannot hold a
wanted identifier value.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from adapter.errors import IncompleteInputError, SourcePathError
from adapter.sources.base import (
    Query,
    ReadNotes,
    Resource,
    UnreadableItem,
    count_foreign,
    is_foreign,
    patient_id_of,
)
from adapter.sources.ndjson import LINES_PER_TURN, NdjsonReading, lines, shown, why
from adapter.sources.prechecks import (
    Precheck,
    carries,
    code_needles,
    identifier_precheck,
    prefilter,
)
from adapter.sources.scan import BOM, Plan, split
from adapter.sources.unreadable import parse_line, record, unreadable_reason
from adapter.sources.workers import Prefetch, ScanPool, default_workers

#: `FolderSource(pool_bytes=...)`: below this many bytes of a type's NDJSON files, a query is read
#: in one process (starting workers costs about a fifth of a second)
POOL_BYTES = 48 << 20
#: `FolderSource(part_bytes=...)`: plain files larger than this are scanned in parts of about this
#: size, so that one big `Observation.ndjson` keeps every worker busy
PART_BYTES = 64 << 20

# Resources, and None where the event loop gets a turn.
_Stream = Generator[Resource | None, None, None]


class _File(NamedTuple):
    path: Path
    #: the resource type an NDJSON file's name gives; None for a JSON file
    ndjson_type: str | None


class FolderSource(NdjsonReading):
    """NDJSON and JSON files at the top of one folder (see the module docstring).

    `yielded` counts resources handed out per type; `skipped` counts lines and Bundle entries left
    out, per file and reason; `other_patients` counts, per type, the NDJSON lines left out because
    they belong to patients the query did not ask for; `foreign`, per type, the resources left out
    because their subject is another server's patient (once each); `unreadable`, the lines and
    JSON files skipped as unparseable (once each); `code_skipped`, per type, the lines of wanted
    patients left out unparsed as holding none of `Query.line_codes`. All add up over every
    `fetch`.

    `workers` (None: one per core, up to 4; 1: never) processes scan the NDJSON files of a query
    that names patients when they hold at least `pool_bytes`, plain files in parts of
    `part_bytes` (`adapter.sources.workers`); `aclose` ends them.
    """

    def __init__(
        self,
        path: Path,
        *,
        exported: frozenset[str] = frozenset(),
        workers: int | None = None,
        pool_bytes: int = POOL_BYTES,
        part_bytes: int = PART_BYTES,
    ) -> None:
        self.path = path
        #: the types a Bulk export of this folder asked for (issue 14): a server writes no file
        #: for a type it had nothing of, so a missing file of one of them is none, not a gap
        self.exported = exported
        self.yielded: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.other_patients: Counter[str] = Counter()
        self.code_skipped: Counter[str] = Counter()
        self.foreign: Counter[str] = Counter()
        self._foreign_seen: set[tuple[str, str]] = set()
        self.unreadable: list[UnreadableItem] = []
        self._unreadable_seen: set[tuple[str, int]] = set()
        self._files = _list_files(path)
        self._running: set[_Stream] = set()
        self.reads = ReadNotes(mode="files")
        self._pool = ScanPool(default_workers(workers))
        self._pool_bytes = pool_bytes
        self._part_bytes = part_bytes

    async def fetch(self, query: Query) -> AsyncIterator[Resource]:
        """Every resource of `query.resource_type` for `query.patients`, files in name order."""
        stream = self._stream(query)
        self._running.add(stream)
        try:
            for resource in stream:
                if resource is None:
                    await asyncio.sleep(0)
                else:
                    self.yielded[query.resource_type] += 1
                    yield resource
        finally:
            # Closes the file now, also when the caller stops early.
            stream.close()
            self._running.discard(stream)

    async def group(self, group_id: str) -> Resource | None:
        """The Group `group_id`, None when the folder holds none (see the module docstring)."""
        if not self._files:
            raise IncompleteInputError(
                f"{self.path}: no FHIR files in the folder (*.ndjson, *.ndjson.gz, *.json)"
            )
        found: list[Resource] = []
        unreadable = 0
        for file in self._files:
            if file.ndjson_type is None:
                resources, _ = self._read_json(file.path, Query("Group"))
                found += [r for r in resources if r.get("id") == group_id]
                await asyncio.sleep(0)
            elif file.ndjson_type == "Group":
                for number, line in enumerate(lines(file.path), 1):
                    if number % LINES_PER_TURN == 0:
                        await asyncio.sleep(0)
                    if number == 1 and line.startswith(BOM):
                        line = line[len(BOM) :]
                    if line.isspace() or not line:
                        continue
                    resource = parse_line(line)
                    if isinstance(resource, str):
                        # It may be this Group, or hold a member: nobody's data is sure whole.
                        unreadable += 1
                        item = UnreadableItem(shown(file.path), number, resource, None)
                        record(self.unreadable, self._unreadable_seen, item)
                    elif resource.get("resourceType") != "Group":
                        self.skipped[f"{file.path.name}: resourceType is not Group"] += 1
                    elif resource.get("id") == group_id:
                        found.append(resource)
        copies = {orjson.dumps(g, option=orjson.OPT_SORT_KEYS) for g in found}
        if len(copies) > 1:
            # Which one is the registry is not ours to guess (an old export beside a new one?).
            raise IncompleteInputError(
                f"{self.path}: {len(copies)} different Groups with the id {group_id}; "
                "keep one in the folder"
            )
        if not found and unreadable:
            raise IncompleteInputError(
                f"{self.path}: no readable Group {group_id}, and {unreadable} unreadable lines "
                "in the Group files may hold it"
            )
        return found[0] if found else None

    async def patients_by_identifier(
        self, tokens: Sequence[tuple[str, str]]
    ) -> AsyncIterator[Resource]:
        """The Patients carrying any identifier `(system, value)`, each once (`""`: no system).

        Read as the Patient fetch reads them (a folder without Patients fails the same way).
        """
        pairs = frozenset(tokens)
        if not pairs:
            return
        stream = self._stream(Query("Patient"), precheck=identifier_precheck(pairs))
        self._running.add(stream)
        seen: set[str] = set()
        try:
            for resource in stream:
                if resource is None:
                    await asyncio.sleep(0)
                    continue
                rid = resource.get("id")
                if isinstance(rid, str) and rid not in seen and carries(resource, pairs):
                    seen.add(rid)
                    yield resource
        finally:
            stream.close()
            self._running.discard(stream)

    async def aclose(self) -> None:
        """End unfinished fetches, closing their files, and the worker processes."""
        for stream in list(self._running):
            stream.close()
        self._running.clear()
        self._pool.shutdown()

    def _stream(self, query: Query, precheck: Precheck | None = None) -> _Stream:
        kind = query.resource_type
        if not self._files and kind in self.exported:
            return
        if not self._files:
            raise IncompleteInputError(
                f"{self.path}: no FHIR files in the folder (*.ndjson, *.ndjson.gz, *.json)"
            )
        # Resources of the type the files hold, whoever's they are: none means the type is absent.
        present = 0
        prefetch = None if precheck is not None else self._prefetch(query)
        try:
            for file in self._files:
                if file.ndjson_type is None:
                    resources, of_type = self._read_json(file.path, query)
                    present += of_type
                    yield from resources
                    yield None
                elif file.ndjson_type != kind:
                    continue
                elif prefetch is None:
                    present += yield from self.read_ndjson(file.path, query, precheck)
                else:
                    parts = prefetch.parts_of(str(file.path))
                    present += yield from self.read_scanned(file.path, query, parts)
        finally:
            if prefetch is not None:
                prefetch.cancel()
        if not present and kind not in self.exported:
            where = f"no {kind}.ndjson file"
            if any(f.ndjson_type is None for f in self._files):
                where += " and none in the JSON files"
            raise IncompleteInputError(f"{self.path}: no {kind} resources ({where})")

    def _prefetch(self, query: Query) -> Prefetch | None:
        """The query's NDJSON files in parts for the workers, when they pay; else None."""
        if self._pool.workers < 2 or (query.patients is None and query.line_pattern is None):
            return None
        paths = [str(f.path) for f in self._files if f.ndjson_type == query.resource_type]
        try:
            sizes = [os.path.getsize(path) for path in paths]
            if not paths or sum(sizes) < self._pool_bytes:
                return None
            parts = [
                part
                for path, size in zip(paths, sizes, strict=True)
                for part in split(path, size, self._part_bytes)
            ]
        except OSError:
            return None  # read in one process, which says what is wrong
        pattern = query.line_pattern if query.patients is None else None
        plan = Plan(query.resource_type, prefilter(query), code_needles(query.line_codes), pattern)
        return Prefetch(
            self._pool, plan, parts, self._pool.workers + 1, lambda path: shown(Path(path))
        )

    def _read_json(self, path: Path, query: Query) -> tuple[list[Resource], int]:
        """The file's resources for the query, and how many of the type it holds."""
        document = _parse_document(path)
        if isinstance(document, UnreadableItem):
            record(self.unreadable, self._unreadable_seen, document)
            return [], 0
        if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
            self.skipped[f"{path.name}: not a FHIR resource"] += 1
            return [], 0
        if document["resourceType"] == "Bundle":
            resources = self._bundle_resources(document, path, query.resource_type)
        elif document["resourceType"] == query.resource_type:
            resources = [document]
        else:
            return [], 0
        local = []
        for resource in resources:
            if is_foreign(resource):
                count_foreign(self.foreign, self._foreign_seen, resource)
            else:
                local.append(resource)
        if query.patients is not None:
            local = [r for r in local if patient_id_of(r) in query.patients]
        return local, len(resources)

    def _bundle_resources(self, bundle: Resource, path: Path, resource_type: str) -> list[Resource]:
        entries = bundle.get("entry")
        if not isinstance(entries, list):
            return []
        targets: dict[str, str] = {}
        found: list[Resource] = []
        for entry in entries:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                # A transaction's DELETE has no resource, for one.
                self.skipped[f"{path.name}: Bundle entry without resource"] += 1
                continue
            kind = resource.get("resourceType")
            full_url = entry.get("fullUrl")
            if isinstance(kind, str) and isinstance(full_url, str) and full_url:
                rid = resource.get("id")
                if not isinstance(rid, str) or not rid:
                    # Transaction entries to create often carry no id: the urn:uuid stands in.
                    rid = _id_from_full_url(full_url)
                    if rid:
                        resource["id"] = rid
                if rid:
                    targets[full_url] = f"{kind}/{rid}"
            if kind == resource_type:
                found.append(resource)
        if targets:
            for resource in found:
                _rewrite_references(resource, targets)
        return found


def _list_files(folder: Path) -> tuple[_File, ...]:
    try:
        if not folder.is_dir():
            reason = "not a folder" if folder.exists() else "no such folder"
            raise SourcePathError(f"{folder}: {reason}")
        with os.scandir(folder) as scan:
            names = sorted(entry.name for entry in scan if entry.is_file())
    except OSError as exc:
        raise SourcePathError(f"{folder}: cannot read the folder ({why(exc)})") from exc
    files: list[_File] = []
    for name in names:
        if name.startswith("."):
            # Hidden files, such as the `._Patient.ndjson` resource forks macOS leaves on copies.
            continue
        if name.endswith((".ndjson", ".ndjson.gz")):
            files.append(_File(folder / name, name.split(".", 1)[0]))
        elif name.endswith(".json"):
            files.append(_File(folder / name, None))
    return tuple(files)


def _parse_document(path: Path) -> Any:
    """The file's JSON value, or an UnreadableItem naming nobody: a Bundle holds many patients'
    resources, and the bytes of a broken one say nothing sure about any of them."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IncompleteInputError(f"{shown(path)}: cannot read ({why(exc)})") from exc
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # The exception is dropped: its `doc` holds the whole file, patient data included.
        return UnreadableItem(shown(path), exc.lineno, unreadable_reason(exc), None)


def _id_from_full_url(full_url: str) -> str:
    """`urn:uuid:X` -> X; `http://host/fhir/Patient/1` (or `.../1/_history/2`) -> 1."""
    if full_url.startswith("urn:"):
        return full_url.rsplit(":", 1)[-1]
    return full_url.split("/_history/", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _rewrite_references(node: Any, targets: Mapping[str, str]) -> None:
    """Replace, in place, every `reference` equal to a key of `targets` by its value."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                target = targets.get(value)
                if target is not None:
                    node[key] = target
            elif isinstance(value, dict | list):
                _rewrite_references(value, targets)
    elif isinstance(node, list):
        for item in node:
            _rewrite_references(item, targets)
