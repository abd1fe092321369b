"""What the server sink's errors may say (issue 11): fixed reasons, coded issues, no server text.

PatientError reasons go into results.json next to the patient; the server's own words go only
into `detail`, and resource ids (a deterministic `ta-...` maps back to its patient) nowhere.
"""

from __future__ import annotations

import pytest
from test_server_sink import (
    FakeServer,
    only_subject,
    write,
)

from adapter.criteria.results import Status
from adapter.errors import InvalidResponseError, PatientError

#: what a server's validator might echo from the stored resource
PATIENT_TEXT = "Jane Roe 1961-04-07"


def test_an_invalid_stored_subject_is_refused_with_a_fixed_reason() -> None:
    """The R4 validation text quotes the server's resource: it goes to `detail`, not the
    message (which had it before issue 11)."""
    server = FakeServer()
    write(server, "pat-1", Status.POTENTIAL_CANDIDATE)
    path, _, body = only_subject(server)
    server.put(path, body | {"period": {"start": PATIENT_TEXT}})
    with pytest.raises(InvalidResponseError) as caught:
        write(server, "pat-1", Status.CANDIDATE)
    message = str(caught.value)
    assert message.startswith("the server's ResearchSubject is not valid R4, not updating it (")
    assert message.endswith("/fhir/ResearchSubject/{id})")
    assert "Jane" not in message
    assert "ta-" not in message
    assert "period" in caught.value.detail


def test_a_refused_provenance_names_the_codes_and_keeps_the_text_in_detail() -> None:
    """The PatientError reason has the status and coded issue, the URL without the Provenance
    id; the server's diagnostics are in `detail`."""
    server = FakeServer(fail_writes_of={"Provenance": 422})
    with pytest.raises(PatientError) as caught:
        write(server, "pat-1", Status.CANDIDATE)
    reason = caught.value.reason
    assert reason == (
        "its ResearchSubject was written but its Provenance was not: HTTP 422: error/processing "
        "(https://fhir.example.org/fhir/Provenance/{id})"
    )
    assert caught.value.detail == "could not store it"
    assert caught.value.patient == "Patient/pat-1"
