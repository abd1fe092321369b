"""The Bulk Data phase of `sweep --bulk` (issue 14): the export on disk before the sweep reads it,
and the job cleaned up after the run has recorded its end.

The sweep reads the export's folder as any folder of Bulk files (adapter.sources.files): the
cohort is found in the exported Conditions, as a folder sweep finds it. Runs are incremental
(adapter.bulk.incremental) when the facts store beside the job holds a complete earlier export of
the same request: only what changed since is exported, the patients it touched are read again
through the search API, and the sweep reads the store's view of everyone. A full export runs
without a usable store, with `--full`, every `source.full_every_days`, when the request changed,
when the store cannot be read, and when the server refuses `_since`.

After a completed sweep (`finish_for_sweep`), the store takes in what the run used: a full
export's files rebuild it, an incremental run's transactionTime becomes the next `_since`. Not
before: an interrupted run asks again for the same changes. An export whose error files say data
may be missing leaves the store as it was.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson

from adapter.bulk.client import BulkKickOffError, check_export
from adapter.bulk.export import (
    BulkNotes,
    Export,
    Progress,
    export_request,
    finish_export,
    run_export,
)
from adapter.bulk.incremental import Plan, apply_changes, choose_mode
from adapter.bulk.jobs import JobFolder, job_key, section_of
from adapter.bulk.model import ExportRequest
from adapter.bulk.store import (
    StoreCorruptError,
    delete_store,
    open_store,
    request_hash,
    store_path,
)
from adapter.config import ServerConfig, SiteConfig
from adapter.connect import fhir_client, source_profile
from adapter.errors import IncompleteInputError, StateDirError
from adapter.fhir.capability import ServerCapabilities, read_capabilities
from adapter.fhir.client import FhirClient
from adapter.progress import Progress as Tracker
from adapter.progress import TerminalProgress
from adapter.report.files import write_private
from adapter.sources.base import Source
from adapter.sources.rest import RestSource
from adapter.state import prepare_state_dir
from adapter.trials import Trial

log = logging.getLogger(__name__)

#: kick-off statuses that refuse `_since` itself: the export is then made in full
_REFUSED_SINCE = frozenset({400, 422})


async def export_for_sweep(
    args: argparse.Namespace, trial: Trial, site: SiteConfig, state_dir: Path, tracker: Tracker
) -> Export:
    """The export `--bulk` asks for, downloaded (or taken up from an interrupted run), and for an
    incremental run the store brought up to date and its view written (`Export.source_dir`)."""
    level, group = args.bulk
    request = export_request(trial, level, group)
    profile = source_profile(args, site)
    config = site.source
    tracker.stage("export", None)

    def progress(text: str | None) -> None:
        # X-Progress is the server's text: shown on a terminal only, never in a log line.
        if isinstance(tracker, TerminalProgress):
            tracker.stage(f"export: {text}" if text else "export", None)

    async with fhir_client(args.source, config, env=os.environ, profile=profile) as client:
        # No _elements probe: it is a search of every patient, which an export needs not.
        caps = await read_capabilities(client, probe_elements=False)
        # The patients an incremental run re-reads, read as the REST sweep reads them; whole
        # resources, as an export holds them.
        reader = RestSource(
            client,
            batch_size=args.batch_size or config.batch_size,
            page_size=args.page_size or config.page_size,
            result_cap=config.result_cap,
            capabilities=caps,
            profile=profile,
            read=config.read,
        )
        export = await bulk_export(
            client,
            caps,
            request,
            trial=trial,
            state_dir=state_dir,
            config=config,
            forced=bool(args.full),
            reader=reader,
            profile_levels=profile.export,
            progress=progress,
        )
        if group is not None:
            await _add_group(reader, group, export.source_dir)
        return export


async def _add_group(reader: Source, group_id: str, folder: Path) -> None:
    """The Group beside the exported files, so that the sweep keeps only its current members.

    A Group export holds every `member.entity`, inactive and ended members too; the sweep then
    applies the rules of `--cohort group:ID` (adapter.cohorts) to the Group read here.
    """
    group = await reader.group(group_id)
    if group is None:
        raise IncompleteInputError(f"Group {group_id} was exported but cannot be read")
    write_private(folder / "Group.000.ndjson", orjson.dumps(group) + b"\n")


async def bulk_export(
    client: FhirClient,
    caps: ServerCapabilities,
    request: ExportRequest,
    *,
    trial: Trial,
    state_dir: Path,
    config: ServerConfig,
    forced: bool,
    reader: Source,
    profile_levels: tuple[str, ...] = (),
    progress: Progress | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Export:
    """A full or incremental export of `request` (its `since` is chosen here), ready to sweep.

    `reader` re-reads the changed patients of an incremental run (a RestSource on `client`).
    """
    check_export(caps, request, profile_levels=profile_levels)
    key = job_key(client.base.url, request, trial.id)
    prepare_state_dir(state_dir)
    JobFolder.open(state_dir, key)  # makes `bulk/` (0700), where the store lies
    path = store_path(state_dir, key)
    with open_store(path) as store:
        plan = choose_mode(
            store.meta(),
            request,
            forced=forced,
            full_every_days=config.full_every_days,
            now=now(),
        )

    async def export(since: str | None) -> Export:
        return await run_export(
            client,
            caps,
            replace(request, since=since),
            state_dir=state_dir,
            trial_id=trial.id,
            config=config,
            profile_levels=profile_levels,
            progress=progress,
            now=now,
        )

    if plan.mode == "incremental":
        log.info("Bulk export of what changed since the last export (an incremental run)")
        try:
            done = await export(plan.since)
            with open_store(path) as store:
                done.notes = await apply_changes(
                    client,
                    caps,
                    done,
                    store,
                    trial=trial,
                    reader=reader,
                    page_size=config.page_size,
                )
            return done
        except StoreCorruptError as exc:
            log.warning(
                "the Bulk facts store %s cannot be read (%s); exporting in full",
                path.name,
                exc,
                extra={"event": "bulk_store_reset"},
            )
            delete_store(path)
            plan = Plan("full", reason="the facts store could not be read")
        except BulkKickOffError as exc:
            if exc.status not in _REFUSED_SINCE:
                raise
            log.warning(
                "the server refused an export with _since (HTTP %d); exporting in full",
                exc.status,
                extra={"event": "bulk_since_refused", "status": exc.status},
            )
            plan = Plan("full", reason="the server refused _since")
    else:
        log.info("full Bulk export (%s)", plan.reason)
    done = await export(None)
    done.notes = BulkNotes(mode="full", store=path, reason=plan.reason)
    return done


async def finish_for_sweep(args: argparse.Namespace, site: SiteConfig, export: Export) -> None:
    """Keep what the completed sweep used in the facts store, then DELETE the job and remove
    its files (unless `--keep-export`): the run is recorded."""
    record_export(export)
    profile = source_profile(args, site)
    async with fhir_client(args.source, site.source, env=os.environ, profile=profile) as client:
        await finish_export(client, export, keep=args.keep_export)


def record_export(export: Export) -> None:
    """After a completed sweep: a full export's files rebuild the facts store; an incremental
    run's transactionTime becomes the next `_since` (see the module docstring)."""
    notes = export.notes
    if notes is None or notes.store is None:
        return
    if export.blocking:
        log.warning(
            "the export's error files say data may be missing: the facts store keeps the last "
            "complete export, and the next run asks again for what changed since",
            extra={"event": "bulk_store_kept"},
        )
        return
    try:
        with open_store(notes.store) as store:
            if notes.mode == "full":
                rebuilt = store.rebuild(
                    _output_files(export),
                    transaction_time=export.manifest.transaction_time,
                    full_at=export.state.kicked_off,
                    request=request_hash(export.state.request),
                )
                if not rebuilt.ready:
                    log.warning(
                        "%d lines of the export could not be kept in the facts store; the next "
                        "run exports in full again",
                        rebuilt.unreadable + rebuilt.unkeyed,
                        extra={"event": "bulk_store_incomplete"},
                    )
                log.info("the facts store holds the export: %d resources", rebuilt.rows)
            elif notes.unreadable:
                store.clear_since()
                log.warning(
                    "%d lines of the changes could not be read; the next run exports in full",
                    notes.unreadable,
                    extra={"event": "bulk_store_incomplete"},
                )
            else:
                store.set_since(export.manifest.transaction_time)
    except StoreCorruptError as exc:
        log.warning(
            "the Bulk facts store %s cannot be written (%s); it is deleted, and the next run "
            "exports in full",
            notes.store.name,
            exc,
            extra={"event": "bulk_store_reset"},
        )
        delete_store(notes.store)
    except StateDirError as exc:
        # The sweep is done and recorded; the store is a cache whose every write is whole or
        # not at all: the next run asks again for what changed since the last export it holds.
        log.warning(
            "the Bulk facts store could not take in this export (%s); the next run asks again "
            "for what changed since the last export it holds",
            exc,
            extra={"event": "bulk_store_not_updated"},
        )


def _output_files(export: Export) -> list[tuple[str, Path]]:
    """The export's output files (type, path), in the order the folder source reads them."""
    files = [
        (record.type, export.folder.path / record.path)
        for record in export.state.downloaded
        if section_of(record) == "output"
    ]
    return sorted(files, key=lambda item: item[1].name)
