"""What a sweep found (`SweepResult`), and why an Observation could not be used."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

from adapter.criteria.labs import USABLE_STATUSES
from adapter.criteria.results import PatientVerdict
from adapter.facts.identity import Identity
from adapter.facts.model import LabValue
from adapter.sources.base import ReadNotes, UnreadableItem
from adapter.trials import Trial
from adapter.verdicts import Verdicts

NOT_FOUND = "the Patient resource was not found in the source"


@dataclass(frozen=True, slots=True)
class PatientFailure:
    patient: str
    reason: str
    #: the server's own words behind `reason` (FhirError.detail): for the owner-only results only
    detail: str = ""


@dataclass
class SweepResult:
    trial: Trial
    as_of: date
    #: on disk, in the order evaluated (issue 15); a list given here is copied in
    verdicts: Verdicts = field(default_factory=Verdicts)
    errors: list[PatientFailure] = field(default_factory=list)
    #: resources read per type, and Observations used / skipped / unusable (with reasons)
    stats: Counter[str] = field(default_factory=Counter)
    unusable: Counter[str] = field(default_factory=Counter)
    outside_cohort: list[str] = field(default_factory=list)
    #: per type, resources left out because their subject is another server's patient
    foreign: Counter[str] = field(default_factory=Counter)
    #: Patient reference -> its first identifier (system, value): logical references in sinks
    identifiers: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Patient reference -> name, MRN, birth date, age and sex of each evaluated patient, for
    #: results.json and the CSVs only (never logs or notifications)
    identities: dict[str, Identity] = field(default_factory=dict)
    #: reference -> versioned reference (`Observation/1/_history/3`) of each fact with a version
    versions: dict[str, str] = field(default_factory=dict)
    #: Patient reference -> the ResearchSubject status people set on the sink (withdrawn,
    #: on-study...), read by the sink stage; such a patient is never listed as a new candidate
    people_status: dict[str, str] = field(default_factory=dict)
    #: a dry run's planned sink writes (adapter.sinks.plan.PlannedWrite as dicts)
    planned_writes: list[dict[str, str | None]] = field(default_factory=list)
    #: input lines (and JSON files) the source skipped as unreadable, in the order met
    unreadable: list[UnreadableItem] = field(default_factory=list)
    #: how the cohort was found (issue 13): `form` (search, group:ID, file:NAME) and, for a
    #: Group or a file, its members' counts and the lines that named nobody (no patient data)
    cohort: dict[str, object] = field(default_factory=lambda: {"form": "search"})
    #: how the source read: mode, profile, a switch to per-patient reads, what it cannot reach
    reads: ReadNotes = field(default_factory=ReadNotes)
    #: the Bulk export read (`sweep --bulk`, adapter.bulk.export.Export.summary), else None
    bulk: dict[str, object] | None = None
    #: the export's error files say some data may be missing: nothing may be written
    export_blocking: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.verdicts, Verdicts):
            given: Iterable[PatientVerdict] = self.verdicts
            self.verdicts = Verdicts(given)

    @property
    def withhold_writes(self) -> bool:
        """Whether nothing may be written: an unreadable line names no patient for sure, so any
        patient's data may be missing a piece, and a sink never takes a verdict back."""
        return self.export_blocking or any(item.patient is None for item in self.unreadable)

    @property
    def partial(self) -> bool:
        """Done, but not whole (exit 3): patients under `errors`, input skipped as unreadable,
        or an export whose error files say data may be missing."""
        return bool(self.errors or self.unreadable or self.export_blocking)


def unusable_reason(values: list[LabValue], as_of: date) -> str | None:
    """Why no value of an Observation can be used, or None when one can (for the accounting)."""
    first = values[0]
    if first.status not in USABLE_STATUSES:
        return f"status {first.status}"
    if first.date is None:
        return "no usable date"
    if first.date.first_day > as_of:
        return "dated after as-of"
    if all(v.normalised is None and not v.value_codes for v in values):
        # Reasons hold unit text and codes, never values.
        return next((v.problem for v in values if v.problem), "no usable value")
    return None
