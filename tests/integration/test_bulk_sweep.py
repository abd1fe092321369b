"""`sweep --bulk` against the local server's own `$export` (issue 14, "An integration test").

The demo population is loaded on a sekmet-fhir instance of this module's own (`private_server`):
the session's server holds the demo too, but other modules compare counts of its searches, and a
Group PUT there would change them. On it, a Bulk sweep at each level sekmet offers (system,
Patient, and Group, which its CapabilityStatement lists and which works) must decide exactly as
the REST sweep of the same server and the sweep of the demo's own files: every patient, status
and criterion, and the same ResearchSubjects in a folder sink.

The system-level sweeps and the interrupted run go through a FaultProxy (tests/integration/
proxy.py), which forwards everything and records each request: what the adapter asked of the
server (one kick-off, the DELETE after the sweep, no second kick-off on a resume) is read there.
An interrupted run is a sweep killed (SIGKILL) as soon as its job's state holds a status URL;
the rerun must take up that job, not start another. A rerun after a completed run starts a new
export, of what changed since (incremental: nothing here), and decides as before.

sekmet 0.1.1 writes one NDJSON file per type and takes about ten seconds per export here (it
applies the `_typeFilter` one Observation at a time), so the module makes five exports only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import own_server
import pytest
from proxy import Delay, Exchange, FaultProxy

if TYPE_CHECKING:  # conftest is not importable at run time; the names are for the reader
    from conftest import Sweep, SweepRunner

# The module's own server (tests/integration/own_server.py) in place of the session's.
fhir_base_url = own_server.fhir_base_url
fhir = own_server.fhir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TRIAL = "hcc-ablation-lenvatinib-pd1"
AS_OF = "2026-06-15"
#: what this trial reads, so what every export holds (one file each on sekmet)
TYPES = ("Patient", "Condition", "Observation", "Procedure")
GROUP_ID = "bulk-sweep-cohort"
#: demo patients left out of the Group (a candidate, a potential candidate, an ineligible one):
#: a Group export must leave them out of the sweep, and decide the others as REST does
LEFT_OUT = ("demo-02", "demo-14", "demo-30")
#: a kick-off at any level, as the proxy records paths (below the base, no query)
KICK_OFF = re.compile(r"(?:Patient/|Group/[^/]+/)?(?:\$|%24)export")
STATUS = re.compile(r"bulk-status/[^/]+")  # sekmet's status URLs
JOB_WAIT = 60.0  # seconds for the killed run to save its job's status URL
FIRST_POLL_DELAY = 1.5  # the killed run's first status poll is held this long by the proxy
Verdicts = dict[str, tuple[str, dict[str, str]]]


# -- the module's server and what runs against it ------------------------------------------------


@pytest.fixture(scope="module")
def demo_on_server(
    fhir: httpx.Client,
    fhir_base_url: str,
    demo_resources: list[dict[str, Any]],
    load_resources: Callable[[httpx.Client, Iterable[dict[str, Any]]], None],
) -> str:
    """The demo population, as it is, PUT on the module's server; its base URL."""
    load_resources(fhir, demo_resources)
    return fhir_base_url


@pytest.fixture(scope="module")
def proxy(demo_on_server: str) -> Iterator[FaultProxy]:
    """A recording proxy in front of the module's server (no faults unless a test injects)."""
    with FaultProxy(demo_on_server) as running:
        yield running


@dataclass(frozen=True)
class BulkRun:
    """A `sweep --bulk` run: the CLI's outcome, its state folder and folder sink, and the
    requests it made (when it went through the proxy)."""

    sweep: Sweep
    state_dir: Path
    sink: Path
    exchanges: list[Exchange]

    @property
    def bulk(self) -> dict[str, Any]:
        summary: dict[str, Any] = self.sweep.report["bulk"]
        return summary

    def job_folders(self) -> list[Path]:
        """The export jobs' folders in the state folder (the facts stores beside them stay)."""
        folder = self.state_dir / "bulk"
        return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def kick_offs(exchanges: Iterable[Exchange]) -> list[Exchange]:
    return [e for e in exchanges if KICK_OFF.fullmatch(e.path)]


def status_paths(exchanges: Iterable[Exchange], method: str = "GET") -> set[str]:
    return {e.path for e in exchanges if e.method == method and STATUS.fullmatch(e.path)}


def bulk_sweep(
    run_sweep: SweepRunner,
    folder: Path,
    source: str,
    level: str,
    *extra: str,
    state_dir: Path | None = None,
) -> Sweep:
    """`sweep --source <source> --bulk <level>` into `folder`/out (state in `folder`/state)."""
    state = state_dir or folder / "state"
    return run_sweep(
        folder / "out", "--source", source, "--bulk", level, "--state-dir", str(state), *extra
    )


def recorded_bulk_sweep(
    run_sweep: SweepRunner, proxy: FaultProxy, folder: Path, *extra: str, state_dir: Path
) -> BulkRun:
    """A system-level Bulk sweep through the proxy, with the requests it made."""
    start = len(proxy.exchanges)
    sweep = bulk_sweep(run_sweep, folder, proxy.base_url, "system", *extra, state_dir=state_dir)
    return BulkRun(sweep, state_dir, folder / "sink", proxy.exchanges[start:])


@pytest.fixture(scope="module")
def rest_sweep(
    demo_on_server: str, run_sweep: SweepRunner, tmp_path_factory: pytest.TempPathFactory
) -> BulkRun:
    """The module's server swept over its search API, into a folder sink: what Bulk must match."""
    folder = tmp_path_factory.mktemp("rest")
    sink, state = folder / "sink", folder / "state"
    sweep = run_sweep(
        folder / "out",
        *("--source", demo_on_server, "--sink", str(sink), "--state-dir", str(state)),
    )
    return BulkRun(sweep, state, sink, [])


@pytest.fixture(scope="module")
def system_sweep(
    proxy: FaultProxy, run_sweep: SweepRunner, tmp_path_factory: pytest.TempPathFactory
) -> BulkRun:
    """`--bulk system` (through the recording proxy), into a folder sink."""
    folder = tmp_path_factory.mktemp("bulk-system")
    sink = ("--sink", str(folder / "sink"))
    return recorded_bulk_sweep(run_sweep, proxy, folder, *sink, state_dir=folder / "state")


@pytest.fixture(scope="module")
def patient_sweep(
    demo_on_server: str, run_sweep: SweepRunner, tmp_path_factory: pytest.TempPathFactory
) -> BulkRun:
    """`--bulk patient --keep-export`, straight to the server."""
    folder = tmp_path_factory.mktemp("bulk-patient")
    sweep = bulk_sweep(run_sweep, folder, demo_on_server, "patient", "--keep-export")
    return BulkRun(sweep, folder / "state", folder / "sink", [])


@pytest.fixture(scope="module")
def group_members(fhir: httpx.Client, demo_resources: list[dict[str, Any]]) -> frozenset[str]:
    """A Group of every demo patient but LEFT_OUT, PUT on the server; its members' references."""
    patients = sorted(r["id"] for r in demo_resources if r["resourceType"] == "Patient")
    members = [f"Patient/{p}" for p in patients if p not in LEFT_OUT]
    group = {
        "resourceType": "Group",
        "id": GROUP_ID,
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": ref}} for ref in members],
    }
    response = fhir.put(f"Group/{GROUP_ID}", json=group)
    assert response.status_code in (200, 201), response.text[:2000]
    return frozenset(members)


@pytest.fixture(scope="module")
def group_sweep(
    demo_on_server: str,
    group_members: frozenset[str],
    run_sweep: SweepRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> BulkRun:
    """`--bulk group:<id>` of that Group, straight to the server."""
    folder = tmp_path_factory.mktemp("bulk-group")
    sweep = bulk_sweep(run_sweep, folder, demo_on_server, f"group:{GROUP_ID}")
    return BulkRun(sweep, folder / "state", folder / "sink", [])


def assert_same_verdicts(got: Verdicts, want: Verdicts, what: str) -> None:
    assert got.keys() == want.keys(), f"{what}: other patients in the cohort"
    differing = sorted(p for p in got if got[p] != want[p])
    assert not differing, f"{what} disagrees on {len(differing)} patients, {differing[:5]}"


def assert_clean_export(run: BulkRun, level: str) -> None:
    """results.json says what was exported, with no error file and no issue."""
    bulk = run.bulk
    assert bulk["level"] == level
    assert bulk["types"] == list(TYPES)
    assert bulk["files"] == dict.fromkeys(TYPES, 1)  # sekmet: one file per type
    assert (bulk["error_files"], bulk["issues"]) == (0, [])
    assert (bulk["since"], bulk["mode"]) == (None, "full")  # the first export in its state folder
    assert bulk["transaction_time"]


# -- system level ------------------------------------------------------------------------------


def test_system_export_decides_as_the_rest_and_folder_sweeps(
    system_sweep: BulkRun,
    rest_sweep: BulkRun,
    demo_folder_sweep: Sweep,
    verdicts_of: Callable[[dict[str, Any]], Verdicts],
) -> None:
    """Every patient, status and criterion result as REST and as the demo's own files."""
    codes = (system_sweep.sweep.code, rest_sweep.sweep.code, demo_folder_sweep.code)
    assert codes == (0, 0, 0)
    bulk = verdicts_of(system_sweep.sweep.report)
    assert len(bulk) > 20
    assert_same_verdicts(bulk, verdicts_of(rest_sweep.sweep.report), "Bulk (system) vs REST")
    assert_same_verdicts(bulk, verdicts_of(demo_folder_sweep.report), "Bulk (system) vs folder")
    assert system_sweep.sweep.report["errors"] == []


def test_system_export_cites_the_evidence_rest_cites(
    system_sweep: BulkRun, rest_sweep: BulkRun
) -> None:
    """Reasons and evidence too: whole resources from the export, `_elements` subsets over REST."""
    bulk = {p["patient"]: p["criteria"] for p in system_sweep.sweep.report["patients"]}
    rest = {p["patient"]: p["criteria"] for p in rest_sweep.sweep.report["patients"]}
    differing = sorted(p for p in bulk if bulk[p] != rest.get(p))
    assert not differing, f"Bulk and REST evidence differ for {differing[:5]}"


def test_system_export_is_reported_in_results_json(system_sweep: BulkRun) -> None:
    assert_clean_export(system_sweep, "system")
    assert system_sweep.bulk["resumed"] is False


def test_system_export_is_one_job_deleted_after_the_sweep_with_no_files_left(
    system_sweep: BulkRun, fhir: httpx.Client
) -> None:
    """One kick-off, its status URL polled, the job DELETEd; the job folder is gone."""
    exchanges = system_sweep.exchanges
    assert len(kick_offs(exchanges)) == 1
    (status,) = status_paths(exchanges)
    assert status_paths(exchanges, "DELETE") == {status}
    downloads = [e for e in exchanges if e.path.startswith("bulk-files/") and e.status == 200]
    assert len(downloads) == len(TYPES)
    assert fhir.get(status).status_code == 404  # the server no longer knows the job
    assert system_sweep.job_folders() == []


def test_folder_sink_gets_the_research_subjects_of_the_rest_sweep(
    system_sweep: BulkRun, rest_sweep: BulkRun
) -> None:
    """The same lines, ResearchStudy and ResearchSubjects, whichever way the server was read."""
    for name in ("ResearchStudy.ndjson", "ResearchSubject.ndjson"):
        bulk = (system_sweep.sink / name).read_text().splitlines()
        rest = (rest_sweep.sink / name).read_text().splitlines()
        assert bulk, f"{name} is empty"
        assert bulk == rest, name
    flagged = [p for p in system_sweep.sweep.report["patients"] if p["status"] != "ineligible"]
    subjects = (system_sweep.sink / "ResearchSubject.ndjson").read_text().splitlines()
    assert len(subjects) == len(flagged)


def test_rerun_after_a_successful_run_starts_a_new_export(
    system_sweep: BulkRun,
    rest_sweep: BulkRun,
    proxy: FaultProxy,
    run_sweep: SweepRunner,
    tmp_path: Path,
    verdicts_of: Callable[[dict[str, Any]], Verdicts],
) -> None:
    """The first run's job was swept and deleted: the same state folder starts a new export,
    of what changed since the first (nothing), and the facts kept from the first decide."""
    again = recorded_bulk_sweep(run_sweep, proxy, tmp_path, state_dir=system_sweep.state_dir)
    assert again.sweep.code == 0
    assert len(kick_offs(again.exchanges)) == 1
    assert status_paths(again.exchanges).isdisjoint(status_paths(system_sweep.exchanges))
    assert again.bulk["resumed"] is False
    assert again.bulk["transaction_time"] > system_sweep.bulk["transaction_time"]
    assert again.bulk["mode"] == "incremental"
    assert again.bulk["since"] == system_sweep.bulk["transaction_time"]
    assert again.bulk["changed_patients"] == 0
    assert_same_verdicts(
        verdicts_of(again.sweep.report), verdicts_of(rest_sweep.sweep.report), "the rerun"
    )
    assert again.job_folders() == []


# -- Patient level -------------------------------------------------------------------------------


def test_patient_export_decides_as_the_rest_sweep(
    patient_sweep: BulkRun,
    rest_sweep: BulkRun,
    demo_folder_sweep: Sweep,
    verdicts_of: Callable[[dict[str, Any]], Verdicts],
) -> None:
    assert patient_sweep.sweep.code == 0
    bulk = verdicts_of(patient_sweep.sweep.report)
    assert_same_verdicts(bulk, verdicts_of(rest_sweep.sweep.report), "Bulk (Patient) vs REST")
    assert_same_verdicts(bulk, verdicts_of(demo_folder_sweep.report), "Bulk (Patient) vs folder")
    assert_clean_export(patient_sweep, "patient")


def test_keep_export_keeps_the_files_owner_only_in_bulk_names(
    patient_sweep: BulkRun, fhir: httpx.Client
) -> None:
    """The job folder stays (0700), its files 0600 as `<Type>.000.ndjson`; the job is still
    DELETEd on the server, and the saved state says it was swept (a rerun exports anew)."""
    (job,) = patient_sweep.job_folders()
    assert stat.S_IMODE(job.stat().st_mode) == 0o700
    files = sorted(p.name for p in job.iterdir() if p.is_file())
    assert files == sorted([".job.json", *(f"{t}.000.ndjson" for t in TYPES)])
    for name in files:
        assert stat.S_IMODE((job / name).stat().st_mode) == 0o600, name
    assert all(not any((job / sub).iterdir()) for sub in ("errors", "deleted"))
    state = json.loads((job / ".job.json").read_text())
    assert state["swept"] is True
    assert fhir.get(state["status_url"]).status_code == 404


# -- Group level ---------------------------------------------------------------------------------


def test_group_export_decides_as_rest_for_the_groups_members(
    group_sweep: BulkRun,
    group_members: frozenset[str],
    rest_sweep: BulkRun,
    verdicts_of: Callable[[dict[str, Any]], Verdicts],
) -> None:
    """sekmet's Group/$export works: the Group's members only, decided as REST decides them."""
    assert group_sweep.sweep.code == 0
    rest = verdicts_of(rest_sweep.sweep.report)
    left_out = {f"Patient/{p}" for p in LEFT_OUT}
    assert left_out <= rest.keys()  # they are in the cohort: leaving them out is seen
    want = {p: v for p, v in rest.items() if p in group_members}
    assert_same_verdicts(verdicts_of(group_sweep.sweep.report), want, "Bulk (Group) vs REST")
    assert_clean_export(group_sweep, f"group:{GROUP_ID}")
    assert group_sweep.job_folders() == []


def test_group_export_of_an_unknown_group_fails_in_one_line(
    demo_on_server: str, run_sweep: SweepRunner, tmp_path: Path
) -> None:
    """The server refuses the kick-off (404): exit 1, one error line, no traceback."""
    sweep = run_sweep(
        tmp_path / "out",
        *("--source", demo_on_server, "--bulk", "group:no-such-group"),
        *("--state-dir", str(tmp_path / "state")),
        check=False,
    )
    assert sweep.code == 1
    assert "Traceback" not in sweep.stderr
    (error,) = [line for line in sweep.stderr.splitlines() if " ERROR " in line]
    assert "$export kick-off was refused: HTTP 404" in error


# -- an interrupted run --------------------------------------------------------------------------


def saved_status_url(state_dir: Path) -> str | None:
    """The status URL a job's saved state holds, once there is one (the state is replaced
    atomically, so a file that is there is whole)."""
    for path in state_dir.glob("bulk/*/.job.json"):
        url = json.loads(path.read_bytes()).get("status_url")
        if isinstance(url, str):
            return url
    return None


def killed_once_its_job_is_saved(command: list[str], log: Path, state_dir: Path) -> str:
    """Run `command`; SIGKILL it as soon as its job's status URL is saved; that URL."""
    env = {k: v for k, v in os.environ.items() if k != "TRIAL_ADAPTER_CONFIG"}
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=ROOT
        )
        try:
            deadline = time.monotonic() + JOB_WAIT
            while (url := saved_status_url(state_dir)) is None:
                if process.poll() is not None:
                    pytest.fail(f"the sweep ended ({process.returncode}) before its job was saved")
                if time.monotonic() > deadline:
                    pytest.fail(f"no job saved within {JOB_WAIT:g} s")
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    return url


def test_interrupted_run_is_resumed_without_a_second_export(
    proxy: FaultProxy,
    rest_sweep: BulkRun,
    run_sweep: SweepRunner,
    tmp_path: Path,
    verdicts_of: Callable[[dict[str, Any]], Verdicts],
) -> None:
    """Killed while it polls, the run leaves its job's status URL; the rerun polls that job
    (no second kick-off), downloads it, decides as REST and cleans up."""
    state = tmp_path / "state"
    start = len(proxy.exchanges)
    # Holds the killed run's first poll, so the job cannot be done before the kill.
    proxy.inject(Delay(FIRST_POLL_DELAY), "GET", STATUS.pattern, nth=1)
    try:
        command = [sys.executable, "-m", "adapter.cli", "sweep", "--trial", TRIAL]
        command += ["--as-of", AS_OF, "--out", str(tmp_path / "killed")]
        command += ["--source", proxy.base_url, "--bulk", "system", "--state-dir", str(state)]
        status_url = killed_once_its_job_is_saved(command, tmp_path / "killed.log", state)
        (job,) = state.glob("bulk/*/.job.json")
        assert json.loads(job.read_bytes())["manifest"] is None  # killed before the manifest

        resumed = recorded_bulk_sweep(run_sweep, proxy, tmp_path / "rerun", state_dir=state)
    finally:
        proxy.clear()
    status = status_url.removeprefix(proxy.base_url + "/")
    assert len(kick_offs(proxy.exchanges[start:])) == 1  # the killed run's, none since
    assert kick_offs(resumed.exchanges) == []
    assert status_paths(resumed.exchanges) == {status}
    assert status_paths(resumed.exchanges, "DELETE") == {status}
    assert resumed.sweep.code == 0
    assert resumed.bulk["resumed"] is True
    assert_same_verdicts(
        verdicts_of(resumed.sweep.report),
        verdicts_of(rest_sweep.sweep.report),
        "the resumed run",
    )
    assert resumed.job_folders() == []
