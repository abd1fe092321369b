"""Sweeps through a fault-injecting proxy: nothing lost, nothing doubled (issue 10).

Each test sweeps the demo population with the proxy (tests/integration/proxy.py) in front of the
local server as source and sink, under a copy of the trial with a unique id and study identifier,
with one fault injected. Afterwards the server's ResearchSubjects and Provenance of that trial, read
directly from the server, must equal those of an undisturbed run: same subjects, statuses, versions
and period.start, and exactly one Provenance per subject version. A fault that outlasts the retry
budget ends the run with the documented exit code, and a rerun without faults repairs.

The site file gives short budgets (4 s timeout, 5 attempts, waits of at most 1 s) and outages
last seconds, so the whole module runs in under three minutes on a busy two-core machine.

Two defects were found here and fixed: a retried PUT whose answer was lost left the subject's first
version without Provenance (the sink now reads the id back), and an outage answered with 503 during
the writes ended in exit 3 after every later patient spent a whole retry budget (a write's
temporary failure past the budget is now fatal when the server does not answer at all).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml
from proxy import (
    Delay,
    Fault,
    FaultProxy,
    Hang,
    LostResponse,
    MalformedJson,
    Outage,
    ResetMidBody,
    Status,
)

if TYPE_CHECKING:  # conftest is not importable at run time; the names are for the reader
    from conftest import ExtendedServer, Sweep, SweepRunner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TRIAL = "hcc-ablation-lenvatinib-pd1"
TRIAL_FILE = ROOT / "mappings" / "trials" / f"{TRIAL}.yaml"
FHIR_JSON = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
STUDY_SYSTEM = "urn:trial-adapter:fault-test"
SUBJECT_SYSTEM = "urn:trial-adapter:research-subject"
TAG = "urn:trial-adapter|pre-screen"

#: what every sweep of this module is given: short budgets, so a fault costs seconds
TIMEOUT = 4.0  # a hang costs this; far above what a request of the demo takes on a busy machine
ATTEMPTS = 5  # four waits of MAX_WAIT: a budget of about 4 s, which a 2 s outage stays within
MAX_WAIT = 1.0
PAGE_SIZE = 400  # the cohort's 1,070 Observations: a POST _search, then two next links to follow
SITE = {
    side: {"timeout": TIMEOUT, "retry_attempts": ATTEMPTS, "retry_max_wait": MAX_WAIT}
    for side in ("source", "sink")
}

SUBJECT = r"ResearchSubject/[^/]+"
PROVENANCE = r"Provenance/[^/]+"


# -- the trial, the proxy and the sweep ------------------------------------------------------------


@dataclass(frozen=True)
class TrialCopy:
    """The trial under a unique id and study identifier."""

    path: Path
    id: str


def trial_copy(folder: Path) -> TrialCopy:
    definition = yaml.safe_load(TRIAL_FILE.read_text())
    trial_id = f"fault-{uuid.uuid4().hex[:12]}"
    definition["id"] = trial_id
    definition["study"] = {"system": STUDY_SYSTEM, "value": trial_id}
    path = folder / f"{trial_id}.yaml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return TrialCopy(path, trial_id)


@pytest.fixture
def trial(tmp_path: Path) -> TrialCopy:
    return trial_copy(tmp_path)


@pytest.fixture(scope="module")
def site_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("site") / "site.yaml"
    path.write_text(yaml.safe_dump(SITE))
    return path


@pytest.fixture(scope="module")
def upstream(
    fhir: httpx.Client,
    fhir_base_url: str,
    demo_resources: list[dict[str, Any]],
    load_resources: Callable[[httpx.Client, Iterable[dict[str, Any]]], None],
) -> str:
    """The session's server, with the demo population on it."""
    load_resources(fhir, demo_resources)
    return fhir_base_url


@pytest.fixture
def proxy(upstream: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream) as running:
        yield running


def sweep(
    run_sweep: SweepRunner, base_url: str, trial: TrialCopy, out: Path, site: Path, *args: str
) -> Sweep:
    """The trial swept with `base_url` as source and sink; any exit code is returned."""
    return run_sweep(
        out,
        "--source",
        base_url,
        "--sink",
        base_url,
        "--config",
        str(site),
        "--page-size",
        str(PAGE_SIZE),
        *args,
        trial=trial.path,
        check=False,
    )


# -- what the server holds -------------------------------------------------------------------------


def search_all(client: httpx.Client, url: str) -> list[dict[str, Any]]:
    """Every match of a search, following Bundle.link[next]."""
    found: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        response = client.get(next_url)
        assert response.status_code == 200, response.text[:1000]
        bundle = response.json()
        found += [
            entry["resource"]
            for entry in bundle.get("entry", [])
            if entry.get("search", {}).get("mode", "match") == "match"
        ]
        next_url = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)
    return found


@dataclass(frozen=True)
class SubjectState:
    """One patient's ResearchSubject as the server holds it, and its Provenance by version.

    `provenance`: (target version, how many Provenance name it), sorted; ids are left out, since
    the server or the trial copy decides them.
    """

    status: str
    version: str
    period_start: str
    provenance: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ServerState:
    studies: int
    subjects: dict[str, SubjectState]  # patient reference -> its subject

    def missing_provenance(self) -> list[str]:
        """Patients whose subject version has no Provenance, or more than one."""
        return [
            patient
            for patient, s in self.subjects.items()
            if dict(s.provenance).get(s.version) != 1
        ]


def server_state(client: httpx.Client, trial: TrialCopy) -> ServerState:
    """The trial's ResearchStudy count, ResearchSubjects and Provenance, tagged by the adapter."""
    studies = [
        s
        for s in search_all(client, f"ResearchStudy?_tag={TAG}&_count=1000")
        if {"system": STUDY_SYSTEM, "value": trial.id} in s.get("identifier", [])
    ]
    subjects: dict[str, SubjectState] = {}
    for subject in search_all(client, f"ResearchSubject?_tag={TAG}&_count=1000"):
        values = [
            i["value"]
            for i in subject.get("identifier", [])
            if i.get("system") == SUBJECT_SYSTEM and i.get("value", "").startswith(trial.id + "/")
        ]
        if not values:
            continue
        patient = "Patient/" + values[0].removeprefix(trial.id + "/")
        assert patient not in subjects, f"two ResearchSubjects for {patient}"
        reference = f"ResearchSubject/{subject['id']}"
        versions: dict[str, int] = {}
        for provenance in search_all(
            client, f"Provenance?target={reference}&_tag={TAG}&_count=100"
        ):
            for target in provenance["target"]:
                unversioned, _, version = target["reference"].partition("/_history/")
                if unversioned == reference:
                    versions[version] = versions.get(version, 0) + 1
        subjects[patient] = SubjectState(
            subject["status"],
            subject["meta"]["versionId"],
            subject["period"]["start"],
            tuple(sorted(versions.items())),
        )
    return ServerState(len(studies), subjects)


@pytest.fixture(scope="module")
def undisturbed(
    upstream: str,
    fhir: httpx.Client,
    run_sweep: SweepRunner,
    site_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> ServerState:
    """The server's state after one sweep straight to the server, without the proxy."""
    folder = tmp_path_factory.mktemp("undisturbed")
    trial = trial_copy(folder)
    done = sweep(run_sweep, upstream, trial, folder / "out", site_file)
    assert done.code == 0, done.stderr[-2000:]
    state = server_state(fhir, trial)
    assert state.studies == 1
    assert len(state.subjects) == 45  # fixtures/demo: 24 candidates, 21 potential candidates
    assert state.missing_provenance() == []
    return state


def summary_line(stderr: str) -> str:
    """The sink's one-line summary (`sink: created 45; Provenance written 45`)."""
    lines = [line for line in stderr.splitlines() if re.search(r"\bsink: ", line)]
    assert lines, stderr[-2000:]
    return lines[-1]


def error_line(stderr: str) -> str:
    """The one line a failed run ends with."""
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


# -- the proxy itself ------------------------------------------------------------------------------


def test_the_proxy_rewrites_paging_links_to_its_own_base(proxy: FaultProxy) -> None:
    """A search through the proxy pages under the proxy's base, never the server's."""
    with httpx.Client(headers=FHIR_JSON, timeout=30) as client:
        bundle = client.get(f"{proxy.base_url}/Observation", params={"_count": 5}).json()
    links = [link["url"] for link in bundle["link"]]
    assert any(link["relation"] == "next" for link in bundle["link"])
    assert all(url.startswith(proxy.base_url + "/") for url in links), links
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert all(url.startswith(proxy.base_url + "/") for url in full_urls), full_urls


def test_a_sweep_through_the_proxy_without_faults_equals_one_without_it(
    proxy: FaultProxy,
    trial: TrialCopy,
    fhir: httpx.Client,
    run_sweep: SweepRunner,
    site_file: Path,
    tmp_path: Path,
    undisturbed: ServerState,
) -> None:
    """The proxy alone changes nothing: same exit, same summary, same server state."""
    done = sweep(run_sweep, proxy.base_url, trial, tmp_path / "out", site_file)
    assert done.code == 0, done.stderr[-2000:]
    assert summary_line(done.stderr).endswith("sink: created 45; Provenance written 45")
    assert server_state(fhir, trial) == undisturbed
    assert all(e.fault is None and e.status is not None for e in proxy.exchanges)


# -- faults the retries absorb ---------------------------------------------------------------------

#: (fault, method, path below the base, nth matching request): each must leave no trace
ABSORBED: dict[str, tuple[Fault, str, str, int | tuple[int, ...]]] = {
    "429-on-the-cohort-search": (Status(429, retry_after="1"), "POST", "Condition/_search", 1),
    "503-on-a-next-page": (Status(503, retry_after="1"), "GET", "Observation", 1),
    "429-twice-on-a-subject-put": (Status(429, retry_after="1"), "PUT", SUBJECT, (3, 4)),
    "503-on-a-provenance-put": (Status(503, retry_after="1"), "PUT", PROVENANCE, 4),
    "hang-on-a-next-page": (Hang(), "GET", "Observation", 2),
    "hang-on-a-subject-put": (Hang(), "PUT", SUBJECT, 2),
    "reset-mid-body-on-a-next-page": (ResetMidBody(), "GET", "Observation", 2),
    "reset-mid-body-on-a-provenance-put": (ResetMidBody(), "PUT", PROVENANCE, 6),
    "malformed-json-on-a-subject-put": (MalformedJson(), "PUT", SUBJECT, 7),
    "lost-response-of-a-provenance-put": (LostResponse(), "PUT", PROVENANCE, 2),
    "outage-refusing-connections-during-the-writes": (Outage(2), "PUT", SUBJECT, 10),
    "outage-answering-503-during-the-reads": (Outage(2, mode="503"), "GET", "Observation", 1),
}

#: a subject PUT applied whose answer is lost: the sink reads the id back instead of retrying
#: blindly, which would store a second, identical version without its Provenance
LOST_SUBJECT_PUT: dict[str, tuple[Fault, str, str, int | tuple[int, ...]]] = {
    "lost-response-of-a-subject-put": (LostResponse(), "PUT", SUBJECT, 2),
}


def absorbed_cases() -> list[Any]:
    return [pytest.param(*case, id=name) for name, case in {**ABSORBED, **LOST_SUBJECT_PUT}.items()]


@pytest.mark.parametrize(("fault", "method", "path", "nth"), absorbed_cases())
def test_a_fault_within_the_retry_budget_leaves_the_state_of_an_undisturbed_run(
    proxy: FaultProxy,
    trial: TrialCopy,
    fhir: httpx.Client,
    run_sweep: SweepRunner,
    site_file: Path,
    tmp_path: Path,
    undisturbed: ServerState,
    fault: Fault,
    method: str,
    path: str,
    nth: int | tuple[int, ...],
) -> None:
    """Retried (or, for a write's unreadable answer, read from its headers): exit 0, the full
    summary, and the server's subjects and Provenance as an undisturbed run leaves them."""
    rule = proxy.inject(fault, method, path, nth)
    done = sweep(run_sweep, proxy.base_url, trial, tmp_path / "out", site_file)

    assert rule.fired >= 1, "the fault was never injected"
    assert done.code == 0, done.stderr[-2000:]
    if not isinstance(fault, MalformedJson):  # a write's unreadable answer is not retried
        base_path = httpx.URL(proxy.base_url).path
        retried = rf"{method} {base_path}/{path}: .+ on attempt 1 of {ATTEMPTS}, retrying in "
        assert re.search(retried, done.stderr), done.stderr[-2000:]
    assert done.report["errors"] == []
    assert summary_line(done.stderr).endswith("sink: created 45; Provenance written 45")
    state = server_state(fhir, trial)
    assert state.missing_provenance() == []
    assert state == undisturbed


# -- faults that outlast the budget, and the rerun that repairs ------------------------------------


def test_malformed_json_in_a_search_ends_the_run_before_any_write_and_a_rerun_completes(
    proxy: FaultProxy,
    trial: TrialCopy,
    fhir: httpx.Client,
    run_sweep: SweepRunner,
    site_file: Path,
    tmp_path: Path,
    undisturbed: ServerState,
) -> None:
    """A search page that is not JSON is a failed search (not missing patients): exit 1, one
    line naming it, nothing written; the rerun writes what an undisturbed run writes."""
    proxy.inject(MalformedJson(), "GET", "Observation", 1)
    failed = sweep(run_sweep, proxy.base_url, trial, tmp_path / "failed", site_file)

    assert failed.code == 1, failed.stderr[-2000:]
    assert "not JSON" in error_line(failed.stderr)
    assert "?" not in error_line(failed.stderr)  # the URL without its query (patient ids)
    assert server_state(fhir, trial).subjects == {}

    proxy.clear()
    again = sweep(run_sweep, proxy.base_url, trial, tmp_path / "again", site_file)
    assert again.code == 0, again.stderr[-2000:]
    assert server_state(fhir, trial) == undisturbed


@pytest.mark.parametrize(
    ("fault", "method", "path", "nth", "extra", "message"),
    [
        pytest.param(
            Outage(60),
            "PUT",
            SUBJECT,
            10,
            (),
            "no answer from the FHIR server",
            id="outage-refusing-connections-mid-writes",
        ),
        pytest.param(
            Outage(60, mode="503"),
            "GET",
            "Observation",
            1,
            (),
            "HTTP 503",
            id="outage-answering-503-mid-reads",
        ),
        pytest.param(
            Hang(),
            "PUT",
            SUBJECT,
            range(10, 100),
            ("--timeout", "1"),  # five attempts of 1 s, not of TIMEOUT
            "did not answer in time",
            id="hang-on-every-write-from-the-tenth",
        ),
    ],
)
def test_a_fault_outlasting_the_retry_budget_exits_1_and_a_rerun_repairs(
    proxy: FaultProxy,
    trial: TrialCopy,
    fhir: httpx.Client,
    run_sweep: SweepRunner,
    site_file: Path,
    tmp_path: Path,
    undisturbed: ServerState,
    fault: Fault,
    method: str,
    path: str,
    nth: int | range,
    extra: tuple[str, ...],
    message: str,
) -> None:
    """Server unreachable past the budget: exit 1 and one line saying so; whatever was written
    before it keeps its Provenance or gets it from the rerun, which ends as an undisturbed run."""
    proxy.inject(fault, method, path, nth)
    started = time.monotonic()
    failed = sweep(run_sweep, proxy.base_url, trial, tmp_path / "failed", site_file, *extra)

    assert failed.code == 1, failed.stderr[-2000:]
    assert message in error_line(failed.stderr)
    assert time.monotonic() - started < 40  # the budget, not the outage, ended the run
    partial = server_state(fhir, trial)
    assert len(partial.subjects) <= 10
    assert all(s.provenance in ((), (("1", 1),)) for s in partial.subjects.values())

    proxy.clear()
    again = sweep(run_sweep, proxy.base_url, trial, tmp_path / "again", site_file)
    assert again.code == 0, again.stderr[-2000:]
    assert again.report["errors"] == []
    assert server_state(fhir, trial) == undisturbed


def test_a_subject_write_refused_past_the_budget_is_listed_and_the_rerun_writes_it(
    proxy: FaultProxy,
    trial: TrialCopy,
    fhir: httpx.Client,
    run_sweep: SweepRunner,
    site_file: Path,
    tmp_path: Path,
    undisturbed: ServerState,
) -> None:
    """Every attempt of one subject's PUT answered 503: that patient is listed under errors
    (exit 3, completed with failures), the others are written; the rerun writes the missing one."""
    proxy.inject(Status(503, retry_after="1"), "PUT", SUBJECT, range(3, 3 + ATTEMPTS))
    partial = sweep(run_sweep, proxy.base_url, trial, tmp_path / "partial", site_file)

    assert partial.code == 3, partial.stderr[-2000:]
    errors = partial.report["errors"]
    assert len(errors) == 1, errors
    assert "HTTP 503" in errors[0]["reason"]
    assert summary_line(partial.stderr).endswith(
        "sink: created 44; Provenance written 44; failed 1 (see errors)"
    )
    state = server_state(fhir, trial)
    assert len(state.subjects) == 44
    assert state.missing_provenance() == []

    proxy.clear()
    again = sweep(run_sweep, proxy.base_url, trial, tmp_path / "again", site_file)
    assert again.code == 0, again.stderr[-2000:]
    assert summary_line(again.stderr).endswith(
        "sink: created 1, unchanged 44; Provenance written 1"
    )
    assert server_state(fhir, trial) == undisturbed


def test_an_outage_answering_503_during_the_writes_past_the_budget_exits_1(
    proxy: FaultProxy,
    trial: TrialCopy,
    fhir: httpx.Client,
    run_sweep: SweepRunner,
    site_file: Path,
    tmp_path: Path,
    undisturbed: ServerState,
) -> None:
    """Every request answered 503 for longer than the budget, mid-writes: exit 1, as for an
    unreachable server, not a list of patients; the rerun repairs."""
    proxy.inject(Outage(6, mode="503"), "PUT", SUBJECT, 10)
    failed = sweep(run_sweep, proxy.base_url, trial, tmp_path / "failed", site_file)

    assert failed.code == 1, failed.stderr[-2000:]
    assert "HTTP 503" in error_line(failed.stderr)

    proxy.clear()
    again = sweep(run_sweep, proxy.base_url, trial, tmp_path / "again", site_file)
    assert again.code == 0, again.stderr[-2000:]
    assert server_state(fhir, trial) == undisturbed


# -- two runs at once ------------------------------------------------------------------------------


def has_state_dir() -> bool:
    shown = subprocess.run(
        [sys.executable, "-m", "adapter.cli", "sweep", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    return "--state-dir" in shown.stdout


@pytest.mark.skipif(not has_state_dir(), reason="the run lock (--state-dir, issue 10 item 4)")
def test_two_runs_started_at_once_one_takes_the_lock_and_the_other_exits_1(
    proxy: FaultProxy,
    trial: TrialCopy,
    fhir: httpx.Client,
    site_file: Path,
    tmp_path: Path,
    undisturbed: ServerState,
) -> None:
    """Same trial, same sink, same state folder: one sweep completes, the other exits 1 with
    a line about the lock and writes nothing; the server holds what one undisturbed run leaves.

    Every request is slowed a little, so the two runs overlap wherever the lock is taken.
    """
    proxy.inject(Delay(0.02), "GET", ".*", None)
    proxy.inject(Delay(0.02), "PUT", ".*", None)
    state_dir = tmp_path / "state"
    runs = []
    for name in ("one", "two"):
        command = [sys.executable, "-m", "adapter.cli", "sweep", "--trial", str(trial.path)]
        command += ["--as-of", "2026-06-15", "--out", str(tmp_path / name)]
        command += ["--source", proxy.base_url, "--sink", proxy.base_url]
        command += ["--config", str(site_file), "--state-dir", str(state_dir)]
        runs.append(
            subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    finished = [run.communicate(timeout=180) for run in runs]
    codes = [run.returncode for run in runs]

    assert sorted(codes) == [0, 1], [err[-1500:] for _, err in finished]
    loser = finished[codes.index(1)][1]
    assert re.search(r"error: another sweep of \S+ into \S+ is running", error_line(loser))
    assert server_state(fhir, trial) == undisturbed


# -- a server that refuses PUT at a new id (updateCreate false) ------------------------------------


@pytest.fixture(scope="module")
def extended_upstream(
    extended_server: ExtendedServer,
    demo_resources: list[dict[str, Any]],
    load_resources: Callable[[httpx.Client, Iterable[dict[str, Any]]], None],
) -> Iterator[tuple[str, httpx.Client]]:
    """The server that searches ResearchSubject by identifier, with the demo population on it."""
    base = extended_server.base_url
    with httpx.Client(base_url=base + "/", headers=FHIR_JSON, timeout=60) as client:
        load_resources(client, demo_resources)
        yield base, client


def test_without_update_create_each_subject_gets_one_provenance_and_a_rerun_writes_nothing(
    extended_upstream: tuple[str, httpx.Client],
    trial: TrialCopy,
    run_sweep: SweepRunner,
    site_file: Path,
    tmp_path: Path,
    undisturbed: ServerState,
) -> None:
    """The proxy declares `updateCreate: false` and refuses a PUT to a new id: the sink creates
    every resource conditionally (no PUT at all), each subject gets one Provenance, and a rerun
    sends no write."""
    base, client = extended_upstream
    with FaultProxy(base, update_create=False) as proxy:
        first = sweep(run_sweep, proxy.base_url, trial, tmp_path / "first", site_file)
        assert first.code == 0, first.stderr[-2000:]
        assert "Provenance: updateCreate is false; created with If-None-Exist" in first.stderr
        assert summary_line(first.stderr).endswith("sink: created 45; Provenance written 45")
        assert proxy.refused_puts == 0
        assert [w for w in proxy.writes() if w.method == "PUT"] == []
        state = server_state(client, trial)
        assert state.missing_provenance() == []
        assert state == undisturbed

        before = len(proxy.exchanges)
        again = sweep(run_sweep, proxy.base_url, trial, tmp_path / "again", site_file)
        assert again.code == 0, again.stderr[-2000:]
        assert summary_line(again.stderr).endswith("sink: unchanged 45")
        assert proxy.writes(since=before) == []
        assert server_state(client, trial) == state


def test_the_update_create_proxy_refuses_a_put_to_a_new_id(
    extended_upstream: tuple[str, httpx.Client],
) -> None:
    """The premise: through the proxy, PUT creates nothing and /metadata says updateCreate false;
    a PUT to an existing id still updates."""
    base, client = extended_upstream
    device_id = f"fault-{uuid.uuid4().hex[:12]}"
    device = {"resourceType": "Device", "id": device_id, "status": "active"}
    with FaultProxy(base, update_create=False) as proxy, httpx.Client(headers=FHIR_JSON) as http:
        statement = http.get(f"{proxy.base_url}/metadata").json()
        declared = {r.get("updateCreate") for r in statement["rest"][0]["resource"]}
        assert declared == {False}
        refused = http.put(f"{proxy.base_url}/Device/{device_id}", json=device)
        assert refused.status_code == 405
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert client.get(f"Device/{device_id}").status_code in (404, 410)
        created = client.put(f"Device/{device_id}", json=device)  # straight to the server
        assert created.status_code == 201
        updated = http.put(f"{proxy.base_url}/Device/{device_id}", json=device)
        assert updated.status_code == 200
        assert proxy.refused_puts == 1
