"""Who a patient is, for the coordinator who calls them: name, MRN, birth date, age, sex (issue 12).

Read from the Patient at the edge, like every other fact, but the criteria engine never reads it:
it goes to results.json and the CSVs beside the logical reference, and never to logs or
notifications. Odd shapes (a name that is not a list, `given` that is not a list of strings)
give None, never a crash and never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from adapter.facts.model import PatientInfo

#: HL7 v2 table 0203 (identifier type): `MR` is the medical record number.
IDENTIFIER_TYPES = "http://terminology.hl7.org/CodeSystem/v2-0203"
MRN_TYPE = "MR"
#: HumanName.use, in the order a name is chosen; otherwise the first name is taken.
_NAME_USES = ("official", "usual")


@dataclass(frozen=True, slots=True)
class Identity:
    """What results.json and the CSVs show beside `Patient/<id>`; None where unknown."""

    name: str | None = None
    mrn: str | None = None
    #: the birthDate as recorded (a partial date stays partial: `1959-02`)
    birth_date: str | None = None
    #: whole years on the as-of date; None when a partial birthDate leaves it open
    age: int | None = None
    sex: str | None = None


def identity_of(info: PatientInfo, as_of: date) -> Identity:
    """The identity of a patient on `as_of`. Sex is the one the criteria use (`PatientInfo.sex`:
    the clinical-use or birth-sex extension where present, else gender), so that a coordinator
    reads the sex the sex-specific criteria were decided on."""
    birth = info.birth_date
    age = None
    if birth is not None:
        youngest = _completed_years(birth.last_day, as_of)
        oldest = _completed_years(birth.first_day, as_of)
        # A partial date (`1959`) gives the age that holds for every day it may stand for, or
        # none; a birthDate after as-of gives none.
        if youngest == oldest and youngest >= 0:
            age = youngest
    return Identity(
        name=info.name,
        mrn=info.mrn,
        birth_date=birth.text if birth is not None else None,
        age=age,
        sex=info.sex,
    )


def _completed_years(birth: date, on: date) -> int:
    """Age in completed years, the birthday itself counting (as `criteria.kinds.completed_years`,
    which facts may not import: the engine sits above them)."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def human_name(patient: Mapping[str, Any]) -> str | None:
    """Patient.name for people: the `official` HumanName, else the `usual`, else the first; its
    `text` where given, else the given names and the family name joined by spaces."""
    names = patient.get("name")
    if not isinstance(names, list | tuple):
        return None
    chosen = next(
        (n for use in _NAME_USES for n in names if isinstance(n, Mapping) and n.get("use") == use),
        names[0] if names else None,
    )
    if not isinstance(chosen, Mapping):
        return None
    text = chosen.get("text")
    if isinstance(text, str) and text.strip():
        return " ".join(text.split())
    return _parts(chosen.get("given"), chosen.get("family"))


def _parts(given: object, family: object) -> str | None:
    """`given` (a list of strings) and `family` (a string) joined, or None if either is odd."""
    if given is None:
        given = []
    if not isinstance(given, list | tuple) or not all(isinstance(g, str) for g in given):
        return None
    if family is not None and not isinstance(family, str):
        return None
    words = [w for part in [*given, family or ""] for w in part.split()]
    return " ".join(words) or None


def mrn_of(patient: Mapping[str, Any], mrn_system: str | None = None) -> str | None:
    """The medical record number: the identifier of the site's `mrn_system`, else the first of
    type MR (v2-0203), else None.

    Never any other identifier: Synthea's first one is a social security number, and a sink's
    `identifiers[0]` is whatever the source listed first.
    """
    identifiers = [i for i in _list(patient.get("identifier")) if isinstance(i, Mapping)]
    if mrn_system is not None:
        for ident in identifiers:
            value = _value(ident)
            if ident.get("system") == mrn_system and value is not None:
                return value
    for ident in identifiers:
        value = _value(ident)
        if value is not None and _is_mrn_type(ident.get("type")):
            return value
    return None


#: identifier types (v2-0203) of national or personal documents: social security, social
#: beneficiary, tax, driver's licence, passport, national person id, and the like
PERSONAL_TYPES = frozenset({"SS", "SB", "TAX", "DL", "PPN", "NI", "NNxxx", "PEN", "CZ", "BCT"})
#: identifier systems of such numbers (US SSN in its URL and OID forms)
PERSONAL_SYSTEMS = frozenset({"http://hl7.org/fhir/sid/us-ssn", "urn:oid:2.16.840.1.113883.4.1"})


def is_personal(identifier: Mapping[str, Any]) -> bool:
    """Whether an identifier is a national or personal document number (an SSN, a passport):
    never read into facts, so it can never be shown, logged or sent to a sink (issue 12)."""
    system = identifier.get("system")
    if isinstance(system, str) and system in PERSONAL_SYSTEMS:
        return True
    kind = identifier.get("type")
    codings = _list(kind.get("coding")) if isinstance(kind, Mapping) else ()
    return any(
        isinstance(c, Mapping)
        and c.get("system") == IDENTIFIER_TYPES
        and isinstance(c.get("code"), str)
        and (c["code"] in PERSONAL_TYPES or c["code"].startswith("NN"))
        for c in codings
    )


def _value(identifier: Mapping[str, Any]) -> str | None:
    value = identifier.get("value")
    return value.strip() if isinstance(value, str) and value.strip() else None


def _is_mrn_type(concept: object) -> bool:
    if not isinstance(concept, Mapping):
        return False
    return any(
        isinstance(c, Mapping) and c.get("system") == IDENTIFIER_TYPES and c.get("code") == MRN_TYPE
        for c in _list(concept.get("coding"))
    )


def _list(value: object) -> list[Any] | tuple[Any, ...]:
    """A JSON array's items; anything else (text, a number, an object) has none."""
    return value if isinstance(value, list | tuple) else ()
