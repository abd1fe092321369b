"""One unreadable line no longer stops the sweep (issue 11, item 8).

A corrupt line in a 100,000-line export gave exit 1 and no results. It is now skipped and listed
(file and line, never its content) under `unreadable_input`. When its bytes name its patient for
sure, that patient goes under `errors`, unevaluated and unwritten, and everyone else is evaluated
and written; when they do not, everyone is evaluated and reported, and nothing reaches the sink.
Either way the run exits 3.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from datetime import date
from pathlib import Path

import pytest
import respx
from fake_fhir import FakeFhir, no_requests

from adapter.cli import main
from adapter.report.results import sweep_json
from adapter.sources.files import FolderSource
from adapter.sweep import UNREADABLE_LOGGED, run_sweep
from adapter.trials import load_trial

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"
AS_OF = "2026-06-15"
SINK = "https://sink.test/fhir/"
# A unit text no report may show: the line's content must stay out of stderr.
SECRET = b"SECRET-CONTENT"


def sweep(capsys: pytest.CaptureFixture[str], source: Path, *extra: str) -> tuple[int, str]:
    args = ["sweep", "--trial", TRIAL, "--source", str(source), "--as-of", AS_OF, "-q", *extra]
    code = main(args)
    return code, capsys.readouterr().err


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def flagged(doc: dict) -> set[str]:
    return {p["patient"] for p in doc["patients"] if p["status"] != "ineligible"}


def subjects(sink: Path) -> set[str]:
    lines = (sink / "ResearchSubject.ndjson").read_text().splitlines()
    return {json.loads(line)["individual"]["reference"] for line in lines}


def damage(src: Path, kind: str, patient: str, how: str) -> int:
    """Break the first `kind` line of `patient` in the copy `src`; its 1-based line number.

    `after-subject`: cut short after the subject (its patient readable); `before-subject`: cut
    short before it (nobody's for sure); `not-utf8`: an invalid byte in a text (still readable).
    """
    path = src / f"{kind}.ndjson"
    lines = path.read_bytes().splitlines(keepends=True)
    subject = b'"subject":{"reference":"Patient/%s"}' % patient.encode()
    number = next(i for i, line in enumerate(lines) if subject in line)
    line = lines[number]
    if how == "after-subject":
        broken = line[: line.index(subject) + len(subject)] + b',"unit":"' + SECRET + b"\n"
    elif how == "before-subject":
        broken = line[: line.index(b'"subject"')] + b'"note":"' + SECRET + b"\n"
    else:
        broken = line.replace(b'"display":"', b'"display":"\xff' + SECRET, 1)
        assert broken != line
    lines[number] = broken
    path.write_bytes(b"".join(lines))
    return number + 1


@pytest.fixture
def src(tmp_path: Path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(DEMO, copy)
    return copy


def assert_quiet_about_the_line(err: str, place: str) -> None:
    """stderr names the file and line, never the content nor any patient."""
    assert f"skipped an unreadable line: {place}" in err
    assert SECRET.decode() not in err
    assert "demo-" not in err


@pytest.mark.parametrize("how", ["after-subject", "not-utf8"])
def test_a_line_whose_patient_is_readable_holds_back_that_patient_only(tmp_path, capsys, src, how):
    """demo-01 (a candidate) under errors, unevaluated and unwritten; the other 79 evaluated and
    the flagged ones written to the folder sink; exit 3."""
    number = damage(src, "Observation", "demo-01", how)
    out, sink = tmp_path / "out", tmp_path / "sink"
    code, err = sweep(capsys, src, "--sink", str(sink), "--out", str(out))
    assert code == 3
    doc = results(out)
    place = f"{src / 'Observation.ndjson'}:{number}"
    assert doc["errors"] == [
        {
            "patient": "Patient/demo-01",
            "reason": f"an unreadable line in {place} may hold this patient's data",
        }
    ]
    [item] = doc["unreadable_input"]
    assert item["patient"] == "Patient/demo-01"
    assert (item["file"], item["line"]) == (str(src / "Observation.ndjson"), number)
    assert doc["writes_withheld"] is False
    assert len(doc["patients"]) == 79
    assert "Patient/demo-01" not in {p["patient"] for p in doc["patients"]}
    assert subjects(sink) == flagged(doc)
    assert len(flagged(doc)) == 44
    assert doc["sink_writes"]["status"] == "complete"
    assert_quiet_about_the_line(err, place)


def test_a_held_back_patient_keeps_what_an_earlier_run_wrote_for_them(tmp_path, capsys, src):
    """Last night demo-01 was written; tonight its line is unreadable: its subject line stays in
    the folder sink as it was (nothing is written for it, not even a removal)."""
    out, sink = tmp_path / "out", tmp_path / "sink"
    assert sweep(capsys, src, "--sink", str(sink), "--out", str(out))[0] == 0
    assert "Patient/demo-01" in subjects(sink)
    damage(src, "Observation", "demo-01", "after-subject")
    assert sweep(capsys, src, "--sink", str(sink), "--out", str(out))[0] == 3
    assert subjects(sink) == flagged(results(out)) | {"Patient/demo-01"}


def test_a_line_whose_patient_is_unreadable_withholds_every_write(tmp_path, capsys, src):
    """Everyone evaluated and reported; the sink folder keeps yesterday's files (exit 3: the
    next test)."""
    number = damage(src, "Observation", "demo-01", "before-subject")
    out, sink = tmp_path / "out", tmp_path / "sink"
    sink.mkdir()
    (sink / "ResearchSubject.ndjson").write_text("yesterday's\n")
    sweep(capsys, src, "--sink", str(sink), "--out", str(out))
    doc = results(out)
    assert len(doc["patients"]) == 80
    assert doc["errors"] == []
    assert doc["writes_withheld"] is True
    assert doc["unreadable_input"] == [
        {
            "file": str(src / "Observation.ndjson"),
            "line": number,
            "reason": doc["unreadable_input"][0]["reason"],
            "patient": None,
        }
    ]
    writes = doc["sink_writes"]
    assert writes["status"] == "withheld"
    assert writes["written"] == writes["unconfirmed"] == []
    assert set(writes["not_written"]) == flagged(doc)
    assert {p.get("research_subject") for p in doc["patients"] if p["status"] != "ineligible"} == {
        "not_written"
    }
    assert sorted(p.name for p in sink.iterdir()) == ["ResearchSubject.ndjson"]
    assert (sink / "ResearchSubject.ndjson").read_text() == "yesterday's\n"


def test_a_line_whose_patient_is_unreadable_exits_3(tmp_path, capsys, src):
    """Done, but not whole: exit 3, though nobody is under errors."""
    damage(src, "Observation", "demo-01", "before-subject")
    code, err = sweep(capsys, src, "--out", str(tmp_path / "out"))
    assert code == 3, err


def test_withheld_writes_log_the_line_and_why_without_content_or_ids(tmp_path, capsys, src):
    """One line for the unreadable line, one for the withheld sink; nothing else of the data."""
    number = damage(src, "Observation", "demo-07", "before-subject")
    _, err = sweep(capsys, src, "--sink", str(tmp_path / "sink"), "--out", str(tmp_path / "out"))
    assert_quiet_about_the_line(err, f"{src / 'Observation.ndjson'}:{number}")
    assert "nothing will be written to a sink" in err
    assert "sink: nothing written, writes withheld: 1 unreadable input lines" in err


def test_withheld_writes_send_nothing_to_a_server_sink(tmp_path, capsys, src):
    """Not one request reaches the sink server, not even its CapabilityStatement."""
    damage(src, "Observation", "demo-01", "before-subject")
    server = FakeFhir(SINK, hook=no_requests)
    with respx.mock(assert_all_called=False) as router:
        router.route(host="sink.test").mock(side_effect=server.handle)
        sweep(capsys, src, "--sink", SINK, "--out", str(tmp_path / "out"))
    assert server.requests == []
    assert results(tmp_path / "out")["sink_writes"]["status"] == "withheld"


def test_withheld_writes_leave_a_dry_run_planning_nothing(tmp_path, capsys, src):
    """--dry-run: nothing is planned, and the reason is logged."""
    damage(src, "Observation", "demo-01", "before-subject")
    sink = tmp_path / "sink"
    _, err = sweep(capsys, src, "--sink", str(sink), "--dry-run", "--out", str(tmp_path / "out"))
    assert results(tmp_path / "out")["planned_writes"] == []
    assert not sink.exists()
    assert "sink: nothing planned, writes withheld" in err


@pytest.mark.parametrize(
    ("patient", "in_cohort"),
    [("demo-03", True), ("demo-54", False)],
    ids=["cohort-patient", "outside-the-cohort"],
)
def test_an_unreadable_condition_line_of_the_cohort_search_holds_back_its_patient(
    tmp_path, capsys, src, patient, in_cohort
):
    """The cohort search reads every Condition line: a broken one may be what puts its patient in
    the cohort, so that patient is held back whether or not the rest puts them there."""
    number = damage(src, "Condition", patient, "after-subject")
    out, sink = tmp_path / "out", tmp_path / "sink"
    code, err = sweep(capsys, src, "--sink", str(sink), "--out", str(out))
    assert code == 3
    doc = results(out)
    place = f"{src / 'Condition.ndjson'}:{number}"
    assert doc["errors"] == [
        {
            "patient": f"Patient/{patient}",
            "reason": f"an unreadable line in {place} may hold this patient's data",
        }
    ]
    evaluated = {p["patient"] for p in doc["patients"]}
    assert f"Patient/{patient}" not in evaluated
    assert len(evaluated) == (79 if in_cohort else 80)
    assert subjects(sink) == flagged(doc)
    assert_quiet_about_the_line(err, place)


def test_an_unreadable_patient_line_names_nobody_and_withholds_writes(tmp_path, capsys, src):
    """A Patient line's own id may be the broken part: its patient is then missing (listed), and
    nothing is written for anyone."""
    path = src / "Patient.ndjson"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2][:20] + b"\n"
    path.write_bytes(b"".join(lines))
    out, sink = tmp_path / "out", tmp_path / "sink"
    code, _ = sweep(capsys, src, "--sink", str(sink), "--out", str(out))
    assert code == 3  # the missing Patient is under errors
    doc = results(out)
    assert doc["errors"] == [
        {"patient": "Patient/demo-03", "reason": "the Patient resource was not found in the source"}
    ]
    assert doc["writes_withheld"] is True
    assert not sink.exists()


# --- the sweep and the report, without the command line ------------------------------------------


def test_the_log_names_the_first_unreadable_lines_then_counts_the_rest(src, caplog):
    """Past UNREADABLE_LOGGED lines one by one, a single line counts the rest."""
    path = src / "Observation.ndjson"
    lines = path.read_bytes().splitlines(keepends=True)
    extra = UNREADABLE_LOGGED + 5
    for i in range(extra):
        lines[100 + i] = lines[100 + i][:25] + b"\n"
    path.write_bytes(b"".join(lines))
    source = FolderSource(src)
    with caplog.at_level(logging.WARNING, logger="adapter"):
        result = asyncio.run(run_sweep(load_trial(TRIAL), source, date.fromisoformat(AS_OF)))
    assert len(result.unreadable) == extra
    assert result.partial
    assert result.withhold_writes
    messages = [r.getMessage() for r in caplog.records]
    assert sum("skipped an unreadable line" in m for m in messages) == UNREADABLE_LOGGED
    assert "skipped 5 more unreadable lines (see unreadable_input in results.json)" in messages
    assert not any("demo-" in m for m in messages)


def test_a_whole_sweep_without_unreadable_input_is_not_partial():
    """The demo as it is: nothing unreadable, nothing withheld, an empty list in results.json."""
    result = asyncio.run(
        run_sweep(load_trial(TRIAL), FolderSource(DEMO), date.fromisoformat(AS_OF))
    )
    assert not result.partial
    assert not result.withhold_writes
    doc = sweep_json(result, sink=None, writes={}, sink_status="complete")
    assert doc["unreadable_input"] == []
    assert doc["writes_withheld"] is False
    assert doc["sink_writes"]["status"] == "complete"


def test_explain_of_a_held_back_patient_says_not_evaluated_and_exits_3(capsys, src):
    """Found in the source, but an unreadable line may hold its data: not "not found" (exit 2)."""
    damage(src, "Observation", "demo-01", "after-subject")
    args = ["explain", "--trial", TRIAL, "--source", str(src), "--as-of", AS_OF]
    code = main([*args, "--patient", "demo-01"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "not evaluated: an unreadable line in" in err
    assert "not found" not in err
