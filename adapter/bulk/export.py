"""A Bulk Data export for one sweep, from kick-off to files on disk, resumed where a run stopped.

`run_export` checks the CapabilityStatement offers `$export` at the level asked, then takes up the
job the state folder holds for this (server, trial, level) when there is one and it is recent
(`bulk_resume_hours`): it polls a job already started, and downloads only the files not yet on
disk whole. Otherwise it kicks off a new export of the types the trial reads, with a
`_typeFilter` on the Observation codes it needs. A job the server no longer knows (404/410 while
polling) is started anew, once. The files land in the job folder in Bulk naming, read there by
the folder source; `finish_export` DELETEs the job on the server and removes the files (unless
they are to be kept) once the sweep that used them is done.

Error files (OperationOutcome NDJSON) are read as coded issues only (never their free text);
an error or fatal issue means the export may lack some patient's data, so the sweep holds its
writes back (exit 3), as it does for an unreadable line.

Incremental runs (`_since`, adapter.bulk.incremental) use the same job: `export_request` takes
the `since`, and `Export.notes` says how the run used the export and the facts store (full or
incremental, what changed), for results.json; `Export.source_dir` is the folder the sweep reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlencode

from adapter.bulk.client import BulkJobGoneError, check_export, delete_job, kick_off, poll
from adapter.bulk.download import download_all
from adapter.bulk.jobs import JobFolder, job_key, section_of, stale
from adapter.bulk.manifest import is_blocking, read_error_file
from adapter.bulk.model import ExportRequest, JobState, Level, Manifest
from adapter.config import ServerConfig
from adapter.fhir.bodies import MIB
from adapter.fhir.capability import ServerCapabilities
from adapter.fhir.client import FhirClient
from adapter.sources.searches import code_token
from adapter.trials import Trial

log = logging.getLogger(__name__)

Progress = Callable[[str | None], None]


@dataclass
class BulkNotes:
    """How a `sweep --bulk` used its export and the facts store (issue 14), for results.json.

    `mode` full or incremental; `reason` why a run is full; `store` the facts store's path (None:
    the run keeps none). Incremental only: `changed_patients` re-read through the search API,
    `deleted` resources seen to have gone, `deletions` how they were seen (`manifest`,
    `history`, `unseen`; `unseen_types` the types no way covered), `resources_fetched` per type,
    `left_group` patients no longer in the exported Group, `view` resources per type the sweep
    read, `unreadable` lines of the changes carried into it. No patient data.
    """

    mode: Literal["full", "incremental"]
    store: Path | None = None
    reason: str = ""
    changed_patients: int = 0
    deleted: int = 0
    deletions: str | None = None
    unseen_types: list[str] = field(default_factory=list)
    resources_fetched: dict[str, int] = field(default_factory=dict)
    left_group: int = 0
    view: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0

    def summary(self) -> dict[str, object]:
        if self.mode == "full":
            return {"mode": "full", "full_because": self.reason}
        return {
            "mode": "incremental",
            "changed_patients": self.changed_patients,
            "deleted": self.deleted,
            "deletions": self.deletions,
            "deletions_unseen_types": self.unseen_types,
            "resources_fetched": self.resources_fetched,
            "left_group": self.left_group,
            "view": self.view,
            "unreadable_changes": self.unreadable,
        }


@dataclass
class Export:
    """An export on disk, ready to sweep: the folder, the manifest, what its error files say."""

    folder: JobFolder
    state: JobState
    manifest: Manifest
    #: coded issues of the error files (`severity/code (system|code)`), in file order
    issues: list[str] = field(default_factory=list)
    resumed: bool = False
    #: how the sweep used the export (full or incremental); None outside `sweep --bulk`
    notes: BulkNotes | None = None

    @property
    def blocking(self) -> bool:
        """Whether an error file says some data may be missing (writes are then held back)."""
        return is_blocking(self.issues)

    @property
    def source_dir(self) -> Path:
        """The folder the sweep reads: the export's files, or an incremental run's view of the
        facts store (`folder.source_dir` says the same)."""
        return self.folder.source_dir

    def summary(self) -> dict[str, object]:
        """For results.json: no URL (signed file URLs carry secrets), no patient data."""
        files: dict[str, int] = {}
        for f in self.manifest.output:
            files[f.type] = files.get(f.type, 0) + 1
        request = self.state.request
        summary: dict[str, object] = {
            "level": request.level if request.group_id is None else f"group:{request.group_id}",
            "types": list(request.types),
            "type_filters": len(request.type_filters),
            "since": request.since,
            "transaction_time": self.manifest.transaction_time,
            "files": files,
            "error_files": len(self.manifest.error),
            "issues": self.issues,
            "resumed": self.resumed,
        }
        if self.notes is not None:
            summary.update(self.notes.summary())
        return summary


def export_request(
    trial: Trial, level: Level, group_id: str | None, *, since: str | None = None
) -> ExportRequest:
    """What a sweep of `trial` asks for: the types it reads, Observations only of its codes;
    `since` (an instant) for an incremental run."""
    types = ["Patient", "Condition", *sorted(trial.reads() - {"Patient", "Condition"})]
    filters: list[str] = []
    if "Observation" in types:
        codes = sorted(code_token(c) for c in trial.observation_codes())
        if codes:
            # The filter is a search query of its own, its value encoded as in a URL: a comma
            # left bare is taken by some servers for a separator of _typeFilter values.
            filters.append("Observation?" + urlencode([("code", ",".join(codes))]))
    return ExportRequest(level, tuple(types), group_id, tuple(filters), since)


async def run_export(
    client: FhirClient,
    caps: ServerCapabilities,
    request: ExportRequest,
    *,
    state_dir: Path,
    trial_id: str,
    config: ServerConfig,
    profile_levels: tuple[str, ...] = (),
    progress: Progress | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    clock: Callable[[], float] = time.monotonic,
) -> Export:
    """The export's files on disk: resumed from the state folder where it can be (see module)."""
    check_export(caps, request, profile_levels=profile_levels)
    folder = JobFolder.open(state_dir, job_key(client.base.url, request, trial_id))
    state = folder.load()
    resumed = state is not None
    if state is not None and (
        state.request != request or state.swept or stale(state, now(), config.bulk_resume_hours)
    ):
        log.info("an earlier export of this trial is not taken up (done, changed or too old)")
        if state.status_url is not None:
            await delete_job(client, state.status_url)
        folder.clear()
        folder = JobFolder.open(state_dir, folder.key)
        state, resumed = None, False
    if state is not None and state.manifest is None and state.status_url is not None:
        log.info("taking up the export started at %s: polling it", state.kicked_off)
    elif state is not None and state.manifest is not None:
        log.info(
            "taking up the export started at %s: downloading what is missing", state.kicked_off
        )
    for attempt in (1, 2):
        if state is None or state.status_url is None:
            state = JobState(request, kicked_off=now().isoformat())
            state.status_url = await kick_off(client, request)
            folder.save(state)
            log.info("Bulk export started (%s level)", request.level)
        if state.manifest is not None:
            break
        started = datetime.fromisoformat(state.kicked_off)
        left = config.bulk_seconds - (now() - started).total_seconds()
        try:
            state.manifest = await poll(
                client,
                state.status_url,
                max_wait=config.bulk_max_wait,
                deadline_seconds=max(left, 1.0),
                progress=progress,
                clock=clock,
                limit_name="bulk_seconds",
            )
        except BulkJobGoneError:
            if attempt == 2:
                raise
            log.warning("the server no longer knows the export job; starting a new export")
            folder.clear()
            folder = JobFolder.open(state_dir, folder.key)
            state, resumed = None, False
            continue
        folder.save(state)
        break
    # the loop ends with a manifest
    assert state is not None
    assert state.manifest is not None
    manifest = state.manifest
    log.info(
        "Bulk export complete: %d files, %d error files; downloading",
        len(manifest.output),
        len(manifest.error),
    )
    state = await download_all(
        client,
        manifest,
        folder,
        state,
        max_bytes=int(config.bulk_file_mb * MIB),
        deadline_seconds=config.bulk_file_seconds,
        concurrency=config.max_concurrent,
    )
    issues: list[str] = []
    for record in state.downloaded:
        if section_of(record) == "error":
            with (folder.path / record.path).open("rb") as lines:
                issues.extend(read_error_file(lines))
    export = Export(folder, state, manifest, issues, resumed)
    if issues:
        log.warning(
            "the export's error files hold %d issues%s (coded, in results.json under bulk)",
            len(issues),
            "; some data may be missing, so nothing will be written" if export.blocking else "",
        )
    return export


async def finish_export(client: FhirClient, export: Export, *, keep: bool) -> None:
    """After the sweep: DELETE the job on the server, and remove the files unless `keep`."""
    state = export.state
    # Swept first: a run killed during the DELETE must not leave files a later run takes up and
    # sweeps again. The DELETE is sent again by whoever finds the job (a 404 then is fine).
    state.swept = True
    export.folder.save(state)
    if state.status_url is not None:
        await delete_job(client, state.status_url)
    if keep:
        log.info("the exported files are kept in %s", export.folder.path)
    else:
        export.folder.clear()
