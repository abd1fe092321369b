"""The typed facts the criteria engine reads: small frozen records, nothing FHIR-shaped beyond them.

Facts are built from FHIR JSON at the edge (`adapter.facts.extract`); the engine never sees a dict.
Lab values arrive already normalised to their analyte's canonical unit, or with the reason they
could not be.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapter.facts.dates import FhirDate


@dataclass(frozen=True, slots=True)
class Coding:
    """A (system, code) pair; codes match on both."""

    system: str
    code: str

    def token(self) -> str:
        return f"{self.system}|{self.code}"


@dataclass(frozen=True, slots=True)
class Normalised:
    """A value in its analyte's canonical unit.

    `comparator` is the recorded one (`<`, `<=`, `>`, `>=`) or None; conversions are positive
    factors, so it keeps its direction. `via` says how the unit was read: the UCUM code, or the
    unit text through the synonym table.
    """

    value: float
    unit: str
    comparator: str | None = None
    via: str = ""
    #: the mapping file of the unit synonym the unit text was read through, if any
    synonym_source: str | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """A value as the source wrote it."""

    value: float | None
    unit: str | None
    code: str | None
    comparator: str | None = None
    system: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceRange:
    """One Observation.referenceRange entry, its bounds normalised where they could be."""

    low: Normalised | None = None
    high: Normalised | None = None
    #: why `high` was recorded but could not be normalised (an unconvertible ULN gives unknown)
    high_problem: str | None = None
    applies_to: tuple[Coding, ...] = ()
    age_low_years: float | None = None
    age_high_years: float | None = None


@dataclass(frozen=True, slots=True)
class LabValue:
    """One usable-or-not measurement of one analyte (an Observation, or one of its components)."""

    analyte: str
    reference: str
    code: Coding
    status: str
    date: FhirDate | None
    recorded: Recorded | None
    normalised: Normalised | None
    #: why `normalised` is None (no value, unknown unit, ...); None when normalised
    problem: str | None = None
    version: str | None = None
    reference_ranges: tuple[ReferenceRange, ...] = ()
    #: coded answers (valueCodeableConcept), for scores and presence tests
    value_codes: tuple[Coding, ...] = ()
    #: Observation.issued: among corrections of one effective time, the later issued decides
    issued: FhirDate | None = None
    #: a value was recorded but is outside the analyte's plausibility bounds: as if it had none
    implausible: bool = False
    #: which mapping file gave each code, unit synonym and bound used to read it
    #: (`code http://loinc.org|1742-6: mappings/analytes.yaml`), for the evidence
    mapping_sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConditionFact:
    reference: str
    codes: tuple[Coding, ...]
    clinical_status: str | None
    verification_status: str | None
    onset: FhirDate | None = None
    recorded_date: FhirDate | None = None
    stage_codes: tuple[Coding, ...] = ()
    version: str | None = None
    abatement: Abatement | None = None


@dataclass(frozen=True, slots=True)
class Abatement:
    """Condition.abatement[x], as far as it tells when the Condition ended.

    `date` is abatementDateTime or abatementPeriod.end; `years` is abatementAge, or the high (else
    low) of abatementRange, counted from birthDate; `ended` is an abatementString, or
    abatementBoolean true: ended, at an unknown date.
    """

    date: FhirDate | None = None
    years: float | None = None
    ended: bool = False


@dataclass(frozen=True, slots=True)
class ProcedureFact:
    reference: str
    codes: tuple[Coding, ...]
    status: str | None
    performed: FhirDate | None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class PatientInfo:
    reference: str
    birth_date: FhirDate | None
    gender: str | None
    deceased_boolean: bool | None = None
    deceased_date: FhirDate | None = None
    #: deceasedDateTime was present but unparseable
    deceased_unreadable: bool = False
    version: str | None = None
    identifiers: tuple[tuple[str, str], ...] = ()
    #: sex from the sex-for-clinical-use or US Core birth-sex extension ('male', 'female', or
    #: 'unknown' for other values or two that disagree); None when neither extension is present
    recorded_sex: str | None = None
    #: the name and medical record number people know the patient by (adapter.facts.identity);
    #: for results.json and the CSVs only, never read by the engine, never logged
    name: str | None = None
    mrn: str | None = None

    @property
    def sex(self) -> str | None:
        """The sex criteria use: the extensions where present, else gender."""
        return self.recorded_sex if self.recorded_sex is not None else self.gender


@dataclass(frozen=True, slots=True)
class PatientFacts:
    """Everything the engine knows about one patient."""

    patient: PatientInfo
    labs: tuple[LabValue, ...] = ()
    conditions: tuple[ConditionFact, ...] = ()
    procedures: tuple[ProcedureFact, ...] = ()
    #: Observations of this patient that were needed but unusable, with reasons (for the report)
    notes: tuple[str, ...] = field(default=())
