"""The summary a sweep prints on stdout, golden from the demo (issue 12: nothing checked it, so
counting every status under "most often unknown" passed every test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"

FIRST = """\
trial hcc-ablation-lenvatinib-pd1, as of 2026-06-15: 80 patients in the cohort
  candidate            24
  potential-candidate  21
  ineligible           35
  most often unknown: early_recurrence (4), hemoglobin (4), not_pregnant (2), platelets (2), age (1)
  new since last sweep 45
report: {out}/report.html
  with results.json, candidates.csv and candidates-detail.csv in {out}
"""


def sweep(capsys: pytest.CaptureFixture[str], tmp_path: Path, out: Path) -> str:
    args = ["sweep", "--trial", TRIAL, "--source", str(DEMO), "--as-of", "2026-06-15", "-q"]
    code = main([*args, "--out", str(out), "--state-dir", str(tmp_path / "state")])
    assert code == 0
    return capsys.readouterr().out


def test_the_first_sweep_prints_counts_unknowns_of_potential_candidates_and_everyone_new(
    tmp_path, capsys
):
    """ "Most often unknown" counts potential candidates only (the demo's 21), most first."""
    out = tmp_path / "out"
    assert sweep(capsys, tmp_path, out) == FIRST.format(out=out)


def test_the_next_sweep_finds_nobody_new(tmp_path, capsys):
    sweep(capsys, tmp_path, tmp_path / "first")
    printed = sweep(capsys, tmp_path, tmp_path / "second")
    assert "  new since last sweep 0\n" in printed
