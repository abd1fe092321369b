"""No results lost after a late failure (issue 10, item 5).

An `--out` that was a file was found only after the whole sweep and all its sink writes, and the
run died with a traceback and no results.json. Output places are now checked before the first
request; results.json is written before the sink, and rewritten to say what the sink holds when
it fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import respx
from fake_fhir import FakeFhir, no_requests

from adapter.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"
SOURCE = "https://ehr.test/fhir/"
SINK = "https://sink.test/fhir/"


@pytest.fixture(autouse=True)
def demo_mrn(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's MRN system in the site file: a sink on another server names each patient by
    MRN (never by the first identifier, which in Synthea is a social security number)."""
    site = tmp_path_factory.mktemp("site") / "site.yaml"
    site.write_text("mrn_system: urn:trial-adapter:demo-mrn\n")
    monkeypatch.setenv("TRIAL_ADAPTER_CONFIG", str(site))


def sweep(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    args = ["sweep", "--trial", TRIAL, "--as-of", "2026-06-15", "--quiet", *extra]
    code = main(args)
    return code, capsys.readouterr().err


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "taken"
    path.write_text("not a folder\n")
    return path


@pytest.mark.parametrize(
    ("option", "place", "message"),
    [
        ("--out", lambda t: a_file(t), "exists and is not a folder"),
        ("--out", lambda t: a_file(t) / "out", "cannot be created"),
        ("--out", lambda t: a_file(t) / "a" / "b", "is not a folder"),
        ("--sink", lambda t: a_file(t), "exists and is not a folder"),
        ("--sink", lambda t: a_file(t) / "sink", "cannot be created"),
    ],
    ids=[
        "out-is-a-file",
        "out-under-a-file",
        "out-deep-under-a-file",
        "sink-is-a-file",
        "sink-under",
    ],
)
def test_an_output_place_that_cannot_be_written_fails_before_the_first_request(
    tmp_path, capsys, option, place, message
):
    """Exit 2 (a bad argument) in one line, and not one request to the source server."""
    path = place(tmp_path)
    others = ["--out", str(tmp_path / "out")] if option == "--sink" else []
    source = FakeFhir(SOURCE, hook=no_requests)
    with respx.mock(assert_all_called=False) as router:
        router.route(host="ehr.test").mock(side_effect=source.handle)
        code, err = sweep(capsys, "--source", SOURCE, option, str(path), *others)
    assert code == 2
    assert message in err
    assert f"{option} {path}" in err
    assert len(err.strip().splitlines()) == 1, err
    assert source.requests == []


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def flagged(doc: dict) -> list[str]:
    return [p["patient"] for p in doc["patients"] if p["status"] != "ineligible"]


def test_results_are_written_before_the_sink_and_say_it_completed(tmp_path, capsys):
    """A successful run: every flagged patient written, the section says `complete`."""
    sink = FakeFhir(SINK)
    seen_before_first_write: list[bool] = []

    def hook(request: httpx.Request) -> None:
        if request.method == "PUT" and not seen_before_first_write:
            seen_before_first_write.append((tmp_path / "out" / "results.json").exists())

    sink.hook = hook
    with respx.mock(assert_all_called=False) as router:
        router.route(host="sink.test").mock(side_effect=sink.handle)
        code, err = sweep(
            capsys, "--source", str(DEMO), "--sink", SINK, "--out", str(tmp_path / "out")
        )
    assert code == 0, err
    assert seen_before_first_write == [True]
    doc = results(tmp_path / "out")
    assert doc["sink_writes"]["status"] == "complete"
    assert doc["sink_writes"]["written"] == flagged(doc)
    assert doc["sink_writes"]["not_written"] == doc["sink_writes"]["unconfirmed"] == []


def test_results_left_by_a_run_killed_mid_sink_claim_no_patient_as_not_written(tmp_path, capsys):
    """What results.json says while the sink is written (all a SIGKILL leaves): every flagged
    patient unconfirmed, since any of them may already be on the server, none `not_written`."""
    sink = FakeFhir(SINK)
    during: list[dict] = []

    def hook(request: httpx.Request) -> None:
        subjects = request.method == "PUT" and "/ResearchSubject/" in request.url.path
        if subjects and not during:
            during.append(results(tmp_path / "out"))

    sink.hook = hook
    with respx.mock(assert_all_called=False) as router:
        router.route(host="sink.test").mock(side_effect=sink.handle)
        code, err = sweep(
            capsys, "--source", str(DEMO), "--sink", SINK, "--out", str(tmp_path / "out")
        )
    assert code == 0, err
    (doc,) = during
    section = doc["sink_writes"]
    assert section["status"] == "started"
    assert section["written"] == section["not_written"] == []
    assert section["unconfirmed"] == flagged(doc)
    by_patient = {p["patient"]: p.get("research_subject") for p in doc["patients"]}
    assert {by_patient[p] for p in flagged(doc)} == {"unconfirmed"}


def test_a_server_sink_failing_mid_run_leaves_results_saying_what_was_written(tmp_path, capsys):
    """The server goes away after the first ResearchSubject: exit 1, and results.json lists the
    written one, the one whose write is unconfirmed, and the rest as not written."""
    sink = FakeFhir(SINK)
    subjects: list[str] = []

    def hook(request: httpx.Request) -> None:
        if request.method == "PUT" and "/ResearchSubject/" in request.url.path:
            subjects.append(request.url.path)
            if len(set(subjects)) > 1:
                raise httpx.ConnectError("the sink went away", request=request)

    sink.hook = hook
    out = tmp_path / "out"
    with respx.mock(assert_all_called=False) as router:
        router.route(host="sink.test").mock(side_effect=sink.handle)
        code, err = sweep(capsys, "--source", str(DEMO), "--sink", SINK, "--out", str(out))
    assert code == 1
    assert "Traceback" not in err
    assert "error: no answer from the FHIR server" in err.strip().splitlines()[-1]
    doc = results(out)
    section = doc["sink_writes"]
    everyone = flagged(doc)
    assert section["status"] == "failed"
    assert section["error"].startswith("TransportError: ")
    assert len(section["written"]) == 1
    assert len(section["unconfirmed"]) == 1
    assert section["written"] + section["unconfirmed"] + section["not_written"] == everyone
    by_patient = {p["patient"]: p.get("research_subject") for p in doc["patients"]}
    assert by_patient[section["unconfirmed"][0]] == "unconfirmed"
    assert {by_patient[p] for p in section["not_written"]} == {"not_written"}
    assert (out / "candidates.csv").is_file()


def test_a_folder_sink_failing_mid_write_leaves_results_saying_nothing_was_written(
    tmp_path, capsys
):
    """ResearchSubject.ndjson cannot be replaced (a folder stands there): exit 1 in one line,
    and results.json says no subject was written."""
    sink = tmp_path / "sink"
    (sink / "ResearchSubject.ndjson").mkdir(parents=True)
    out = tmp_path / "out"
    code, err = sweep(capsys, "--source", str(DEMO), "--sink", str(sink), "--out", str(out))
    assert code == 1
    assert "the sink folder could not be written" in err
    assert len(err.strip().splitlines()) == 1, err
    doc = results(out)
    assert doc["sink_writes"]["status"] == "failed"
    assert doc["sink_writes"]["written"] == []
    assert doc["sink_writes"]["not_written"] == flagged(doc)


def test_a_subject_people_withdrew_in_the_folder_sink_is_reported_apart_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12: a line set to `withdrawn` stays as people set it; `status` keeps the verdict and
    `people_status` says what people set."""
    sink = tmp_path / "sink"
    sweep(capsys, "--source", str(DEMO), "--sink", str(sink), "--out", str(tmp_path / "first"))
    path = sink / "ResearchSubject.ndjson"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0]["status"] = "withdrawn"
    withdrawn = lines[0]["individual"]["reference"]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    second = tmp_path / "second"
    code, _ = sweep(capsys, "--source", str(DEMO), "--sink", str(sink), "--out", str(second))
    assert code == 0
    doc = json.loads((second / "results.json").read_text())
    entry = next(p for p in doc["patients"] if p["patient"] == withdrawn)
    assert entry["status"] in ("candidate", "potential-candidate")
    assert entry["research_subject"] == "kept_human_status"
    assert entry["people_status"] == "withdrawn"
    assert {p["people_status"] for p in doc["patients"] if p["patient"] != withdrawn} == {None}
    after = {
        s["individual"]["reference"]: s for s in map(json.loads, path.read_text().splitlines())
    }
    assert after[withdrawn] == lines[0]
    # never again a candidate in the worklist: left out of candidates.csv
    assert withdrawn not in (second / "candidates.csv").read_text()
