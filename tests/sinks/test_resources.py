"""The builders of written resources (trial-spec, 'What gets written')."""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.researchstudy import ResearchStudy
from fhir.resources.R4B.researchsubject import ResearchSubject

import adapter
from adapter.criteria.results import Status
from adapter.sinks import resources
from adapter.sinks.resources import StudyInfo

STUDY = StudyInfo(
    trial_id="hcc-ablation-lenvatinib-pd1",
    identifier_system="https://clinicaltrials.gov",
    identifier_value="NCT05803928",
    title="Ablation in Combination With Lenvatinib and Anti-PD-1 Antibodies",
)
AS_OF = date(2026, 6, 15)
RECORDED = datetime(2026, 6, 15, 9, 30, tzinfo=timezone(timedelta(hours=8)))


def spec_id(system: str, value: str) -> str:
    """The spec's formula, written out independently of the adapter."""
    return "ta-" + hashlib.sha256(f"{system}|{value}".encode()).hexdigest()[:40]


def has_tag(resource: dict[str, Any]) -> bool:
    return {"system": "urn:trial-adapter", "code": "pre-screen"} in resource["meta"]["tag"]


def test_deterministic_id_follows_the_spec_formula() -> None:
    """The id is ta- plus the first 40 hex digits of sha256(system|value)."""
    got = resources.deterministic_id("https://clinicaltrials.gov", "NCT05803928")
    assert got == spec_id("https://clinicaltrials.gov", "NCT05803928")
    assert len(got) == 43
    assert got == resources.deterministic_id("https://clinicaltrials.gov", "NCT05803928")


def test_research_study_has_identifier_title_status_and_id() -> None:
    """The ResearchStudy is active, named by its registry identifier, tagged and valid."""
    study = resources.research_study(STUDY)
    ResearchStudy.model_validate(study)
    assert study["id"] == spec_id("https://clinicaltrials.gov", "NCT05803928")
    assert study["id"] == STUDY.resource_id
    assert study["identifier"] == [{"system": "https://clinicaltrials.gov", "value": "NCT05803928"}]
    assert study["title"] == STUDY.title
    assert study["status"] == "active"
    assert has_tag(study)


def test_device_names_the_adapter_and_its_version() -> None:
    """The Device carries the adapter identifier, name and version."""
    dev = resources.device()
    Device.model_validate(dev)
    assert dev["id"] == spec_id("urn:trial-adapter:device", "trial-adapter")
    assert dev["identifier"] == [{"system": "urn:trial-adapter:device", "value": "trial-adapter"}]
    assert dev["deviceName"][0]["name"] == "trial-adapter"
    assert dev["deviceName"][0]["type"] in {"manufacturer-name", "user-friendly-name"}
    assert dev["version"] == [{"value": adapter.__version__}]
    assert has_tag(dev)


def test_subject_identifier_is_trial_slash_patient() -> None:
    """The subject identifier is urn:trial-adapter:research-subject|<trial>/<patient>."""
    assert resources.subject_identifier("t1", "p1") == (
        "urn:trial-adapter:research-subject",
        "t1/p1",
    )


@pytest.mark.parametrize(
    ("status", "code"),
    [(Status.CANDIDATE, "candidate"), (Status.POTENTIAL_CANDIDATE, "potential-candidate")],
)
def test_research_subject_carries_status_references_and_period(status: Status, code: str) -> None:
    """The ResearchSubject names study, patient, status and the as-of date as period.start."""
    subject = resources.research_subject(STUDY, "pat-1", status, AS_OF)
    ResearchSubject.model_validate(subject)
    value = "hcc-ablation-lenvatinib-pd1/pat-1"
    assert subject["id"] == spec_id("urn:trial-adapter:research-subject", value)
    assert subject["identifier"] == [
        {"system": "urn:trial-adapter:research-subject", "value": value}
    ]
    assert subject["status"] == code
    assert subject["study"] == {"reference": f"ResearchStudy/{STUDY.resource_id}"}
    assert subject["individual"] == {"reference": "Patient/pat-1"}
    assert subject["period"] == {"start": "2026-06-15"}
    assert has_tag(subject)


def test_both_subject_status_codes_are_r4_research_subject_statuses() -> None:
    """candidate and potential-candidate are in the R4 research-subject-status value set."""
    extra = ResearchSubject.model_fields["status"].json_schema_extra
    assert isinstance(extra, dict)
    enum_values = extra["enum_values"]
    assert isinstance(enum_values, list)
    assert set(enum_values) >= resources.ADAPTER_STATUSES


def test_research_subject_accepts_a_logical_individual_reference() -> None:
    """A caller may pass a logical reference (identifier) for the individual."""
    logical = {"identifier": {"system": "urn:oid:1.2.3", "value": "MRN-9"}, "type": "Patient"}
    subject = resources.research_subject(STUDY, "pat-1", Status.CANDIDATE, AS_OF, logical)
    ResearchSubject.model_validate(subject)
    assert subject["individual"] == logical
    assert subject["individual"] is not logical


def test_no_research_subject_for_an_ineligible_patient() -> None:
    """Ineligible patients get no ResearchSubject."""
    with pytest.raises(ValueError, match="ineligible"):
        resources.research_subject(STUDY, "pat-1", Status.INELIGIBLE, AS_OF)


def test_an_invalid_resource_is_refused_without_echoing_its_values() -> None:
    """A resource that would not validate is never returned, and the error hides the inputs."""
    bad = StudyInfo("t", "https://clinicaltrials.gov", "NCT1", title="")  # empty string: invalid
    with pytest.raises(ValueError, match="title") as info:
        resources.research_study(bad)
    assert "input" not in str(info.value)


def test_with_status_keeps_period_and_extra_fields_and_drops_version() -> None:
    """Promoting a subject keeps period.start and other fields, and lets the server set meta."""
    existing = resources.research_subject(STUDY, "pat-1", Status.POTENTIAL_CANDIDATE, AS_OF)
    existing["period"] = {"start": "2026-01-02T08:00:00+08:00"}
    existing["meta"] = {"versionId": "4", "lastUpdated": "2026-01-02T00:00:00Z", "source": "#x"}
    updated = resources.with_status(existing, Status.CANDIDATE)
    ResearchSubject.model_validate(updated)
    assert updated["status"] == "candidate"
    assert updated["period"] == {"start": "2026-01-02T08:00:00+08:00"}
    assert updated["meta"]["source"] == "#x"
    assert "versionId" not in updated["meta"]
    assert "lastUpdated" not in updated["meta"]
    assert has_tag(updated)
    assert existing["status"] == "potential-candidate"  # the input is not modified


def test_provenance_targets_the_versioned_subject_and_hashes_its_id() -> None:
    """Provenance: versioned target, Device agent, source entities, policy, spec id."""
    sid = resources.subject_id("hcc-ablation-lenvatinib-pd1", "pat-1")
    value = "hcc-ablation-lenvatinib-pd1/pat-1"
    entities = ["Observation/1/_history/2", "Condition/c1", "Observation/1/_history/2"]
    policy = ["urn:trial-adapter:trial:hcc-ablation-lenvatinib-pd1", "urn:sha256:abc123"]
    prov = resources.provenance(sid, "2", value, RECORDED, entities, policy)
    Provenance.model_validate(prov)
    assert prov["id"] == spec_id("urn:trial-adapter:research-subject", f"{value}|2")
    assert prov["target"] == [{"reference": f"ResearchSubject/{sid}/_history/2"}]
    assert prov["recorded"] == "2026-06-15T09:30:00+08:00"
    assert prov["agent"][0]["who"] == {"reference": f"Device/{resources.device()['id']}"}
    assert prov["entity"] == [
        {"role": "source", "what": {"reference": "Observation/1/_history/2"}},
        {"role": "source", "what": {"reference": "Condition/c1"}},
    ]
    assert prov["policy"] == policy
    assert has_tag(prov)


def test_provenance_of_another_version_has_another_id() -> None:
    """Each recorded subject version gets its own Provenance id."""
    sid = resources.subject_id("t", "p")
    first = resources.provenance(sid, "1", "t/p", RECORDED, [], [])
    second = resources.provenance(sid, "2", "t/p", RECORDED, [], [])
    assert first["id"] != second["id"]


def test_provenance_without_a_version_targets_the_plain_reference() -> None:
    """With no version known the target is unversioned and empty lists are left out."""
    sid = resources.subject_id("t", "p")
    prov = resources.provenance(sid, None, "t/p", RECORDED, [], [])
    Provenance.model_validate(prov)
    assert prov["target"] == [{"reference": f"ResearchSubject/{sid}"}]
    assert "entity" not in prov
    assert "policy" not in prov


def test_provenance_refuses_a_naive_recorded_time() -> None:
    """recorded is a FHIR instant, so it needs a time zone."""
    with pytest.raises(ValueError, match="time zone"):
        resources.provenance("ta-x", "1", "t/p", datetime(2026, 6, 15, 9, 30), [], [])


def test_provenance_id_is_the_spec_hash_of_identifier_and_version() -> None:
    """provenance_id hashes `system|value|version` of the subject identifier."""
    got = resources.provenance_id("t/p", "3")
    assert got == spec_id("urn:trial-adapter:research-subject", "t/p|3")
    assert resources.provenance_id("t/p", None) == spec_id(
        "urn:trial-adapter:research-subject", "t/p|"
    )


def test_provenance_takes_logical_entities_and_another_agent() -> None:
    """Reference objects are entities as given (deduplicated); agent names the server's Device."""
    logical = {"type": "Observation", "identifier": {"system": "https://ehr/fhir", "value": "x"}}
    same = {"identifier": {"value": "x", "system": "https://ehr/fhir"}, "type": "Observation"}
    prov = resources.provenance(
        "1002", "1", "t/p", RECORDED, [logical, same, "Patient/p"], [], agent="Device/1001"
    )
    Provenance.model_validate(prov)
    assert prov["entity"] == [
        {"role": "source", "what": logical},
        {"role": "source", "what": {"reference": "Patient/p"}},
    ]
    assert prov["entity"][0]["what"] is not logical
    assert prov["agent"][0]["who"] == {"reference": "Device/1001"}
    assert prov["target"] == [{"reference": "ResearchSubject/1002/_history/1"}]


def test_trial_policy_names_the_trial_and_its_content_hash() -> None:
    """The policy URI is urn:trial-adapter:trial:<id>#sha256:<hash>."""
    policy = resources.trial_policy("hcc-ablation-lenvatinib-pd1", "ab12")
    assert policy == "urn:trial-adapter:trial:hcc-ablation-lenvatinib-pd1#sha256:ab12"


def test_logical_references_carry_type_and_identifier_only() -> None:
    """Logical references: type and identifier, no literal reference and no display."""
    assert resources.logical_reference("Patient", "urn:oid:1.2", "MRN-9") == {
        "type": "Patient",
        "identifier": {"system": "urn:oid:1.2", "value": "MRN-9"},
    }
    assert resources.source_reference("https://ehr/fhir", "Observation/1/_history/3") == {
        "type": "Observation",
        "identifier": {"system": "https://ehr/fhir", "value": "Observation/1/_history/3"},
    }


def test_research_subject_cites_a_server_assigned_study_id() -> None:
    """study_id replaces the deterministic ResearchStudy id in the study reference."""
    subject = resources.research_subject(STUDY, "p", Status.CANDIDATE, AS_OF, study_id="1001")
    assert subject["study"] == {"reference": "ResearchStudy/1001"}


def test_without_id_copies_the_resource_without_its_id() -> None:
    """A create (POST) body has no id; the input keeps it."""
    study = resources.research_study(STUDY)
    created = resources.without_id(study)
    assert "id" not in created
    assert created | {"id": study["id"]} == study
    assert "id" in study


@pytest.mark.parametrize(
    ("system", "value", "condition"),
    [
        ("urn:trial-adapter:device", "trial-adapter", "urn:trial-adapter:device|trial-adapter"),
        ("https://clinicaltrials.gov", "NCT05803928", "https://clinicaltrials.gov|NCT05803928"),
        ("urn:x", "a|b,c$d", "urn:x|a%5C|b%5C%2Cc%5C%24d"),
        ("urn:x", "two words&more", "urn:x|two%20words%26more"),
    ],
)
def test_identifier_condition_escapes_the_token_and_encodes_the_query(
    system: str, value: str, condition: str
) -> None:
    """If-None-Exist: identifier=system|value, with FHIR search escapes, percent-encoded."""
    assert resources.identifier_condition(system, value) == f"identifier={condition}"


def test_has_identifier_needs_system_and_value_to_match() -> None:
    """Only an identifier with both the system and the value counts."""
    study = resources.research_study(STUDY)
    assert resources.has_identifier(study, "https://clinicaltrials.gov", "NCT05803928")
    assert not resources.has_identifier(study, "https://clinicaltrials.gov", "NCT0")
    assert not resources.has_identifier(study, "urn:other", "NCT05803928")
    assert not resources.has_identifier({"identifier": "NCT05803928"}, "a", "NCT05803928")
