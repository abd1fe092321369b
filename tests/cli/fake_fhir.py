"""An in-memory FHIR server for CLI tests through respx: a source's searches and a sink's writes.

Searches match `patient`/`_id` by the last segment of a reference, as a lax server would: an
absolute reference to another server's `.../Patient/h01` comes back for `patient=h01`, so the
adapter itself must tell it apart. Codes are not filtered (the sweep re-checks them).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson

Resource = dict[str, Any]
Hook = Callable[[httpx.Request], httpx.Response | None]

FHIR_JSON = {"Content-Type": "application/fhir+json"}
CAPABILITY_STATEMENT = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "kind": "instance",
    "fhirVersion": "4.0.1",
    "format": ["json"],
    "rest": [{"mode": "server"}],
}


def outcome(status: int, text: str) -> httpx.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }
    return httpx.Response(status, json=body, headers=FHIR_JSON)


def read_ndjson(folder: Path, *types: str) -> list[Resource]:
    return [
        orjson.loads(line)
        for kind in types
        for line in (folder / f"{kind}.ndjson").read_bytes().splitlines()
        if line.strip()
    ]


@dataclass
class FakeFhir:
    """Answers metadata, searches (GET or POST _search), reads, PUT and POST at `base`.

    `hook` sees every request first and may answer it instead (a failure, say).
    """

    base: str
    resources: list[Resource] = field(default_factory=list)
    hook: Hook | None = None
    stored: dict[str, Resource] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def writes(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method in ("PUT", "POST", "DELETE", "PATCH")]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.hook is not None:
            answer = self.hook(request)
            if answer is not None:
                return answer
        path = request.url.path.removeprefix(httpx.URL(self.base).path.rstrip("/") + "/")
        if path == "metadata":
            return httpx.Response(200, json=CAPABILITY_STATEMENT, headers=FHIR_JSON)
        if request.method == "POST" and path.endswith("/_search"):
            params = dict(parse_qsl(request.content.decode()))
            return self._search(path.removesuffix("/_search"), params)
        if request.method == "GET" and "/" not in path:
            return self._search(path, dict(request.url.params))
        if request.method == "GET":
            if path in self.stored:
                return self._resource(200, path)
            return outcome(404, f"{path} is not known")
        if request.method == "PUT":
            self.stored[path] = orjson.loads(request.content)
            return self._resource(201, path)
        if request.method == "POST":
            path = f"{path}/{len(self.stored) + 1000}"
            self.stored[path] = orjson.loads(request.content) | {"id": path.split("/")[1]}
            return self._resource(201, path)
        return outcome(405, f"{request.method} not supported")

    def _search(self, kind: str, params: dict[str, str]) -> httpx.Response:
        wanted = params.get("_id") or params.get("patient")
        ids = set(wanted.split(",")) if wanted else None
        found = [
            r
            for r in [*self.resources, *self.stored.values()]
            if r.get("resourceType") == kind and (ids is None or _tail(r) in ids)
        ]
        if params.get("_count") == "1":
            found = found[:1]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {"fullUrl": f"{self.base.rstrip('/')}/{kind}/{r['id']}", "resource": r}
                for r in found
            ],
        }
        return httpx.Response(200, json=bundle, headers=FHIR_JSON)

    def _resource(self, status: int, path: str) -> httpx.Response:
        body = copy.deepcopy(self.stored[path])
        body.setdefault("meta", {})["versionId"] = "1"
        headers = FHIR_JSON | {"ETag": 'W/"1"', "Location": f"{self.base}{path}/_history/1"}
        return httpx.Response(status, json=body, headers=headers)


def _tail(resource: Resource) -> str | None:
    """The id a lax server matches `patient=` against: a reference's last id segment."""
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id"))
    subject = resource.get("subject") or resource.get("patient") or {}
    parts = str(subject.get("reference", "")).split("/")
    return parts[parts.index("Patient") + 1] if "Patient" in parts[:-1] else None


def no_requests(request: httpx.Request) -> httpx.Response:
    """A hook for a server that must not be contacted at all."""
    raise AssertionError(f"unexpected request: {request.method} {request.url.path}")
