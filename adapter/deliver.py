"""The sink stage: a sweep's verdicts written to a folder (NDJSON) or a FHIR server.

`deliver` fills `writes` (patient -> what was done) as it goes, so a fatal error mid-write leaves
it saying what was and was not written (results.json records it). One patient's problem goes to
the sweep's errors (exit 3); a server that is gone, or an outage that outlasts the retry budget,
is fatal.

Only verdicts are written, so a patient under the sweep's errors (an unreadable line of theirs,
issue 11) never is. When the sweep withholds writes (an unreadable line that names nobody for
sure), nothing reaches the sink at all, the ResearchStudy included, and a dry run plans nothing.

Statuses people set (issue 12, adapter.sinks.people) are read from the sink first, dry runs
included, into `SweepResult.people_status` for every cohort patient (evaluated or under errors)
whose ResearchSubject of the trial carries one; such a patient is never written, and its outcome
is `kept_human_status`. A folder sink's file is read once; a server sink's subjects are searched
once by `study` where its CapabilityStatement lists that parameter, else what the per-patient
reads find is taken. Without a sink (or with writes withheld) people_status stays empty: there is
no place where people record statuses (a later step reads them from the run ledger).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter.config import ServerConfig
from adapter.connect import fhir_client, is_url
from adapter.criteria.results import PatientVerdict, Status
from adapter.errors import (
    FhirError,
    HttpStatusError,
    OutputError,
    PatientError,
    TemporaryHttpError,
    TransportError,
)
from adapter.fhir.capability import read_capabilities
from adapter.fhir.urls import ServerBase
from adapter.progress import NoProgress, Progress
from adapter.report.results import UNCONFIRMED
from adapter.sinks.folder import FolderSink
from adapter.sinks.people import (
    PEOPLE_STATUSES,
    handled_subjects,
    people_status,
    statuses_by_patient,
)
from adapter.sinks.resources import StudyInfo, research_study, research_subject, trial_policy
from adapter.sinks.server import ServerSink, SubjectInput, WriteOutcome
from adapter.sinks.stored import search_study_subjects
from adapter.sweep import PatientFailure, SweepResult
from adapter.trials import Trial

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)

_FLAGGED = (Status.CANDIDATE, Status.POTENTIAL_CANDIDATE)
_SERVER_ERRORS = 500
_AUTH_ERRORS = (401, 403)
_LINES_SHOWN = 10  # unreadable line numbers named in the warning


async def deliver(
    sink: str | None,
    *,
    source: str,
    server_config: ServerConfig,
    env: Mapping[str, str],
    dry_run: bool,
    trial: Trial,
    result: SweepResult,
    as_of: date,
    say: Callable[[str], None],
    writes: dict[str, str],
    tracker: Progress | None = None,
) -> None:
    """Write to the sink, filling `writes` (patient -> what was done) as it goes, so that a fatal
    error leaves it saying what was done. Per-patient failures go to result.errors. `tracker`
    shows the stage "writes": flagged patients written of all flagged."""
    if not sink:
        return
    if result.withhold_writes:
        # Before the sink is opened: not even its CapabilityStatement is read.
        done = "planned" if dry_run else "written"
        if result.export_blocking:
            log.warning(
                "sink: nothing %s, writes withheld: the export's error files say data may be "
                "missing (see bulk.issues in results.json)",
                done,
            )
        else:
            log.warning(
                "sink: nothing %s, writes withheld: %d unreadable input lines (see "
                "unreadable_input in results.json)",
                done,
                len(result.unreadable),
            )
        return
    track = tracker or NoProgress()
    track.stage("writes", sum(1 for v in result.verdicts if v.status in _FLAGGED))
    try:
        study = StudyInfo(trial.id, trial.study_system, trial.study_value, trial.title)
        if not is_url(sink):
            _deliver_folder(
                Path(sink),
                study,
                result,
                as_of=as_of,
                dry_run=dry_run,
                say=say,
                writes=writes,
                track=track,
            )
            return
        logical = not _same_server(source, sink)
        async with fhir_client(sink, server_config, env=env) as client:
            capabilities = await read_capabilities(client, probe_elements=False)
            server = ServerSink(
                client,
                study,
                trial_policy=trial_policy(trial.id, trial.content_hash),
                capabilities=capabilities,
                logical_references=logical,
                source_base=source if is_url(source) else Path(source).resolve().as_uri(),
                dry_run=dry_run,
            )
            await server.prepare()
            if capabilities.searches("ResearchSubject", "study"):
                by_identifier = {ident: ref for ref, ident in result.identifiers.items()}
                found = await _searched_statuses(
                    client,
                    f"ResearchStudy/{server.study_id}",
                    study.trial_id,
                    page_size=server_config.page_size,
                    by_identifier=by_identifier if logical else None,
                )
                cohort = _cohort(result)
                result.people_status.update({p: s for p, s in found.items() if p in cohort})
            await _write_server(server, result, as_of, say, writes, track)
        if dry_run:
            # The plan names patients: it goes to results.json, never to stderr.
            result.planned_writes = [dataclasses.asdict(p) for p in server.planned]
            say(f"dry run: {len(server.planned)} writes planned, none sent")
    finally:
        track.done()


def _cohort(result: SweepResult) -> frozenset[str]:
    """Every cohort patient: those evaluated, and those under errors."""
    return frozenset(v.patient for v in result.verdicts) | {e.patient for e in result.errors}


def _deliver_folder(
    folder: Path,
    study: StudyInfo,
    result: SweepResult,
    *,
    as_of: date,
    dry_run: bool,
    say: Callable[[str], None],
    writes: dict[str, str],
    track: Progress,
) -> None:
    """The folder sink: read the statuses people set in its file, then rewrite it (not dry)."""
    sink = FolderSink(folder)
    try:
        earlier = sink.read_subjects()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise OutputError(
            f"{folder}: the sink folder could not be written (its ResearchSubject.ndjson could "
            f"not be read: {why})"
        ) from exc
    _warn_about(earlier.unreadable, earlier.subjects)
    ours = f"ResearchStudy/{study.resource_id}"
    handled = statuses_by_patient(earlier.subjects, study.trial_id, study=ours)
    # Every subject people set stays as they set it, a cohort patient's or not.
    people_set = handled_subjects(earlier.subjects, study.trial_id, study=ours)
    cohort = _cohort(result)
    result.people_status.update({p: s for p, s in handled.items() if p in cohort})
    flagged = [v for v in result.verdicts if v.status in _FLAGGED and v.patient not in handled]
    kept = [v.patient for v in result.verdicts if v.patient in handled]
    subjects = [
        research_subject(study, v.patient.split("/", 1)[1], v.status, as_of) for v in flagged
    ]
    if dry_run:
        result.planned_writes = [
            {
                "method": "write",
                "resource_type": "ResearchSubject",
                "resource_id": s["id"],
                "condition": None,
                "patient": v.patient,
                "reason": f"{folder}/ResearchSubject.ndjson",
            }
            for s, v in zip(subjects, flagged, strict=True)
        ]
        say(
            f"dry run: would write {len(subjects)} ResearchSubjects to the sink folder{_left(kept)}"
        )
        writes.update((v.patient, "would_write") for v in flagged)
        writes.update(dict.fromkeys(kept, WriteOutcome.KEPT_HUMAN_STATUS.value))
        return
    held = frozenset(e.patient for e in result.errors)
    keep_ids = frozenset(str(s["id"]) for _, _, s in people_set)
    try:
        sink.write(
            research_study(study), subjects, keep=held, keep_ids=keep_ids, earlier=earlier.subjects
        )
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise OutputError(f"{folder}: the sink folder could not be written ({why})") from exc
    track.advance(len(subjects))
    say(f"wrote {len(subjects)} ResearchSubjects to the sink folder{_left(kept)}")
    writes.update((v.patient, "written") for v in flagged)
    writes.update(dict.fromkeys(kept, WriteOutcome.KEPT_HUMAN_STATUS.value))


def _left(kept: list[str]) -> str:
    return f"; {len(kept)} left as people set them" if kept else ""


def _warn_about(unreadable: list[int], subjects: list[dict[str, Any]]) -> None:
    """Say what of the folder's file was not understood: line numbers and counts, no patients."""
    if unreadable:
        shown = ", ".join(str(n) for n in unreadable[:_LINES_SHOWN])
        if len(unreadable) > _LINES_SHOWN:
            shown += ", ..."
        log.warning(
            "sink: %d unreadable line(s) of ResearchSubject.ndjson ignored (line numbers %s); the "
            "rewritten file leaves them out",
            len(unreadable),
            shown,
        )
    unknown = [s for s in subjects if (code := people_status(s)) and code not in PEOPLE_STATUSES]
    if unknown:
        log.warning(
            "sink: %d ResearchSubjects carry a status that is no R4 code; kept as people set them",
            len(unknown),
        )


async def _searched_statuses(
    client: FhirClient,
    study_ref: str,
    trial_id: str,
    *,
    page_size: int,
    by_identifier: Mapping[tuple[str, str], str] | None,
) -> dict[str, str]:
    """Patient -> the status people set, over the study's subjects: one search, paged.

    A server may list `study` and still refuse it (a 4xx but 401, 403, 408, 429): the per-patient
    reads then find the statuses of every patient evaluated, so the run goes on, with a warning.
    """
    try:
        subjects = await search_study_subjects(client, study_ref, page_size=page_size)
    except HttpStatusError as exc:
        # Temporary failures outlasted the retries, and auth errors would meet every read too.
        if exc.temporary or exc.status in _AUTH_ERRORS or exc.status >= _SERVER_ERRORS:
            raise
        log.warning(
            "sink: the ResearchSubject search by study was refused (%s); statuses people set "
            "are read per patient instead",
            exc,
        )
        return {}
    return statuses_by_patient(subjects, trial_id, study=study_ref, by_identifier=by_identifier)


#: Provenance.entity: the evidence types (trial-spec, 'What gets written')
_EVIDENCE_TYPES = frozenset({"Observation", "Condition", "Procedure", "Patient"})


def _entities(verdict: PatientVerdict, versions: Mapping[str, str]) -> tuple[str, ...]:
    """The evidence behind a verdict, versioned where the source has versions."""
    refs = [verdict.patient]
    refs += [e.reference for c in verdict.criteria.values() for e in c.evidence if e.reference]
    kept = (r for r in refs if r.split("/", 1)[0] in _EVIDENCE_TYPES)
    return tuple(dict.fromkeys(versions.get(r, r) for r in kept))


def _same_server(source: str, sink: str) -> bool:
    """Whether source and sink are one FHIR server (a parsed comparison of their bases)."""
    if not is_url(source):
        return False
    a, b = ServerBase.parse(source), ServerBase.parse(sink)
    return (a.origin, a.segments) == (b.origin, b.segments)


async def _write_server(
    server: ServerSink,
    result: SweepResult,
    as_of: date,
    say: Callable[[str], None],
    writes: dict[str, str],
    track: Progress,
) -> None:
    try:
        for v in result.verdicts:
            await _write_patient(server, v, result, as_of, writes)
            if v.status in _FLAGGED:
                track.advance()
    finally:
        # The reads' finds (all there is where the study's subjects could not be searched),
        # kept even when a fatal error ends the loop, so results.json holds what was read.
        for patient, status in server.people_status.items():
            result.people_status.setdefault(patient, status)
    say(server.summary())


async def _write_patient(
    server: ServerSink,
    v: PatientVerdict,
    result: SweepResult,
    as_of: date,
    writes: dict[str, str],
) -> None:
    """One patient's sink write; their own problems go to result.errors, outages raise."""
    if v.patient in result.people_status:
        # The search found it: left as people set it, without a read.
        writes[v.patient] = server.left_as_people_set().value
        return
    pid = v.patient.split("/", 1)[1]
    try:
        if v.status is Status.INELIGIBLE:
            noted = await server.ineligible_outcome(pid)
            if noted is not None:
                writes[v.patient] = noted.value
            return
        subject = SubjectInput(
            pid, v.status, _entities(v, result.versions), result.identifiers.get(v.patient)
        )
        # Until the sink answers: a fatal error now leaves it unconfirmed in results.json.
        writes[v.patient] = UNCONFIRMED
        writes[v.patient] = (await server.write_subject(subject, as_of)).value
    except TransportError:
        raise  # the server is gone: fatal, not one patient's problem
    except TemporaryHttpError as exc:
        # Retried for the whole budget: an outage (fatal) unless the server answers now.
        if not await server.answers():
            raise  # the write stays unconfirmed in results.json
        writes.pop(v.patient, None)
        result.errors.append(PatientFailure(v.patient, f"write failed: {exc}", exc.detail))
    except PatientError as exc:
        writes.pop(v.patient, None)
        result.errors.append(PatientFailure(v.patient, f"write failed: {exc.reason}", exc.detail))
    except FhirError as exc:
        writes.pop(v.patient, None)
        result.errors.append(PatientFailure(v.patient, f"write failed: {exc}", exc.detail))
