"""Report folders without --out: `out/<trial>/<run id>/`, and `out/<trial>/latest` to the newest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adapter.errors import OutputError
from adapter.report.outdirs import LATEST, point_latest, run_out_dir

TRIAL = "hcc-ablation-lenvatinib-pd1"


def test_each_run_has_its_own_folder() -> None:
    assert run_out_dir(Path("out"), TRIAL, "0badc0de") == Path("out", TRIAL, "0badc0de")


@pytest.mark.parametrize(
    ("trial", "run"), [(TRIAL, "../x"), (TRIAL, ""), ("..", "0badc0de"), (TRIAL, LATEST)]
)
def test_an_id_that_is_not_one_plain_segment_is_refused(trial: str, run: str) -> None:
    with pytest.raises(ValueError, match="cannot name a report folder"):
        run_out_dir(Path("out"), trial, run)


def test_latest_points_at_the_newest_run_by_a_relative_link(tmp_path: Path) -> None:
    """Moved on by each run; relative, so the out folder can be moved as a whole."""
    for run_id in ("run1", "run2"):
        run_dir = run_out_dir(tmp_path, TRIAL, run_id)
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(run_id)
        link = point_latest(tmp_path, TRIAL, run_dir)
        assert os.readlink(link) == run_id
        assert (link / "results.json").read_text() == run_id
    assert sorted(p.name for p in (tmp_path / TRIAL).iterdir()) == ["latest", "run1", "run2"]


def test_a_real_folder_named_latest_is_left_alone(tmp_path: Path) -> None:
    """Someone's own `latest`: OutputError, and it is not replaced."""
    run_dir = run_out_dir(tmp_path, TRIAL, "run1")
    run_dir.mkdir(parents=True)
    (tmp_path / TRIAL / LATEST).mkdir()
    with pytest.raises(OutputError, match="not a symbolic link"):
        point_latest(tmp_path, TRIAL, run_dir)
    assert (tmp_path / TRIAL / LATEST).is_dir()
    assert not (tmp_path / TRIAL / LATEST).is_symlink()
