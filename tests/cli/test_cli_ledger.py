"""The run ledger through the CLI (issue 12): three sweeps with --as-of moving forward, `runs`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from adapter.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"


def sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str], as_of: str) -> dict:
    args = ["sweep", "--trial", TRIAL, "--source", str(DEMO), "--as-of", as_of, "--quiet"]
    assert main([*args, "--state-dir", str(tmp_path / "state")]) == 0
    capsys.readouterr()
    return json.loads((tmp_path / "out" / TRIAL / "latest" / "results.json").read_text())


def test_three_sweeps_with_the_as_of_moving_forward(tmp_path, capsys, monkeypatch):
    """New the first time, not the second; demo-09 passes the age limit three months on."""
    monkeypatch.chdir(tmp_path)
    first = sweep(tmp_path, capsys, "2026-06-15")
    second = sweep(tmp_path, capsys, "2026-06-15")
    third = sweep(tmp_path, capsys, "2026-09-15")
    flagged = {p["patient"] for p in first["patients"] if p["status"] != "ineligible"}
    assert {p["patient"] for p in first["patients"] if p["new"]} == flagged
    assert not any(p["new"] for p in second["patients"])
    assert second["compared_with"] == {"run_id": first["run_id"], "as_of": "2026-06-15"}
    assert third["no_longer_qualifies"] == [
        {
            "patient": "Patient/demo-09",
            "previous_status": "candidate",
            "changed": ["age"],
            "people_status": None,
        }
    ]
    for doc in (first, second, third):
        assert doc["schema_version"] == 1
        assert doc["source"] == str(DEMO)
        assert doc["finished"] >= doc["started"]
        assert (tmp_path / "out" / TRIAL / doc["run_id"] / "results.json").is_file()
    assert os.readlink(tmp_path / "out" / TRIAL / "latest") == third["run_id"]

    assert main(["runs", "--json", "--state-dir", str(tmp_path / "state")]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listed] == [d["run_id"] for d in (third, second, first)]
    assert main(["runs", "--state-dir", str(tmp_path / "state")]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[1].startswith(third["run_id"])
    assert "Patient/" not in table
