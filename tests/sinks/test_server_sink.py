"""The FHIR server sink, against a respx mock that answers the way HAPI and sekmet-fhir do."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
import respx

from adapter.criteria.results import Status
from adapter.errors import (
    FhirError,
    HttpStatusError,
    InvalidResponseError,
    PatientError,
    TemporaryHttpError,
)
from adapter.fhir.capability import ResourceCapabilities, ServerCapabilities
from adapter.fhir.client import FhirClient
from adapter.sinks import plan, resources
from adapter.sinks.resources import StudyInfo
from adapter.sinks.server import PlannedWrite, ServerSink, SubjectInput, WriteOutcome

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")

BASE = "https://fhir.example.org/fhir/"
SOURCE = "https://ehr.example.org/fhir"
STUDY = StudyInfo(
    "hcc-ablation-lenvatinib-pd1", "https://clinicaltrials.gov", "NCT05803928", "HCC ablation"
)
STUDY_PATH = f"ResearchStudy/{STUDY.resource_id}"
DEVICE_PATH = f"Device/{resources.device_id()}"
FIRST_DAY = date(2026, 6, 1)
LATER_DAY = date(2026, 6, 15)
CLOCK = datetime(2026, 6, 15, 2, 30, tzinfo=timezone(timedelta(hours=8)))
TRIAL_HASH = "5f" * 32
POLICY = resources.trial_policy(STUDY.trial_id, TRIAL_HASH)
WRITE_TYPES = ("ResearchStudy", "Device", "ResearchSubject")


def capabilities(*searchable: str, put_creates: bool = True) -> ServerCapabilities:
    """A CapabilityStatement listing `identifier` as a search parameter of `searchable` only
    (`target` for Provenance); `put_creates` is Provenance's updateCreate."""
    return ServerCapabilities(
        resources=tuple(
            ResourceCapabilities(
                kind,
                interactions=frozenset({"read", "update", "create", "search-type"}),
                search_params=frozenset(
                    {"target" if kind == "Provenance" else "identifier"}
                    if kind in searchable
                    else {"_id", "_tag"}
                ),
                conditional_create=kind in searchable,
                update_create=put_creates or kind != "Provenance",
                versioning="versioned-update",
            )
            for kind in (*WRITE_TYPES, "Provenance")
        )
    )


SEARCH_ALL = capabilities(*WRITE_TYPES)
# Each path: sink options, and the types the fake server can search by identifier.
PATHS = {
    "deterministic ids (no capabilities)": ({}, frozenset[str]()),
    "deterministic ids (no identifier search)": ({"capabilities": capabilities()}, frozenset()),
    "identifier search": ({"capabilities": SEARCH_ALL}, frozenset(WRITE_TYPES)),
}


def subject_identifier(patient_id: str) -> str:
    return "|".join(resources.subject_identifier(STUDY.trial_id, patient_id))


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
    """A versioned store answering read, search, create and update like HAPI and sekmet do.

    `searchable`: the types whose `identifier` search parameter it knows; an unknown parameter
    is refused under `Prefer: handling=strict` and otherwise ignored (every resource matches).
    """

    searchable: frozenset[str] = frozenset()
    stored: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    requests: list[httpx.Request] = field(default_factory=list)
    fail_reads_with: int | None = None
    fail_writes_of: dict[str, int] = field(default_factory=dict)  # type -> error status
    after_read: Callable[[], None] | None = None  # e.g. someone edits between read and write
    return_minimal: bool = False  # answer writes without a body (Prefer: return=minimal)
    honours_strict: bool = True  # False: ignores unknown parameters even when asked to be strict
    refuses_put_create: frozenset[str] = frozenset()  # types whose PUT cannot create (405)
    lose_answers: dict[str, int] = field(
        default_factory=dict
    )  # type -> writes whose answer is lost
    ignores_versions: bool = False  # `target=X/_history/2` matches every version (sekmet 0.1.1)
    next_id: int = 1000

    def put(self, path: str, body: dict[str, Any]) -> None:
        version = self.stored[path][0] + 1 if path in self.stored else 1
        self.stored[path] = (version, copy.deepcopy(body) | {"id": path.split("/")[1]})

    def body(self, path: str) -> dict[str, Any]:
        return self.stored[path][1]

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {p: b for p, (_, b) in self.stored.items() if p.startswith(f"{kind}/")}

    def writes(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method != "GET"]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/fhir/")
        if request.method == "GET":
            response = self._read(path) if "/" in path else self._search(path, request)
            if self.after_read is not None:
                self.after_read()
            return response
        if request.headers.get("Content-Type") != "application/fhir+json":
            return outcome(415, "not-supported", "Content-Type must be application/fhir+json")
        kind = path.split("/")[0]
        if kind in self.fail_writes_of:
            return outcome(self.fail_writes_of[kind], "processing", "could not store it")
        if request.method == "PUT" and "/" in path:
            if kind in self.refuses_put_create and path not in self.stored:
                return outcome(405, "not-supported", f"{kind}: no create by update (PUT)")
            response = self._update(path, request)
        elif request.method == "POST" and "/" not in path:
            response = self._create(path, request)
        else:
            return outcome(405, "not-supported", f"{request.method} not supported")
        if self.lose_answers.get(kind, 0) > 0:
            self.lose_answers[kind] -= 1
            raise httpx.ReadError("connection reset after the write was applied", request=request)
        return response

    def matching(self, kind: str, token: str) -> list[str]:
        system, value = token.split("|", 1)
        return [
            path
            for path, body in self.of_type(kind).items()
            if {"system": system, "value": value} in body.get("identifier", [])
        ]

    def _read(self, path: str) -> httpx.Response:
        if self.fail_reads_with is not None:
            return outcome(self.fail_reads_with, "transient", "try later")
        if path in self.deleted:
            return outcome(410, "deleted", f"Resource {path} is deleted")
        if path not in self.stored:
            return outcome(404, "not-found", f"Resource {path} is not known")
        version, body = self.stored[path]
        return self._resource(200, path, version, body)

    def _search(self, kind: str, request: httpx.Request) -> httpx.Response:
        if self.fail_reads_with is not None:
            return outcome(self.fail_reads_with, "transient", "try later")
        if kind == "Provenance":
            return self._bundle(request, self._provenance_search(request))
        token = request.url.params.get("identifier")
        if token is not None and kind not in self.searchable:
            strict = "handling=strict" in request.headers.get("Prefer", "")
            if strict and self.honours_strict:
                text = f"Unknown search parameter 'identifier' for {kind}"
                return outcome(400, "not-supported", text)
            token = None  # ignored: every resource of the type matches
        paths = list(self.of_type(kind)) if token is None else self.matching(kind, token)
        return self._bundle(request, paths)

    def targeting(self, target: str) -> list[str]:
        """The Provenance whose target is `target` (any version of it: `ignores_versions`)."""
        if self.ignores_versions:
            target = target.split("/_history/")[0]
        return [
            path
            for path, body in self.of_type("Provenance").items()
            for t in body["target"]
            if (t["reference"].split("/_history/")[0] if self.ignores_versions else t["reference"])
            == target
        ]

    def _provenance_search(self, request: httpx.Request) -> list[str]:
        target = request.url.params.get("target")
        if target is not None:
            return self.targeting(target)
        tag = request.url.params.get("_tag")
        return [
            path
            for path, body in self.of_type("Provenance").items()
            if tag is None or tag in {f"{t['system']}|{t['code']}" for t in body["meta"]["tag"]}
        ]

    def _bundle(self, request: httpx.Request, paths: list[str]) -> httpx.Response:
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(paths),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": [
                {
                    "fullUrl": f"{BASE}{path}",
                    "resource": self._shown(path, *self.stored[path]),
                    "search": {"mode": "match"},
                }
                for path in paths
            ],
        }
        return httpx.Response(200, json=bundle, headers={"Content-Type": "application/fhir+json"})

    def _create(self, kind: str, request: httpx.Request) -> httpx.Response:
        condition = request.headers.get("If-None-Exist")
        if condition is not None and kind == "Provenance":
            found = self.targeting(dict(parse_qsl(condition))["target"])
            if found:
                version, body = self.stored[found[0]]
                return self._resource(200, found[0], version, body)
        elif condition is not None:
            token = dict(parse_qsl(condition))["identifier"]
            if kind not in self.searchable:
                return outcome(400, "not-supported", f"Unknown search parameter for {kind}")
            found = self.matching(kind, token)
            if len(found) > 1:
                text = f"Conditional create: criteria matched {len(found)} resources"
                return outcome(412, "multiple-matches", text)
            if found:
                version, body = self.stored[found[0]]
                return self._resource(200, found[0], version, body)
        path = f"{kind}/{self.next_id}"
        self.next_id += 1
        self.put(path, orjson.loads(request.content))
        return self._resource(201, path, 1, self.body(path))

    def _update(self, path: str, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        if body.get("id") != path.split("/")[1]:
            return outcome(400, "invalid", "Resource id does not match URL id")
        if_match = request.headers.get("If-Match")
        current = self.stored[path][0] if path in self.stored else None
        if if_match is not None and if_match != f'W/"{current}"':
            return outcome(412, "conflict", f"Version conflict: If-Match {if_match}")
        self.put(path, body)
        version, stored = self.stored[path]
        return self._resource(201 if current is None else 200, path, version, stored)

    def _shown(self, path: str, version: int, body: dict[str, Any]) -> dict[str, Any]:
        shown = copy.deepcopy(body)
        shown.setdefault("meta", {})
        shown["meta"]["versionId"] = str(version)
        shown["meta"]["lastUpdated"] = "2026-06-15T10:00:00.000+08:00"
        return shown

    def _resource(
        self, status: int, path: str, version: int, body: dict[str, Any]
    ) -> httpx.Response:
        headers = {"ETag": f'W/"{version}"', "Content-Type": "application/fhir+json"}
        if status in (200, 201):
            headers["Location"] = f"{BASE}{path}/_history/{version}"
        if self.return_minimal and status != 200:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=self._shown(path, version, body), headers=headers)


def run(server: FakeServer, action: Callable[[ServerSink], Awaitable[T]], **options: Any) -> T:
    """Run `action` on a ServerSink whose HTTP goes to `server`."""

    async def main() -> T:
        with respx.mock(base_url=BASE, assert_all_called=False) as router:
            router.route().mock(side_effect=server.handle)
            async with httpx.AsyncClient() as http:
                client = FhirClient(http, BASE)
                sink = ServerSink(client, STUDY, trial_policy=POLICY, now=lambda: CLOCK, **options)
                return await action(sink)

    return asyncio.run(main())


def subject(
    patient_id: str,
    status: Status,
    entities: tuple[str, ...] = (),
    identifier: tuple[str, str] | None = None,
) -> SubjectInput:
    return SubjectInput(patient_id, status, entities, identifier)


def write(
    server: FakeServer,
    patient_id: str,
    status: Status,
    as_of: date = LATER_DAY,
    **options: Any,
) -> WriteOutcome:
    """prepare(), then write one subject."""
    entities = options.pop("entities", ())
    identifier = options.pop("identifier", None)

    async def action(sink: ServerSink) -> WriteOutcome:
        await sink.prepare()
        return await sink.write_subject(subject(patient_id, status, entities, identifier), as_of)

    return run(server, action, **options)


def dry_run(
    server: FakeServer, patient_id: str, status: Status, **options: Any
) -> tuple[WriteOutcome, list[PlannedWrite]]:
    """A dry run of prepare() and one subject: the outcome and the planned writes."""

    async def action(sink: ServerSink) -> tuple[WriteOutcome, list[PlannedWrite]]:
        await sink.prepare()
        result = await sink.write_subject(subject(patient_id, status), LATER_DAY)
        return result, sink.planned

    return run(server, action, dry_run=True, **options)


def only_subject(server: FakeServer) -> tuple[str, int, dict[str, Any]]:
    """The one ResearchSubject stored: its path, version and body."""
    ((path, body),) = server.of_type("ResearchSubject").items()
    return path, server.stored[path][0], body


def human_subject(patient_id: str, status: str) -> dict[str, Any]:
    built = resources.research_subject(STUDY, patient_id, Status.CANDIDATE, FIRST_DAY)
    return built | {"status": status}


def after_subject_read(server: FakeServer, change: Callable[[], None]) -> None:
    """Make `change` on the server right after the next ResearchSubject read (a race)."""

    def hook() -> None:
        if "ResearchSubject" in server.requests[-1].url.path:
            server.after_read = None
            change()

    server.after_read = hook


def sent(server: FakeServer) -> list[tuple[str, str]]:
    """Method and path (with query) of every request."""
    return [(r.method, r.url.raw_path.decode().removeprefix("/fhir/")) for r in server.requests]


def test_study_and_device_are_put_on_their_deterministic_ids_once() -> None:
    """Without capabilities: read by id, PUT when missing; a rerun only reads."""
    server = FakeServer()
    run(server, lambda sink: sink.prepare())
    assert sent(server) == [
        ("GET", STUDY_PATH),
        ("PUT", STUDY_PATH),
        ("GET", DEVICE_PATH),
        ("PUT", DEVICE_PATH),
    ]
    assert server.body(STUDY_PATH) == resources.research_study(STUDY)
    assert server.body(DEVICE_PATH) == resources.device()
    server.requests.clear()
    run(server, lambda sink: sink.prepare())
    assert server.writes() == []
    assert server.stored[STUDY_PATH][0] == server.stored[DEVICE_PATH][0] == 1


def test_study_and_device_are_created_conditionally_when_searchable() -> None:
    """Searchable by identifier: a strict search, then POST with If-None-Exist; a rerun reads."""
    server = FakeServer(searchable=frozenset(WRITE_TYPES))
    run(server, lambda sink: sink.prepare(), capabilities=SEARCH_ALL)
    searches = [r for r in server.requests if r.method == "GET"]
    assert [r.url.params["identifier"] for r in searches] == [
        "https://clinicaltrials.gov|NCT05803928",
        "urn:trial-adapter:device|trial-adapter",
    ]
    assert all(r.headers["Prefer"] == "handling=strict" for r in searches)
    posts = server.writes()
    assert [(r.method, r.url.path) for r in posts] == [
        ("POST", "/fhir/ResearchStudy"),
        ("POST", "/fhir/Device"),
    ]
    assert [r.headers["If-None-Exist"] for r in posts] == [
        "identifier=https://clinicaltrials.gov|NCT05803928",
        "identifier=urn:trial-adapter:device|trial-adapter",
    ]
    assert all("id" not in orjson.loads(r.content) for r in posts)  # the server assigns it
    server.requests.clear()
    run(server, lambda sink: sink.prepare(), capabilities=SEARCH_ALL)
    assert server.writes() == []
    assert len(server.of_type("ResearchStudy")) == len(server.of_type("Device")) == 1


def test_the_path_is_chosen_per_type_from_the_capabilities() -> None:
    """As on sekmet-fhir 0.1.1: Device searchable by identifier, ResearchStudy/Subject not."""
    server = FakeServer(searchable=frozenset({"Device"}))
    outcome_ = write(server, "pat-1", Status.CANDIDATE, capabilities=capabilities("Device"))
    assert outcome_ is WriteOutcome.CREATED
    assert [(r.method, r.url.path.removeprefix("/fhir/")) for r in server.writes()] == [
        ("PUT", STUDY_PATH),
        ("POST", "Device"),
        ("PUT", subject_path("pat-1")),
        ("PUT", f"Provenance/{resources.provenance_id(f'{STUDY.trial_id}/pat-1', '1')}"),
    ]


def test_an_existing_study_is_left_as_people_edited_it() -> None:
    """An existing ResearchStudy is never rewritten, even when it differs from ours."""
    server = FakeServer()
    server.put(STUDY_PATH, resources.research_study(STUDY) | {"title": "Edited by the coordinator"})
    server.put(DEVICE_PATH, resources.device())
    run(server, lambda sink: sink.prepare())
    assert server.writes() == []
    assert server.body(STUDY_PATH)["title"] == "Edited by the coordinator"


def test_a_deleted_study_is_an_error_not_a_resurrection() -> None:
    """A study people deleted (410) raises; nothing is written."""
    server = FakeServer(deleted={STUDY_PATH})
    with pytest.raises(HttpStatusError) as info:
        run(server, lambda sink: sink.prepare())
    assert info.value.status == 410
    assert server.writes() == []


def test_several_studies_with_the_identifier_stop_the_run() -> None:
    """Two ResearchStudies with the trial's identifier: an error, and no third one."""
    server = FakeServer(searchable=frozenset(WRITE_TYPES))
    server.put("ResearchStudy/a", resources.research_study(STUDY))
    server.put("ResearchStudy/b", resources.research_study(STUDY))
    with pytest.raises(FhirError, match="2 ResearchStudy resources carry the identifier"):
        run(server, lambda sink: sink.prepare(), capabilities=SEARCH_ALL)
    assert server.writes() == []


def test_writing_before_prepare_is_refused() -> None:
    """write_subject needs the study found first."""
    server = FakeServer()
    with pytest.raises(RuntimeError, match="prepare"):
        run(server, lambda sink: sink.write_subject(subject("p", Status.CANDIDATE), LATER_DAY))
    assert server.requests == []


@pytest.mark.parametrize("status", [Status.CANDIDATE, Status.POTENTIAL_CANDIDATE])
def test_a_missing_subject_is_put_on_its_deterministic_id(status: Status) -> None:
    """No identifier search: 404 on read -> PUT of the built ResearchSubject, reported created."""
    server = FakeServer()
    assert write(server, "pat-1", status, FIRST_DAY) is WriteOutcome.CREATED
    (put,) = [r for r in server.writes() if r.url.path == f"/fhir/{subject_path('pat-1')}"]
    assert put.method == "PUT"
    assert "If-Match" not in put.headers
    built = resources.research_subject(STUDY, "pat-1", status, FIRST_DAY)
    assert orjson.loads(put.content) == built


@pytest.mark.parametrize("status", [Status.CANDIDATE, Status.POTENTIAL_CANDIDATE])
def test_a_missing_subject_is_created_conditionally_when_searchable(status: Status) -> None:
    """Identifier search: none found -> POST with If-None-Exist, the server's study id cited."""
    server = FakeServer(searchable=frozenset(WRITE_TYPES))
    assert write(server, "pat-1", status, FIRST_DAY, capabilities=SEARCH_ALL) is (
        WriteOutcome.CREATED
    )
    search = next(r for r in server.requests if r.url.path == "/fhir/ResearchSubject")
    assert search.method == "GET"
    assert search.url.params["identifier"] == subject_identifier("pat-1")
    assert search.headers["Prefer"] == "handling=strict"
    (post,) = [r for r in server.writes() if r.url.path == "/fhir/ResearchSubject"]
    assert post.method == "POST"
    assert post.headers["If-None-Exist"] == f"identifier={subject_identifier('pat-1')}"
    (study_path,) = server.of_type("ResearchStudy")
    expected = resources.research_subject(
        STUDY, "pat-1", status, FIRST_DAY, study_id=study_path.split("/")[1]
    )
    del expected["id"]
    assert orjson.loads(post.content) == expected


@pytest.mark.parametrize(("options", "searchable"), PATHS.values(), ids=PATHS.keys())
@pytest.mark.parametrize("status", [Status.CANDIDATE, Status.POTENTIAL_CANDIDATE])
def test_rerun_with_the_same_status_writes_nothing(
    options: dict[str, Any], searchable: frozenset[str], status: Status
) -> None:
    """A second run with the same status sends no write and no Provenance."""
    server = FakeServer(searchable=searchable)
    write(server, "pat-1", status, FIRST_DAY, entities=("Observation/1/_history/2",), **options)
    server.requests.clear()
    assert write(server, "pat-1", status, **options) is WriteOutcome.UNCHANGED
    assert server.writes() == []
    assert len(server.of_type("Provenance")) == 1


@pytest.mark.parametrize(("options", "searchable"), PATHS.values(), ids=PATHS.keys())
def test_potential_candidate_becoming_candidate_is_updated_with_if_match(
    options: dict[str, Any], searchable: frozenset[str]
) -> None:
    """potential-candidate -> candidate: PUT with If-Match on the version read, start kept."""
    server = FakeServer(searchable=searchable)
    write(server, "pat-1", Status.POTENTIAL_CANDIDATE, FIRST_DAY, **options)
    server.requests.clear()
    assert write(server, "pat-1", Status.CANDIDATE, LATER_DAY, **options) is WriteOutcome.UPDATED
    update, provenance = server.writes()
    path, version, stored = only_subject(server)
    assert (update.method, update.url.path) == ("PUT", f"/fhir/{path}")
    assert update.headers["If-Match"] == 'W/"1"'
    assert version == 2
    assert stored["status"] == "candidate"
    assert stored["period"] == {"start": FIRST_DAY.isoformat()}
    assert "versionId" not in stored["meta"]
    assert provenance.url.path.startswith("/fhir/Provenance/")
    assert write(server, "pat-1", Status.CANDIDATE, **options) is WriteOutcome.UNCHANGED


@pytest.mark.parametrize(("options", "searchable"), PATHS.values(), ids=PATHS.keys())
def test_a_concurrent_change_is_reported_instead_of_overwritten(
    options: dict[str, Any], searchable: frozenset[str]
) -> None:
    """A 412 on the If-Match update: a PatientError for the next run; no Provenance."""
    server = FakeServer(searchable=searchable)
    write(server, "pat-1", Status.POTENTIAL_CANDIDATE, FIRST_DAY, **options)
    path, _, current = only_subject(server)
    edited = current | {"status": "potential-candidate", "notes": "edited"}
    after_subject_read(server, lambda: server.put(path, edited))
    server.requests.clear()
    with pytest.raises(PatientError) as info:
        write(server, "pat-1", Status.CANDIDATE, **options)
    assert info.value.reason == (
        "its ResearchSubject changed on the server since it was read; left for the next run"
    )
    assert info.value.patient == "Patient/pat-1"
    assert server.body(path) == edited | {"id": path.split("/")[1]}
    assert len([r for r in server.writes() if r.url.path.startswith("/fhir/ResearchS")]) == 1
    assert len(server.of_type("Provenance")) == 1  # only the creation's


@pytest.mark.parametrize(("options", "searchable"), PATHS.values(), ids=PATHS.keys())
@pytest.mark.parametrize("human", ["on-study", "withdrawn", "eligible", "ineligible", "screening"])
@pytest.mark.parametrize("status", [Status.CANDIDATE, Status.POTENTIAL_CANDIDATE])
def test_a_status_people_set_is_never_touched(
    options: dict[str, Any], searchable: frozenset[str], human: str, status: Status
) -> None:
    """Any status but candidate / potential-candidate is kept: no PUT or POST is sent."""
    server = FakeServer(searchable=searchable)
    write(server, "pat-1", Status.POTENTIAL_CANDIDATE, FIRST_DAY, **options)
    path, _, current = only_subject(server)
    server.put(path, current | {"status": human})
    server.requests.clear()
    assert write(server, "pat-1", status, **options) is WriteOutcome.KEPT_HUMAN_STATUS
    assert server.writes() == []
    assert server.body(path)["status"] == human


def test_a_subject_people_deleted_is_not_recreated() -> None:
    """On the id path a 410 Gone subject stays deleted and counts as a human decision."""
    server = FakeServer(deleted={subject_path("pat-1")})
    assert write(server, "pat-1", Status.CANDIDATE) is WriteOutcome.KEPT_HUMAN_STATUS
    assert not any("ResearchSubject" in r.url.path for r in server.writes())


@pytest.mark.parametrize(("options", "searchable"), PATHS.values(), ids=PATHS.keys())
def test_a_candidate_falling_back_is_reported_and_not_changed(
    options: dict[str, Any], searchable: frozenset[str]
) -> None:
    """candidate -> potential-candidate: no write, reported no_longer_qualifies."""
    server = FakeServer(searchable=searchable)
    write(server, "pat-1", Status.CANDIDATE, FIRST_DAY, **options)
    server.requests.clear()
    result = write(server, "pat-1", Status.POTENTIAL_CANDIDATE, **options)
    assert result is WriteOutcome.NO_LONGER_QUALIFIES
    assert server.writes() == []
    assert only_subject(server)[2]["status"] == "candidate"


def test_an_ineligible_patient_is_refused() -> None:
    """write_subject is never asked to write an ineligible patient."""
    server = FakeServer()
    with pytest.raises(ValueError, match="ineligible"):
        run(server, lambda sink: sink.write_subject(subject("p", Status.INELIGIBLE), LATER_DAY))
    assert server.requests == []


@pytest.mark.parametrize(("options", "searchable"), PATHS.values(), ids=PATHS.keys())
def test_existing_status_reads_the_subject(
    options: dict[str, Any], searchable: frozenset[str]
) -> None:
    """existing_status is the server's status, or None when absent."""
    server = FakeServer(searchable=searchable)
    write(server, "pat-1", Status.CANDIDATE, **options)
    server.requests.clear()
    assert run(server, lambda sink: sink.existing_status("pat-1"), **options) == "candidate"
    assert run(server, lambda sink: sink.existing_status("pat-2"), **options) is None
    assert server.writes() == []


def test_existing_status_of_a_deleted_subject_is_none() -> None:
    """A 410 Gone subject has no status."""
    server = FakeServer(deleted={subject_path("gone")})
    assert run(server, lambda sink: sink.existing_status("gone")) is None


def test_a_failed_read_is_an_error_not_a_missing_subject() -> None:
    """A 503 on read raises, so a server outage never turns into a create."""
    server = FakeServer()
    run(server, lambda sink: sink.prepare())
    server.requests.clear()
    server.fail_reads_with = 503
    with pytest.raises(TemporaryHttpError):
        write(server, "pat-1", Status.CANDIDATE)
    assert server.writes() == []


def test_two_subjects_with_the_identifier_are_reported_not_written() -> None:
    """Two matches on the identifier search: a PatientError naming no patient, and no write."""
    server = FakeServer(searchable=frozenset(WRITE_TYPES))
    twin = human_subject("pat-1", "candidate")
    server.put("ResearchSubject/a", twin)
    server.put("ResearchSubject/b", twin)
    with pytest.raises(PatientError) as info:
        write(server, "pat-1", Status.CANDIDATE, capabilities=SEARCH_ALL)
    assert info.value.patient == "Patient/pat-1"
    assert "2 ResearchSubjects carry its identifier" in info.value.reason
    assert "pat-1" not in str(info.value)
    assert not any("ResearchSubject" in r.url.path for r in server.writes())


def test_a_412_on_the_conditional_create_is_reported_and_not_retried() -> None:
    """Two subjects appear between the search and the POST: 412, one POST, a PatientError."""
    server = FakeServer(searchable=frozenset(WRITE_TYPES))
    run(server, lambda sink: sink.prepare(), capabilities=SEARCH_ALL)

    def twins() -> None:
        server.put("ResearchSubject/a", human_subject("pat-1", "candidate"))
        server.put("ResearchSubject/b", human_subject("pat-1", "candidate"))

    after_subject_read(server, twins)
    server.requests.clear()
    with pytest.raises(PatientError, match="several ResearchSubjects match its identifier"):
        write(server, "pat-1", Status.CANDIDATE, capabilities=SEARCH_ALL)
    posts = [r for r in server.writes() if r.url.path == "/fhir/ResearchSubject"]
    assert len(posts) == 1
    assert server.of_type("Provenance") == {}


def test_a_conditional_create_that_finds_one_is_left_for_the_next_run() -> None:
    """200 on the POST (someone created it after the search): reported, no Provenance."""
    server = FakeServer(searchable=frozenset(WRITE_TYPES))
    run(server, lambda sink: sink.prepare(), capabilities=SEARCH_ALL)
    after_subject_read(
        server, lambda: server.put("ResearchSubject/a", human_subject("pat-1", "on-study"))
    )
    with pytest.raises(PatientError, match="appeared on the server since it was read"):
        write(server, "pat-1", Status.CANDIDATE, capabilities=SEARCH_ALL)
    assert server.body("ResearchSubject/a")["status"] == "on-study"
    assert server.of_type("Provenance") == {}


def test_a_server_that_does_not_know_the_parameter_refuses_the_strict_search() -> None:
    """Capabilities claim `identifier`, the server does not know it: its 400 raises, no write."""
    server = FakeServer(searchable=frozenset({"ResearchStudy", "Device"}))
    with pytest.raises(HttpStatusError) as info:
        write(server, "pat-1", Status.CANDIDATE, capabilities=SEARCH_ALL)
    assert info.value.status == 400
    assert "Unknown search parameter" in info.value.detail
    assert not any("ResearchSubject" in r.url.path for r in server.writes())


def test_a_search_answered_with_other_subjects_is_never_taken_for_ours() -> None:
    """A server ignoring the parameter answers with everything: InvalidResponseError, no write."""
    server = FakeServer(searchable=frozenset({"ResearchStudy", "Device"}))
    server.honours_strict = False
    server.put(subject_path("other"), human_subject("other", "potential-candidate"))
    with pytest.raises(InvalidResponseError, match="matched resources without it"):
        write(server, "pat-1", Status.CANDIDATE, capabilities=SEARCH_ALL)
    assert server.body(subject_path("other"))["status"] == "potential-candidate"
    assert not any("ResearchSubject" in r.url.path for r in server.writes())


def test_a_failed_provenance_is_reported_for_the_patient() -> None:
    """The subject is written but its Provenance refused: a PatientError that says so."""
    server = FakeServer(fail_writes_of={"Provenance": 422})
    with pytest.raises(PatientError, match="written but its Provenance was not: HTTP 422"):
        write(server, "pat-1", Status.CANDIDATE)
    assert only_subject(server)[2]["status"] == "candidate"


def test_logical_references_name_the_patient_by_identifier() -> None:
    """Sink apart from the source: individual is the patient's identifier, no literal reference."""
    server = FakeServer()
    mrn = ("urn:oid:1.2.36.146.595.217.0.1", "MRN-4471")
    write(
        server,
        "pat-1",
        Status.CANDIDATE,
        logical_references=True,
        source_base=SOURCE,
        identifier=mrn,
    )
    individual = only_subject(server)[2]["individual"]
    assert individual == {"type": "Patient", "identifier": {"system": mrn[0], "value": mrn[1]}}


def test_logical_references_need_a_patient_identifier() -> None:
    """No identifier to name the patient on another server: a PatientError, nothing written."""
    server = FakeServer()
    with pytest.raises(PatientError, match="no identifier with system and value"):
        write(server, "pat-1", Status.CANDIDATE, logical_references=True, source_base=SOURCE)
    assert server.of_type("ResearchSubject") == {}


def test_logical_references_need_the_source_base() -> None:
    """logical_references without source_base is a programming error."""
    with pytest.raises(ValueError, match="base URL"):
        run(FakeServer(), lambda sink: sink.prepare(), logical_references=True)


@pytest.mark.parametrize(("options", "searchable"), PATHS.values(), ids=PATHS.keys())
def test_a_dry_run_sends_only_reads_and_lists_the_writes(
    options: dict[str, Any], searchable: frozenset[str]
) -> None:
    """Dry run on an empty server: only GETs; study, Device, subject and Provenance planned."""
    server = FakeServer(searchable=searchable)
    result, planned = dry_run(server, "pat-1", Status.CANDIDATE, **options)
    assert result is WriteOutcome.WOULD_CREATE
    assert {r.method for r in server.requests} == {"GET"}
    assert server.stored == {}
    assert [(p.method, p.resource_type, p.patient) for p in planned] == [
        ("POST" if searchable else "PUT", "ResearchStudy", None),
        ("POST" if searchable else "PUT", "Device", None),
        ("POST" if searchable else "PUT", "ResearchSubject", "Patient/pat-1"),
        ("PUT", "Provenance", "Patient/pat-1"),
    ]
    subject_write = planned[2]
    if searchable:
        assert subject_write.condition == f"identifier={subject_identifier('pat-1')}"
        assert subject_write.resource_id is None
    else:
        assert subject_write.resource_id == subject_path("pat-1").split("/")[1]
    assert subject_write.reason == "new candidate"
    assert planned[3].resource_id is None  # its id hashes a version not yet written


@pytest.mark.parametrize(("options", "searchable"), PATHS.values(), ids=PATHS.keys())
def test_a_dry_run_plans_the_update_and_nothing_for_what_stays(
    options: dict[str, Any], searchable: frozenset[str]
) -> None:
    """Dry run over written subjects: would_update planned with its id; unchanged plans nothing."""
    server = FakeServer(searchable=searchable)
    write(server, "pat-1", Status.POTENTIAL_CANDIDATE, FIRST_DAY, **options)
    path, version, _ = only_subject(server)
    server.requests.clear()
    result, planned = dry_run(server, "pat-1", Status.CANDIDATE, **options)
    assert result is WriteOutcome.WOULD_UPDATE
    assert {r.method for r in server.requests} == {"GET"}
    assert server.stored[path][0] == version
    update, provenance = planned
    assert (update.method, update.resource_type, update.resource_id) == (
        "PUT",
        "ResearchSubject",
        path.split("/")[1],
    )
    assert update.reason == "potential-candidate now candidate"
    assert update.describe() == f"PUT {path} (potential-candidate now candidate)"
    assert provenance.resource_type == "Provenance"
    result, planned = dry_run(server, "pat-1", Status.POTENTIAL_CANDIDATE, **options)
    assert result is WriteOutcome.UNCHANGED
    assert planned == []


C, P = Status.CANDIDATE, Status.POTENTIAL_CANDIDATE


@pytest.mark.parametrize(
    ("existing", "wanted", "action", "result"),
    [
        (None, C, plan.Action.CREATE, WriteOutcome.CREATED),
        (None, P, plan.Action.CREATE, WriteOutcome.CREATED),
        ("candidate", C, plan.Action.NONE, WriteOutcome.UNCHANGED),
        ("potential-candidate", P, plan.Action.NONE, WriteOutcome.UNCHANGED),
        ("potential-candidate", C, plan.Action.UPDATE, WriteOutcome.UPDATED),
        ("candidate", P, plan.Action.NONE, WriteOutcome.NO_LONGER_QUALIFIES),
        ("on-study", C, plan.Action.NONE, WriteOutcome.KEPT_HUMAN_STATUS),
        ("withdrawn", P, plan.Action.NONE, WriteOutcome.KEPT_HUMAN_STATUS),
    ],
)
def test_the_decision_table(
    existing: str | None, wanted: Status, action: plan.Action, result: WriteOutcome
) -> None:
    """plan.decide follows trial-spec 'What gets written', without any I/O."""
    assert plan.decide(existing, wanted) == plan.Decision(action, result)


@pytest.mark.parametrize(
    ("existing", "result"),
    [
        ("candidate", WriteOutcome.NO_LONGER_QUALIFIES),
        ("potential-candidate", WriteOutcome.NO_LONGER_QUALIFIES),
        ("on-study", WriteOutcome.KEPT_HUMAN_STATUS),
        ("withdrawn", WriteOutcome.KEPT_HUMAN_STATUS),
        (None, None),
    ],
)
def test_an_ineligible_patient_is_reported_over_any_subject_it_has(
    existing: str | None, result: WriteOutcome | None
) -> None:
    """Now ineligible: no_longer_qualifies over candidate / potential-candidate, kept over a
    status people set (issue 12), nothing without a subject."""
    assert plan.ineligible_outcome(existing) is result
