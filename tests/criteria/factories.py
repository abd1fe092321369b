"""Small builders of facts for engine tests (no FHIR JSON involved)."""

from __future__ import annotations

from datetime import date

from adapter.analytes import Analyte
from adapter.codes import CodePattern, CodeSet
from adapter.criteria.context import Context
from adapter.facts.dates import parse_fhir_date
from adapter.facts.model import (
    Coding,
    ConditionFact,
    LabValue,
    Normalised,
    PatientFacts,
    PatientInfo,
    Recorded,
)

AS_OF = date(2026, 6, 15)
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"


def fdate(text: str | None):  # type: ignore[no-untyped-def]
    return parse_fhir_date(text) if text else None


def patient(birth: str | None = "1970-01-01", **kw: object) -> PatientInfo:
    return PatientInfo("Patient/p1", fdate(birth), kw.pop("gender", "male"), **kw)  # type: ignore[arg-type]


def condition(
    code: str,
    system: str = ICD10CM,
    clinical: str | None = "active",
    verification: str | None = None,
    onset: str | None = None,
) -> ConditionFact:
    return ConditionFact(
        f"Condition/{code}", (Coding(system, code),), clinical, verification, fdate(onset)
    )


def lab(
    analyte: str,
    value: float | None,
    when: str | None,
    unit: str = "g/dL",
    *,
    status: str = "final",
    comparator: str | None = None,
    problem: str | None = None,
    ref: str = "Observation/o1",
) -> LabValue:
    norm = None if value is None or problem else Normalised(value, unit, comparator, "UCUM code")
    return LabValue(
        analyte=analyte,
        reference=ref,
        code=Coding(LOINC, "718-7"),
        status=status,
        date=fdate(when),
        recorded=Recorded(value, unit, unit, comparator),
        normalised=norm,
        problem=problem if norm is None else None,
    )


def codeset(name: str, *patterns: str, exclude: tuple[str, ...] = ()) -> CodeSet:
    """An ICD-10 set matching both the WHO and the CM systems, as the spec's 'ICD-10' entries."""
    systems = (ICD10, ICD10CM)
    return CodeSet(
        name,
        tuple(CodePattern(s, p, "icd") for s in systems for p in patterns),
        tuple(CodePattern(s, p, "icd") for s in systems for p in exclude),
    )


CODESETS = {
    "hcc": codeset("hcc", "C22.0"),
    "possible_hcc": codeset("possible_hcc", "C22.8", "C22.9"),
    "extrahepatic_metastasis": codeset(
        "extrahepatic_metastasis", "C77", "C78", "C79", "C7B", exclude=("C78.7", "C7B.02")
    ),
}
ANALYTES = {
    "hemoglobin": Analyte("hemoglobin", "Hemoglobin", "g/dL", 16114.5, None, False, {}),
    "bilirubin_total": Analyte(
        "bilirubin_total", "Bilirubin, total", "mg/dL", 584.66, None, False, {}
    ),
}


def ctx(
    *,
    labs: tuple[LabValue, ...] = (),
    conditions: tuple[ConditionFact, ...] = (),
    info: PatientInfo | None = None,
    as_of: date = AS_OF,
) -> Context:
    facts = PatientFacts(info or patient(), labs=labs, conditions=conditions)
    return Context(facts, as_of, CODESETS, ANALYTES)
