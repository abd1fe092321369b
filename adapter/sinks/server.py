"""The FHIR server sink: the trial's ResearchStudy and one ResearchSubject per patient.

Resources live at their deterministic ids (adapter.sinks.resources), so a read by id tells whether
one exists and a PUT on that id creates it (update-as-create). The rules (trial-spec, 'What gets
written'): the study is created once and never rewritten; a subject whose status people changed
(anything but candidate / potential-candidate) is never touched; potential-candidate -> candidate
is the one update, made with If-Match on the version read; nothing is ever deleted.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import orjson

from adapter.criteria.results import Status
from adapter.errors import HttpStatusError, InvalidResponseError
from adapter.sinks import resources

if TYPE_CHECKING:
    from datetime import date

    import httpx

    from adapter.fhir.client import FhirClient
    from adapter.sinks.resources import JsonDict, StudyInfo

_NOT_FOUND = 404
_GONE = 410  # deleted: by people, since the adapter never deletes


class WriteOutcome(enum.StrEnum):
    """What `ServerSink.write_subject` did."""

    CREATED = "created"
    UPDATED = "updated"  # potential-candidate -> candidate
    UNCHANGED = "unchanged"
    KEPT_HUMAN_STATUS = "kept_human_status"  # a status people set (or a deletion): never touched
    NO_LONGER_QUALIFIES = "no_longer_qualifies"  # candidate now potential-candidate: not changed


class ServerSink:
    """Writes the trial's ResearchStudy and its ResearchSubjects to a FHIR server."""

    def __init__(self, client: FhirClient, study: StudyInfo) -> None:
        self._client = client
        self._study = study

    async def ensure_study(self) -> None:
        """Create the ResearchStudy if it is missing; an existing one is left as it is.

        A deleted study (410 Gone) raises HttpStatusError: people removed it on purpose, and new
        subjects would point at nothing.
        """
        study_id = self._study.resource_id
        if await self._read("ResearchStudy", study_id) is None:
            await self._put("ResearchStudy", study_id, resources.research_study(self._study))

    async def existing_status(self, patient_id: str) -> str | None:
        """The status of the patient's ResearchSubject on the server; None when there is none."""
        try:
            existing = await self._read("ResearchSubject", self._subject_id(patient_id))
        except HttpStatusError as exc:
            if exc.status == _GONE:
                return None
            raise
        return None if existing is None else _status_of(existing[0])

    async def write_subject(self, patient_id: str, status: Status, as_of: date) -> WriteOutcome:
        """Create or update the patient's ResearchSubject, by the rules above."""
        wanted = resources.SUBJECT_STATUS.get(status)
        if wanted is None:
            raise ValueError(f"no ResearchSubject is written for status {status}")
        subject_id = self._subject_id(patient_id)
        try:
            existing = await self._read("ResearchSubject", subject_id)
        except HttpStatusError as exc:
            if exc.status == _GONE:  # a person deleted it (a PUT would resurrect it): it stands
                return WriteOutcome.KEPT_HUMAN_STATUS
            raise
        if existing is None:
            subject = resources.research_subject(self._study, patient_id, status, as_of)
            await self._put("ResearchSubject", subject_id, subject)
            return WriteOutcome.CREATED
        current, version = existing
        have = _status_of(current)
        if have == wanted:
            return WriteOutcome.UNCHANGED
        if have not in resources.ADAPTER_STATUSES:
            return WriteOutcome.KEPT_HUMAN_STATUS
        if status is Status.POTENTIAL_CANDIDATE:
            # trial-spec: a candidate that falls back is reported, never downgraded.
            return WriteOutcome.NO_LONGER_QUALIFIES
        url = f"ResearchSubject/{subject_id}"
        if version is None:
            raise InvalidResponseError(
                "the server gave no version for a ResearchSubject, so it cannot be updated safely",
                url=url,
            )
        try:
            updated = resources.with_status(current, status)
        except ValueError as exc:
            raise InvalidResponseError(
                f"the server's ResearchSubject is not valid R4, not updating it: {exc}", url=url
            ) from None
        # A 412 (changed since the read) propagates as HttpStatusError; the next run retries.
        await self._put("ResearchSubject", subject_id, updated, if_match=version)
        return WriteOutcome.UPDATED

    def _subject_id(self, patient_id: str) -> str:
        return resources.subject_id(self._study.trial_id, patient_id)

    async def _read(self, kind: str, resource_id: str) -> tuple[JsonDict, str | None] | None:
        """The resource and its version; None on 404. Other errors (410 too) raise."""
        url = f"{kind}/{resource_id}"
        try:
            response = await self._client.request("GET", url)
        except HttpStatusError as exc:
            if exc.status == _NOT_FOUND:
                return None
            raise
        body = _resource(response, kind, resource_id, url)
        return body, _version_of(body, response)

    async def _put(
        self, kind: str, resource_id: str, body: JsonDict, *, if_match: str | None = None
    ) -> None:
        headers = {"If-Match": f'W/"{if_match}"'} if if_match is not None else None
        await self._client.request("PUT", f"{kind}/{resource_id}", json=body, headers=headers)


def _resource(response: httpx.Response, kind: str, resource_id: str, url: str) -> JsonDict:
    """The response body, checked to be the resource that was read."""
    try:
        body: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise InvalidResponseError(f"the {kind} read is not JSON", url=url) from None
    if not isinstance(body, dict) or body.get("resourceType") != kind:
        raise InvalidResponseError(f"the {kind} read is not a {kind}", url=url)
    if body.get("id") not in (None, resource_id):
        raise InvalidResponseError(f"the {kind} read has another id", url=url)
    return body


def _status_of(subject: JsonDict) -> str:
    status = subject.get("status")
    if not isinstance(status, str):
        raise InvalidResponseError(
            "a ResearchSubject on the server has no status",
            url=f"ResearchSubject/{subject.get('id', '')}",
        )
    return status


def _version_of(resource: JsonDict, response: httpx.Response) -> str | None:
    """meta.versionId, else the ETag (`W/"3"` -> `3`), else None."""
    meta = resource.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("versionId"), str) and meta["versionId"]:
        return str(meta["versionId"])
    etag = response.headers.get("ETag", "").strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    etag = etag.strip('"')
    return etag or None
