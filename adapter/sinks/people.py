"""Statuses people set on ResearchSubjects (issue 12): which patient each names, pure, no I/O.

R4 research-subject-status has 13 codes; the adapter writes two (`candidate`,
`potential-candidate`). Any other status on a subject of the trial was set by people (a
coordinator who screened, enrolled or withdrew the patient), so the patient is already handled:
the report lists them apart, never again as a new candidate, and the sinks never write them. As in
adapter.sinks.plan, any status but the adapter's counts as set by people, an unknown code too (a
coordinator's typo in the folder sink's file must not be overwritten back to candidate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from adapter.sinks.resources import ADAPTER_STATUSES, SUBJECT_SYSTEM

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping

    from adapter.sinks.resources import JsonDict

#: R4 research-subject-status codes other than the adapter's own (hl7.org/fhir/R4/valueset-
#: research-subject-status.html): the statuses people set.
PEOPLE_STATUSES: Final = frozenset(
    {
        "withdrawn",
        "ineligible",
        "not-registered",
        "off-study",
        "on-study",
        "on-study-intervention",
        "on-study-observation",
        "pending-on-study",
        "screening",
        "eligible",
        "follow-up",
    }
)


def people_status(subject: JsonDict) -> str | None:
    """The status people set on a ResearchSubject; None for the adapter's own or none at all."""
    status = subject.get("status")
    if not isinstance(status, str) or not status.strip() or status in ADAPTER_STATUSES:
        return None
    return status


def study_of(subject: JsonDict) -> str | None:
    """ResearchSubject.study as `ResearchStudy/<id>`, from a relative or absolute reference,
    versioned or not; None without one."""
    study = subject.get("study")
    ref = study.get("reference") if isinstance(study, dict) else None
    if not isinstance(ref, str):
        return None
    parts = ref.split("/_history/", 1)[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 and parts[-2] == "ResearchStudy" else None


def subject_patient(
    subject: JsonDict,
    trial_id: str,
    by_identifier: Mapping[tuple[str, str], str] | None = None,
) -> str | None:
    """The Patient reference (`Patient/<id>`) a ResearchSubject of the trial names; None if none.

    With `by_identifier` (identifier -> Patient reference: the sink is another server than the
    source, so individuals are logical references) the individual's identifier is looked up;
    without it a relative `Patient/<id>` reference is taken. Either way the adapter's own
    identifier (`<trial>/<patient id>`) names the patient of a subject the individual does not.
    """
    individual = subject.get("individual")
    if isinstance(individual, dict):
        if by_identifier is None:
            ref = individual.get("reference")
            if isinstance(ref, str) and _is_patient_ref(ref):
                return ref
        else:
            ident = individual.get("identifier")
            pair = (ident.get("system"), ident.get("value")) if isinstance(ident, dict) else None
            if pair is not None and all(isinstance(part, str) for part in pair):
                found = by_identifier.get((str(pair[0]), str(pair[1])))
                if found is not None:
                    return found
    for ident in _list(subject.get("identifier")):
        if isinstance(ident, dict) and ident.get("system") == SUBJECT_SYSTEM:
            trial, _, patient_id = str(ident.get("value")).partition("/")
            if trial == trial_id and patient_id and "/" not in patient_id:
                return f"Patient/{patient_id}"
    return None


def handled_subjects(
    subjects: Iterable[JsonDict],
    trial_id: str,
    *,
    study: str | None = None,
    by_identifier: Mapping[tuple[str, str], str] | None = None,
) -> list[tuple[str, str, JsonDict]]:
    """(Patient reference, status, subject) of each subject with a status people set that names
    a patient, in subject id order; only subjects of `study` (`ResearchStudy/<id>`) when given."""
    found = []
    for subject in sorted(subjects, key=lambda s: str(s.get("id"))):
        status = people_status(subject)
        if status is None or (study is not None and study_of(subject) != study):
            continue
        patient = subject_patient(subject, trial_id, by_identifier)
        if patient is not None:
            found.append((patient, status, subject))
    return found


def statuses_by_patient(
    subjects: Iterable[JsonDict],
    trial_id: str,
    *,
    study: str | None = None,
    patients: Collection[str] | None = None,
    by_identifier: Mapping[tuple[str, str], str] | None = None,
) -> dict[str, str]:
    """Patient reference -> the status people set (`handled_subjects`), for `patients` only when
    given. A patient with several such subjects gets the status of the first in id order, so a
    rerun reports the same one."""
    found: dict[str, str] = {}
    for patient, status, _ in handled_subjects(
        subjects, trial_id, study=study, by_identifier=by_identifier
    ):
        if patients is None or patient in patients:
            found.setdefault(patient, status)
    return found


def _is_patient_ref(ref: str) -> bool:
    kind, _, rest = ref.partition("/")
    return kind == "Patient" and bool(rest) and "/" not in rest


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []
