"""The command line: exit codes, one-line messages, reports, sinks, no patient data on stderr."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from adapter.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def demo_sweep(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        "--trial",
        TRIAL,
        "--source",
        str(DEMO),
        "--as-of",
        "2026-06-15",
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]


def test_demo_sweep_exits_0_and_writes_owner_only_reports(tmp_path, capsys):
    """Exit 0; results.json and candidates.csv are written with mode 0600."""
    code, out, _ = run(capsys, *demo_sweep(tmp_path))
    assert code == 0
    assert "report:" in out
    for name in ("results.json", "candidates.csv"):
        mode = stat.S_IMODE((tmp_path / "out" / name).stat().st_mode)
        assert mode == 0o600, name
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["trial"] == TRIAL
    assert doc["as_of"] == "2026-06-15"
    assert set(doc["counts"]) == {"candidate", "potential-candidate", "ineligible"}
    assert sum(doc["counts"].values()) == len(doc["patients"])
    assert doc["errors"] == []
    first = doc["patients"][0]
    assert first["patient"].startswith("Patient/")
    assert first["status"] in doc["counts"]
    hb = first["criteria"]["hemoglobin"]
    assert set(hb) == {"result", "reason", "evidence"}


def test_stderr_never_names_a_patient(tmp_path, capsys):
    """Logs carry counts, never patient ids, names or values."""
    _, _, err = run(capsys, *demo_sweep(tmp_path))
    patients = [json.loads(line) for line in (DEMO / "Patient.ndjson").read_text().splitlines()]
    for p in patients:
        assert p["id"] not in err
        for name in p.get("name", []):
            for given in name.get("given", []):
                assert given not in err
            assert name.get("family", "\0") not in err
        assert p.get("birthDate", "\0") not in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["sweep", "--source", "x"], "--trial"),
        (["sweep", "--trial", TRIAL, "--source", "x", "--as-of", "2026-13-01"], "not a date"),
        (["sweep", "--trial", "no-such-trial", "--source", str(DEMO)], "no trial 'no-such-trial'"),
        (["sweep", "--trial", TRIAL, "--source", "/no/such/folder"], "no such folder"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_trial_or_path_exit_2_with_one_line(capsys, args, fragment):
    """Exit 2: bad arguments, trial file or unreadable path; one line, no traceback."""
    code, _, err = run(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0]
    assert "Traceback" not in err


def test_a_bad_trial_file_names_file_line_and_field(tmp_path, capsys):
    """A mistake in a trial file fails at start with file, line and field."""
    trial = tmp_path / "bad.yaml"
    src = (ROOT / "mappings" / "trials" / f"{TRIAL}.yaml").read_text()
    trial.write_text(src.replace("kind: age\n", "kind: agee\n"))
    code, _, err = run(capsys, "sweep", "--trial", str(trial), "--source", str(DEMO))
    assert code == 2
    line = next(i for i, t in enumerate(trial.read_text().splitlines(), 1) if "agee" in t)
    assert f"bad.yaml:{line}" in err
    assert "unknown criterion kind 'agee'" in err


def test_an_unreachable_server_is_fatal_exit_1(tmp_path, capsys):
    """Exit 1 when the server cannot be reached; the URL shown has no query string."""
    code, _, err = run(
        capsys,
        "sweep",
        "--trial",
        TRIAL,
        "--source",
        "http://127.0.0.1:1/fhir",
        "--out",
        str(tmp_path),
        "--timeout",
        "5",
    )
    assert code == 1
    assert "127.0.0.1:1/fhir/metadata" in err
    assert "?" not in err


def test_a_patient_that_cannot_be_evaluated_gives_exit_3_and_is_listed(tmp_path, capsys):
    """Exit 3: completed, but a cohort patient has no Patient resource in the source."""
    src = tmp_path / "src"
    shutil.copytree(DEMO, src)
    lines = (src / "Patient.ndjson").read_text().splitlines()
    (src / "Patient.ndjson").write_text("\n".join(lines[1:]) + "\n")
    dropped = json.loads(lines[0])["id"]
    code, _, err = run(
        capsys,
        "sweep",
        "--trial",
        TRIAL,
        "--source",
        str(src),
        "--as-of",
        "2026-06-15",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 3
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["errors"] == [
        {
            "patient": f"Patient/{dropped}",
            "reason": "the Patient resource was not found in the source",
        }
    ]
    assert dropped not in err


def test_folder_sink_writes_study_and_subjects_for_flagged_patients_only(tmp_path, capsys):
    """--sink DIR: one ResearchStudy, one ResearchSubject per (potential) candidate; rerun same."""
    sink = tmp_path / "sink"
    code, _, _ = run(capsys, *demo_sweep(tmp_path, "--sink", str(sink)))
    assert code == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    flagged = {p["patient"] for p in doc["patients"] if p["status"] != "ineligible"}
    subjects = [json.loads(x) for x in (sink / "ResearchSubject.ndjson").read_text().splitlines()]
    assert {s["individual"]["reference"] for s in subjects} == flagged
    (study,) = [json.loads(x) for x in (sink / "ResearchStudy.ndjson").read_text().splitlines()]
    assert study["identifier"][0] == {
        "system": "https://clinicaltrials.gov",
        "value": "NCT05803928",
    }
    before = (sink / "ResearchSubject.ndjson").read_bytes()
    run(capsys, *demo_sweep(tmp_path, "--sink", str(sink)))
    assert (sink / "ResearchSubject.ndjson").read_bytes() == before


def test_default_out_folder_is_out_trial_run_id_and_latest_points_at_it(
    tmp_path, capsys, monkeypatch
):
    """--out defaults to out/<trial>/<run id>/ (issue 12), and out/<trial>/latest is the newest."""
    monkeypatch.chdir(tmp_path)
    args = ("sweep", "--trial", TRIAL, "--source", str(DEMO), "--as-of", "2026-06-15", "--quiet")
    assert run(capsys, *args)[0] == 0
    assert run(capsys, *args)[0] == 0
    runs = sorted(p for p in (tmp_path / "out" / TRIAL).iterdir() if p.name != "latest")
    assert len(runs) == 2
    assert all((p / "results.json").is_file() for p in runs)
    latest = tmp_path / "out" / TRIAL / "latest"
    assert latest.is_symlink()
    newest = json.loads((latest / "results.json").read_text())["run_id"]
    assert latest.resolve().name == newest


@pytest.mark.data
@pytest.mark.parametrize("folder", ["synthea-r4-100", "hl7-examples"])
def test_real_third_party_data_sweeps_without_error(tmp_path, capsys, shared_data, folder):
    """Synthea and HL7 examples: nobody has HCC, so the cohort is empty and the sweep exits 0."""
    code, _, _ = run(
        capsys,
        "sweep",
        "--trial",
        TRIAL,
        "--source",
        str(shared_data / folder),
        "--as-of",
        "2021-04-01",
        "--out",
        str(tmp_path),
    )
    assert code == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["patients"] == []
    assert doc["counts"] == {"candidate": 0, "potential-candidate": 0, "ineligible": 0}


def test_explain_prints_the_criterion_table_of_one_patient(capsys):
    """explain: one row per criterion with result, value, unit, date, threshold, reason."""
    code, out, _ = run(
        capsys,
        "explain",
        "--trial",
        TRIAL,
        "--source",
        str(DEMO),
        "--patient",
        "Patient/demo-03",
        "--as-of",
        "2026-06-15",
    )
    assert code == 0
    head, _, header, *rows = out.splitlines()
    assert head.startswith("Patient/demo-03: ")
    assert header.split() == ["criterion", "result", "value", "unit", "date", "threshold", "reason"]
    bili = next(r for r in rows if r.startswith("bilirubin_total "))
    assert "met" in bili.split()
    assert "mg/dL" in bili


def test_explain_json_says_when_the_patient_is_outside_the_cohort(capsys):
    """explain --json: the verdict as JSON, and in_cohort false for a non-HCC patient."""
    code, out, _ = run(
        capsys,
        "explain",
        "--trial",
        TRIAL,
        "--source",
        str(DEMO),
        "--patient",
        "demo-54",
        "--as-of",
        "2026-06-15",
        "--json",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["patient"] == "Patient/demo-54"
    assert doc["in_cohort"] is False
    assert doc["criteria"]["hcc_diagnosis"]["result"] == "not_met"


def test_explain_an_unknown_patient_exits_2(capsys):
    """A patient id that is not in the source is a usage error."""
    code, _, err = run(
        capsys,
        "explain",
        "--trial",
        TRIAL,
        "--source",
        str(DEMO),
        "--patient",
        "nobody",
        "--as-of",
        "2026-06-15",
    )
    assert code == 2
    assert "nobody" not in err


def test_dry_run_with_a_folder_sink_writes_nothing_and_lists_the_plan(tmp_path, capsys):
    """--dry-run: everything is decided, the plan is in results.json, the sink stays empty."""
    sink = tmp_path / "sink"
    code, _, err = run(capsys, *demo_sweep(tmp_path, "--sink", str(sink), "--dry-run"))
    assert code == 0
    assert not sink.exists()
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    flagged = {p["patient"] for p in doc["patients"] if p["status"] != "ineligible"}
    assert {w["patient"] for w in doc["planned_writes"]} == flagged
    assert "demo-" not in err
