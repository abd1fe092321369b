"""Incremental Bulk runs (issue 14): export what changed, re-read the patients it touched, and
sweep everyone from the facts store.

A verdict can change with no new data (labs age out of their windows, patients turn 18 or 76),
so every run evaluates every cohort patient; only what changed is fetched:

1. `choose_mode`: a full export without a usable store, with `--full`, when the last full one is
   `full_every_days` old, or when the request changed (new trial codes); else `_since` the
   stored transactionTime of the last export whose sweep completed.
2. `apply_changes`, after the export of the changes is on disk: the changed patients are those of
   the exported resources (and of their stored copies, should a resource have moved), of the
   resources deleted since (the manifest's `deleted` Bundles, else `[type]/_history?_since` where
   the CapabilityStatement offers `history-type`; else deletions stay unseen until the next full
   export, said once), and, for a Group, its new members. Each is read whole again through the
   search API, as the REST sweep reads (Patient, Condition, Procedure, the trial's
   Observations), and replaces all their rows in the store; the deleted resources go, and so do
   the patients no longer in the Group. One transaction: a killed run leaves the store as it was.
3. `write_view`: the store's resources as Bulk NDJSON (`view/<Type>.ndjson`, 0600) in the job
   folder, which the sweep then reads (`ViewedJobFolder.source_dir`) as it reads any export.

The store's `_since` moves on only after the sweep completed (adapter.commands.export_phase), so
an interrupted run asks again for the same changes; re-reading a patient twice changes nothing.
A line of the changes that cannot be read and names no patient for sure is carried into the view
as it is: the sweep then holds every write back, as for a full export, and the next run is full.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from adapter.bulk.export import BulkNotes, Export
from adapter.bulk.jobs import JobFolder, section_of
from adapter.bulk.model import ExportRequest, JobState
from adapter.bulk.store import FactStore, Key, StoreMeta, ndjson_lines, request_hash
from adapter.errors import (
    HttpStatusError,
    InvalidResponseError,
    StateDirError,
)
from adapter.fhir.capability import ServerCapabilities
from adapter.fhir.client import FhirClient, JsonObject
from adapter.fhir.paging import next_target
from adapter.sources.base import Query, Resource, Source, patient_id_of
from adapter.sources.searches import is_fhir_id
from adapter.sources.unreadable import parse_line, patient_named_by
from adapter.trials import Trial

log = logging.getLogger(__name__)

#: the job folder's subfolder the sweep of an incremental run reads
VIEW: Final = "view"
#: changed resources looked up in the store at a time (their stored patient)
LOOKUP_BATCH: Final = 500

Mode = Literal["full", "incremental"]

_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")


@dataclass(frozen=True, slots=True)
class Plan:
    """Full or incremental, `since` what (None for full), and why a full one."""

    mode: Mode
    since: str | None = None
    reason: str = ""


def choose_mode(
    meta: StoreMeta,
    request: ExportRequest,
    *,
    forced: bool,
    full_every_days: int,
    now: datetime,
) -> Plan:
    """Whether this run exports in full or what changed since the store's transactionTime.

    The age of the last full export counts in calendar days (UTC), so a nightly job is full
    every `full_every_days` nights whatever minute it starts at. A last full export dated in the
    future is a clock not to trust: full.
    """
    if forced:
        return Plan("full", reason="--full")
    if meta.transaction_time is None:
        return Plan("full", reason="no earlier export to build on")
    if meta.request_hash != request_hash(request):
        return Plan("full", reason="the export request changed")
    try:
        last = datetime.fromisoformat(meta.last_full or "")
        age = (now.astimezone(UTC).date() - last.astimezone(UTC).date()).days
    except (TypeError, ValueError):
        return Plan("full", reason="no date of the last full export")
    if age < 0 or age >= full_every_days:
        return Plan("full", reason=f"the last full export is {age} days old ({full_every_days=})")
    return Plan("incremental", since=meta.transaction_time)


@dataclass(frozen=True, slots=True)
class ViewedJobFolder(JobFolder):
    """A job folder whose sweep reads the facts store's view (`view/`), not the exported changes
    at its top; it is kept, saved and cleared as the job folder it is."""

    @property
    def source_dir(self) -> Path:
        return self.path / VIEW


@dataclass
class Delta:
    """What the exported changes say, patient data kept only as far as needed.

    `patients`: local Patient ids (FHIR ids) to read whole again; `loose`: resources with no such
    patient (none, another server's, an id no search may carry), stored as they came;
    `unreadable`: per type, lines that name no patient for sure; `count`: resources read.
    """

    patients: set[str] = field(default_factory=set)
    loose: list[tuple[Resource, bytes]] = field(default_factory=list)
    unreadable: dict[str, list[bytes]] = field(default_factory=dict)
    count: int = 0


def read_delta(store: FactStore, folder: JobFolder, state: JobState) -> Delta:
    """The changed patients of the export's output files, streamed (see `Delta`).

    A resource's stored copy may name another patient (a resource moved): both are changed.
    An unreadable line that surely names its patient (`patient_named_by`) changes that patient,
    whose re-read replaces whatever the line held.
    """
    delta = Delta()
    pending: list[Key] = []

    def look_up() -> None:
        for patient in store.patients_of(pending).values():
            if is_fhir_id(patient):
                delta.patients.add(patient)
        pending.clear()

    for record in state.downloaded:
        if section_of(record) != "output":
            continue
        for line in ndjson_lines(folder.path / record.path):
            resource = parse_line(line)
            if isinstance(resource, str):
                owner = None if record.type == "Patient" else patient_named_by(line)
                if owner is not None:
                    delta.patients.add(owner)
                else:
                    delta.unreadable.setdefault(record.type, []).append(line)
                continue
            if resource.get("resourceType") != record.type:
                continue  # FolderSource would skip it too
            delta.count += 1
            patient = patient_id_of(resource)
            if patient is not None and is_fhir_id(patient):
                delta.patients.add(patient)
            else:
                delta.loose.append((resource, line))
            rid = resource.get("id")
            if isinstance(rid, str) and rid:
                pending.append((record.type, rid))
                if len(pending) >= LOOKUP_BATCH:
                    look_up()
    look_up()
    return delta


def deleted_in_files(folder: JobFolder, state: JobState) -> set[Key]:
    """The resources the manifest's `deleted` files name: their Bundles' DELETE entries (IG v2,
    "deleted": `request.method` DELETE, `request.url` `Type/id`)."""
    found: set[Key] = set()
    for record in state.downloaded:
        if section_of(record) != "deleted":
            continue
        for line in ndjson_lines(folder.path / record.path):
            bundle = parse_line(line)
            if isinstance(bundle, str) or bundle.get("resourceType") != "Bundle":
                raise InvalidResponseError(
                    f"a deleted-resources file of the export ({record.path}) holds a line that "
                    "is not a Bundle"
                )
            found.update(_deletes(bundle))
    return found


async def deleted_in_history(
    client: FhirClient, kind: str, since: str, *, page_size: int
) -> set[Key]:
    """The resources of `kind` deleted since `since`: the DELETE entries of `[kind]/_history`.

    Paged as searches are (adapter.fhir.paging): next links only under the base, never one read
    twice, within the client's search limits. A history entry of a deletion has no resource,
    which is why this is not `iter_pages`.
    """
    url = client.url(f"{kind}/_history", [("_since", since), ("_count", str(page_size))])
    limits = client.search_limits
    started = client.clock()
    read = {url}
    found: set[Key] = set()
    page = await client.get_json(url)
    while True:
        if page.get("resourceType") != "Bundle" or page.get("type") not in (None, "history"):
            raise InvalidResponseError("the _history answer is not a history Bundle", url=url)
        found.update(_deletes(page))
        target = next_target(client, page, url, read, limits, started, "the history")
        if target is None:
            return found
        read.add(target)
        url = target
        page = await client.get_json(target)


def _deletes(bundle: JsonObject) -> Iterator[Key]:
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise InvalidResponseError("Bundle.entry is not a list")
    for entry in entries:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or request.get("method") != "DELETE":
            continue
        target = request.get("url")
        key = _key_of(target) if isinstance(target, str) else None
        if key is not None:
            yield key


def _key_of(url: str) -> Key | None:
    """(type, id) of `Type/id`, `Type/id/_history/n`, or an absolute URL ending so; None for
    anything else. An absolute URL is read by its last segments whatever its base: a deletion
    only ever removes a stored copy and re-reads its patient, which a wrong guess cannot harm."""
    parts = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or (len(parts) > 2 and "://" not in url):
        return None
    kind, rid = parts[-2], parts[-1]
    if not _TYPE.fullmatch(kind) or not is_fhir_id(rid):
        return None
    return kind, rid


def group_members(group: Resource | None) -> set[str] | None:
    """The Patient ids a Group lists as members; None when some member is not a local Patient
    reference (a nested Group, another server's patient) or there is no Group."""
    if group is None:
        return None
    members: set[str] = set()
    entries = group.get("member", [])
    for entry in entries if isinstance(entries, list) else ():
        entity = entry.get("entity") if isinstance(entry, dict) else None
        reference = entity.get("reference") if isinstance(entity, dict) else None
        if not isinstance(reference, str):
            return None
        kind, _, rid = reference.partition("/")
        if kind != "Patient" or not is_fhir_id(rid):
            return None
        members.add(rid)
    return members


def reread_queries(trial: Trial, types: Sequence[str], patients: frozenset[str]) -> list[Query]:
    """What the REST sweep asks of these patients (adapter.sweep.run_sweep), per exported type."""
    queries: list[Query] = []
    for kind in types:
        if kind == "Observation":
            queries.append(
                Query(
                    "Observation",
                    codes=trial.observation_codes(),
                    patients=patients,
                    categories=trial.observation_categories(),
                    uncategorised=trial.uncategorised_analytes(),
                )
            )
        else:
            queries.append(Query(kind, patients=patients))
    return queries


async def apply_changes(
    client: FhirClient,
    caps: ServerCapabilities,
    export: Export,
    store: FactStore,
    *,
    trial: Trial,
    reader: Source,
    page_size: int,
) -> BulkNotes:
    """Bring the store up to date with the exported changes and write its view (module steps
    2 and 3); `export.folder` becomes the viewed folder. The notes for results.json."""
    request = export.state.request
    since = request.since
    if since is None:
        raise ValueError("an incremental run needs the _since of its export")
    notes = BulkNotes(mode="incremental", store=store.path)
    delta = read_delta(store, export.folder, export.state)
    deleted = deleted_in_files(export.folder, export.state)
    if export.manifest.deleted:
        notes.deletions = "manifest"
    else:
        unseen: list[str] = []
        for kind in request.types:
            entry = caps.resource(kind)
            if entry is None or not entry.supports("history-type"):
                unseen.append(kind)
                continue
            try:
                deleted |= await deleted_in_history(client, kind, since, page_size=page_size)
            except HttpStatusError as exc:
                if exc.temporary:
                    raise
                # Declared but refused (a 4xx; a token whose scopes leave history out, say):
                # as if not offered, said with the others.
                log.info("%s history refused (HTTP %d)", kind, exc.status)
                unseen.append(kind)
        notes.unseen_types = unseen
        notes.deletions = "unseen" if len(unseen) == len(request.types) else "history"
        if unseen:
            log.warning(
                "the server lists no deleted resources for %s (no `deleted` files in the "
                "manifest, no type history offered or allowed): deletions stay unseen until the "
                "next full export",
                ", ".join(unseen),
                extra={"event": "bulk_deletions_unseen", "types": unseen},
            )
    changed = set(delta.patients)
    changed.update(p for p in store.patients_of(deleted).values() if is_fhir_id(p))
    left: set[str] = set()
    if request.level == "group" and request.group_id is not None:
        members = group_members(await reader.group(request.group_id))
        if members is None:
            log.warning(
                "the Group cannot be read as a list of local Patients: patients who left it "
                "stay in the facts store until the next full export"
            )
        else:
            stored = store.patients()
            left = stored - members
            changed |= members - stored
            changed -= left
    fetched: Counter[str] = Counter()
    with store.update() as update:
        update.delete_keys(deleted)
        update.delete_patients(changed | left)
        for resource, line in delta.loose:
            update.put(resource, line)
        if changed:
            for query in reread_queries(trial, request.types, frozenset(changed)):
                async for resource in reader.fetch(query):
                    if update.put(resource):
                        fetched[query.resource_type] += 1
    notes.changed_patients = len(changed)
    notes.deleted = len(deleted)
    notes.left_group = len(left)
    notes.resources_fetched = {kind: fetched.get(kind, 0) for kind in request.types}
    notes.unreadable = sum(len(lines) for lines in delta.unreadable.values())
    viewed = ViewedJobFolder(export.folder.path, export.folder.key)
    notes.view = write_view(store, viewed.source_dir, request.types, delta.unreadable)
    export.folder = viewed
    log.info(
        "incremental Bulk run since the last export: %d resources changed, %d deleted; %d "
        "patients read again (%d resources)",
        delta.count,
        len(deleted),
        len(changed),
        sum(fetched.values()),
        extra={
            "event": "bulk_incremental",
            "changed": delta.count,
            "deleted": len(deleted),
            "patients": len(changed),
            "fetched": sum(fetched.values()),
        },
    )
    return notes


def write_view(
    store: FactStore,
    folder: Path,
    types: Iterable[str],
    carried: dict[str, list[bytes]] | None = None,
) -> dict[str, int]:
    """The store's resources of `types` as `<folder>/<Type>.ndjson` (0600, in a fresh 0700
    folder), streamed; `carried` lines are appended to their type's file as they are. A type
    with nothing gets no file: the folder source takes an exported type's missing file for none.
    Lines written per type."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)
    try:
        folder.mkdir(mode=0o700)
    except OSError as exc:
        raise StateDirError(f"Bulk view {folder}: {exc.strerror or exc}") from None
    written: dict[str, int] = {}
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for kind in dict.fromkeys(types):
        if not _TYPE.fullmatch(kind):
            raise ValueError("not a FHIR resource type")
        lines = _chain(store.rows(kind), (carried or {}).get(kind, ()))
        first = next(lines, None)
        written[kind] = 0
        if first is None:
            continue
        path = folder / f"{kind}.ndjson"
        try:
            with open(os.open(path, flags, 0o600), "wb", buffering=1 << 20) as stream:
                for line in _chain((first,), lines):
                    stream.write(line + b"\n")
                    written[kind] += 1
        except OSError as exc:
            raise StateDirError(f"Bulk view {path}: {exc.strerror or exc}") from None
    return written


def _chain(first: Iterable[bytes], second: Iterable[bytes]) -> Iterator[bytes]:
    yield from first
    yield from second
