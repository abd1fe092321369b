"""The server sink's two writer paths, end to end against real sekmet-fhir servers.

sekmet 0.1.1 has no search parameters for ResearchStudy or ResearchSubject: its CapabilityStatement
does not list the types, a conditional create by identifier answers 400, and
`ResearchSubject?identifier=` is ignored (every ResearchSubject comes back) unless sent with
`Prefer: handling=strict`. So the sink must take, per type, the path the CapabilityStatement allows:

- plain: the session's server (`fhir_base_url`), as sekmet ships. ResearchStudy and ResearchSubject
  are read and PUT at deterministic ids (`ta-` + 40 hex of sha256(system|value)).
- extended: a server of this session's own (`extended_server`) with the standard R4 ResearchSubject
  (identifier, status, study, individual, patient) and ResearchStudy (identifier, status, title)
  search parameters added. Both are searched by identifier and created conditionally (POST with
  If-None-Exist): the server assigns the ids.

Each test sweeps the demo population with the server as source and sink, under a copy of the trial
with a unique id and study identifier, so its ResearchStudy and ResearchSubjects are its own.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

if TYPE_CHECKING:  # conftest is not importable at run time; the names are for the reader
    from conftest import ExtendedServer, Sweep, SweepRunner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TRIAL = "hcc-ablation-lenvatinib-pd1"
AS_OF = "2026-06-15"  # what run_sweep evaluates as of, unless --as-of says otherwise
FHIR_JSON = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
TRIAL_FILE = ROOT / "mappings" / "trials" / f"{TRIAL}.yaml"
STUDY_SYSTEM = "urn:trial-adapter:integration-test"
SUBJECT_SYSTEM = "urn:trial-adapter:research-subject"
DEVICE_IDENTIFIER = {"system": "urn:trial-adapter:device", "value": "trial-adapter"}
TAG = ("urn:trial-adapter", "pre-screen")
FLAGGED = ("candidate", "potential-candidate")
ADAPTER_STATUSES = frozenset(FLAGGED)

#: demo-14 is a potential candidate only because it has no hemoglobin (fixtures/demo/README.md)
LAB_PATIENT = "Patient/demo-14"
DAY_BEFORE = "2026-06-14"  # the first sweep of the lab test: period.start must survive the update
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def deterministic_id(system: str, value: str) -> str:
    """`ta-` + the first 40 hex digits of sha256(`system|value`), as the trial-spec defines it."""
    return "ta-" + hashlib.sha256(f"{system}|{value}".encode()).hexdigest()[:40]


# -- the two servers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One server the sink writes to: the path it must take, and (our own server) its log."""

    name: str  # plain | extended
    base_url: str
    client: httpx.Client
    conditional: bool  # ResearchStudy / ResearchSubject created conditionally (server ids)
    log: ExtendedServer | None = None  # only the server this session owns alone

    def log_offset(self) -> int:
        return self.log.log_size() if self.log else 0

    def requests_since(self, offset: int) -> list[tuple[str, str, int]]:
        """(method, path, status) of the access log lines after `offset`; [] without a log."""
        if self.log is None:
            return []
        found = []
        for line in self.log.log_since(offset):
            match = re.search(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})', line)
            if match:
                found.append((match[1], match[2], int(match[3])))
        return found


@pytest.fixture(scope="module")
def plain_target(
    fhir: httpx.Client,
    fhir_base_url: str,
    demo_resources: list[dict[str, Any]],
    load_resources: Callable[[httpx.Client, Iterable[dict[str, Any]]], None],
) -> Target:
    """The session's server as sekmet ships it, with the demo population on it."""
    load_resources(fhir, demo_resources)
    return Target("plain", fhir_base_url, fhir, conditional=False)


@pytest.fixture(scope="module")
def extended_target(
    extended_server: ExtendedServer,
    demo_resources: list[dict[str, Any]],
    load_resources: Callable[[httpx.Client, Iterable[dict[str, Any]]], None],
) -> Iterator[Target]:
    """The server with the R4 research search parameters, with the demo population on it."""
    base = extended_server.base_url
    with httpx.Client(base_url=base + "/", headers=FHIR_JSON, timeout=60) as client:
        load_resources(client, demo_resources)
        yield Target("extended", base, client, conditional=True, log=extended_server)


@pytest.fixture(params=["plain", "extended"])
def server(request: pytest.FixtureRequest) -> Target:
    target: Target = request.getfixturevalue(f"{request.param}_target")
    return target


# -- a trial of each test's own --------------------------------------------------------------------


@dataclass(frozen=True)
class TrialCopy:
    """The trial under a unique id and study identifier; the sha256 of its file."""

    path: Path
    id: str
    sha256: str

    def subject_identifier(self, patient: str) -> str:
        """The ResearchSubject identifier value of `Patient/<id>` in this trial."""
        return f"{self.id}/{patient.removeprefix('Patient/')}"


@pytest.fixture
def trial(tmp_path: Path) -> TrialCopy:
    definition = yaml.safe_load(TRIAL_FILE.read_text())
    trial_id = f"wpath-{uuid.uuid4().hex[:12]}"
    definition["id"] = trial_id
    definition["study"] = {"system": STUDY_SYSTEM, "value": trial_id}
    path = tmp_path / f"{trial_id}.yaml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return TrialCopy(path, trial_id, hashlib.sha256(path.read_bytes()).hexdigest())


def sweep(run_sweep: SweepRunner, target: Target, trial: TrialCopy, out: Path, *args: str) -> Sweep:
    """The trial swept with the server as source and sink (as of AS_OF unless args say)."""
    url = target.base_url
    return run_sweep(out, "--source", url, "--sink", url, *args, trial=trial.path)


def flagged(results: dict[str, Any]) -> dict[str, str]:
    """Patient reference -> status, for candidates and potential candidates."""
    return {p["patient"]: p["status"] for p in results["patients"] if p["status"] in FLAGGED}


def outcomes(results: dict[str, Any]) -> dict[str, str]:
    """Patient reference -> what the sink did (`research_subject` in results.json)."""
    return {
        p["patient"]: p["research_subject"] for p in results["patients"] if "research_subject" in p
    }


# -- reading the server ----------------------------------------------------------------------------


def search_all(client: httpx.Client, url: str) -> list[dict[str, Any]]:
    """Every matching resource of a search, following Bundle.link[next]."""
    found: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        response = client.get(next_url)
        assert response.status_code == 200, response.text[:1000]
        bundle = response.json()
        found.extend(
            entry["resource"]
            for entry in bundle.get("entry", [])
            if entry.get("search", {}).get("mode", "match") == "match"
        )
        next_url = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)
    return found


def tagged(resource: dict[str, Any]) -> bool:
    tags = resource.get("meta", {}).get("tag", [])
    return any((t.get("system"), t.get("code")) == TAG for t in tags)


def studies_of(target: Target, trial: TrialCopy) -> list[dict[str, Any]]:
    """The ResearchStudies with the trial's identifier (all fetched: the plain server cannot
    search ResearchStudy, and the same code serves both servers)."""
    wanted = {"system": STUDY_SYSTEM, "value": trial.id}
    return [
        study
        for study in search_all(target.client, "ResearchStudy?_count=1000")
        if wanted in study.get("identifier", [])
    ]


def subjects_of(target: Target, trial: TrialCopy) -> dict[str, dict[str, Any]]:
    """Patient reference -> the trial's ResearchSubject, found by identifier.

    Every ResearchSubject is fetched and filtered here; two with one identifier fail the test.
    """
    found: dict[str, dict[str, Any]] = {}
    for subject in search_all(target.client, "ResearchSubject?_count=1000"):
        values = [
            i["value"]
            for i in subject.get("identifier", [])
            if i.get("system") == SUBJECT_SYSTEM and i.get("value", "").startswith(trial.id + "/")
        ]
        if not values:
            continue
        assert len(values) == 1, subject["id"]
        patient = "Patient/" + values[0].removeprefix(trial.id + "/")
        assert patient not in found, f"two ResearchSubjects carry the identifier {values[0]}"
        found[patient] = subject
    return found


def provenances_of(target: Target, subject_id: str) -> list[dict[str, Any]]:
    """The Provenance resources whose target is any version of ResearchSubject/<subject_id>."""
    found = search_all(target.client, f"Provenance?target=ResearchSubject/{subject_id}&_count=100")
    for provenance in found:
        targets = [t["reference"] for t in provenance["target"]]
        assert any(unversioned(t) == f"ResearchSubject/{subject_id}" for t in targets)
    return found


def unversioned(reference: str) -> str:
    """`Type/id` of a possibly versioned literal reference."""
    return reference.split("/_history/", 1)[0]


def version_of(resource: dict[str, Any]) -> int:
    return int(resource["meta"]["versionId"])


def snapshot(target: Target, trial: TrialCopy) -> dict[str, tuple[str, str, frozenset[str]]]:
    """Patient -> (subject id, versionId, ids of its Provenance): to compare before and after."""
    return {
        patient: (
            subject["id"],
            subject["meta"]["versionId"],
            frozenset(p["id"] for p in provenances_of(target, subject["id"])),
        )
        for patient, subject in subjects_of(target, trial).items()
    }


def writes(requests: list[tuple[str, str, int]], path_prefix: str = "") -> list[str]:
    """The write requests of an access log excerpt, as `METHOD path status` (POST _search reads)."""
    return [
        f"{method} {path} {status}"
        for method, path, status in requests
        if method in WRITE_METHODS
        and path.startswith(path_prefix)
        and not path.split("?", 1)[0].endswith("/_search")
    ]


def fhir_path(target: Target, relative: str) -> str:
    """The request path on the server of `relative` (`/fhir/ResearchSubject`)."""
    return httpx.URL(target.base_url + "/" + relative).path


def check_provenance(
    target: Target,
    provenance: dict[str, Any],
    subject: dict[str, Any],
    patient: str,
    trial: TrialCopy,
) -> None:
    """The Provenance of this version of the subject: target, Device agent, policy, entities."""
    assert tagged(provenance)
    expected_target = f"ResearchSubject/{subject['id']}/_history/{subject['meta']['versionId']}"
    assert [t["reference"] for t in provenance["target"]] == [expected_target]
    agents = [a["who"]["reference"] for a in provenance["agent"]]
    assert len(agents) == 1, agents
    assert agents[0].startswith("Device/"), agents
    device = target.client.get(agents[0])
    assert device.status_code == 200, device.text[:500]
    assert DEVICE_IDENTIFIER in device.json()["identifier"]
    assert any(trial.sha256 in policy for policy in provenance["policy"]), provenance["policy"]
    entities = [e["what"]["reference"] for e in provenance.get("entity", [])]
    assert entities, "no entity"
    assert patient in {unversioned(e) for e in entities}, entities


# -- the premise: what each server says it can do --------------------------------------------------


def test_capability_statement_names_the_writer_path(
    server: Target, request: pytest.FixtureRequest
) -> None:
    """The plain server lists no research search parameters; the extended one lists all of them.

    The sink decides from the CapabilityStatement alone, so this is what chooses its path.
    """
    response = server.client.get("metadata")
    assert response.status_code == 200
    rest = next(r for r in response.json()["rest"] if r["mode"] == "server")
    params = {
        r["type"]: {p["name"]: p["type"] for p in r.get("searchParam", [])}
        for r in rest["resource"]
    }
    if server.conditional:
        extended: ExtendedServer = request.getfixturevalue("extended_server")
        assert len(extended.search_parameters) == 8
        for base, code, kind in extended.search_parameters:
            assert params.get(base, {}).get(code) == kind, (base, code)
    else:
        for base in ("ResearchStudy", "ResearchSubject"):
            assert "identifier" not in params.get(base, {}), base
        # and so a conditional create by identifier is refused: the id path is the only one
        subject = {
            "resourceType": "ResearchSubject",
            "status": "candidate",
            "study": {"reference": "ResearchStudy/never-written"},
            "individual": {"reference": "Patient/never-written"},
        }
        refused = server.client.post(
            "ResearchSubject",
            json=subject,
            headers={"If-None-Exist": f"identifier={SUBJECT_SYSTEM}|never-written"},
        )
        assert refused.status_code == 400, refused.text[:500]
        assert "Unknown search parameter 'identifier'" in refused.text, refused.text[:500]
        # and a search by identifier is ignored (a warning, every ResearchSubject) unless strict
        search = f"ResearchSubject?identifier={SUBJECT_SYSTEM}|never-written&_count=1"
        lenient = server.client.get(search)
        strict = server.client.get(search, headers={"Prefer": "handling=strict"})
        assert (lenient.status_code, strict.status_code) == (200, 400), strict.text[:500]


# -- the writer paths ------------------------------------------------------------------------------


def test_sweep_writes_one_subject_per_flagged_patient_with_provenance(
    server: Target, trial: TrialCopy, run_sweep: SweepRunner, tmp_path: Path
) -> None:
    """One ResearchSubject per candidate and potential candidate, on the path the server allows,
    each with the Provenance of its creation."""
    offset = server.log_offset()
    done = sweep(run_sweep, server, trial, tmp_path / "out")

    assert done.code == 0, done.stderr[-2000:]
    assert done.report["errors"] == []
    expected = flagged(done.report)
    assert expected, "the demo population flags patients"
    assert outcomes(done.report) == dict.fromkeys(expected, "created")

    studies = studies_of(server, trial)
    assert len(studies) == 1
    study = studies[0]
    assert tagged(study)
    study_det_id = deterministic_id(STUDY_SYSTEM, trial.id)

    subjects = subjects_of(server, trial)
    assert subjects.keys() == expected.keys()
    for patient, subject in subjects.items():
        assert subject["status"] == expected[patient]
        assert subject["individual"] == {"reference": patient}
        assert subject["study"] == {"reference": f"ResearchStudy/{study['id']}"}
        assert subject["period"]["start"] == AS_OF
        assert tagged(subject)

    det_ids = {p: deterministic_id(SUBJECT_SYSTEM, trial.subject_identifier(p)) for p in subjects}
    if server.conditional:
        # Conditional creates: the server assigned every id, none is the deterministic one.
        assert study["id"] != study_det_id
        assert not {s["id"] for s in subjects.values()} & set(det_ids.values())
        requests = server.requests_since(offset)
        subject_path = fhir_path(server, "ResearchSubject")
        assert writes(requests, subject_path) == [f"POST {subject_path} 201"] * len(expected)
        study_path = fhir_path(server, "ResearchStudy")
        assert writes(requests, study_path) == [f"POST {study_path} 201"]
    else:
        assert study["id"] == study_det_id
        assert {p: s["id"] for p, s in subjects.items()} == det_ids

    for patient, subject in subjects.items():
        provenances = provenances_of(server, subject["id"])
        assert len(provenances) == 1, f"{len(provenances)} Provenance for {patient}"
        check_provenance(server, provenances[0], subject, patient, trial)


def test_rerun_writes_nothing_and_leaves_a_status_set_by_hand(
    server: Target, trial: TrialCopy, run_sweep: SweepRunner, tmp_path: Path
) -> None:
    """After one sweep and a subject moved to on-study by hand, a second sweep writes nothing:
    same versionIds, the hand-set status kept, no new Provenance."""
    first = sweep(run_sweep, server, trial, tmp_path / "first")
    assert first.code == 0, first.stderr[-2000:]
    subjects = subjects_of(server, trial)
    by_hand_patient = min(p for p, s in flagged(first.report).items() if s == "candidate")
    chosen = subjects[by_hand_patient]
    edited = {**copy.deepcopy(chosen), "status": "on-study"}
    response = server.client.put(
        f"ResearchSubject/{chosen['id']}",
        json=edited,
        headers={"If-Match": f'W/"{chosen["meta"]["versionId"]}"'},
    )
    assert response.status_code == 200, response.text[:1000]
    before = snapshot(server, trial)
    assert before[by_hand_patient][1] != chosen["meta"]["versionId"]

    offset = server.log_offset()
    again = sweep(run_sweep, server, trial, tmp_path / "second")

    assert again.code == 0, again.stderr[-2000:]
    assert again.report["errors"] == []
    assert flagged(again.report) == flagged(first.report)
    assert snapshot(server, trial) == before  # no version, no subject, no Provenance more
    assert subjects_of(server, trial)[by_hand_patient]["status"] == "on-study"
    expected = dict.fromkeys(flagged(again.report), "unchanged")
    expected[by_hand_patient] = "kept_human_status"
    assert outcomes(again.report) == expected
    assert writes(server.requests_since(offset)) == []  # the extended server's log: reads only


def test_potential_candidate_whose_missing_lab_arrives_becomes_a_candidate(
    server: Target, trial: TrialCopy, run_sweep: SweepRunner, tmp_path: Path
) -> None:
    """demo-14 lacks only a hemoglobin. Once one arrives, the next sweep moves its subject from
    potential-candidate to candidate: a new version (If-Match update on the id the server gave
    it), period.start kept, and a Provenance of the new version that cites the lab.

    The first sweep runs the day before AS_OF, so a rewritten period.start would show.
    """
    first = sweep(run_sweep, server, trial, tmp_path / "first", "--as-of", DAY_BEFORE)
    assert first.code == 0, first.stderr[-2000:]
    assert first.report["as_of"] == DAY_BEFORE
    assert flagged(first.report)[LAB_PATIENT] == "potential-candidate"
    was = subjects_of(server, trial)[LAB_PATIENT]
    assert was["status"] == "potential-candidate"
    assert was["period"]["start"] == DAY_BEFORE

    lab_id = f"wpath-hb-{uuid.uuid4().hex[:12]}"
    lab = {
        "resourceType": "Observation",
        "id": lab_id,
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
        "code": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "718-7",
                    "display": "Hemoglobin [Mass/volume] in Blood",
                }
            ]
        },
        "subject": {"reference": LAB_PATIENT},
        "effectiveDateTime": "2026-06-12T08:00:00+08:00",
        "valueQuantity": {
            "value": 12.5,
            "unit": "g/dL",
            "system": "http://unitsofmeasure.org",
            "code": "g/dL",
        },
    }
    put = server.client.put(f"Observation/{lab_id}", json=lab)
    assert put.status_code in (200, 201), put.text[:1000]
    try:
        offset = server.log_offset()
        again = sweep(run_sweep, server, trial, tmp_path / "second")
    finally:
        # The plain server is the session's: leave its demo population as it was.
        server.client.delete(f"Observation/{lab_id}")

    assert again.code == 0, again.stderr[-2000:]
    assert again.report["as_of"] == AS_OF
    verdict = next(p for p in again.report["patients"] if p["patient"] == LAB_PATIENT)
    assert verdict["status"] == "candidate"
    assert verdict["criteria"]["hemoglobin"]["result"] == "met"
    assert outcomes(again.report)[LAB_PATIENT] == "updated"

    now = subjects_of(server, trial)[LAB_PATIENT]
    assert now["id"] == was["id"]
    assert now["status"] == "candidate"
    assert version_of(now) == version_of(was) + 1
    assert now["period"] == was["period"]
    assert now["identifier"] == was["identifier"]
    assert now["study"] == was["study"]

    provenances = {p["target"][0]["reference"]: p for p in provenances_of(server, now["id"])}
    assert set(provenances) == {
        f"ResearchSubject/{now['id']}/_history/{was['meta']['versionId']}",
        f"ResearchSubject/{now['id']}/_history/{now['meta']['versionId']}",
    }
    newest = provenances[f"ResearchSubject/{now['id']}/_history/{now['meta']['versionId']}"]
    check_provenance(server, newest, now, LAB_PATIENT, trial)
    cited = {unversioned(e["what"]["reference"]) for e in newest["entity"]}
    assert f"Observation/{lab_id}" in cited

    subject_path = fhir_path(server, f"ResearchSubject/{now['id']}")
    if server.log is not None:
        assert writes(server.requests_since(offset), subject_path) == [f"PUT {subject_path} 200"]


def test_dry_run_writes_nothing_and_lists_the_planned_writes(
    server: Target, trial: TrialCopy, run_sweep: SweepRunner, tmp_path: Path
) -> None:
    """--dry-run with a fresh trial: reads only; results.json lists what would have been written,
    on the path the server allows."""
    offset = server.log_offset()
    done = sweep(run_sweep, server, trial, tmp_path / "out", "--dry-run")

    assert done.code == 0, done.stderr[-2000:]
    assert done.report["errors"] == []
    expected = flagged(done.report)
    assert expected
    assert outcomes(done.report) == dict.fromkeys(expected, "would_create")
    assert studies_of(server, trial) == []
    assert subjects_of(server, trial) == {}
    assert writes(server.requests_since(offset)) == []

    planned = done.report["planned_writes"]
    studies = [w for w in planned if w["resource_type"] == "ResearchStudy"]
    subjects = [w for w in planned if w["resource_type"] == "ResearchSubject"]
    assert len(studies) == 1
    assert sorted(w["patient"] for w in subjects) == sorted(expected)
    for write in subjects:
        value = trial.subject_identifier(write["patient"])
        if server.conditional:
            assert (write["method"], write["resource_id"]) == ("POST", None)
            assert write["condition"] == f"identifier={SUBJECT_SYSTEM}|{value}"
        else:
            assert write["method"] == "PUT"
            assert write["resource_id"] == deterministic_id(SUBJECT_SYSTEM, value)
    provenance = [w for w in planned if w["resource_type"] == "Provenance"]
    assert sorted(w["patient"] for w in provenance) == sorted(expected)


# -- Provenance is never lost (issue 10, trial-spec v2) --------------------------------------------

#: Runs the CLI with two faults injected: SIGKILL at the Nth Provenance write, before it is sent
#: (KILL_AT; 0 never), and the Provenance path forced (PROVENANCE_PATH: conditional | post), as
#: a server declaring `updateCreate: false` (with and without `Provenance?target`) makes it.
KILLING_CLI = """
import asyncio, os, runpy, signal, sys
from adapter.fhir import capability
from adapter.sinks import provenance

kill_at = int(os.environ.get("KILL_AT", "0"))
sent = 0
send = provenance.ProvenanceStore.send

async def killing_send(self, body):
    global sent
    sent += 1
    if sent == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(60)
    await send(self, body)

provenance.ProvenanceStore.send = killing_send
forced = os.environ.get("PROVENANCE_PATH")
write_path = capability.ServerCapabilities.write_path

def forced_path(self, kind):
    if kind == "Provenance" and forced:
        return capability.WritePath(forced)
    return write_path(self, kind)

capability.ServerCapabilities.write_path = forced_path
sys.argv = ["trial-adapter", *sys.argv[1:]]
runpy.run_module("adapter.cli", run_name="__main__")
"""


def faulty_sweep(
    target: Target, trial: TrialCopy, out: Path, *, kill_at: int = 0, path: str = ""
) -> subprocess.CompletedProcess[str]:
    """The sweep of `sweep()`, run by KILLING_CLI: it dies by SIGKILL at Provenance `kill_at`."""
    url = target.base_url
    command = [sys.executable, "-c", KILLING_CLI, "sweep", "--trial", str(trial.path)]
    command += ["--as-of", AS_OF, "--out", str(out), "--source", url, "--sink", url]
    env = {k: v for k, v in os.environ.items() if k != "TRIAL_ADAPTER_CONFIG"}
    env |= {"KILL_AT": str(kill_at), "PROVENANCE_PATH": path}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=180, check=False, env=env, cwd=ROOT
    )


def assert_one_provenance_per_subject(target: Target, trial: TrialCopy) -> None:
    """Every subject's current version has exactly one Provenance, and none has more."""
    for patient, subject in subjects_of(target, trial).items():
        found = provenances_of(target, subject["id"])
        assert len(found) == 1, f"{len(found)} Provenance for {patient}"
        check_provenance(target, found[0], subject, patient, trial)


@pytest.mark.parametrize("kill_at", ["first", "middle", "last"])
def test_a_sweep_killed_before_a_provenance_write_is_repaired_by_the_rerun(
    server: Target, trial: TrialCopy, run_sweep: SweepRunner, tmp_path: Path, kill_at: str
) -> None:
    """SIGKILL between a subject write and its Provenance: the rerun finds that subject
    unchanged and writes its Provenance, so every subject ends with exactly one."""
    dry = sweep(run_sweep, server, trial, tmp_path / "dry", "--dry-run")
    expected = flagged(dry.report)
    at = {"first": 1, "middle": len(expected) // 2, "last": len(expected)}[kill_at]
    killed = faulty_sweep(server, trial, tmp_path / "killed", kill_at=at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = subjects_of(server, trial)
    assert len(before) == at
    missing = [p for p, s in before.items() if not provenances_of(server, s["id"])]
    assert len(missing) == 1  # the one whose Provenance the kill cut off

    offset = server.log_offset()
    again = sweep(run_sweep, server, trial, tmp_path / "again")

    assert again.code == 0, again.stderr[-2000:]
    assert again.report["errors"] == []
    assert outcomes(again.report) == {
        p: "unchanged" if p in before else "created" for p in expected
    }
    assert_one_provenance_per_subject(server, trial)
    prov_path = fhir_path(server, "Provenance")
    assert len(writes(server.requests_since(offset), prov_path)) in (0, len(expected) - at + 1)


@pytest.mark.parametrize("path", ["conditional", "post"])
def test_provenance_without_put_create_is_written_once_and_repaired(
    extended_target: Target, trial: TrialCopy, run_sweep: SweepRunner, tmp_path: Path, path: str
) -> None:
    """updateCreate false: no Provenance PUT; If-None-Exist on target (or one POST each). A kill
    before one of them is repaired by the rerun; a third run writes nothing."""
    server = extended_target
    offset = server.log_offset()
    killed = faulty_sweep(server, trial, tmp_path / "killed", kill_at=3, path=path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    again = faulty_sweep(server, trial, tmp_path / "again", path=path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_one_provenance_per_subject(server, trial)
    requests = server.requests_since(offset)
    prov_path = fhir_path(server, "Provenance")
    sent = writes(requests, prov_path)
    assert sent == [f"POST {prov_path} 201"] * len(subjects_of(server, trial))

    offset = server.log_offset()
    third = faulty_sweep(server, trial, tmp_path / "third", path=path)
    assert third.returncode == 0, third.stderr[-2000:]
    assert writes(server.requests_since(offset)) == []


def test_a_new_version_gets_its_provenance_where_target_search_ignores_the_version(
    extended_target: Target, trial: TrialCopy, tmp_path: Path
) -> None:
    """sekmet 0.1.1 answers `target=.../_history/2` (and If-None-Exist on it) with version 1's
    Provenance: the Provenance version 2 lacks must still be written, on the conditional path."""
    server = extended_target
    first = faulty_sweep(server, trial, tmp_path / "first", path="conditional")
    assert first.returncode == 0, first.stderr[-2000:]
    subject = subjects_of(server, trial)[LAB_PATIENT]
    # Version 2, same status: as a write of the adapter killed before its Provenance.
    response = server.client.put(
        f"ResearchSubject/{subject['id']}",
        json=subject,
        headers={"If-Match": f'W/"{subject["meta"]["versionId"]}"'},
    )
    assert response.status_code == 200, response.text[:1000]
    now = subjects_of(server, trial)[LAB_PATIENT]
    assert now["meta"]["versionId"] == "2"
    quirk = server.client.get(
        "Provenance", params={"target": f"ResearchSubject/{now['id']}/_history/2"}
    ).json()
    assert quirk.get("total") == 1  # version 1's: the server's quirk this test is about

    again = faulty_sweep(server, trial, tmp_path / "again", path="conditional")

    assert again.returncode == 0, again.stderr[-2000:]
    targets = {p["target"][0]["reference"] for p in provenances_of(server, now["id"])}
    assert targets == {
        f"ResearchSubject/{now['id']}/_history/1",
        f"ResearchSubject/{now['id']}/_history/2",
    }
