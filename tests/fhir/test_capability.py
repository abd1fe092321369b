"""ServerCapabilities: a HAPI-shaped R4 CapabilityStatement (abridged) and the `_elements` probe."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
import stamina

from adapter.errors import HttpStatusError, InvalidResponseError, TemporaryHttpError
from adapter.fhir.capability import (
    ElementsSupport,
    ServerCapabilities,
    WritePath,
    parse_capability_statement,
    probe_elements_support,
    read_capabilities,
)
from adapter.fhir.client import FhirClient

BASE = "http://fhir.test/fhir"
SP = "http://hl7.org/fhir/SearchParameter"


@pytest.fixture(autouse=True)
def instant_retries() -> Iterator[None]:
    """stamina's test mode: no waits, and the policy's own number of attempts (at most 100)."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


def search_param(name: str, kind: str = "token") -> dict[str, str]:
    return {"name": name, "definition": f"{SP}/clinical-{name}", "type": kind}


def interactions(*codes: str) -> list[dict[str, str]]:
    return [{"code": c} for c in codes]


def resource(kind: str, params: list[str], **extra: Any) -> dict[str, Any]:
    """A `rest.resource` entry the way HAPI writes it."""
    entry = {
        "type": kind,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{kind}",
        "interaction": interactions(
            "search-type", "update", "vread", "read", "patch", "history-instance", "create"
        ),
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": "multiple",
        "referencePolicy": ["logical", "literal"],
        "searchInclude": ["*"],
        "searchParam": [search_param(p) for p in ["_id", "_lastUpdated", *params]],
    }
    entry.update(extra)
    return entry


HAPI = {
    "resourceType": "CapabilityStatement",
    "id": "e8c9bbc3-2a0a-4c8b-b2f3-cfa4b4b5d86b",
    "name": "RestServer",
    "status": "active",
    "date": "2026-06-02T23:55:01.123+00:00",
    "publisher": "Not provided",
    "kind": "instance",
    "software": {"name": "HAPI FHIR Server", "version": "8.0.0"},
    "implementation": {"description": "HAPI FHIR R4 Server", "url": BASE},
    "fhirVersion": "4.0.1",
    "format": ["application/fhir+xml", "xml", "application/fhir+json", "json", "html/json"],
    "patchFormat": ["application/fhir+json", "application/json-patch+json"],
    "rest": [
        {
            "mode": "server",
            "resource": [
                resource(
                    "Patient",
                    ["identifier", "birthdate"],
                    operation=[
                        {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/x"}
                    ],
                ),
                resource("Observation", ["patient", "code", "date", "subject"]),
                resource("Condition", ["patient", "code", "clinical-status"]),
                resource("Procedure", ["patient", "code"]),
                resource("ResearchStudy", ["identifier", "title"]),
                resource("ResearchSubject", ["study", "individual", "status"]),
            ],
            "interaction": interactions("history-system", "transaction", "search-system", "batch"),
            "operation": [
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/export"},
                {"name": "$meta", "definition": "http://hapi.test/OperationDefinition/meta"},
            ],
        }
    ],
}


def patient_page(tags: list[dict[str, str]] | None) -> dict[str, Any]:
    """A one-Patient searchset; `tags` go in meta.tag (None: no meta at all)."""
    patient: dict[str, Any] = {"resourceType": "Patient", "id": "p1"}
    if tags is not None:
        patient["meta"] = {"versionId": "1", "tag": tags}
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [{"resource": patient, "search": {"mode": "match"}}],
    }


SUBSETTED_TAG = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}


def run(call: Any) -> Any:
    async def main() -> Any:
        async with httpx.AsyncClient() as http:
            return await call(FhirClient(http, BASE))

    return asyncio.run(main())


def test_a_hapi_capability_statement_is_read_into_server_capabilities() -> None:
    """Version, formats, per-type interactions, search params and write options, system level."""
    caps = parse_capability_statement(HAPI)
    assert (caps.fhir_version, caps.software) == ("4.0.1", "HAPI FHIR Server 8.0.0")
    assert caps.supports_json
    observation = caps.resource("Observation")
    assert observation is not None
    assert observation.search_params == {
        "_id",
        "_lastUpdated",
        "patient",
        "code",
        "date",
        "subject",
    }
    assert observation.supports("search-type")
    assert observation.supports("vread")
    assert not observation.supports("delete")
    assert observation.conditional_create
    assert observation.conditional_update
    assert observation.update_create
    assert observation.versioning == "versioned-update"
    assert caps.searches("Condition", "clinical-status")
    assert not caps.searches("ResearchSubject", "identifier")
    assert caps.resource("MedicationRequest") is None
    assert caps.transaction
    assert caps.batch
    assert caps.operations == {"export", "meta"}
    assert caps.export_levels == ("system", "Patient")
    assert caps.elements is ElementsSupport.UNKNOWN
    assert not caps.supports_elements


def test_describe_says_what_the_adapter_does_about_the_server() -> None:
    """Short log lines: server, _elements, gaps for the adapter's searches and writes."""
    lines = parse_capability_statement(HAPI).describe()
    assert lines[0] == "server: HAPI FHIR Server 8.0.0, FHIR 4.0.1"
    assert "ResearchSubject: no search parameter 'identifier'; using deterministic ids" in lines
    assert not any(line.startswith("ResearchStudy: no search parameter") for line in lines)
    assert "system interactions: transaction, batch" in lines
    assert "$export: system, Patient" in lines
    assert any(line.startswith("_elements: unknown") for line in lines)
    assert not any("Observation" in line for line in lines)


def test_describe_names_missing_interactions_and_options() -> None:
    """A server without search params, updateCreate or versioning gets a line for each gap."""
    body = copy.deepcopy(HAPI)
    rest = body["rest"][0]
    rest["resource"] = [
        resource("Observation", ["code"]),
        resource("ResearchSubject", [], updateCreate=False, versioning="no-version"),
        resource("Procedure", [], interaction=interactions("read")),
    ]
    rest["interaction"] = []
    rest["operation"] = []
    body["format"] = ["application/fhir+xml"]
    lines = parse_capability_statement(body).describe()
    assert "Observation: no search parameter 'patient' listed; searches use it anyway" in lines
    assert "Procedure: no search-type interaction listed; searches are sent anyway" in lines
    assert "Patient: not listed; searches are sent anyway" in lines
    assert "ResearchStudy: not listed; using deterministic ids (GET, then PUT); may fail" in lines
    assert (
        "ResearchSubject: updateCreate is false; creating at a deterministic id may fail" in lines
    )
    assert "ResearchSubject: not versioned; If-Match updates may be refused" in lines
    assert "system interactions: no transaction or batch" in lines
    assert "$export: not offered" in lines
    assert "formats: FHIR JSON is not listed; JSON is asked for anyway" in lines


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "CapabilityStatement"},
        {"resourceType": "CapabilityStatement", "rest": "server", "format": "json"},
        {"resourceType": "CapabilityStatement", "rest": [{"resource": [{"type": 7}, "x"]}]},
        {
            "resourceType": "CapabilityStatement",
            "fhirVersion": 4,
            "software": "HAPI",
            "rest": [{"mode": "server", "interaction": [{"code": None}, "batch"]}],
        },
    ],
)
def test_fields_of_the_wrong_shape_count_as_absent(body: dict[str, Any]) -> None:
    """A loosely filled CapabilityStatement parses to empty capabilities, never a crash."""
    caps = parse_capability_statement(body)
    assert caps == ServerCapabilities()
    assert caps.describe()[0] == "server: software not named, FHIR version not stated"


def test_the_server_mode_rest_is_the_one_read() -> None:
    """With a client and a server `rest`, the server's is used."""
    body = copy.deepcopy(HAPI)
    body["rest"].insert(0, {"mode": "client", "interaction": interactions("transaction")})
    body["rest"][1]["interaction"] = interactions("batch")
    caps = parse_capability_statement(body)
    assert (caps.batch, caps.transaction) == (True, False)


def test_another_resource_than_a_capability_statement_is_invalid() -> None:
    """An OperationOutcome (or a login page's JSON) from /metadata is an InvalidResponseError."""
    with pytest.raises(InvalidResponseError, match="got OperationOutcome"):
        parse_capability_statement({"resourceType": "OperationOutcome"}, url=f"{BASE}/metadata")


@pytest.mark.parametrize(
    ("page", "found"),
    [
        (patient_page([SUBSETTED_TAG]), ElementsSupport.HONOURED),
        (patient_page([{"system": "http://x.test/tags", "code": "a"}]), ElementsSupport.IGNORED),
        (patient_page(None), ElementsSupport.IGNORED),
        (patient_page([{"code": "SUBSETTED"}]), ElementsSupport.IGNORED),
        ({"resourceType": "Bundle", "type": "searchset", "total": 0}, ElementsSupport.UNKNOWN),
    ],
)
@respx.mock
def test_the_elements_probe_looks_for_the_subsetted_tag(
    page: dict[str, Any], found: ElementsSupport
) -> None:
    """SUBSETTED (with its v3-ObservationValue system) in meta.tag means _elements is honoured."""
    route = respx.get(f"{BASE}/Patient").respond(200, json=page)
    assert run(probe_elements_support) is found
    assert route.calls.last.request.url.params.multi_items() == [
        ("_count", "1"),
        ("_elements", "id"),
    ]


@respx.mock
def test_a_refused_elements_parameter_means_ignored() -> None:
    """A 400 to the probe (an unknown parameter) is IGNORED, not a failed run."""
    respx.get(f"{BASE}/Patient").respond(400, json={"resourceType": "OperationOutcome"})
    assert run(probe_elements_support) is ElementsSupport.IGNORED


@pytest.mark.parametrize(
    ("status", "error"), [(401, HttpStatusError), (403, HttpStatusError), (503, TemporaryHttpError)]
)
@respx.mock
def test_auth_and_temporary_failures_of_the_probe_raise(
    status: int, error: type[HttpStatusError]
) -> None:
    """Failures every later search would meet too are not hidden as 'ignored'."""
    respx.get(f"{BASE}/Patient").respond(status)
    with pytest.raises(error):
        run(probe_elements_support)


@respx.mock
def test_read_capabilities_reads_metadata_once_and_probes() -> None:
    """One GET [base]/metadata and one probe search make the ServerCapabilities."""
    metadata = respx.get(f"{BASE}/metadata").respond(200, json=HAPI)
    probe = respx.get(f"{BASE}/Patient").respond(200, json=patient_page([SUBSETTED_TAG]))
    caps = run(read_capabilities)
    assert (metadata.call_count, probe.call_count) == (1, 1)
    assert caps.supports_elements
    assert caps.resource("Patient") is not None
    assert any(line.startswith("_elements: honoured") for line in caps.describe())


@respx.mock
def test_read_capabilities_can_skip_the_probe() -> None:
    """probe_elements=False sends only the metadata request."""
    respx.get(f"{BASE}/metadata").respond(200, json=HAPI)
    caps = run(lambda c: read_capabilities(c, probe_elements=False))
    assert len(respx.calls) == 1
    assert caps.elements is ElementsSupport.UNKNOWN


@pytest.mark.parametrize(
    ("params", "warned"),
    [
        (["identifier"], False),  # created conditionally: updateCreate is not needed
        ([], True),  # PUT at a deterministic id: updateCreate is needed
    ],
)
def test_the_update_create_warning_judges_only_writes_at_fixed_ids(
    params: list[str], warned: bool
) -> None:
    """Issue 10: the warning named types that are never PUT at a new id."""
    body = copy.deepcopy(HAPI)
    body["rest"][0]["resource"] = [
        resource(kind, params, updateCreate=False)
        for kind in ("ResearchStudy", "Device", "ResearchSubject")
    ]
    lines = parse_capability_statement(body).describe()
    for kind in ("ResearchStudy", "Device", "ResearchSubject"):
        line = f"{kind}: updateCreate is false; creating at a deterministic id may fail"
        assert (line in lines) is warned


@pytest.mark.parametrize(
    ("params", "update_create", "path", "line"),
    [
        (["target"], True, WritePath.FIXED_ID, None),
        (["target"], False, WritePath.CONDITIONAL, "created with If-None-Exist on target"),
        ([], False, WritePath.POST, "created by one POST each"),
    ],
)
def test_provenance_is_created_as_the_server_allows(
    params: list[str], update_create: bool, path: WritePath, line: str | None
) -> None:
    """trial-spec v2: PUT at its id, else If-None-Exist on target, else one POST."""
    body = copy.deepcopy(HAPI)
    body["rest"][0]["resource"] = [resource("Provenance", params, updateCreate=update_create)]
    caps = parse_capability_statement(body)
    assert caps.write_path("Provenance") is path
    said = [x for x in caps.describe() if x.startswith("Provenance:")]
    assert said == ([] if line is None else [next(x for x in said if line in x)])
    assert not any("deterministic id may fail" in x for x in said)
