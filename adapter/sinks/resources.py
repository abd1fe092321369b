"""Builders for the resources the adapter writes (trial-spec, 'What gets written').

Each builder returns a plain JSON dict, validated once through its fhir.resources R4B model so an
invalid resource is never written; the dict, not the model, is what goes out (models cost ~100 us,
so only what is written is ever modelled). Every resource carries `TAG` in meta.tag and a
deterministic id: `ta-` + the first 40 hex digits of sha256(`system|value`) of its identifier.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

import orjson
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.researchstudy import ResearchStudy
from fhir.resources.R4B.researchsubject import ResearchSubject
from pydantic import ValidationError

import adapter
from adapter.criteria.results import Status

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import date, datetime

    from pydantic import BaseModel

JsonDict = dict[str, Any]

TAG: Final = {"system": "urn:trial-adapter", "code": "pre-screen"}

DEVICE_SYSTEM: Final = "urn:trial-adapter:device"
DEVICE_VALUE: Final = "trial-adapter"
SUBJECT_SYSTEM: Final = "urn:trial-adapter:research-subject"

#: The adapter's own ResearchSubject.status codes (R4 research-subject-status). Any other code on
#: an existing subject was set by people and is never overwritten.
SUBJECT_STATUS: Final = {
    Status.CANDIDATE: "candidate",
    Status.POTENTIAL_CANDIDATE: "potential-candidate",
}
ADAPTER_STATUSES: Final = frozenset(SUBJECT_STATUS.values())

_PARTICIPANT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_POLICY_PREFIX: Final = "urn:trial-adapter:trial:"


def deterministic_id(system: str, value: str) -> str:
    """`ta-` + the first 40 hex digits of sha256(`system|value`): a valid FHIR id (43 chars)."""
    return "ta-" + hashlib.sha256(f"{system}|{value}".encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class StudyInfo:
    """The trial as the written resources name it."""

    trial_id: str
    identifier_system: str
    identifier_value: str
    title: str

    @property
    def resource_id(self) -> str:
        """The ResearchStudy's deterministic id."""
        return deterministic_id(self.identifier_system, self.identifier_value)


def subject_identifier(trial_id: str, patient_id: str) -> tuple[str, str]:
    """The ResearchSubject identifier (system, value) of one patient in one trial."""
    return SUBJECT_SYSTEM, f"{trial_id}/{patient_id}"


def subject_id(trial_id: str, patient_id: str) -> str:
    """The ResearchSubject's deterministic id."""
    return deterministic_id(*subject_identifier(trial_id, patient_id))


def device_id() -> str:
    """The adapter Device's deterministic id."""
    return deterministic_id(DEVICE_SYSTEM, DEVICE_VALUE)


def provenance_id(subject_identifier_value: str, subject_version: str | None) -> str:
    """The id of the Provenance of one ResearchSubject version (trial-spec, 'What gets written').

    It hashes the subject identifier `system|value` and the version, so a rerun names the same
    Provenance; without a version (a server that keeps none) it hashes `system|value|`.
    """
    return deterministic_id(SUBJECT_SYSTEM, f"{subject_identifier_value}|{subject_version or ''}")


def trial_policy(trial_id: str, content_hash: str) -> str:
    """The Provenance.policy URI naming a trial definition and the sha256 of its file."""
    return f"{_POLICY_PREFIX}{trial_id}#sha256:{content_hash}"


def logical_reference(resource_type: str, system: str, value: str) -> JsonDict:
    """A Reference by identifier, for a resource the writing server does not hold; no display."""
    return {"type": resource_type, "identifier": {"system": system, "value": value}}


def source_reference(source_base: str, reference: str) -> JsonDict:
    """A logical Reference to a resource of another server: `Observation/1/_history/3` there.

    The identifier's system is the source server's base URL and its value the (versioned)
    relative reference, so a reader can find the resource on the server it came from.
    """
    return logical_reference(reference.split("/", 1)[0], source_base, reference)


def without_id(resource: JsonDict) -> JsonDict:
    """A copy without `id`, for a create (POST), where the server assigns the id."""
    created = copy.deepcopy(resource)
    created.pop("id", None)
    return created


def search_token(system: str, value: str) -> str:
    """A token search value `system|value`, with the search escapes (R4 3.1.1.4.1)."""

    def escape(text: str) -> str:
        for char in "\\,$|":
            text = text.replace(char, "\\" + char)
        return text

    return f"{escape(system)}|{escape(value)}"


def identifier_condition(system: str, value: str) -> str:
    """The `If-None-Exist` query of a conditional create: `identifier=system|value`, encoded."""
    return urlencode([("identifier", search_token(system, value))], quote_via=quote, safe=":/|")


def has_identifier(resource: JsonDict, system: str, value: str) -> bool:
    """Whether `resource` carries the identifier `system|value`."""
    identifiers = resource.get("identifier")
    return isinstance(identifiers, list) and any(
        isinstance(i, dict) and i.get("system") == system and i.get("value") == value
        for i in identifiers
    )


def _meta() -> JsonDict:
    return {"tag": [dict(TAG)]}


def _validated(model: type[BaseModel], resource: JsonDict) -> JsonDict:
    """`resource` itself, once its R4B model accepts it; ValueError naming the failing fields."""
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        # Only locations and messages: inputs can hold patient identifiers (adapter/errors.py).
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        kind = resource.get("resourceType")
        raise ValueError(f"built {kind} is not valid R4: {problems}") from None
    return resource


def research_study(study: StudyInfo) -> JsonDict:
    """The trial's one ResearchStudy, status `active`."""
    return _validated(
        ResearchStudy,
        {
            "resourceType": "ResearchStudy",
            "id": study.resource_id,
            "meta": _meta(),
            "identifier": [{"system": study.identifier_system, "value": study.identifier_value}],
            "title": study.title,
            "status": "active",
        },
    )


def device() -> JsonDict:
    """The adapter's Device, the agent of every Provenance."""
    return _validated(
        Device,
        {
            "resourceType": "Device",
            "id": device_id(),
            "meta": _meta(),
            "identifier": [{"system": DEVICE_SYSTEM, "value": DEVICE_VALUE}],
            "status": "active",
            "deviceName": [{"name": "trial-adapter", "type": "user-friendly-name"}],
            "version": [{"value": adapter.__version__}],
        },
    )


def research_subject(
    study: StudyInfo,
    patient_id: str,
    status: Status,
    period_start: date,
    individual: JsonDict | None = None,
    *,
    study_id: str | None = None,
) -> JsonDict:
    """A patient's ResearchSubject; `individual` defaults to a literal `Patient/<id>` reference.

    `study_id` is the ResearchStudy's id on the server when the server assigned it (conditional
    create); by default the study's deterministic id.
    """
    code = SUBJECT_STATUS.get(status)
    if code is None:
        # trial-spec: an ineligible patient gets no ResearchSubject.
        raise ValueError(f"no ResearchSubject is written for status {status}")
    system, value = subject_identifier(study.trial_id, patient_id)
    return _validated(
        ResearchSubject,
        {
            "resourceType": "ResearchSubject",
            "id": deterministic_id(system, value),
            "meta": _meta(),
            "identifier": [{"system": system, "value": value}],
            "status": code,
            "period": {"start": period_start.isoformat()},
            "study": {"reference": f"ResearchStudy/{study_id or study.resource_id}"},
            "individual": (
                copy.deepcopy(individual)
                if individual is not None
                else {"reference": f"Patient/{patient_id}"}
            ),
        },
    )


def with_status(subject: JsonDict, status: Status) -> JsonDict:
    """A copy of an existing ResearchSubject with a new status, ready for a versioned PUT.

    Everything else is kept as the server has it (period.start is never rewritten); meta.versionId
    and lastUpdated go (the server assigns them) and the tag is added if missing.
    """
    code = SUBJECT_STATUS.get(status)
    if code is None:
        raise ValueError(f"no ResearchSubject is written for status {status}")
    updated = copy.deepcopy(subject)
    updated["status"] = code
    meta = updated.setdefault("meta", {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    tags = meta.setdefault("tag", [])
    if not any(t.get("system") == TAG["system"] and t.get("code") == TAG["code"] for t in tags):
        tags.append(dict(TAG))
    text = updated.get("text")
    if isinstance(text, dict) and text.get("status") == "generated":
        # A generated narrative would show the old status; the server regenerates it if it wants.
        del updated["text"]
    return _validated(ResearchSubject, updated)


def provenance(
    subject_id: str,
    subject_version: str | None,
    subject_identifier_value: str,
    recorded: datetime,
    entities: Iterable[str | JsonDict],
    policy: Iterable[str],
    *,
    agent: str | None = None,
) -> JsonDict:
    """The Provenance of one ResearchSubject creation or change, with its `provenance_id`.

    `subject_id` is the subject's id on the server; the target cites `subject_version`. `entities`
    are the evidence: literal references (versioned where the source has versions) or Reference
    objects (logical references to another server). `policy` names the trial definition and its
    content hash (`trial_policy`). `agent` is the adapter Device's reference on the server, by
    default `Device/<deterministic id>`.
    """
    if recorded.tzinfo is None or recorded.utcoffset() is None:
        raise ValueError("Provenance.recorded needs a time zone (FHIR instant)")
    target = f"ResearchSubject/{subject_id}"
    if subject_version is not None:
        target += f"/_history/{subject_version}"
    # Unique, first-seen order, so reruns write equal JSON.
    whats = {
        _key(e): {"reference": e} if isinstance(e, str) else copy.deepcopy(e) for e in entities
    }
    resource: JsonDict = {
        "resourceType": "Provenance",
        "id": provenance_id(subject_identifier_value, subject_version),
        "meta": _meta(),
        "target": [{"reference": target}],
        "recorded": recorded.isoformat(),
        "policy": list(dict.fromkeys(policy)),
        "agent": [
            {
                "type": {"coding": [{"system": _PARTICIPANT_TYPE, "code": "author"}]},
                "who": {"reference": agent or f"Device/{device_id()}"},
            }
        ],
    }
    if not resource["policy"]:
        del resource["policy"]  # FHIR forbids empty arrays
    if whats:
        resource["entity"] = [{"role": "source", "what": what} for what in whats.values()]
    return _validated(Provenance, resource)


def _key(entity: str | JsonDict) -> str:
    """A reference string as it is, a Reference object as canonical JSON: for deduplication."""
    if isinstance(entity, str):
        return entity
    return orjson.dumps(entity, option=orjson.OPT_SORT_KEYS).decode()


#: what a created subject must hold to be the one a run asked for (see `is_same_subject`)
_SUBJECT_FIELDS: Final = ("identifier", "status", "period", "study", "individual")


def is_same_subject(found: JsonDict, sent: JsonDict) -> bool:
    """Whether a ResearchSubject on the server is the one `sent` by a create.

    A 200 to a retried conditional create (the first attempt created it and its answer was lost)
    finds exactly what was sent: the tag, identifier, status, study, patient and the run's
    period.start. A subject someone else created differs in at least one of them.
    """
    meta = found.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    tagged = isinstance(tags, list) and any(
        isinstance(t, dict) and t.get("system") == TAG["system"] and t.get("code") == TAG["code"]
        for t in tags
    )
    return tagged and all(found.get(key) == sent.get(key) for key in _SUBJECT_FIELDS)
