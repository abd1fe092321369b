"""The FHIR server sink, against a respx mock that answers the way a FHIR server does."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson
import pytest
import respx

from adapter.criteria.results import Status
from adapter.errors import HttpStatusError, TemporaryHttpError
from adapter.fhir.client import FhirClient
from adapter.sinks import resources
from adapter.sinks.resources import StudyInfo
from adapter.sinks.server import ServerSink, WriteOutcome

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")

BASE = "https://fhir.example.org/fhir/"
STUDY = StudyInfo(
    "hcc-ablation-lenvatinib-pd1", "https://clinicaltrials.gov", "NCT05803928", "HCC ablation"
)
STUDY_PATH = f"ResearchStudy/{STUDY.resource_id}"
FIRST_DAY = date(2026, 6, 1)
LATER_DAY = date(2026, 6, 15)


def subject_path(patient_id: str) -> str:
    return f"ResearchSubject/{resources.subject_id(STUDY.trial_id, patient_id)}"


def outcome(status: int, code: str, text: str) -> httpx.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return httpx.Response(status, json=body, headers={"Content-Type": "application/fhir+json"})


@dataclass
class FakeServer:
    """A versioned resource store that answers read and update like HAPI does."""

    stored: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    requests: list[httpx.Request] = field(default_factory=list)
    fail_reads_with: int | None = None
    after_read: Callable[[], None] | None = None  # e.g. someone edits between read and write

    def put(self, path: str, body: dict[str, Any]) -> None:
        version = self.stored[path][0] + 1 if path in self.stored else 1
        self.stored[path] = (version, copy.deepcopy(body))

    def body(self, path: str) -> dict[str, Any]:
        return self.stored[path][1]

    def writes(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method != "GET"]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/fhir/")
        if request.method == "GET":
            response = self._read(path)
            if self.after_read is not None:
                self.after_read()
            return response
        if request.method == "PUT":
            return self._update(path, request)
        return outcome(405, "not-supported", f"{request.method} not supported")

    def _read(self, path: str) -> httpx.Response:
        if self.fail_reads_with is not None:
            return outcome(self.fail_reads_with, "transient", "try later")
        if path in self.deleted:
            return outcome(410, "deleted", f"Resource {path} is deleted")
        if path not in self.stored:
            return outcome(404, "not-found", f"Resource {path} is not known")
        version, body = self.stored[path]
        return self._resource(200, path, version, body)

    def _update(self, path: str, request: httpx.Request) -> httpx.Response:
        if request.headers.get("Content-Type") != "application/fhir+json":
            return outcome(415, "not-supported", "Content-Type must be application/fhir+json")
        body = orjson.loads(request.content)
        if_match = request.headers.get("If-Match")
        current = self.stored[path][0] if path in self.stored else None
        if if_match is not None and if_match != f'W/"{current}"':
            return outcome(412, "conflict", f"version {current} is not {if_match}")
        self.put(path, body)
        version, stored = self.stored[path]
        return self._resource(201 if current is None else 200, path, version, stored)

    def _resource(
        self, status: int, path: str, version: int, body: dict[str, Any]
    ) -> httpx.Response:
        shown = copy.deepcopy(body)
        shown.setdefault("meta", {})
        shown["meta"]["versionId"] = str(version)
        shown["meta"]["lastUpdated"] = "2026-06-15T10:00:00.000+08:00"
        headers = {"ETag": f'W/"{version}"', "Content-Type": "application/fhir+json"}
        if status == 201:
            headers["Location"] = f"{BASE}{path}/_history/{version}"
        return httpx.Response(status, json=shown, headers=headers)


def run(server: FakeServer, action: Callable[[ServerSink], Awaitable[T]]) -> T:
    """Run `action` on a ServerSink whose HTTP goes to `server`."""

    async def main() -> T:
        with respx.mock(base_url=BASE, assert_all_called=False) as router:
            router.route().mock(side_effect=server.handle)
            async with httpx.AsyncClient() as http:
                return await action(ServerSink(FhirClient(http, BASE), STUDY))

    return asyncio.run(main())


def write(
    patient_id: str, status: Status, as_of: date = LATER_DAY
) -> Callable[[ServerSink], Awaitable[WriteOutcome]]:
    """An action writing one subject."""
    return lambda sink: sink.write_subject(patient_id, status, as_of)


def human_subject(patient_id: str, status: str) -> dict[str, Any]:
    subject = resources.research_subject(STUDY, patient_id, Status.CANDIDATE, FIRST_DAY)
    subject["status"] = status
    return subject


def test_study_is_created_when_missing_and_not_rewritten() -> None:
    """A missing study is PUT on its deterministic id once; later runs only read it."""
    server = FakeServer()
    run(server, lambda sink: sink.ensure_study())
    assert [(r.method, r.url.path) for r in server.requests] == [
        ("GET", f"/fhir/{STUDY_PATH}"),
        ("PUT", f"/fhir/{STUDY_PATH}"),
    ]
    assert server.body(STUDY_PATH) == resources.research_study(STUDY)
    run(server, lambda sink: sink.ensure_study())
    assert len(server.writes()) == 1
    assert server.stored[STUDY_PATH][0] == 1


def test_an_existing_study_is_left_as_people_edited_it() -> None:
    """An existing ResearchStudy is never rewritten, even when it differs from ours."""
    server = FakeServer()
    edited = resources.research_study(STUDY) | {"title": "Edited by the coordinator"}
    server.put(STUDY_PATH, edited)
    run(server, lambda sink: sink.ensure_study())
    assert server.writes() == []
    assert server.body(STUDY_PATH)["title"] == "Edited by the coordinator"


def test_a_deleted_study_is_an_error_not_a_resurrection() -> None:
    """A study people deleted (410) raises; nothing is written."""
    server = FakeServer(deleted={STUDY_PATH})
    with pytest.raises(HttpStatusError) as info:
        run(server, lambda sink: sink.ensure_study())
    assert info.value.status == 410
    assert server.writes() == []


@pytest.mark.parametrize("status", [Status.CANDIDATE, Status.POTENTIAL_CANDIDATE])
def test_a_missing_subject_is_created_on_its_deterministic_id(status: Status) -> None:
    """404 on read -> PUT of the built ResearchSubject, reported created."""
    server = FakeServer()
    assert run(server, write("pat-1", status, FIRST_DAY)) is WriteOutcome.CREATED
    (put,) = server.writes()
    assert put.method == "PUT"
    assert put.url.path == f"/fhir/{subject_path('pat-1')}"
    assert "If-Match" not in put.headers
    built = resources.research_subject(STUDY, "pat-1", status, FIRST_DAY)
    assert orjson.loads(put.content) == built


@pytest.mark.parametrize("status", [Status.CANDIDATE, Status.POTENTIAL_CANDIDATE])
def test_rerun_with_the_same_status_is_unchanged(status: Status) -> None:
    """A second run with the same status writes nothing."""
    server = FakeServer()
    run(server, write("pat-1", status, FIRST_DAY))
    assert run(server, write("pat-1", status)) is WriteOutcome.UNCHANGED
    assert len(server.writes()) == 1


def test_potential_candidate_becoming_candidate_is_updated_with_if_match() -> None:
    """potential-candidate -> candidate: PUT with If-Match on the version read, start kept."""
    server = FakeServer()
    run(server, write("pat-1", Status.POTENTIAL_CANDIDATE, FIRST_DAY))
    assert run(server, write("pat-1", Status.CANDIDATE, LATER_DAY)) is WriteOutcome.UPDATED
    update = server.writes()[-1]
    assert update.method == "PUT"
    assert update.headers["If-Match"] == 'W/"1"'
    version, stored = server.stored[subject_path("pat-1")]
    assert version == 2
    assert stored["status"] == "candidate"
    assert stored["period"] == {"start": FIRST_DAY.isoformat()}
    assert "versionId" not in stored["meta"]
    assert run(server, write("pat-1", Status.CANDIDATE)) is WriteOutcome.UNCHANGED


def test_a_concurrent_change_fails_the_update_instead_of_overwriting() -> None:
    """If the subject changes between read and PUT, the 412 propagates."""
    server = FakeServer()
    run(server, write("pat-1", Status.POTENTIAL_CANDIDATE, FIRST_DAY))
    edited = human_subject("pat-1", "potential-candidate")
    server.after_read = lambda: server.put(subject_path("pat-1"), edited)
    with pytest.raises(HttpStatusError) as info:
        run(server, write("pat-1", Status.CANDIDATE))
    assert info.value.status == 412
    assert server.body(subject_path("pat-1")) == edited


@pytest.mark.parametrize("human", ["on-study", "withdrawn", "eligible", "ineligible", "screening"])
@pytest.mark.parametrize("status", [Status.CANDIDATE, Status.POTENTIAL_CANDIDATE])
def test_a_status_people_set_is_never_touched(human: str, status: Status) -> None:
    """Any status but candidate / potential-candidate is kept, and no PUT is sent."""
    server = FakeServer()
    server.put(subject_path("pat-1"), human_subject("pat-1", human))
    assert run(server, write("pat-1", status)) is WriteOutcome.KEPT_HUMAN_STATUS
    assert server.writes() == []
    assert server.body(subject_path("pat-1"))["status"] == human


def test_a_subject_people_deleted_is_not_recreated() -> None:
    """A 410 Gone subject stays deleted and counts as a human decision."""
    server = FakeServer(deleted={subject_path("pat-1")})
    assert run(server, write("pat-1", Status.CANDIDATE)) is WriteOutcome.KEPT_HUMAN_STATUS
    assert server.writes() == []


def test_a_candidate_falling_back_is_reported_and_not_changed() -> None:
    """candidate -> potential-candidate: no write, reported no_longer_qualifies."""
    server = FakeServer()
    run(server, write("pat-1", Status.CANDIDATE, FIRST_DAY))
    outcome_ = run(server, write("pat-1", Status.POTENTIAL_CANDIDATE))
    assert outcome_ is WriteOutcome.NO_LONGER_QUALIFIES
    assert len(server.writes()) == 1
    assert server.body(subject_path("pat-1"))["status"] == "candidate"


def test_an_ineligible_patient_is_refused() -> None:
    """write_subject is never asked to write an ineligible patient."""
    server = FakeServer()
    with pytest.raises(ValueError, match="ineligible"):
        run(server, write("pat-1", Status.INELIGIBLE))
    assert server.requests == []


def test_existing_status_reads_the_subject() -> None:
    """existing_status is the server's status, or None when absent or deleted."""
    server = FakeServer(deleted={subject_path("gone")})
    server.put(subject_path("pat-1"), human_subject("pat-1", "on-study"))
    assert run(server, lambda sink: sink.existing_status("pat-1")) == "on-study"
    assert run(server, lambda sink: sink.existing_status("pat-2")) is None
    assert run(server, lambda sink: sink.existing_status("gone")) is None
    assert server.writes() == []


def test_a_failed_read_is_an_error_not_a_missing_subject() -> None:
    """A 503 on read raises, so a server outage never turns into a create."""
    server = FakeServer(fail_reads_with=503)
    with pytest.raises(TemporaryHttpError):
        run(server, write("pat-1", Status.CANDIDATE))
    assert server.writes() == []
