"""The sink stage: a sweep's verdicts written to a folder (NDJSON) or a FHIR server.

`deliver` fills `writes` (patient -> what was done) as it goes, so a fatal error mid-write leaves
it saying what was and was not written (results.json records it). One patient's problem goes to
the sweep's errors (exit 3); a server that is gone, or an outage that outlasts the retry budget,
is fatal.

Only verdicts are written, so a patient under the sweep's errors (an unreadable line of theirs,
issue 11) never is. When the sweep withholds writes (an unreadable line that names nobody for
sure), nothing reaches the sink at all, the ResearchStudy included, and a dry run plans nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path

from adapter.config import ServerConfig
from adapter.connect import fhir_client, is_url
from adapter.criteria.results import PatientVerdict, Status
from adapter.errors import (
    FhirError,
    OutputError,
    PatientError,
    TemporaryHttpError,
    TransportError,
)
from adapter.fhir.capability import read_capabilities
from adapter.fhir.urls import ServerBase
from adapter.report.results import UNCONFIRMED
from adapter.sinks.folder import FolderSink
from adapter.sinks.resources import StudyInfo, research_study, research_subject, trial_policy
from adapter.sinks.server import ServerSink, SubjectInput
from adapter.sweep import PatientFailure, SweepResult
from adapter.trials import Trial

log = logging.getLogger(__name__)


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
) -> None:
    """Write to the sink, filling `writes` (patient -> what was done) as it goes, so that a fatal
    error leaves it saying what was done. Per-patient failures go to result.errors."""
    if not sink:
        return
    if result.withhold_writes:
        # Before the sink is opened: not even its CapabilityStatement is read.
        log.warning(
            "sink: nothing %s, writes withheld: %d unreadable input lines (see unreadable_input "
            "in results.json)",
            "planned" if dry_run else "written",
            len(result.unreadable),
        )
        return
    study = StudyInfo(trial.id, trial.study_system, trial.study_value, trial.title)
    flagged = [
        v for v in result.verdicts if v.status in (Status.CANDIDATE, Status.POTENTIAL_CANDIDATE)
    ]
    if not is_url(sink):
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
                    "reason": f"{sink}/ResearchSubject.ndjson",
                }
                for s, v in zip(subjects, flagged, strict=True)
            ]
            say(f"dry run: would write {len(subjects)} ResearchSubjects to the sink folder")
            writes.update((v.patient, "would_write") for v in flagged)
            return
        try:
            held = frozenset(e.patient for e in result.errors)
            FolderSink(Path(sink)).write(research_study(study), subjects, keep=held)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise OutputError(f"{sink}: the sink folder could not be written ({why})") from exc
        say(f"wrote {len(subjects)} ResearchSubjects to the sink folder")
        writes.update((v.patient, "written") for v in flagged)
        return
    async with fhir_client(sink, server_config, env=env) as client:
        server = ServerSink(
            client,
            study,
            trial_policy=trial_policy(trial.id, trial.content_hash),
            capabilities=await read_capabilities(client, probe_elements=False),
            logical_references=not _same_server(source, sink),
            source_base=source if is_url(source) else Path(source).resolve().as_uri(),
            dry_run=dry_run,
        )
        await _write_server(server, result, as_of, say, writes)
    if dry_run:
        # The plan names patients: it goes to results.json, never to stderr.
        result.planned_writes = [dataclasses.asdict(p) for p in server.planned]
        say(f"dry run: {len(server.planned)} writes planned, none sent")


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
) -> None:
    await server.prepare()
    for v in result.verdicts:
        pid = v.patient.split("/", 1)[1]
        try:
            if v.status is Status.INELIGIBLE:
                noted = await server.ineligible_outcome(pid)
                if noted is not None:
                    writes[v.patient] = noted.value
                continue
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
            result.errors.append(
                PatientFailure(v.patient, f"write failed: {exc.reason}", exc.detail)
            )
        except FhirError as exc:
            writes.pop(v.patient, None)
            result.errors.append(PatientFailure(v.patient, f"write failed: {exc}", exc.detail))
    say(server.summary())
