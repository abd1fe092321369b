"""What the server sink decides for one patient, the writes it plans, and its tally: pure, no I/O.

The rules (trial-spec, 'What gets written'): a missing ResearchSubject is created; the same status
again changes nothing; a status people set (anything but candidate / potential-candidate) is never
touched, and is reported as kept, for an ineligible patient too (issue 12); potential-candidate
-> candidate is the one update; a candidate that falls back, or a subject who is now ineligible,
is left as it is and reported as no longer qualifying. (v2) The
stored subject version the adapter wrote, or finds unchanged, must have its Provenance: a missing
one is written again (`repairs_provenance`).
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from adapter.criteria.results import Status
from adapter.sinks.resources import ADAPTER_STATUSES, SUBJECT_STATUS


class WriteOutcome(enum.StrEnum):
    """What `ServerSink.write_subject` did (or, in a dry run, would do) for one patient."""

    CREATED = "created"
    UPDATED = "updated"  # potential-candidate -> candidate
    UNCHANGED = "unchanged"
    KEPT_HUMAN_STATUS = "kept_human_status"  # a status people set (or a deletion): never touched
    NO_LONGER_QUALIFIES = "no_longer_qualifies"  # candidate now potential-candidate: not changed
    WOULD_CREATE = "would_create"  # dry run
    WOULD_UPDATE = "would_update"  # dry run


class Action(enum.Enum):
    """The write a decision calls for."""

    NONE = "none"
    CREATE = "create"
    UPDATE = "update"


@dataclass(frozen=True, slots=True)
class Decision:
    """The write to make and the outcome to report once it is made."""

    action: Action
    outcome: WriteOutcome


_DRY: Final = {
    WriteOutcome.CREATED: WriteOutcome.WOULD_CREATE,
    WriteOutcome.UPDATED: WriteOutcome.WOULD_UPDATE,
}


def dry(outcome: WriteOutcome) -> WriteOutcome:
    """The outcome a dry run reports instead of `outcome`."""
    return _DRY.get(outcome, outcome)


def repairs_provenance(decision: Decision) -> bool:
    """Whether the subject found stays as the adapter wrote it, so its Provenance is checked.

    Only `unchanged`: today's verdict is the status that version holds, so a Provenance written
    now tells the truth about it. A status people set is theirs (no adapter Provenance); a
    candidate that no longer qualifies is not described by today's evidence.
    """
    return decision.outcome is WriteOutcome.UNCHANGED


def decide(existing: str | None, wanted: Status) -> Decision:
    """The decision for a patient now `wanted`, whose ResearchSubject has status `existing`.

    `existing` is None when the server holds no ResearchSubject for the patient. An ineligible
    patient gets no ResearchSubject: ValueError (see `ineligible_outcome`).
    """
    code = SUBJECT_STATUS.get(wanted)
    if code is None:
        raise ValueError(f"no ResearchSubject is written for status {wanted}")
    if existing is None:
        return Decision(Action.CREATE, WriteOutcome.CREATED)
    if existing == code:
        return Decision(Action.NONE, WriteOutcome.UNCHANGED)
    if existing not in ADAPTER_STATUSES:
        return Decision(Action.NONE, WriteOutcome.KEPT_HUMAN_STATUS)
    if wanted is Status.POTENTIAL_CANDIDATE:
        # A candidate that falls back is reported, never downgraded.
        return Decision(Action.NONE, WriteOutcome.NO_LONGER_QUALIFIES)
    return Decision(Action.UPDATE, WriteOutcome.UPDATED)


def ineligible_outcome(existing: str | None) -> WriteOutcome | None:
    """What to report for a patient now ineligible: no_longer_qualifies over an adapter status,
    kept_human_status over one people set (issue 12: an ineligible patient put on-study is
    handled too).

    Nothing is written either way; None when there is no subject.
    """
    if existing is None:
        return None
    if existing in ADAPTER_STATUSES:
        return WriteOutcome.NO_LONGER_QUALIFIES
    return WriteOutcome.KEPT_HUMAN_STATUS


@dataclass(frozen=True, slots=True)
class SubjectInput:
    """One patient to write.

    `entities` are the references of the evidence used, versioned where the source has versions
    (`Observation/1/_history/3`, `Patient/1`); `patient_identifier` is the patient's first
    identifier with system and value on the source, used for logical references.
    """

    patient_id: str
    status: Status
    entities: tuple[str, ...] = ()
    patient_identifier: tuple[str, str] | None = None

    @property
    def patient(self) -> str:
        return f"Patient/{self.patient_id}"


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    """One write the sink decided on: sent, unless the sink is a dry run.

    `resource_id` is the id written to (`PUT`); `condition` the search of a conditional create
    (`POST` with `If-None-Exist`); both None when the id depends on a version not yet written
    (the Provenance of a dry-run change). `patient` is the Patient reference, or None for the
    study and the Device. No names or clinical values are held here, but Patient ids are (also in
    a subject's `condition`): a plan goes to the report, never to logs.
    """

    method: str
    resource_type: str
    reason: str
    resource_id: str | None = None
    condition: str | None = None
    patient: str | None = None

    def describe(self) -> str:
        """One line: `PUT ResearchSubject/ta-... (potential-candidate now candidate)`."""
        where = self.resource_type
        if self.resource_id is not None:
            where += f"/{self.resource_id}"
        elif self.condition is not None:
            where += f" If-None-Exist: {self.condition}"
        return f"{self.method} {where} ({self.reason})"


class ProvenanceCount(enum.StrEnum):
    """What happened to one Provenance, for the sink's summary."""

    WRITTEN = "written"  # with the subject creation or change it records
    REPAIRED = "repaired"  # missing for a stored subject version, written by this run
    NOT_WRITTEN = "not written"  # the write failed: the next run writes it
    WOULD_WRITE = "would write"  # dry run
    WOULD_REPAIR = "would repair"  # dry run


@dataclass(slots=True)
class Tally:
    """What the sink did for its patients, counted for one truthful summary line.

    `outcomes` counts what was done to ResearchSubjects (a subject created whose Provenance then
    failed still counts as created); `failed` counts patients whose write failed before anything
    was written for them.
    """

    outcomes: Counter[str] = field(default_factory=Counter)
    provenance: Counter[str] = field(default_factory=Counter)
    failed: int = 0

    def line(self) -> str:
        """`sink: created 20, unchanged 6; Provenance written 20, repaired 3; failed 1 (...)`."""
        parts = []
        if self.outcomes:
            parts.append(", ".join(f"{k} {n}" for k, n in sorted(self.outcomes.items())))
        counted = [f"{c.value} {self.provenance[c]}" for c in ProvenanceCount if self.provenance[c]]
        if counted:
            text = "Provenance " + ", ".join(counted)
            if self.provenance[ProvenanceCount.NOT_WRITTEN]:
                text += " (the next run writes them)"
            parts.append(text)
        if self.failed:
            parts.append(f"failed {self.failed} (see errors)")
        return "sink: " + ("; ".join(parts) or "nothing to do")
