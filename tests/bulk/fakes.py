"""A fake Bulk Data server (HL7 Bulk Data Access IG v2) for respx, serving fixtures/demo.

`FakeBulk` answers a FHIR server's `metadata`, the three kick-offs (`$export`, `Patient/$export`,
`Group/<id>/$export`, GET or POST), the status URL of each job it started (202 with Retry-After and
X-Progress `polls_before_done` times, then 200 with the manifest), the job's files (NDJSON built
from the demo population, on the server's origin or on `ELSEWHERE`), the DELETE of a job, and
searches by `_id` or `patient` (an incremental run re-reads the patients that changed). `_since`
is ignored: every export holds everything.
Every request is kept in `requests`, in order, before any fault is applied, so a test can count
what was asked even of a request that was made to fail.

Faults are knobs: `hooks` see each request of a step (`kick-off`, `status`, `file`, `delete`)
first and may answer it, or raise to stand for a kill (`interrupt`) or a lost connection;
`expired_tokens` are answered 401 by the file routes; `delete_status` is DELETE's answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import respx

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
BASE = "https://ehr.test/fhir"
#: a storage origin apart from the FHIR server's (pre-signed URLs live on such hosts)
ELSEWHERE = "https://files.example.net"
TRANSACTION_TIME = "2026-06-14T22:00:00Z"
OO_SYSTEM = "http://terminology.hl7.org/CodeSystem/operation-outcome"
NDJSON = "application/fhir+ndjson"
FHIR_JSON = {"Content-Type": "application/fhir+json"}

Resource = dict[str, Any]
#: sees a request of one step first: an answer, or None to let the fake answer; may raise
Hook = Callable[[httpx.Request], httpx.Response | None]


def demo_lines(kind: str, patients: Iterable[str] | None = None) -> list[bytes]:
    """The demo's NDJSON lines of `kind`, only those of `patients` (ids) when given."""
    wanted = None if patients is None else set(patients)
    lines = [line for line in (DEMO / f"{kind}.ndjson").read_bytes().splitlines() if line.strip()]
    if wanted is None:
        return lines
    return [line for line in lines if _patient_of(orjson.loads(line)) in wanted]


def demo_data(patients: Iterable[str] | None = None) -> dict[str, list[bytes]]:
    """Every type of the demo population (Patient, Condition, Observation, Procedure)."""
    chosen = None if patients is None else list(patients)
    return {
        kind: demo_lines(kind, chosen)
        for kind in ("Patient", "Condition", "Observation", "Procedure")
    }


def _patient_of(resource: Resource) -> str | None:
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id"))
    reference = str((resource.get("subject") or {}).get("reference", ""))
    return reference.removeprefix("Patient/") if reference.startswith("Patient/") else None


def outcome_line(severity: str, code: str, detail: str, diagnostics: str) -> Resource:
    """One OperationOutcome of an error file, with a coded issue and free text."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": severity,
                "code": code,
                "details": {"coding": [{"system": OO_SYSTEM, "code": detail}]},
                "diagnostics": diagnostics,
            }
        ],
    }


def interrupt(times: int = 1) -> Hook:
    """A hook that stands for a kill (Ctrl-C, SIGTERM) the first `times` requests it sees."""
    seen = 0

    def hook(_request: httpx.Request) -> None:
        nonlocal seen
        seen += 1
        if seen <= times:
            raise KeyboardInterrupt
        return None

    return hook


def only_for(name: str, hook: Hook) -> Hook:
    """`hook` applied to the requests whose URL path ends with `name` (a file's), no other."""

    def scoped(request: httpx.Request) -> httpx.Response | None:
        return hook(request) if request.url.path.endswith(name) else None

    return scoped


@dataclass
class Job:
    """An export job the fake started: its id, its kick-off request and its parameters."""

    id: str
    kick_off: httpx.Request
    params: list[tuple[str, str]]
    path: str
    polls: int = 0
    deleted: bool = False

    def types(self) -> list[str]:
        return [t for name, value in self.params if name == "_type" for t in value.split(",")]


@dataclass
class FakeBulk:
    """The server; `mount(router)` routes its host (and ELSEWHERE) to `handle`."""

    base: str = BASE
    data: dict[str, list[bytes]] = field(default_factory=demo_data)
    #: where the CapabilityStatement offers $export: `system`, `Patient`, `Group`
    levels: tuple[str, ...] = ("system", "Patient", "Group")
    polls_before_done: int = 2
    retry_after: str | None = "1"
    progress: str | None = "exporting: 42% done"
    requires_token: bool = True
    #: files of each type, the type's lines spread over them in turn
    files_per_type: int = 1
    #: the types whose files lie on ELSEWHERE instead of the server's origin
    elsewhere: frozenset[str] = frozenset()
    #: the OperationOutcomes of the one error file (none: no error file)
    errors: list[Resource] = field(default_factory=list)
    transaction_time: str = TRANSACTION_TIME
    delete_status: int = 202
    #: bearer tokens the file routes answer 401 to (a token expired during a long export)
    expired_tokens: frozenset[str] = frozenset()
    #: Group members (of `GET Group/<id>`) marked `inactive`; every served Patient is a member
    inactive_members: frozenset[str] = frozenset()
    hooks: dict[str, Hook] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)
    #: requests the fake has no answer for (answered 404); a test expects none
    unexpected: list[str] = field(default_factory=list)

    # -- wiring ------------------------------------------------------------------------------------

    def mount(self, router: respx.MockRouter) -> None:
        for origin in {httpx.URL(self.base).host, httpx.URL(ELSEWHERE).host}:
            router.route(host=origin).mock(side_effect=self.handle)

    @property
    def base_path(self) -> str:
        return httpx.URL(self.base).path.rstrip("/")

    def status_url(self, job_id: str) -> str:
        return f"{self.base}/$export-poll-status?_jobId={job_id}"

    # -- what was asked ----------------------------------------------------------------------------

    def of_step(self, step: str) -> list[httpx.Request]:
        return [r for r in self.requests if self._step(r) == step]

    def kick_offs(self) -> list[httpx.Request]:
        return self.of_step("kick-off")

    def polls(self, job_id: str | None = None) -> list[httpx.Request]:
        return [
            r
            for r in self.of_step("status")
            if job_id is None or r.url.params.get("_jobId") == job_id
        ]

    def deletes(self) -> list[httpx.Request]:
        return self.of_step("delete")

    def file_gets(self, name: str | None = None) -> list[httpx.Request]:
        """GETs of files, of the file whose URL path ends with `name` when given."""
        return [r for r in self.of_step("file") if name is None or r.url.path.endswith("/" + name)]

    def file_names(self, job_id: str = "job-1") -> list[str]:
        """The names of a job's files as the manifest lists them (output, then errors)."""
        manifest = self._manifest(self.jobs[job_id])
        return [str(f["url"]).rsplit("/", 1)[1] for f in manifest["output"] + manifest["error"]]

    # -- answers -----------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self._step(request)
        hook = self.hooks.get(step) if step else None
        if hook is not None:
            answer = hook(request)
            if answer is not None:
                return answer
        if step == "kick-off":
            return self._kick_off(request)
        if step == "status":
            return self._status(request)
        if step == "delete":
            return self._delete(request)
        if step == "file":
            return self._file(request)
        path = self._path(request)
        if request.method == "GET" and path == "metadata":
            return httpx.Response(200, json=self.capability_statement(), headers=FHIR_JSON)
        if request.method == "GET" and path in self.data:
            return self._search(path, dict(request.url.params))
        if request.method == "GET" and path.startswith("Group/"):
            return httpx.Response(200, json=self._group(path.split("/")[1]), headers=FHIR_JSON)
        if request.method == "POST" and path.removesuffix("/_search") in self.data:
            return self._search(
                path.removesuffix("/_search"), dict(parse_qsl(request.content.decode()))
            )
        self.unexpected.append(f"{request.method} {request.url.host}{request.url.path}")
        return _outcome(404, "not found")

    def capability_statement(self) -> Resource:
        export = [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/export"}]
        resources = [
            {"type": kind, "interaction": [{"code": "read"}, {"code": "search-type"}]}
            | ({"operation": export} if kind in self.levels else {})
            for kind in ("Patient", "Group", "Condition", "Observation", "Procedure")
        ]
        rest: Resource = {"mode": "server", "resource": resources}
        if "system" in self.levels:
            rest["operation"] = export
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [rest],
        }

    def _path(self, request: httpx.Request) -> str:
        if request.url.host != httpx.URL(self.base).host:
            return ""
        return request.url.path.removeprefix(self.base_path + "/")

    def _step(self, request: httpx.Request) -> str | None:
        path = self._path(request)
        if path == "$export-poll-status":
            return "status" if request.method == "GET" else "delete"
        if path.endswith("$export"):
            return "kick-off"
        if request.url.path.startswith(("/bulk/", f"{self.base_path}/bulk/")):
            return "file"
        return None

    def _search(self, kind: str, params: dict[str, str]) -> httpx.Response:
        """A search of the served data by `_id` or `patient` (comma lists), other parameters
        ignored (the sweep checks codes and dates itself): what an incremental run re-reads."""
        wanted = params.get("_id") or params.get("patient") or params.get("subject")
        ids = {i.removeprefix("Patient/") for i in wanted.split(",")} if wanted else None
        found = [orjson.loads(line) for line in self.data.get(kind, [])]
        if ids is not None:
            key = "_id" if "_id" in params else "patient"
            found = [r for r in found if (r.get("id") if key == "_id" else _patient_of(r)) in ids]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {
                    "fullUrl": f"{self.base}/{kind}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in found
            ],
        }
        return httpx.Response(200, json=bundle, headers=FHIR_JSON)

    def _group(self, group_id: str) -> Resource:
        """A Group of every served Patient, those in `inactive_members` marked inactive."""
        ids = [orjson.loads(line)["id"] for line in self.data.get("Patient", [])]
        return {
            "resourceType": "Group",
            "id": group_id,
            "type": "person",
            "actual": True,
            "member": [
                {"entity": {"reference": f"{self.base}/Patient/{pid}"}}
                | ({"inactive": True} if pid in self.inactive_members else {})
                for pid in ids
            ],
        }

    def _kick_off(self, request: httpx.Request) -> httpx.Response:
        if "respond-async" not in request.headers.get("Prefer", ""):
            return _outcome(400, "Prefer: respond-async is required")
        path = self._path(request)
        if request.method == "POST":
            body = orjson.loads(request.content)
            params = [
                (str(p["name"]), str(p.get("valueString", p.get("valueInstant", ""))))
                for p in body.get("parameter", [])
            ]
        else:
            params = list(request.url.params.multi_items())
        job = Job(f"job-{len(self.jobs) + 1}", request, params, path)
        self.jobs[job.id] = job
        return httpx.Response(202, headers={"Content-Location": self.status_url(job.id)})

    def _job(self, request: httpx.Request) -> Job | None:
        job = self.jobs.get(request.url.params.get("_jobId", ""))
        return None if job is None or job.deleted else job

    def _status(self, request: httpx.Request) -> httpx.Response:
        job = self._job(request)
        if job is None:
            return _outcome(404, "no such job")
        job.polls += 1
        if job.polls <= self.polls_before_done:
            headers = {}
            if self.retry_after is not None:
                headers["Retry-After"] = self.retry_after
            if self.progress is not None:
                headers["X-Progress"] = self.progress
            return httpx.Response(202, headers=headers)
        return httpx.Response(200, json=self._manifest(job))

    def _manifest(self, job: Job) -> Resource:
        types = job.types() or list(self.data)
        output = []
        for kind in types:
            origin = ELSEWHERE if kind in self.elsewhere else self.base
            output += [
                {
                    "type": kind,
                    "url": f"{origin}/bulk/{job.id}/{kind}-{n}.ndjson",
                    "count": len(self._lines(kind, n)),
                }
                for n in range(self.files_per_type)
            ]
        error = (
            [{"type": "OperationOutcome", "url": f"{self.base}/bulk/{job.id}/errors-0.ndjson"}]
            if self.errors
            else []
        )
        return {
            "transactionTime": self.transaction_time,
            "request": str(job.kick_off.url),
            "requiresAccessToken": self.requires_token,
            "output": output,
            "error": error,
        }

    def _lines(self, kind: str, n: int) -> list[bytes]:
        return self.data.get(kind, [])[n :: self.files_per_type]

    def _file(self, request: httpx.Request) -> httpx.Response:
        if request.method != "GET":
            return _outcome(405, "files are read only")
        sent = request.headers.get("Authorization", "")
        if sent.removeprefix("Bearer ") in self.expired_tokens:
            return _outcome(401, "the access token expired")
        job_id, name = request.url.path.split("/bulk/", 1)[1].split("/", 1)
        job = self.jobs.get(job_id)
        if job is None or job.deleted:
            return _outcome(404, "no such file")
        if name == "errors-0.ndjson":
            lines = [orjson.dumps(o) for o in self.errors]
        else:
            kind, _, number = name.removesuffix(".ndjson").partition("-")
            lines = self._lines(kind, int(number))
        body = b"".join(line + b"\n" for line in lines)
        return httpx.Response(200, content=body, headers={"Content-Type": NDJSON})

    def _delete(self, request: httpx.Request) -> httpx.Response:
        job = self._job(request)
        if job is None or self.delete_status == 404:
            return _outcome(404, "no such job")
        if self.delete_status >= 300:
            return _outcome(self.delete_status, "the job could not be deleted")
        job.deleted = True
        return httpx.Response(self.delete_status)


def _outcome(status: int, text: str) -> httpx.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }
    return httpx.Response(status, json=body, headers=FHIR_JSON)
