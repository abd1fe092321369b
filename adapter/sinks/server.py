"""The FHIR server sink: the trial's ResearchStudy, the adapter's Device, and per patient one
ResearchSubject and a Provenance for each creation or change of it.

How a resource is found and created depends on what the server can do (`ServerCapabilities`):

- it can search the type by `identifier`: a search (sent with `Prefer: handling=strict`, so a server
  that does not know the parameter refuses it rather than ignoring it and answering with every
  resource), then a conditional create (`POST` with `If-None-Exist`); the server assigns the id;
- it cannot, or no capabilities were given: a read of the deterministic id, then a `PUT` on it.

What is written follows adapter.sinks.plan. Everything is read before it is written, one write at a
time, so a rerun that changes nothing sends only reads. The one update carries `If-Match`. Each
ResearchSubject creation or change gets a Provenance (adapter.sinks.provenance: PUT at an id that
hashes the subject's identifier and version, or created as trial-spec v2 says where the server
refuses that PUT), and every run writes the one an unchanged subject's version lacks (a run killed
or cut off after the subject write). Problems of one patient raise `PatientError` (message
without patient ids or server text); a dry run sends only reads and lists what it would write in
`planned`. `summary()` says what was done, in one line. A status people set that a read meets
is noted in `people_status` (issue 12, adapter.sinks.people).

Known limits: on the search path a resource people deleted cannot be told from one never written
(deleted resources leave searches), so it is written again; on the id path its 410 Gone keeps it
deleted (a Provenance too). On the id path, a resource created by someone else between the read
and the `PUT` is overwritten (FHIR has no create-only `PUT`); a conditional create has no such
gap. Resources created on one path are not found on the other when a server's capabilities
change. A version people wrote that keeps the adapter's status cannot be told from the adapter's
own: a missing Provenance is written for it too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from adapter.errors import (
    FhirError,
    HttpStatusError,
    InvalidResponseError,
    PatientError,
    TemporaryHttpError,
    TransportError,
)
from adapter.fhir.capability import WritePath
from adapter.sinks import plan, resources
from adapter.sinks.lost_answers import created_by_us, put_new_subject
from adapter.sinks.people import people_status
from adapter.sinks.plan import Action, PlannedWrite, ProvenanceCount, SubjectInput, WriteOutcome
from adapter.sinks.provenance import ProvenanceStore
from adapter.sinks.responses import written
from adapter.sinks.stored import Stored, read_stored, search_stored, status_of

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import date

    import httpx

    from adapter.fhir.capability import ServerCapabilities
    from adapter.fhir.client import FhirClient
    from adapter.sinks.resources import JsonDict, StudyInfo

__all__ = ["PlannedWrite", "ServerSink", "SubjectInput", "WriteOutcome"]

_CREATED = 201
_GONE = 410  # deleted: by people, since the adapter never deletes
_PRECONDITION_FAILED = 412


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ServerSink:
    """Writes the trial's ResearchStudy, the Device, ResearchSubjects and their Provenance.

    `trial_policy` is the Provenance policy (`resources.trial_policy`). `capabilities` choose the
    search path per resource type (None: deterministic ids throughout). With `logical_references`
    (the sink is another server than the source) the patient is named by identifier and evidence
    by `source_base` + reference. `now` is the clock of Provenance.recorded.
    """

    def __init__(
        self,
        client: FhirClient,
        study: StudyInfo,
        *,
        trial_policy: str,
        capabilities: ServerCapabilities | None = None,
        logical_references: bool = False,
        source_base: str | None = None,
        dry_run: bool = False,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        if logical_references and not source_base:
            raise ValueError("logical references need the source server's base URL")
        self._client = client
        self._study = study
        self._policy = trial_policy
        self._capabilities = capabilities
        self._logical = logical_references
        self._source_base = source_base or ""
        self.dry_run = dry_run
        self._now = now
        #: every write decided, in order: sent, unless `dry_run`
        self.planned: list[PlannedWrite] = []
        self.tally = plan.Tally()
        #: Patient reference -> the status people set, as the subject reads found it (issue 12)
        self.people_status: dict[str, str] = {}
        self._study_id: str | None = None
        self._device_ref: str | None = None
        self._provenance = ProvenanceStore(
            client,
            WritePath.FIXED_ID if capabilities is None else capabilities.write_path("Provenance"),
        )
        self._counted = False  # whether anything was counted for the patient being written

    @property
    def study_id(self) -> str:
        """The ResearchStudy's id on the server (a stand-in in a dry run that would create it)."""
        if self._study_id is None:
            raise RuntimeError("ServerSink.prepare() must run first")
        return self._study_id

    def left_as_people_set(self) -> WriteOutcome:
        """Count a patient whose status people set, known without a read (nothing is written)."""
        return self._count(WriteOutcome.KEPT_HUMAN_STATUS)

    def summary(self) -> str:
        """One line: what was done to subjects, Provenance written and repaired, failures."""
        return self.tally.line()

    def by_identifier(self, resource_type: str) -> bool:
        """Whether `resource_type` is searched by identifier and created conditionally."""
        caps = self._capabilities
        return caps is not None and caps.searches(resource_type, "identifier")

    async def prepare(self) -> None:
        """Find the ResearchStudy and the Device, creating each if missing; never rewritten.

        On the id path a deleted one (410 Gone) raises HttpStatusError: people removed it on
        purpose. Several with the identifier raise FhirError: the adapter will not choose.
        """
        study = self._study
        self._study_id = await self._ensure(
            "ResearchStudy",
            (study.identifier_system, study.identifier_value),
            resources.research_study(study),
        )
        device_id = await self._ensure(
            "Device", (resources.DEVICE_SYSTEM, resources.DEVICE_VALUE), resources.device()
        )
        self._device_ref = f"Device/{device_id}"

    async def answers(self) -> bool:
        """Whether the server answers at all now: one read of its CapabilityStatement, no retry.

        After a write's temporary failure outlasted the retry budget, this tells one patient's
        problem from an outage, in which every later write would spend a whole budget in vain.
        """
        try:
            await self._client.request("GET", "metadata", idempotent=False)
        except (TransportError, TemporaryHttpError):
            return False
        except FhirError:
            return True  # it answered, if not as hoped: not an outage
        return True

    async def existing_status(self, patient_id: str) -> str | None:
        """The status of the patient's ResearchSubject on the server; None when there is none."""
        try:
            stored = await self._find_subject(f"Patient/{patient_id}", patient_id)
        except HttpStatusError as exc:
            if exc.status == _GONE:
                return None
            raise
        return None if stored is None else status_of(stored)

    async def ineligible_outcome(self, patient_id: str) -> WriteOutcome | None:
        """What to report for a patient now ineligible (nothing is written), counted."""
        outcome = plan.ineligible_outcome(await self.existing_status(patient_id))
        if outcome is not None:
            self.tally.outcomes[outcome.value] += 1
        return outcome

    async def write_subject(self, subject: SubjectInput, as_of: date) -> WriteOutcome:
        """Create or update the patient's ResearchSubject by the rules, with its Provenance.

        `as_of` becomes period.start of a new subject. An unchanged subject's missing Provenance
        is written. Raises PatientError for this patient's problems (several matches, a
        concurrent change, no identifier for a logical reference, a Provenance not written).
        """
        if subject.status not in resources.SUBJECT_STATUS:
            raise ValueError(f"no ResearchSubject is written for status {subject.status}")
        if self._study_id is None:
            raise RuntimeError("ServerSink.prepare() must run before write_subject()")
        self._counted = False
        try:
            return await self._write_subject(subject, self._study_id, as_of)
        except (PatientError, FhirError):
            if not self._counted:  # nothing was written for this patient
                self.tally.failed += 1
            raise

    async def _write_subject(
        self, subject: SubjectInput, study_id: str, as_of: date
    ) -> WriteOutcome:
        try:
            stored = await self._find_subject(subject.patient, subject.patient_id)
        except HttpStatusError as exc:
            if exc.status == _GONE:  # a person deleted it (a PUT would resurrect it): it stands
                return self._count(WriteOutcome.KEPT_HUMAN_STATUS)
            raise
        decision = plan.decide(None if stored is None else status_of(stored), subject.status)
        if decision.action is Action.CREATE:
            subject_written = await self._create_subject(subject, study_id, as_of)
        elif decision.action is Action.UPDATE and stored is not None:
            subject_written = await self._update_subject(subject, stored)
        elif plan.repairs_provenance(decision) and stored is not None:
            outcome = self._count(decision.outcome)
            await self._ensure_provenance(subject, (stored.id, stored.version))
            return outcome
        else:
            return self._count(decision.outcome)
        if subject_written is None:
            self.planned.append(self._provenance.plan(None, subject.patient))
            self.tally.provenance[ProvenanceCount.WOULD_WRITE] += 1
            return self._count(plan.dry(decision.outcome))
        outcome = self._count(decision.outcome)
        body = self._provenance_body(subject, subject_written)
        await self._write_provenance(subject, body, ProvenanceCount.WRITTEN)
        return outcome

    def _count(self, outcome: WriteOutcome) -> WriteOutcome:
        self.tally.outcomes[outcome.value] += 1
        self._counted = True
        return outcome

    async def _ensure(self, kind: str, identifier: tuple[str, str], resource: JsonDict) -> str:
        """The id of the one `kind` with `identifier`, created from `resource` if missing."""
        if not self.by_identifier(kind):
            resource_id = str(resource["id"])
            if await self._read(kind, resource_id) is None:
                self._plan("PUT", kind, f"no {kind} yet", resource_id=resource_id)
                if not self.dry_run:
                    await self._put(kind, resource_id, resource)
            return resource_id
        found, count = await self._search(kind, *identifier)
        if count > 1:
            raise FhirError(
                f"{count} {kind} resources carry the identifier {'|'.join(identifier)}; "
                "the adapter writes one and will not choose: remove the others",
                url=self._client.url(kind),
            )
        if found:
            return found[0].id
        condition = resources.identifier_condition(*identifier)
        self._plan("POST", kind, f"no {kind} yet", condition=condition)
        if self.dry_run:
            return str(resource["id"])  # a stand-in: nothing is built on it but plans
        response = await self._create(kind, resource, condition)
        return written(response, kind)[0]

    async def _find_subject(self, patient: str, patient_id: str) -> Stored | None:
        """The patient's ResearchSubject; None when there is none. 410 Gone raises.

        A status people set on it goes to `people_status`.
        """
        system, value = resources.subject_identifier(self._study.trial_id, patient_id)
        if not self.by_identifier("ResearchSubject"):
            stored = await self._read("ResearchSubject", resources.deterministic_id(system, value))
        else:
            found, count = await self._search("ResearchSubject", system, value)
            if count > 1:
                raise PatientError(
                    patient,
                    f"{count} ResearchSubjects carry its identifier on the server; "
                    "left for people to resolve",
                )
            stored = found[0] if found else None
        status = None if stored is None else people_status(stored.body)
        if status is not None:
            self.people_status[patient] = status
        return stored

    async def _create_subject(
        self, subject: SubjectInput, study_id: str, as_of: date
    ) -> tuple[str, str | None] | None:
        """Create the subject: its id and version, or None in a dry run."""
        body = resources.research_subject(
            self._study,
            subject.patient_id,
            subject.status,
            as_of,
            self._individual(subject),
            study_id=study_id,
        )
        reason = f"new {body['status']}"
        if not self.by_identifier("ResearchSubject"):
            self._plan("PUT", "ResearchSubject", reason, subject, resource_id=body["id"])
            if self.dry_run:
                return None
            return await put_new_subject(self._client, body)
        condition = resources.identifier_condition(
            *resources.subject_identifier(self._study.trial_id, subject.patient_id)
        )
        self._plan("POST", "ResearchSubject", reason, subject, condition=condition)
        if self.dry_run:
            return None
        try:
            response = await self._create("ResearchSubject", body, condition)
        except HttpStatusError as exc:
            if exc.status != _PRECONDITION_FAILED:
                raise
            # Several matches: the server will not choose, and neither does the adapter.
            raise PatientError(
                subject.patient,
                "several ResearchSubjects match its identifier (HTTP 412 on the conditional "
                "create); left for people to resolve",
            ) from exc
        ours = response.status_code == _CREATED or await created_by_us(self._client, response, body)
        if not ours:
            # 200: the condition matched, so someone else created it after the search.
            raise PatientError(
                subject.patient,
                "its ResearchSubject appeared on the server since it was read; "
                "left for the next run",
            )
        return written(response, "ResearchSubject")

    async def _update_subject(
        self, subject: SubjectInput, stored: Stored
    ) -> tuple[str, str | None] | None:
        """potential-candidate -> candidate, with If-Match: its id and version, or None (dry)."""
        url = self._client.url(f"ResearchSubject/{stored.id}")
        if stored.version is None:
            raise InvalidResponseError(
                "the server gave no version for a ResearchSubject, so it cannot be updated safely",
                url=url,
            )
        try:
            updated = resources.with_status(stored.body, subject.status)
        except ValueError as exc:
            # The validation text quotes the server's resource: `detail` only (issue 11).
            raise InvalidResponseError(
                "the server's ResearchSubject is not valid R4, not updating it",
                url=url,
                detail=str(exc),
            ) from None
        reason = f"{status_of(stored)} now {updated['status']}"
        self._plan("PUT", "ResearchSubject", reason, subject, resource_id=stored.id)
        if self.dry_run:
            return None
        try:
            response = await self._put(
                "ResearchSubject", stored.id, updated, if_match=stored.version
            )
        except HttpStatusError as exc:
            if exc.status != _PRECONDITION_FAILED:
                raise
            raise PatientError(
                subject.patient,
                "its ResearchSubject changed on the server since it was read; "
                "left for the next run",
            ) from exc
        return written(response, "ResearchSubject", stored.id)

    def _provenance_body(
        self, subject: SubjectInput, subject_written: tuple[str, str | None]
    ) -> JsonDict:
        subject_id, version = subject_written
        _, value = resources.subject_identifier(self._study.trial_id, subject.patient_id)
        return resources.provenance(
            subject_id,
            version,
            value,
            self._now(),
            [self._entity(reference, subject) for reference in subject.entities],
            [self._policy],
            agent=self._device_ref,
        )

    async def _ensure_provenance(
        self, subject: SubjectInput, stored: tuple[str, str | None]
    ) -> None:
        """The stored version's Provenance, written when missing (trial-spec v2)."""
        body = self._provenance_body(subject, stored)
        if await self._provenance.exists(body):
            return
        if self.dry_run:
            self.planned.append(self._provenance.plan(body, subject.patient, "kept"))
            self.tally.provenance[ProvenanceCount.WOULD_REPAIR] += 1
            return
        await self._write_provenance(subject, body, ProvenanceCount.REPAIRED)

    async def _write_provenance(
        self,
        subject: SubjectInput,
        body: JsonDict,
        count: ProvenanceCount,
    ) -> None:
        """Write the Provenance `body` of a subject version, on the sink's Provenance path."""
        reason = "written" if count is ProvenanceCount.WRITTEN else "kept"
        self.planned.append(self._provenance.plan(body, subject.patient, reason))
        try:
            await self._provenance.send(body)
        except TransportError:
            self.tally.provenance[ProvenanceCount.NOT_WRITTEN] += 1
            raise
        except FhirError as exc:
            self.tally.provenance[ProvenanceCount.NOT_WRITTEN] += 1
            raise PatientError(
                subject.patient,
                f"its ResearchSubject was written but its Provenance was not: {exc}",
                detail=exc.detail,
            ) from exc
        self.tally.provenance[count] += 1

    def _individual(self, subject: SubjectInput) -> JsonDict | None:
        """ResearchSubject.individual: None (a literal `Patient/<id>`) or a logical reference."""
        if not self._logical:
            return None
        if subject.patient_identifier is None:
            raise PatientError(
                subject.patient,
                "the patient has no identifier with system and value on the source, so the "
                "sink server cannot be told who it is; not written",
            )
        return resources.logical_reference("Patient", *subject.patient_identifier)

    def _entity(self, reference: str, subject: SubjectInput) -> str | JsonDict:
        """A Provenance entity: the reference itself, or a logical reference to the source."""
        if not self._logical:
            return reference
        if reference.split("/", 1)[0] == "Patient" and subject.patient_identifier is not None:
            return resources.logical_reference("Patient", *subject.patient_identifier)
        return resources.source_reference(self._source_base, reference)

    def _plan(
        self,
        method: str,
        kind: str,
        reason: str,
        subject: SubjectInput | None = None,
        *,
        resource_id: str | None = None,
        condition: str | None = None,
    ) -> None:
        patient = None if subject is None else subject.patient
        self.planned.append(PlannedWrite(method, kind, reason, resource_id, condition, patient))

    async def _read(self, kind: str, resource_id: str) -> Stored | None:
        return await read_stored(self._client, kind, resource_id)

    async def _search(self, kind: str, system: str, value: str) -> tuple[list[Stored], int]:
        return await search_stored(self._client, kind, system, value)

    async def _create(self, kind: str, body: JsonDict, condition: str) -> httpx.Response:
        # A conditional create may be retried (adapter.fhir.client.is_idempotent).
        headers = {"If-None-Exist": condition}
        return await self._client.request(
            "POST", kind, json=resources.without_id(body), headers=headers
        )

    async def _put(
        self, kind: str, resource_id: str, body: JsonDict, *, if_match: str | None = None
    ) -> httpx.Response:
        headers = {"If-Match": f'W/"{if_match}"'} if if_match is not None else None
        return await self._client.request(
            "PUT", f"{kind}/{resource_id}", json=body, headers=headers
        )
