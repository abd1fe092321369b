"""Bulk Data manifests (IG v2 "Response - Complete Status") and error files, read safely."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from adapter.bulk.manifest import UNREADABLE, is_blocking, parse_manifest, read_error_file
from adapter.bulk.model import Manifest, OutputFile
from adapter.errors import InvalidResponseError

STATUS = "https://ehr.test/fhir/$export-poll-status?_jobId=abc"
OO_SYSTEM = "http://terminology.hl7.org/CodeSystem/operation-outcome"

# The IG v2 example, on https (export.html, "Response - Complete Status").
EXAMPLE: dict[str, Any] = {
    "transactionTime": "2021-01-01T00:00:00Z",
    "request": "https://ehr.test/fhir/Patient/$export?_type=Patient,Observation",
    "requiresAccessToken": True,
    "output": [
        {"type": "Patient", "url": "https://ehr.test/output/patient_file_1.ndjson"},
        {"type": "Patient", "url": "https://ehr.test/output/patient_file_2.ndjson", "count": 7},
        {"type": "Observation", "url": "https://files.test/output/observation_file_1.ndjson"},
    ],
    "deleted": [{"type": "Bundle", "url": "https://ehr.test/output/del_file_1.ndjson"}],
    "error": [{"type": "OperationOutcome", "url": "https://ehr.test/output/err_file_1.ndjson"}],
    "extension": {"https://example.com/extra-property": True},
}


def manifest(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLE)
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return body


def outcome(*issues: dict[str, Any]) -> bytes:
    return orjson.dumps({"resourceType": "OperationOutcome", "issue": list(issues)})


def test_the_ig_example_manifest_is_read_whole() -> None:
    """Every field of the IG's example lands in the Manifest; extensions are ignored."""
    assert parse_manifest(EXAMPLE, url=STATUS) == Manifest(
        transaction_time="2021-01-01T00:00:00Z",
        requires_access_token=True,
        output=(
            OutputFile("Patient", "https://ehr.test/output/patient_file_1.ndjson"),
            OutputFile("Patient", "https://ehr.test/output/patient_file_2.ndjson", 7),
            OutputFile("Observation", "https://files.test/output/observation_file_1.ndjson"),
        ),
        error=(OutputFile("OperationOutcome", "https://ehr.test/output/err_file_1.ndjson"),),
        deleted=(OutputFile("Bundle", "https://ehr.test/output/del_file_1.ndjson"),),
        request="https://ehr.test/fhir/Patient/$export?_type=Patient,Observation",
    )


def test_requires_access_token_absent_is_read_as_true() -> None:
    """The IG requires the field; without it the token is sent (to trusted origins only)."""
    assert parse_manifest(manifest(requiresAccessToken=...), url=STATUS).requires_access_token


def test_requires_access_token_false_is_kept() -> None:
    """An S3-style file server that needs no token says false."""
    body = manifest(requiresAccessToken=False)
    assert parse_manifest(body, url=STATUS).requires_access_token is False


def test_empty_export_with_no_error_or_deleted_lists() -> None:
    """`output: []` is an export that found nothing; absent error and deleted lists are empty."""
    body = manifest(output=[], error=..., deleted=..., request=...)
    parsed = parse_manifest(body, url=STATUS)
    assert (parsed.output, parsed.error, parsed.deleted, parsed.request) == ((), (), (), "")


def test_a_deleted_entry_without_type_is_a_bundle_file() -> None:
    """IG v2: deleted files hold transaction Bundles of DELETE entries."""
    body = manifest(deleted=[{"url": "https://ehr.test/output/del.ndjson"}])
    assert parse_manifest(body, url=STATUS).deleted == (
        OutputFile("Bundle", "https://ehr.test/output/del.ndjson"),
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8765/fhir/output/1.ndjson",
        "http://localhost/output/1.ndjson",
        "http://[::1]:8080/output/1.ndjson",
        "https://bucket.s3.amazonaws.test/export/1.ndjson?X-Amz-Signature=abc",
    ],
)
def test_https_and_loopback_http_file_urls_are_accepted(url: str) -> None:
    """A local test server may serve plain http; every other file comes over TLS."""
    body = manifest(output=[{"type": "Patient", "url": url}])
    assert parse_manifest(body, url=STATUS).output[0].url == url


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"transactionTime": ...}, "transactionTime"),
        ({"transactionTime": "2021-01-01"}, "transactionTime"),
        ({"transactionTime": "2021-01-01T00:00:00"}, "transactionTime"),
        ({"transactionTime": 1609459200}, "transactionTime"),
        ({"requiresAccessToken": "false"}, "requiresAccessToken"),
        ({"output": ...}, "output"),
        ({"output": {"type": "Patient"}}, "output"),
        ({"error": "none"}, "error"),
        ({"output": ["https://ehr.test/1.ndjson"]}, "output[0]"),
        ({"output": [{"url": "https://ehr.test/1.ndjson"}]}, "output[0].type"),
        ({"output": [{"type": "patient", "url": "https://ehr.test/1.ndjson"}]}, "output[0].type"),
        ({"output": [{"type": "Patient"}]}, "output[0].url"),
        ({"output": [{"type": "Patient", "url": "output/1.ndjson"}]}, "output[0].url"),
        ({"output": [{"type": "Patient", "url": "/output/1.ndjson"}]}, "output[0].url"),
        ({"output": [{"type": "Patient", "url": "http://files.test/1.ndjson"}]}, "output[0].url"),
        ({"output": [{"type": "Patient", "url": "ftp://files.test/1.ndjson"}]}, "output[0].url"),
        ({"error": [{"type": "OperationOutcome", "url": "https://u:p@e.test/e"}]}, "error[0].url"),
        ({"deleted": [{"type": "Bundle", "url": 7}]}, "deleted[0].url"),
        ({"output": [{"type": "Patient", "url": "https://e.test/1", "count": -1}]}, "count"),
        ({"output": [{"type": "Patient", "url": "https://e.test/1", "count": "3"}]}, "count"),
        ({"output": [{"type": "Patient", "url": "https://e.test/1", "count": True}]}, "count"),
        ({"output": [{"type": "Patient", "url": "https://e.test/1", "count": 2.5}]}, "count"),
    ],
)
def test_a_malformed_manifest_is_an_invalid_response_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    """Each field of the wrong shape fails the whole manifest, and the message says which."""
    with pytest.raises(InvalidResponseError) as caught:
        parse_manifest(manifest(**changes), url=STATUS)
    assert field in str(caught.value)
    assert "_jobId" not in str(caught.value)  # the status URL shows without its query


@pytest.mark.parametrize("body", [None, [], "manifest", 3])
def test_a_body_that_is_not_an_object_is_invalid(body: object) -> None:
    with pytest.raises(InvalidResponseError, match="not a JSON object"):
        parse_manifest(body, url=STATUS)


def test_a_bad_file_url_is_not_repeated_in_the_message() -> None:
    """The server's URL is its own text (a patient's name could hide in it): only the field is."""
    body = manifest(output=[{"type": "Patient", "url": "export/Jane-Doe-1970.ndjson"}])
    with pytest.raises(InvalidResponseError) as caught:
        parse_manifest(body, url=STATUS)
    assert "Jane" not in str(caught.value)


def test_a_file_listed_twice_is_refused() -> None:
    """Read twice, its resources would count twice."""
    twice = {"type": "Patient", "url": "https://ehr.test/output/p.ndjson"}
    with pytest.raises(InvalidResponseError, match=r"output\[1\] twice"):
        parse_manifest(manifest(output=[twice, twice]), url=STATUS)


def test_error_file_lines_are_coded_issues_without_free_text() -> None:
    """Each issue is one `severity/code (system|code)` line; diagnostics and details.text go."""
    lines = [
        outcome(
            {
                "severity": "error",
                "code": "processing",
                "diagnostics": "Patient Jane Doe (MRN 4711): unreadable Observation",
                "details": {
                    "coding": [{"system": OO_SYSTEM, "code": "MSG_NO_EXIST"}],
                    "text": "Jane Doe",
                },
            },
            {"severity": "warning", "code": "not-supported", "diagnostics": "_typeFilter ignored"},
        ),
        b"",
        b"   \n",
        outcome({"severity": "information", "code": "informational"}),
    ]
    shown = read_error_file(lines)
    assert shown == [
        f"error/processing ({OO_SYSTEM}|MSG_NO_EXIST)",
        "warning/not-supported",
        "information/informational",
    ]
    assert not any("Jane" in line or "4711" in line for line in shown)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"{not json"], [UNREADABLE]),
        ([b'{"resourceType": "Patient", "id": "p1"}', b"[]"], [f"2 {UNREADABLE}s"]),
        ([b'{"resourceType": "OperationOutcome", "issue": []}'], [UNREADABLE]),
        ([b'{"resourceType": "OperationOutcome", "issue": ["text"]}'], ["?/?"]),
        (
            [b"{", outcome({"severity": "bogus", "code": "made-up"})],
            ["?/?", UNREADABLE],
        ),
    ],
)
def test_unreadable_error_lines_are_counted_not_shown(
    lines: list[bytes], expected: list[str]
) -> None:
    """A line that is not an OperationOutcome with issues is counted, its text never shown."""
    assert read_error_file(lines) == expected


@pytest.mark.parametrize(
    ("lines", "blocking"),
    [
        ([], False),
        (["information/informational", "warning/not-supported"], False),
        (["warning/not-supported", f"error/processing ({OO_SYSTEM}|X)"], True),
        (["fatal/exception"], True),
        (["?/processing"], True),
        (["?/?"], True),
        ([UNREADABLE], True),
        ([f"12 {UNREADABLE}s"], True),
    ],
)
def test_errors_fatals_and_unknowns_block(lines: list[str], blocking: bool) -> None:
    """An issue that may stand for left-out data makes the export incomplete."""
    assert is_blocking(lines) is blocking
