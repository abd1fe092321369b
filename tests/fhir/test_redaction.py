"""What messages may hold (issue 11, item 1): coded issues, never a server's free text or ids."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import respx

from adapter.errors import (
    ExitCode,
    FhirError,
    HttpStatusError,
    InvalidResponseError,
    PatientError,
    hide_ids,
    redact_url,
)
from adapter.fhir.client import FhirClient
from adapter.fhir.outcome import coded_issues, outcome_text
from adapter.fhir.paging import iter_bundle
from adapter.fhir.resource_types import R4_RESOURCE_TYPES, shown_type

BASE = "http://fhir.test/fhir"
OO = "http://terminology.hl7.org/CodeSystem/operation-outcome"
#: what issue 11 saw printed on stderr: a name, an MRN, a birth date and a deterministic id
PATIENT_WORDS = ("Jane Roe", "MRN 00482915", "1961-04-07", "ta-77101234")
NAMING_A_PATIENT = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "error",
            "code": "processing",
            "details": {
                "coding": [{"system": OO, "code": "MSG_PARAM_INVALID", "display": "Jane Roe"}],
                "text": "Patient Jane Roe (MRN 00482915) born 1961-04-07 is locked",
            },
            "diagnostics": f"{BASE}/ResearchSubject/ta-77101234?patient=x: Jane Roe, MRN 00482915,"
            " born 1961-04-07",
        }
    ],
}


def run(call: Any) -> Any:
    async def main() -> Any:
        async with httpx.AsyncClient() as http:
            return await call(FhirClient(http, BASE))

    return asyncio.run(main())


# -- redact_url ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://h/fhir/ResearchSubject/ta-7710/_history/2?x=1",
            "https://h/fhir/ResearchSubject/{id}/_history/{vid}",
        ),
        ("https://h/fhir/Patient/123/$everything", "https://h/fhir/Patient/{id}/$everything"),
        ("https://h/fhir/Patient/123/Observation", "https://h/fhir/Patient/{id}/Observation"),
        (
            "https://h/api/FHIR/R4/Patient/e63wRTbPfr1p8UW81d8Seiw3",
            "https://h/api/FHIR/R4/Patient/{id}",
        ),
        ("https://h/fhir/Observation/_search", "https://h/fhir/Observation/_search"),
        ("https://h/fhir/Patient/$export", "https://h/fhir/Patient/$export"),
        ("https://h/fhir/ResearchSubject/_history", "https://h/fhir/ResearchSubject/_history"),
        ("https://h/fhir/_history/3", "https://h/fhir/_history/{vid}"),
        ("https://h/fhir/Observation", "https://h/fhir/Observation"),
        ("https://h/fhir/metadata", "https://h/fhir/metadata"),
        ("https://h/fhir/Patient/ta%2D1", "https://h/fhir/Patient/{id}"),
        ("https://user:pw@h:8443/fhir/Patient#frag", "https://h:8443/fhir/Patient"),
        ("http://[::1]:8080/fhir/Patient/1", "http://[::1]:8080/fhir/Patient/{id}"),
        ("ResearchSubject/ta-1/_history/2", "ResearchSubject/{id}/_history/{vid}"),
        (
            "https://files.example/export/Patient-1.ndjson",
            "https://files.example/export/Patient-1.ndjson",
        ),
        ("http://h:99999/fhir", "<unparseable URL>"),
    ],
)
def test_redact_url_hides_query_credentials_and_resource_ids(url: str, shown: str) -> None:
    """A deterministic id maps back to its patient in under a second (issue 11): `{id}`."""
    assert redact_url(url) == shown


def test_the_resource_type_list_is_r4s_and_keeps_base_paths() -> None:
    """146 R4 names (R4B's new ones are not among them); `FHIR`, `R4`, `fhir` are not types."""
    assert len(R4_RESOURCE_TYPES) == 146
    assert {"Patient", "ResearchSubject", "MedicinalProduct", "CatalogEntry"} <= R4_RESOURCE_TYPES
    assert not {"FHIR", "R4", "fhir", "api", "SubscriptionTopic"} & R4_RESOURCE_TYPES


def test_log_paths_and_redacted_urls_hide_the_same_ids() -> None:
    """FhirClient.log_path and redact_url agree on what is an id below the base."""
    client = FhirClient(httpx.AsyncClient(), BASE)
    for path in ("ResearchSubject/ta-1/_history/2", "Patient/p/$everything", "Observation/_search"):
        url = f"{BASE}/{path}"
        assert redact_url(url) == "http://fhir.test" + client.log_path(url)
    # Below the base the first segment is a type even when R4 does not know it.
    assert hide_ids(["SubscriptionTopic", "t1"], leading_type=True) == ["SubscriptionTopic", "{id}"]


def test_every_fhir_error_redacts_its_url() -> None:
    """The url of any FhirError, and its message, hold no id and no query."""
    error = InvalidResponseError("bad", url=f"{BASE}/ResearchSubject/ta-77101234?patient=p1")
    assert error.url == f"{BASE}/ResearchSubject/{{id}}"
    assert "ta-77101234" not in str(error)
    assert "p1" not in str(error)


# -- coded issues ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issues", "coded"),
    [
        ([{"severity": "error", "code": "processing"}], "error/processing"),
        (
            [
                {
                    "severity": "error",
                    "code": "processing",
                    "details": {"coding": [{"system": OO, "code": "MSG_PARAM_INVALID"}]},
                }
            ],
            f"error/processing ({OO}|MSG_PARAM_INVALID)",
        ),
        (
            [{"severity": "fatal", "code": "security", "details": {"coding": [{"code": "4100"}]}}],
            "fatal/security (4100)",
        ),
        ([{"severity": "Jane Roe", "code": "MRN 00482915"}], "?/?"),
        (
            [
                {
                    "severity": "error",
                    "code": "invalid",
                    "details": {"coding": [{"code": "Jane Roe"}]},
                }
            ],
            "error/invalid",
        ),
        (
            [
                {
                    "severity": "error",
                    "code": "invalid",
                    "details": {"coding": [{"system": "urn:x Jane Roe", "code": "C1"}]},
                }
            ],
            "error/invalid (C1)",
        ),
        (
            [{"severity": "warning", "code": "informational"}] * 5,
            "warning/informational; warning/informational; warning/informational; 2 more",
        ),
        ([], ""),
    ],
)
def test_coded_issues_show_only_value_set_codes_and_token_codings(
    issues: list[dict[str, Any]], coded: str
) -> None:
    """Severity and code from their R4 value sets, codings as system|code tokens; the rest out."""
    assert coded_issues({"resourceType": "OperationOutcome", "issue": issues}) == coded


@pytest.mark.parametrize("body", [None, [], "text", {"resourceType": "Bundle"}])
def test_coded_issues_of_something_else_are_empty(body: object) -> None:
    assert coded_issues(body) == ""
    assert outcome_text(body) == ""


@pytest.mark.parametrize("status", [400, 404, 409, 412, 422, 500, 503])
@respx.mock
def test_an_outcome_naming_a_patient_stays_out_of_the_message(status: int) -> None:
    """Issue 11: the name, MRN, birth date and id are in `detail` only; the message has the
    status, the codes and the redacted URL."""
    respx.get(f"{BASE}/ResearchSubject/ta-77101234").respond(status, json=NAMING_A_PATIENT)
    with pytest.raises(HttpStatusError) as caught:
        run(lambda c: c.get_json("ResearchSubject/ta-77101234"))
    error = caught.value
    message = str(error)
    assert message == (
        f"HTTP {status}: error/processing ({OO}|MSG_PARAM_INVALID) ({BASE}/ResearchSubject/{{id}})"
    )
    for word in PATIENT_WORDS:
        assert word not in message
        assert word not in repr(error.args)
    assert "Jane Roe, MRN 00482915" in error.detail
    assert "?patient" not in error.detail  # URLs in the text lose their query...
    assert f"{BASE}/ResearchSubject/{{id}} Jane Roe" in error.detail  # ...and their ids


@respx.mock
def test_a_page_that_is_an_outcome_naming_a_patient_says_only_its_codes() -> None:
    """A 200 OperationOutcome instead of a Bundle (paging.py): coded, the text in `detail`."""
    respx.get(f"{BASE}/Observation").respond(200, json=NAMING_A_PATIENT)

    async def search(client: FhirClient) -> list[Any]:
        return [r async for r in iter_bundle(client, "Observation")]

    with pytest.raises(InvalidResponseError) as caught:
        run(search)
    assert "got OperationOutcome: error/processing" in str(caught.value)
    assert all(word not in str(caught.value) for word in PATIENT_WORDS)
    assert "Jane Roe" in caught.value.detail


@pytest.mark.parametrize(
    ("value", "shown"),
    [("Patient", "Patient"), ("Jane Roe", "an unknown resourceType"), (None, "no resourceType")],
)
def test_a_resource_type_is_repeated_only_when_r4_knows_it(value: object, shown: str) -> None:
    assert shown_type(value) == shown


def test_errors_keep_the_free_text_apart_from_the_message() -> None:
    """`detail` never reaches str(); PatientError has one too, and exit codes are unchanged."""
    fhir = FhirError("the server refused it", url=f"{BASE}/Patient/p1", detail="Jane Roe")
    patient = PatientError("Patient/p1", "not written", detail="Jane Roe")
    assert "Jane" not in str(fhir)
    assert "Jane" not in str(patient)
    assert (fhir.detail, patient.detail) == ("Jane Roe", "Jane Roe")
    assert (fhir.exit_code, patient.exit_code) == (ExitCode.FATAL, ExitCode.PARTIAL)
