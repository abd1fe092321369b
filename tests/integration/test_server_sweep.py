"""The CLI against a real FHIR server (sekmet-fhir, started by tools/run-tests.sh).

The demo population is loaded once per module. Sweeps read it over the search API with small pages
and batches, so every query pages. Each test that writes gets its own copy of the trial under a
unique id and study identifier, so its ResearchStudy and ResearchSubjects are its own: the tests
run in any order, and again against a server that already holds an earlier run's resources.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"
TRIAL_FILE = ROOT / "mappings" / "trials" / f"{TRIAL}.yaml"
AS_OF = "2026-06-15"
PAGE_SIZE = 7  # below every result set, so paging is always exercised
BATCH_SIZE = 10
TAG = ("urn:trial-adapter", "pre-screen")
FLAGGED = ("candidate", "potential-candidate")
TRANSACTION_SIZE = 500  # entries per transaction Bundle


@dataclass(frozen=True)
class Sweep:
    """One CLI run: its exit code, stderr and results.json."""

    code: int
    stderr: str
    results: dict[str, Any]


def run_sweep(out: Path, *args: str, trial: str | Path = TRIAL) -> Sweep:
    """Run `trial-adapter sweep` in a subprocess, as cron would."""
    command = [
        sys.executable,
        "-m",
        "adapter.cli",
        "sweep",
        "--trial",
        str(trial),
        "--as-of",
        AS_OF,
        "--out",
        str(out),
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    results_file = out / "results.json"
    if done.returncode not in (0, 3) or not results_file.is_file():
        pytest.fail(f"sweep exited {done.returncode}; stderr:\n{done.stderr[-3000:]}")
    return Sweep(done.returncode, done.stderr, json.loads(results_file.read_text()))


def rest_args(base_url: str, *, sink: bool = False) -> list[str]:
    """Source (and sink) on the server, with pages and batches small enough to always page."""
    args = ["--source", base_url, "--page-size", str(PAGE_SIZE), "--batch-size", str(BATCH_SIZE)]
    return [*args, "--sink", base_url] if sink else args


def demo_resources() -> list[dict[str, Any]]:
    """Every resource of the demo population's NDJSON files."""
    resources = []
    for path in sorted(DEMO.glob("*.ndjson")):
        lines = path.read_text().splitlines()
        resources.extend(json.loads(line) for line in lines if line.strip())
    return resources


def search_all(fhir: httpx.Client, url: str) -> list[dict[str, Any]]:
    """Every resource of a search, following Bundle.link[next]."""
    found: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        response = fhir.get(next_url)
        response.raise_for_status()
        bundle = response.json()
        found.extend(
            entry["resource"]
            for entry in bundle.get("entry", [])
            if entry.get("search", {}).get("mode", "match") == "match"
        )
        next_url = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)
    return found


def tagged(resource: dict[str, Any]) -> bool:
    """Whether the resource carries the adapter's tag."""
    tags = resource.get("meta", {}).get("tag", [])
    return any((t.get("system"), t.get("code")) == TAG for t in tags)


def study_on_server(fhir: httpx.Client, system: str, value: str) -> list[dict[str, Any]]:
    """The tagged ResearchStudies with this identifier.

    sekmet 0.1.1 defines no ResearchStudy search parameters (an unknown one is ignored, not
    refused): all are fetched and filtered here.
    """
    return [
        study
        for study in search_all(fhir, "ResearchStudy?_count=500")
        if tagged(study) and {"system": system, "value": value} in study.get("identifier", [])
    ]


def subjects_on_server(fhir: httpx.Client, study_id: str) -> list[dict[str, Any]]:
    """The tagged ResearchSubjects of one ResearchStudy (all fetched: see study_on_server)."""
    return [
        subject
        for subject in search_all(fhir, "ResearchSubject?_count=500")
        if tagged(subject)
        and subject.get("study", {}).get("reference") == f"ResearchStudy/{study_id}"
    ]


@dataclass(frozen=True)
class TrialCopy:
    """The trial under a unique id and study identifier, so a test's writes are its own."""

    path: Path
    system: str
    value: str


@pytest.fixture
def trial_copy(tmp_path: Path) -> TrialCopy:
    """A copy of the trial file with a fresh id and study identifier."""
    definition = yaml.safe_load(TRIAL_FILE.read_text())
    trial_id = f"itest-{uuid.uuid4().hex[:12]}"
    definition["id"] = trial_id
    definition["study"] = {"system": "urn:trial-adapter:integration-test", "value": trial_id}
    path = tmp_path / f"{trial_id}.yaml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return TrialCopy(path, definition["study"]["system"], trial_id)


def the_study(fhir: httpx.Client, trial: TrialCopy) -> dict[str, Any]:
    """The one ResearchStudy the adapter wrote for `trial`."""
    studies = study_on_server(fhir, trial.system, trial.value)
    assert len(studies) == 1, f"{len(studies)} ResearchStudies for {trial.value}"
    return studies[0]


@pytest.fixture(scope="module")
def demo_on_server(fhir: httpx.Client, fhir_base_url: str) -> str:
    """The demo population PUT on the server by transaction Bundles; the server's base URL."""
    resources = demo_resources()
    for start in range(0, len(resources), TRANSACTION_SIZE):
        chunk = resources[start : start + TRANSACTION_SIZE]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in chunk
            ],
        }
        response = fhir.post(fhir_base_url, json=bundle)
        assert response.status_code == 200, response.text[:2000]
        reply = response.json()
        assert reply["type"] == "transaction-response"
        statuses = [entry["response"]["status"] for entry in reply["entry"]]
        assert len(statuses) == len(chunk)
        assert all(s.startswith(("200", "201")) for s in statuses), statuses
    return fhir_base_url


@pytest.fixture(scope="module")
def rest_sweep(demo_on_server: str, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """The demo population swept over the server's search API."""
    return run_sweep(tmp_path_factory.mktemp("rest"), *rest_args(demo_on_server))


@pytest.fixture(scope="module")
def folder_sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """The same population swept from its files."""
    return run_sweep(tmp_path_factory.mktemp("folder"), "--source", str(DEMO))


def verdicts(sweep: Sweep) -> dict[str, tuple[str, dict[str, str]]]:
    """Patient -> (status, criterion id -> result)."""
    return {
        p["patient"]: (p["status"], {cid: c["result"] for cid, c in p["criteria"].items()})
        for p in sweep.results["patients"]
    }


def flagged_patients(sweep: Sweep) -> dict[str, str]:
    """Patient reference -> status, for candidates and potential candidates."""
    return {p["patient"]: p["status"] for p in sweep.results["patients"] if p["status"] in FLAGGED}


def sink_outcomes(sweep: Sweep) -> dict[str, str]:
    """Patient reference -> what the sink did (`research_subject` in results.json)."""
    return {
        p["patient"]: p["research_subject"]
        for p in sweep.results["patients"]
        if "research_subject" in p
    }


def test_rest_and_folder_sweeps_exit_0(rest_sweep: Sweep, folder_sweep: Sweep) -> None:
    """Both sweeps complete without errors."""
    assert (rest_sweep.code, folder_sweep.code) == (0, 0)
    assert rest_sweep.results["errors"] == folder_sweep.results["errors"] == []


def test_rest_sweep_cohort_spans_several_pages(rest_sweep: Sweep) -> None:
    """The cohort is larger than a page, so the REST sweep had to follow next links."""
    assert len(rest_sweep.results["patients"]) > 3 * PAGE_SIZE


def test_rest_and_folder_sweeps_have_the_same_counts(
    rest_sweep: Sweep, folder_sweep: Sweep
) -> None:
    """The server and the files give the same number of patients per status."""
    assert rest_sweep.results["counts"] == folder_sweep.results["counts"]
    assert sum(rest_sweep.results["counts"].values()) == len(rest_sweep.results["patients"])


def test_rest_and_folder_sweeps_agree_on_every_patient_and_criterion(
    rest_sweep: Sweep, folder_sweep: Sweep
) -> None:
    """Same patients, same status, same result for every criterion."""
    rest, folder = verdicts(rest_sweep), verdicts(folder_sweep)
    assert rest.keys() == folder.keys()
    differing = sorted(p for p in rest if rest[p] != folder[p])
    assert not differing, f"REST and folder disagree on {differing[:5]}"


def test_rest_and_folder_sweeps_cite_the_same_evidence(
    rest_sweep: Sweep, folder_sweep: Sweep
) -> None:
    """Reasons and evidence match too: references read from the server are made relative."""
    rest = {p["patient"]: p["criteria"] for p in rest_sweep.results["patients"]}
    folder = {p["patient"]: p["criteria"] for p in folder_sweep.results["patients"]}
    differing = sorted(p for p in rest if rest[p] != folder.get(p))
    assert not differing, f"REST and folder evidence differ for {differing[:5]}"


def test_rest_sweep_logs_name_no_patient(rest_sweep: Sweep) -> None:
    """stderr of a sweep over REST holds no patient id."""
    ids = [p["patient"].split("/", 1)[1] for p in rest_sweep.results["patients"]]
    leaked = [pid for pid in ids if pid in rest_sweep.stderr]
    assert not leaked, f"{len(leaked)} patient ids on stderr"


def test_sink_sweep_writes_one_research_subject_per_flagged_patient(
    demo_on_server: str, fhir: httpx.Client, trial_copy: TrialCopy, tmp_path: Path
) -> None:
    """Each candidate and potential candidate gets one tagged ResearchSubject with its status."""
    args = rest_args(demo_on_server, sink=True)
    sweep = run_sweep(tmp_path / "out", *args, trial=trial_copy.path)
    assert sweep.code == 0
    study = the_study(fhir, trial_copy)
    subjects = subjects_on_server(fhir, study["id"])
    on_server = [(s["individual"]["reference"], s["status"]) for s in subjects]
    expected = flagged_patients(sweep)
    assert expected, "the demo population should flag some patients"
    assert sorted(on_server) == sorted(expected.items())
    assert sink_outcomes(sweep) == dict.fromkeys(expected, "created")


def test_second_sink_sweep_creates_and_changes_nothing(
    demo_on_server: str, fhir: httpx.Client, trial_copy: TrialCopy, tmp_path: Path
) -> None:
    """A rerun leaves the study and every subject at the same version, and adds none."""
    args = rest_args(demo_on_server, sink=True)
    run_sweep(tmp_path / "first", *args, trial=trial_copy.path)
    study = the_study(fhir, trial_copy)
    before = {s["id"]: s["meta"]["versionId"] for s in subjects_on_server(fhir, study["id"])}

    again = run_sweep(tmp_path / "second", *args, trial=trial_copy.path)

    assert again.code == 0
    assert the_study(fhir, trial_copy)["meta"]["versionId"] == study["meta"]["versionId"]
    after = {s["id"]: s["meta"]["versionId"] for s in subjects_on_server(fhir, study["id"])}
    assert after == before
    assert sink_outcomes(again) == dict.fromkeys(flagged_patients(again), "unchanged")


def test_subject_moved_on_study_by_hand_is_untouched(
    demo_on_server: str, fhir: httpx.Client, trial_copy: TrialCopy, tmp_path: Path
) -> None:
    """A ResearchSubject a person set to on-study keeps its status and version on the next sweep."""
    args = rest_args(demo_on_server, sink=True)
    run_sweep(tmp_path / "first", *args, trial=trial_copy.path)
    study = the_study(fhir, trial_copy)
    chosen = min(subjects_on_server(fhir, study["id"]), key=lambda s: s["id"])
    edited = {**chosen, "status": "on-study"}
    response = fhir.put(
        f"ResearchSubject/{chosen['id']}",
        json=edited,
        headers={"If-Match": f'W/"{chosen["meta"]["versionId"]}"'},
    )
    assert response.status_code == 200, response.text[:2000]
    by_hand = fhir.get(f"ResearchSubject/{chosen['id']}").json()
    assert by_hand["status"] == "on-study"

    again = run_sweep(tmp_path / "second", *args, trial=trial_copy.path)

    assert again.code == 0
    now = fhir.get(f"ResearchSubject/{chosen['id']}").json()
    assert now["status"] == "on-study"
    assert now["meta"]["versionId"] == by_hand["meta"]["versionId"]
    assert sink_outcomes(again)[chosen["individual"]["reference"]] == "kept_human_status"
