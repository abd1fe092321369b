"""Who a patient is (issue 12): name, MRN, birth date, age and sex, read from the Patient.

The MRN is the identifier of the site's `mrn_system`, else the one of type MR (v2-0203), else
none: never another identifier (Synthea's first one is a social security number). Odd shapes
give None, never a crash.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.facts.dates import parse_fhir_date
from adapter.facts.extract import patient_info
from adapter.facts.identity import Identity, human_name, identity_of, mrn_of
from adapter.facts.model import PatientInfo

V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SITE = "urn:oid:1.2.36.146.595.217.0.1"
SSN = {
    "system": "http://hl7.org/fhir/sid/us-ssn",
    "value": "999-12-3456",
    "type": {"coding": [{"system": V2, "code": "SS"}]},
}
SYNTHEA_MR = {
    "system": "https://github.com/synthetichealth/synthea",
    "value": "a1b2c3",
    "type": {"coding": [{"system": V2, "code": "MR", "display": "Medical Record Number"}]},
}
SITE_MRN = {"system": SITE, "value": "12345"}
AS_OF = date(2026, 6, 15)


def patient(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", **fields}


# --- MRN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifiers", "mrn_system", "mrn"),
    [
        ([SSN, SYNTHEA_MR, SITE_MRN], SITE, "12345"),
        ([SSN, SYNTHEA_MR, SITE_MRN], None, "a1b2c3"),
        ([SSN, SYNTHEA_MR], SITE, "a1b2c3"),
        ([SSN, SITE_MRN], None, None),
        ([SSN], SITE, None),
        ([SSN], None, None),
        ([], SITE, None),
    ],
)
def test_the_mrn_is_the_site_systems_else_the_type_mr_identifier(
    identifiers: list[dict[str, Any]], mrn_system: str | None, mrn: str | None
) -> None:
    """The site's system wins; else type MR; else none at all."""
    assert mrn_of(patient(identifier=identifiers), mrn_system) == mrn


def test_a_social_security_number_listed_first_is_never_the_mrn() -> None:
    """Synthea lists the SSN first: it is never shown, whatever else is there."""
    for mrn_system in (None, SITE, SSN["system"] + "-other"):
        assert mrn_of(patient(identifier=[SSN]), mrn_system) is None
    assert mrn_of(patient(identifier=[SSN, SYNTHEA_MR]), None) == "a1b2c3"


def test_type_mr_must_be_v2_0203s() -> None:
    """A code `MR` of another system is not the v2 identifier type."""
    other = {"value": "x", "type": {"coding": [{"system": "urn:local", "code": "MR"}]}}
    assert mrn_of(patient(identifier=[other])) is None


def test_an_mrn_system_identifier_without_a_value_falls_back_to_type_mr() -> None:
    """A blank value is no MRN."""
    assert mrn_of(patient(identifier=[{"system": SITE, "value": " "}, SYNTHEA_MR]), SITE) == (
        "a1b2c3"
    )


@pytest.mark.parametrize(
    "identifier",
    [
        "12345",
        {"system": SITE, "value": "12345"},
        [None, 3, "x", []],
        [{"system": SITE, "value": 12345}],
        [{"value": "x", "type": "MR"}],
        [{"value": "x", "type": {"coding": "MR"}}],
        [{"value": "x", "type": {"coding": [None, {"system": V2, "code": ["MR"]}]}}],
    ],
)
def test_odd_identifier_shapes_give_no_mrn(identifier: object) -> None:
    """Not a list, not objects, a number for a value, a type of the wrong shape: no MRN."""
    assert mrn_of(patient(identifier=identifier), SITE) is None


# --- name --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "shown"),
    [
        ([{"use": "official", "family": "Synthetic", "given": ["Demo01"]}], "Demo01 Synthetic"),
        ([{"given": ["Ann", "Marie"], "family": "Lee"}], "Ann Marie Lee"),
        ([{"use": "usual", "given": ["Al"]}, {"use": "official", "given": ["Alan"]}], "Alan"),
        ([{"use": "old", "given": ["Old"]}, {"use": "usual", "given": ["Usual"]}], "Usual"),
        ([{"use": "old", "given": ["First"]}, {"use": "nickname", "given": ["Nick"]}], "First"),
        ([{"text": "Dr. Ann  Lee", "given": ["Ann"], "family": "Lee"}], "Dr. Ann Lee"),
        ([{"text": "  ", "given": ["Ann"], "family": "Lee"}], "Ann Lee"),
        ([{"family": "Lee"}], "Lee"),
        ([{"given": ["Ann"]}], "Ann"),
        ([{"given": [" Ann\n"], "family": " Lee "}], "Ann Lee"),
    ],
)
def test_the_name_is_the_official_else_usual_else_first_text_else_given_and_family(
    names: list[dict[str, Any]], shown: str
) -> None:
    """HumanName chosen by use; its text where given, else given names then family."""
    assert human_name(patient(name=names)) == shown


@pytest.mark.parametrize(
    "names",
    [
        None,
        "Ann Lee",
        {"given": ["Ann"], "family": "Lee"},
        [],
        ["Ann Lee"],
        [{}],
        [{"given": "Ann", "family": "Lee"}],
        [{"given": ["Ann", 3], "family": "Lee"}],
        [{"given": ["Ann"], "family": ["Lee"]}],
        [{"use": "official", "given": [""]}],
        [{"text": 3}],
    ],
)
def test_odd_name_shapes_give_no_name(names: object) -> None:
    """A name that is not a list, `given` that is not a list of strings...: no name, no crash."""
    assert human_name(patient(name=names)) is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
_KEYS = st.sampled_from(["use", "text", "given", "family", "system", "value", "type", "coding"])


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "name": _JSON | st.lists(st.dictionaries(_KEYS, _JSON), max_size=3),
            "identifier": _JSON | st.lists(st.dictionaries(_KEYS, _JSON), max_size=3),
        },
    ),
    st.none() | st.text(max_size=5),
)
def test_any_json_gives_a_string_or_none_never_a_crash(res: dict[str, Any], system: Any) -> None:
    """Whatever shape name and identifier have, the result is text or None."""
    assert human_name(res) is None or isinstance(human_name(res), str)
    assert mrn_of(res, system) is None or isinstance(mrn_of(res, system), str)


# --- identity on as-of -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "age"),
    [
        ("1959-02-02", 67),
        ("1959-06-15", 67),
        ("1959-06-16", 66),
        ("2026-06-15", 0),
        ("1959-03", 67),
        ("1959-06", None),
        ("1959", None),
        ("1958-12", 67),
        ("2026-06-16", None),
        ("2026", None),
        (None, None),
    ],
)
def test_age_is_in_whole_years_on_as_of_and_only_when_a_partial_date_settles_it(
    birth: str | None, age: int | None
) -> None:
    """The birthday itself counts; a partial birthDate gives the age that holds on every day it
    may stand for, else none; a birthDate after as-of gives none."""
    info = PatientInfo("Patient/p1", parse_fhir_date(birth), "male")
    assert identity_of(info, AS_OF).age == age


def test_patient_info_fills_the_identity_the_report_shows() -> None:
    """name, MRN (by the site's system), birth date as recorded, age and sex."""
    res = patient(
        identifier=[SSN, SITE_MRN],
        name=[{"use": "official", "family": "Synthetic", "given": ["Demo01"]}],
        gender="female",
        birthDate="1959-02",
    )
    info = patient_info(res, mrn_system=SITE)
    assert (info.name, info.mrn) == ("Demo01 Synthetic", "12345")
    assert identity_of(info, AS_OF) == Identity(
        name="Demo01 Synthetic", mrn="12345", birth_date="1959-02", age=67, sex="female"
    )
    assert patient_info(res).mrn is None


def test_sex_is_the_one_the_criteria_use() -> None:
    """The clinical-use (or birth-sex) extension where present, else gender."""
    info = PatientInfo("Patient/p1", None, "female", recorded_sex="male")
    assert identity_of(info, AS_OF).sex == "male"
    assert identity_of(PatientInfo("Patient/p1", None, None), AS_OF) == Identity()


def test_personal_document_numbers_never_enter_the_facts() -> None:
    """SSN (by system or type SS), passport and driver's licence are dropped at extraction, so
    no report, log or sink can carry them; other identifiers stay."""
    from adapter.facts.extract import patient_info

    v2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"},
            {"type": {"coding": [{"system": v2, "code": "PPN"}]}, "system": "urn:p", "value": "X"},
            {"type": {"coding": [{"system": v2, "code": "DL"}]}, "system": "urn:d", "value": "D"},
            {"system": "urn:hospital:id", "value": "H-1"},
        ],
    }
    assert patient_info(patient).identifiers == (("urn:hospital:id", "H-1"),)
