"""Incremental Bulk runs (issue 14) against a fake server: the second run exports only what changed
since the first one's transactionTime, reads the history for deletions, re-reads the changed
patients through the search API, and sweeps everyone from the facts store's view, with the
verdicts a full export of the final data gives. `--full`, `full_every_days`, a changed request, a
store that cannot be read and a server that refuses `_since` make a run full."""

from __future__ import annotations

import asyncio
import copy
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson
import pytest
import respx

from adapter.bulk.export import Export, export_request, finish_export
from adapter.bulk.incremental import Plan, choose_mode, group_members
from adapter.bulk.jobs import job_key
from adapter.bulk.model import ExportRequest
from adapter.bulk.store import FactStore, StoreMeta, request_hash, store_path
from adapter.commands.export_phase import bulk_export, record_export
from adapter.config import ServerConfig
from adapter.fhir.capability import ResourceCapabilities, ServerCapabilities
from adapter.fhir.client import FhirClient
from adapter.fhir.limits import NO_RETRIES
from adapter.sources.files import FolderSource
from adapter.sources.rest import RestSource
from adapter.sweep import SweepResult, run_sweep
from adapter.trials import Trial, load_trial

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
BASE = "https://ehr.test/fhir"
EPOCH = datetime(2026, 6, 14, 2, 0, tzinfo=UTC)
NOW = datetime(2026, 6, 15, 2, 0, tzinfo=UTC)
FIRST = datetime(2026, 6, 15).date()
LATER = datetime(2026, 9, 15).date()
TYPES = ("Patient", "Condition", "Observation", "Procedure")
# A candidate whose labs age out, one with no hemoglobin (a new one comes), one with a lung
# metastasis (deleted), an ineligible one, and one outside the cohort.
PATIENTS = ("demo-01", "demo-14", "demo-30", "demo-36", "demo-54")
CONFIG = ServerConfig(bulk_max_wait=1, full_every_days=7)
Key = tuple[str, str]
Verdicts = dict[str, tuple[str, dict[str, str]]]


def demo() -> list[dict[str, Any]]:
    found = []
    for path in sorted(DEMO.glob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            resource = orjson.loads(line)
            owner = resource["id"] if resource["resourceType"] == "Patient" else None
            owner = owner or resource.get("subject", {}).get("reference", "").split("/")[-1]
            if owner in PATIENTS:
                found.append(resource)
    return found


def hemoglobin(pid: str, rid: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": 12.5,
            "unit": "g/dL",
            "system": "http://unitsofmeasure.org",
            "code": "g/dL",
        },
    }


@dataclass
class FakeServer:
    """A Bulk Data server with a search API and a history, over a logical clock.

    Every write ticks the clock; an export's transactionTime is its kick-off's tick, and `_since`
    selects what was written after it. Records what the client asked.
    """

    history: bool = True
    deleted_in_manifest: bool = False
    refuse_since: bool = False
    page: int = 1  # history entries per page, so that its next links are followed
    error_file: bool = False
    refuse_history: frozenset[str] = frozenset()
    broken_line: bool = False
    group: list[str] = field(default_factory=list)
    now: int = 0
    data: dict[Key, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    log: list[tuple[int, str, Key, dict[str, Any] | None]] = field(default_factory=list)
    kickoffs: list[dict[str, str]] = field(default_factory=list)
    history_reads: list[tuple[str, str]] = field(default_factory=list)
    searches: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    deleted_jobs: list[str] = field(default_factory=list)

    def load(self, resources: list[dict[str, Any]]) -> None:
        for resource in resources:
            self.put(resource)

    def tick(self) -> int:
        self.now += 1
        return self.now

    def put(self, resource: dict[str, Any]) -> None:
        key = (resource["resourceType"], resource["id"])
        at = self.tick()
        self.data[key] = (at, copy.deepcopy(resource))
        self.log.append((at, "PUT", key, resource))

    def delete(self, kind: str, rid: str) -> None:
        del self.data[(kind, rid)]
        self.log.append((self.tick(), "DELETE", (kind, rid), None))

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/fhir/")
        params = parse_qsl(request.url.query.decode())
        if request.method == "DELETE":
            self.deleted_jobs.append(path)
            return httpx.Response(202)
        if path.endswith("$export"):
            if request.method == "POST":  # a long _typeFilter goes as a Parameters resource
                body = orjson.loads(request.content)["parameter"]
                params = [(p["name"], p.get("valueString") or p["valueInstant"]) for p in body]
            return self.kick_off(path, params)
        if path in self.manifests:
            return httpx.Response(200, json=self.manifests[path])
        if path in self.files:
            return httpx.Response(200, content=self.files[path])
        kind, _, rest = path.partition("/")
        if rest == "_search":  # a search too long for a URL, as a form
            return self.search(kind, dict(parse_qsl(request.content.decode())))
        if rest == "_history":
            return self.read_history(kind, dict(params))
        if kind == "Group" and rest:
            members = [{"entity": {"reference": f"Patient/{p}"}} for p in self.group]
            return httpx.Response(
                200, json={"resourceType": "Group", "id": rest, "member": members}
            )
        if not rest:
            return self.search(kind, dict(params))
        return httpx.Response(404)

    def kick_off(self, path: str, params: list[tuple[str, str]]) -> httpx.Response:
        asked = dict(params)
        self.kickoffs.append(asked)
        if "_since" in asked and self.refuse_since:
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": []})
        since = instant_tick(asked.get("_since"))
        at = self.tick()
        job = f"status/{len(self.kickoffs)}"
        output, deleted = [], []
        for kind in asked["_type"].split(","):
            lines = [
                orjson.dumps(resource)
                for (k, _), (written, resource) in sorted(self.data.items())
                if k == kind and written > since and self.exported(resource)
            ]
            if self.broken_line and since and kind == "Observation":
                lines.append(b'{"resourceType":"Observation","id":"x1","status":')
            if lines:
                name = f"files/{len(self.kickoffs)}/{kind}.ndjson"
                self.files[name] = b"\n".join(lines) + b"\n"
                output.append({"type": kind, "url": f"{BASE}/{name}", "count": len(lines)})
        if self.deleted_in_manifest and since:
            entries = [
                {"request": {"method": "DELETE", "url": f"{k}/{rid}"}}
                for written, verb, (k, rid), _ in self.log
                if verb == "DELETE" and written > since
            ]
            name = f"files/{len(self.kickoffs)}/deleted.ndjson"
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
            self.files[name] = orjson.dumps(bundle) + b"\n"
            deleted.append({"type": "Bundle", "url": f"{BASE}/{name}"})
        errors = []
        if self.error_file:
            name = f"files/{len(self.kickoffs)}/errors.ndjson"
            issue = {"severity": "error", "code": "processing", "diagnostics": "Patient x"}
            self.files[name] = orjson.dumps({"resourceType": "OperationOutcome", "issue": [issue]})
            errors.append({"type": "OperationOutcome", "url": f"{BASE}/{name}"})
        self.manifests[job] = {
            "transactionTime": tick_instant(at),
            "request": f"{BASE}/{path}",
            "requiresAccessToken": False,
            "output": output,
            "error": errors,
            **({"deleted": deleted} if deleted else {}),
        }
        return httpx.Response(202, headers={"Content-Location": f"{BASE}/{job}"})

    def exported(self, resource: dict[str, Any]) -> bool:
        if not self.group:
            return True
        owner = resource["id"] if resource["resourceType"] == "Patient" else None
        return (owner or resource["subject"]["reference"].split("/")[-1]) in self.group

    def read_history(self, kind: str, params: dict[str, str]) -> httpx.Response:
        self.history_reads.append((kind, params["_since"]))
        if kind in self.refuse_history:
            return httpx.Response(403, json={"resourceType": "OperationOutcome", "issue": []})
        since = instant_tick(params["_since"])
        entries = [
            {"request": {"method": verb, "url": f"{k}/{rid}"}}
            | ({"resource": resource} if resource else {})
            for written, verb, (k, rid), resource in self.log
            if k == kind and written > since
        ]
        start = int(params.get("_page", "0"))
        body: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "history",
            "entry": entries[start : start + self.page],
        }
        if start + self.page < len(entries):
            query = urlencode({**params, "_page": str(start + self.page)})
            body["link"] = [{"relation": "next", "url": f"{BASE}/{kind}/_history?{query}"}]
        return httpx.Response(200, json=body)

    def search(self, kind: str, params: dict[str, str]) -> httpx.Response:
        name = "_id" if kind == "Patient" else "patient"
        ids = frozenset(params[name].split(","))
        self.searches.append((kind, ids))
        found = []
        for (k, _), (_, resource) in sorted(self.data.items()):
            owner = resource["id"] if k == "Patient" else resource["subject"]["reference"][8:]
            if k == kind and owner in ids:
                found.append({"resource": resource})
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(found)}
        return httpx.Response(200, json=bundle | {"entry": found})

    def searched_patients(self) -> set[str]:
        return {pid for _, ids in self.searches for pid in ids}


def tick_instant(tick: int) -> str:
    return (EPOCH + timedelta(seconds=tick)).strftime("%Y-%m-%dT%H:%M:%SZ")


def instant_tick(text: str | None) -> int:
    if not text:
        return 0
    return int((datetime.fromisoformat(text) - EPOCH).total_seconds())


def capabilities(*, history: bool = True) -> ServerCapabilities:
    interactions = frozenset({"read", "search-type", *(("history-type",) if history else ())})
    resources = [
        ResourceCapabilities(kind, interactions=interactions, operations=frozenset({"export"}))
        for kind in (*TYPES, "Group")
    ]
    return ServerCapabilities(resources=tuple(resources), operations=frozenset({"export"}))


@dataclass
class Run:
    export: Export
    result: SweepResult

    @property
    def verdicts(self) -> Verdicts:
        return {
            v.patient: (str(v.status), {cid: str(c.result) for cid, c in v.criteria.items()})
            for v in self.result.verdicts
        }

    @property
    def bulk(self) -> dict[str, object]:
        return self.export.summary()


@pytest.fixture(scope="module")
def trial() -> Trial:
    return load_trial("hcc-ablation-lenvatinib-pd1")


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    fake.load(demo())
    with respx.mock(assert_all_called=False) as router:
        router.route(host="ehr.test").mock(side_effect=fake.handle)
        yield fake


def sweep(
    server: FakeServer,
    trial: Trial,
    state: Path,
    *,
    as_of: Any = FIRST,
    forced: bool = False,
    now: datetime = NOW,
    record: bool = True,
    level: str = "system",
) -> Run:
    """One `sweep --bulk`: the export phase, the sweep of what it left, and its end."""

    async def main() -> Run:
        caps = capabilities(history=server.history)
        async with httpx.AsyncClient() as http:
            client = FhirClient(http, BASE, retry=NO_RETRIES)
            group = "g1" if level == "group" else None
            export = await bulk_export(
                client,
                caps,
                export_request(trial, level, group),  # type: ignore[arg-type]
                trial=trial,
                state_dir=state,
                config=CONFIG,
                forced=forced,
                reader=RestSource(client, capabilities=caps),
                now=lambda: now,
            )
            types = frozenset(export.state.request.types)
            result = await run_sweep(trial, FolderSource(export.source_dir, exported=types), as_of)
            result.export_blocking = export.blocking  # as adapter.commands.sweep does
            if record:
                record_export(export)
                await finish_export(client, export, keep=False)
        return Run(export, result)

    return asyncio.run(main())


def change(server: FakeServer) -> None:
    """Between the runs: a new lab, a deleted Condition, a new patient in the cohort."""
    server.put(hemoglobin("demo-14", "demo-14-hgb-new", "2026-09-10T08:30:00+08:00"))
    server.delete("Condition", "demo-36-lung-mets")
    hcc = next(r for (k, _), (_, r) in server.data.items() if r["id"] == "demo-01-hcc")
    server.put({"resourceType": "Patient", "id": "new-01", "birthDate": "1960-01-01"})
    server.put({**hcc, "id": "new-01-hcc", "subject": {"reference": "Patient/new-01"}})


def full_run_of_final_data(server: FakeServer, trial: Trial, tmp_path: Path) -> Run:
    return sweep(server, trial, tmp_path / "fresh-state", as_of=LATER, record=False)


def test_the_second_run_exports_only_the_changes_and_decides_as_a_full_run(
    server: FakeServer, trial: Trial, tmp_path: Path
) -> None:
    first = sweep(server, trial, tmp_path / "state")
    assert first.bulk["mode"] == "full"
    assert "_since" not in server.kickoffs[0]
    assert len(first.verdicts) == 4
    change(server)

    second = sweep(server, trial, tmp_path / "state", as_of=LATER)

    assert server.kickoffs[1]["_since"] == first.export.manifest.transaction_time
    assert second.bulk["since"] == first.export.manifest.transaction_time
    # deletions from each exported type's history, its pages followed (the Condition history
    # holds a deletion and a new Condition: two pages)
    assert set(server.history_reads) == {
        (kind, first.export.manifest.transaction_time) for kind in TYPES
    }
    assert [kind for kind, _ in server.history_reads].count("Condition") == 2
    # only the changed patients are read again: a new lab, a deleted Condition, a new patient
    assert server.searched_patients() == {"demo-14", "demo-36", "new-01"}
    assert {kind for kind, _ in server.searches} == set(TYPES)
    bulk = second.bulk
    assert bulk["mode"] == "incremental"
    assert bulk["changed_patients"] == 3
    assert bulk["deleted"] == 1
    assert bulk["deletions"] == "history"
    assert bulk["resources_fetched"] == {
        kind: sum(
            1
            for (k, _), (_, r) in server.data.items()
            if k == kind
            and (r["id"] if k == "Patient" else r["subject"]["reference"][8:])
            in {"demo-14", "demo-36", "new-01"}
        )
        for kind in TYPES
    }
    # every cohort patient is evaluated again, the new one included
    full = full_run_of_final_data(server, trial, tmp_path)
    assert full.bulk["mode"] == "full"
    assert second.verdicts == full.verdicts
    assert "Patient/new-01" in second.verdicts
    # the lab aged out with no new data; the new lab and the deletion are seen
    assert first.verdicts["Patient/demo-01"][0] == "candidate"
    assert second.verdicts["Patient/demo-01"][0] != "candidate"
    assert first.verdicts["Patient/demo-14"][1]["hemoglobin"] == "unknown"
    assert second.verdicts["Patient/demo-14"][1]["hemoglobin"] == "met"
    assert first.verdicts["Patient/demo-36"][1]["no_extrahepatic_metastasis"] == "not_met"
    assert second.verdicts["Patient/demo-36"][1]["no_extrahepatic_metastasis"] == "met"
    # the job is deleted on the server, its files and view removed; the store moved on
    assert server.deleted_jobs == ["status/1", "status/2"]
    key = job_key(BASE, export_request(trial, "system", None), trial.id)
    assert not (tmp_path / "state" / "bulk" / key).exists()
    with FactStore.open(store_path(tmp_path / "state", key)) as store:
        assert store.meta().transaction_time == second.export.manifest.transaction_time


def test_a_third_run_with_nothing_changed_reads_no_patient(
    server: FakeServer, trial: Trial, tmp_path: Path
) -> None:
    first = sweep(server, trial, tmp_path / "state")
    again = sweep(server, trial, tmp_path / "state", as_of=LATER)
    assert again.bulk["changed_patients"] == 0
    assert server.searches == []
    assert again.verdicts == full_run_of_final_data(server, trial, tmp_path).verdicts
    assert first.verdicts != again.verdicts  # the labs aged out


def test_an_interrupted_run_asks_again_for_the_same_changes(
    server: FakeServer, trial: Trial, tmp_path: Path
) -> None:
    first = sweep(server, trial, tmp_path / "state")
    change(server)
    sweep(server, trial, tmp_path / "state", as_of=LATER, record=False)  # killed after the sweep
    server.searches.clear()
    again = sweep(server, trial, tmp_path / "state", as_of=LATER)
    # the same job is taken up (no third kick-off), since the store did not move on
    assert len(server.kickoffs) == 2
    assert again.bulk["since"] == first.export.manifest.transaction_time
    assert again.bulk["resumed"] is True
    # The changed patients are read again. The deleted Condition left the store with the first
    # try's update, which re-read its patient: the history names nobody stored any more.
    assert server.searched_patients() == {"demo-14", "new-01"}
    assert again.verdicts == full_run_of_final_data(server, trial, tmp_path).verdicts


def test_full_forces_a_full_export(server: FakeServer, trial: Trial, tmp_path: Path) -> None:
    sweep(server, trial, tmp_path / "state")
    change(server)
    forced = sweep(server, trial, tmp_path / "state", as_of=LATER, forced=True)
    assert "_since" not in server.kickoffs[1]
    assert forced.bulk["mode"] == "full"
    assert forced.bulk["full_because"] == "--full"
    assert server.searches == []
    assert server.history_reads == []
    # the store now holds the new export: the next run builds on it
    nxt = sweep(server, trial, tmp_path / "state", as_of=LATER)
    assert server.kickoffs[2]["_since"] == forced.export.manifest.transaction_time
    assert nxt.verdicts == forced.verdicts


@pytest.mark.parametrize(("days", "mode"), [(6, "incremental"), (7, "full"), (30, "full")])
def test_a_full_export_every_full_every_days(
    server: FakeServer, trial: Trial, tmp_path: Path, days: int, mode: str
) -> None:
    sweep(server, trial, tmp_path / "state")
    later = sweep(server, trial, tmp_path / "state", now=NOW + timedelta(days=days))
    assert later.bulk["mode"] == mode
    assert ("_since" in server.kickoffs[1]) is (mode == "incremental")


def test_a_changed_request_forces_a_full_export(
    server: FakeServer, trial: Trial, tmp_path: Path
) -> None:
    sweep(server, trial, tmp_path / "state")
    key = job_key(BASE, export_request(trial, "system", None), trial.id)
    with sqlite3.connect(store_path(tmp_path / "state", key)) as db:
        db.execute("UPDATE meta SET value = 'another request' WHERE key = 'request_hash'")
    again = sweep(server, trial, tmp_path / "state")
    assert again.bulk["full_because"] == "the export request changed"
    assert "_since" not in server.kickoffs[1]


def test_new_trial_codes_make_another_store(trial: Trial) -> None:
    """The store lies beside the job, whose key holds the request: new codes start afresh."""
    request = export_request(trial, "system", None)
    wider = ExportRequest("system", request.types, None, ("Observation?code=x",))
    assert job_key(BASE, wider, trial.id) != job_key(BASE, request, trial.id)
    meta = StoreMeta("2026-06-14T02:00:00Z", NOW.isoformat(), request_hash(request))
    assert choose_mode(meta, wider, forced=False, full_every_days=7, now=NOW).mode == "full"


def test_choose_mode() -> None:
    request = ExportRequest("system", TYPES)
    meta = StoreMeta("2026-06-14T02:00:00Z", "2026-06-14T02:00:00+00:00", request_hash(request))

    def plan(**changes: Any) -> Plan:
        options: dict[str, Any] = {"forced": False, "full_every_days": 7, "now": NOW} | changes
        return choose_mode(options.pop("meta", meta), request, **options)

    assert plan() == Plan("incremental", since="2026-06-14T02:00:00Z")
    assert plan(forced=True) == Plan("full", reason="--full")
    assert plan(meta=StoreMeta()).reason == "no earlier export to build on"
    assert plan(meta=StoreMeta("t", None, request_hash(request))).mode == "full"
    # calendar days: a nightly job is full every 7th night whatever minute it starts
    assert plan(now=datetime(2026, 6, 21, 1, 59, tzinfo=UTC)).mode == "full"
    assert plan(now=datetime(2026, 6, 20, 23, 59, tzinfo=UTC)).mode == "incremental"
    assert plan(now=datetime(2026, 6, 1, tzinfo=UTC)).mode == "full"  # a clock set back


def test_a_store_that_cannot_be_read_makes_the_run_full(
    server: FakeServer, trial: Trial, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep(server, trial, tmp_path / "state")
    key = job_key(BASE, export_request(trial, "system", None), trial.id)
    path = store_path(tmp_path / "state", key)
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)
    path.write_bytes(b"\x00garbage" * 512)
    with caplog.at_level(logging.WARNING):
        again = sweep(server, trial, tmp_path / "state")
    assert again.bulk["mode"] == "full"
    assert "cannot be used" in caplog.text
    assert sweep(server, trial, tmp_path / "state").bulk["mode"] == "incremental"


def test_a_server_that_refuses_since_gets_a_full_export(
    server: FakeServer, trial: Trial, tmp_path: Path
) -> None:
    sweep(server, trial, tmp_path / "state")
    server.refuse_since = True
    again = sweep(server, trial, tmp_path / "state")
    assert again.bulk["full_because"] == "the server refused _since"
    assert "_since" not in server.kickoffs[-1]


def test_deletions_listed_in_the_manifest_need_no_history(
    server: FakeServer, trial: Trial, tmp_path: Path
) -> None:
    server.deleted_in_manifest = True
    sweep(server, trial, tmp_path / "state")
    change(server)
    second = sweep(server, trial, tmp_path / "state", as_of=LATER)
    assert second.bulk["deletions"] == "manifest"
    assert second.bulk["deleted"] == 1
    assert server.history_reads == []
    assert second.verdicts == full_run_of_final_data(server, trial, tmp_path).verdicts


def test_unseen_deletions_are_said_once(
    trial: Trial, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeServer(history=False)
    fake.load(demo())
    with respx.mock(assert_all_called=False) as router:
        router.route(host="ehr.test").mock(side_effect=fake.handle)
        sweep(fake, trial, tmp_path / "state")
        change(fake)
        with caplog.at_level(logging.WARNING):
            second = sweep(fake, trial, tmp_path / "state", as_of=LATER)
    assert second.bulk["deletions"] == "unseen"
    assert second.bulk["deletions_unseen_types"] == list(TYPES)
    warnings = [r for r in caplog.records if "deletions stay unseen" in r.getMessage()]
    assert len(warnings) == 1
    # the deleted metastasis is still in the store: seen only by the next full export
    assert second.verdicts["Patient/demo-36"][1]["no_extrahepatic_metastasis"] == "not_met"
    assert fake.searched_patients() == {"demo-14", "new-01"}


def test_a_history_declared_but_refused_leaves_its_deletions_unseen(
    server: FakeServer, trial: Trial, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep(server, trial, tmp_path / "state")
    change(server)
    server.refuse_history = frozenset({"Condition"})
    with caplog.at_level(logging.WARNING):
        second = sweep(server, trial, tmp_path / "state", as_of=LATER)
    assert second.bulk["deletions"] == "history"
    assert second.bulk["deletions_unseen_types"] == ["Condition"]
    assert second.bulk["deleted"] == 0
    assert "no deleted resources for Condition" in caplog.text


def test_an_export_with_error_files_leaves_the_store_as_it_was(
    server: FakeServer, trial: Trial, tmp_path: Path
) -> None:
    first = sweep(server, trial, tmp_path / "state")
    change(server)
    server.error_file = True
    second = sweep(server, trial, tmp_path / "state", as_of=LATER)
    assert second.result.withhold_writes
    server.error_file = False
    third = sweep(server, trial, tmp_path / "state", as_of=LATER)
    assert server.kickoffs[2]["_since"] == first.export.manifest.transaction_time
    assert third.verdicts == full_run_of_final_data(server, trial, tmp_path).verdicts


def test_an_unreadable_change_holds_writes_back_and_the_next_run_is_full(
    server: FakeServer, trial: Trial, tmp_path: Path
) -> None:
    sweep(server, trial, tmp_path / "state")
    change(server)
    server.broken_line = True
    second = sweep(server, trial, tmp_path / "state", as_of=LATER)
    assert second.bulk["unreadable_changes"] == 1
    assert second.result.withhold_writes  # as for the same line in a full export
    server.broken_line = False
    assert sweep(server, trial, tmp_path / "state").bulk["mode"] == "full"


def test_a_group_export_follows_its_members(
    server: FakeServer, trial: Trial, tmp_path: Path
) -> None:
    server.group = ["demo-01", "demo-14", "demo-30"]
    first = sweep(server, trial, tmp_path / "state", level="group")
    assert set(first.verdicts) == {"Patient/demo-01", "Patient/demo-14", "Patient/demo-30"}
    server.group = ["demo-01", "demo-14", "demo-36"]  # demo-30 left, demo-36 joined
    second = sweep(server, trial, tmp_path / "state", level="group", as_of=LATER)
    assert second.bulk["left_group"] == 1
    assert second.bulk["changed_patients"] == 1
    assert server.searched_patients() == {"demo-36"}
    assert second.verdicts == full_run_of_final_data_group(server, trial, tmp_path).verdicts


def full_run_of_final_data_group(server: FakeServer, trial: Trial, tmp_path: Path) -> Run:
    return sweep(server, trial, tmp_path / "fresh", as_of=LATER, record=False, level="group")


def test_group_members() -> None:
    def group(*refs: str) -> dict[str, Any]:
        return {"resourceType": "Group", "member": [{"entity": {"reference": r}} for r in refs]}

    assert group_members(group("Patient/a", "Patient/b")) == {"a", "b"}
    assert group_members(group("Patient/a", "Group/g2")) is None
    assert group_members(None) is None
