"""Progress (issue 12): bars on a terminal, a status line a minute elsewhere, nothing when quiet."""

from __future__ import annotations

import asyncio
import io
import logging
from datetime import date
from pathlib import Path

import pytest

from adapter.progress import (
    NoProgress,
    PlainProgress,
    TerminalProgress,
    choose_progress,
)
from adapter.sources.files import FolderSource
from adapter.sweep import SweepResult, run_sweep
from adapter.trials import load_trial

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"
AS_OF = date(2026, 6, 15)


class FakeTty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recording:
    """A tracker that keeps each stage's name, total and count."""

    def __init__(self) -> None:
        self.stages: list[list[object]] = []
        self.done_calls = 0

    def stage(self, name: str, total: int | None) -> None:
        self.stages.append([name, total, 0])

    def advance(self, n: int = 1) -> None:
        self.stages[-1][2] += n  # type: ignore[operator]

    def done(self) -> None:
        self.done_calls += 1


def _sweep(tracker: object) -> SweepResult:
    trial = load_trial(TRIAL)
    return asyncio.run(run_sweep(trial, FolderSource(DEMO), AS_OF, tracker=tracker))  # type: ignore[arg-type]


def _progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]


def test_plain_progress_says_at_most_one_line_a_minute_with_counts_only(caplog):
    """Many advances within a minute give no line; each minute past gives one, with the count."""
    caplog.set_level(logging.INFO, logger="adapter")
    clock = FakeClock()
    plain = PlainProgress(clock=clock)
    plain.stage("Observation", None)
    for _ in range(12_000):
        plain.advance()
    clock.now += 30
    plain.advance(345)
    assert _progress_lines(caplog) == []
    clock.now += 30
    plain.advance()
    for _ in range(500):
        plain.advance()
    assert _progress_lines(caplog) == ["progress: Observation 12,346 read"]
    clock.now += 61
    plain.stage("evaluation", 80)
    plain.advance(40)
    plain.done()
    clock.now += 61
    plain.advance()  # after done: nothing
    assert _progress_lines(caplog) == [
        "progress: Observation 12,346 read",
        "progress: evaluation 0 of 80 patients evaluated",
    ]
    assert all(r.name == "adapter" and r.levelno == logging.INFO for r in caplog.records)


def test_no_progress_says_nothing(caplog):
    """NoProgress logs nothing at any level."""
    caplog.set_level(logging.DEBUG)
    quiet = NoProgress()
    quiet.stage("Patient", None)
    quiet.advance(5)
    quiet.done()
    assert caplog.records == []


@pytest.mark.parametrize(
    ("stream", "quiet", "term", "kind"),
    [
        (FakeTty(), False, "xterm-256color", TerminalProgress),
        (FakeTty(), False, None, TerminalProgress),
        (FakeTty(), False, "dumb", PlainProgress),
        (io.StringIO(), False, "xterm", PlainProgress),
        (FakeTty(), True, "xterm", NoProgress),
        (io.StringIO(), True, None, NoProgress),
    ],
)
def test_choose_progress_picks_bars_on_a_terminal_plain_lines_elsewhere_nothing_when_quiet(
    stream, quiet, term, kind
):
    """A terminal (not TERM=dumb) gets bars, anything else plain lines, --quiet nothing."""
    assert type(choose_progress(stream, quiet=quiet, term=term)) is kind


def test_a_demo_sweep_reports_each_stage_with_its_counts():
    """Cohort, reads per type with counts of resources read, and evaluation of the cohort."""
    rec = Recording()
    result = _sweep(rec)
    names = [s[0] for s in rec.stages]
    assert names == ["cohort", "Patient", "Condition", "Procedure", "Observation", "evaluation"]
    by_name = {s[0]: s for s in rec.stages}
    assert by_name["cohort"][1:] == [None, 80]
    assert by_name["evaluation"][1:] == [80, 80]
    assert len(result.verdicts) == 80
    for kind in ("Patient", "Condition", "Procedure", "Observation"):
        assert by_name[kind][1:] == [None, result.stats[kind]]
        assert result.stats[kind] > 0
    assert rec.done_calls >= 1


def test_terminal_progress_over_a_demo_sweep_names_no_patient():
    """Rich bars into a terminal run the whole sweep and never show a patient id."""
    tty = FakeTty()
    bars = TerminalProgress(tty)
    result = _sweep(bars)
    bars.done()
    assert len(result.verdicts) == 80
    shown = tty.getvalue()
    assert "evaluation" in shown
    assert "demo-" not in shown


def test_rich_is_not_imported_until_a_bar_is_made():
    """Start-up: importing adapter.progress (and choosing plain or no progress) loads no rich."""
    import subprocess
    import sys

    code = (
        "import sys, io\n"
        "from adapter.progress import choose_progress\n"
        "choose_progress(io.StringIO(), quiet=False).stage('cohort', None)\n"
        "assert 'rich' not in sys.modules, 'rich imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
