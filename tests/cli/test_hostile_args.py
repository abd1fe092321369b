"""Hostile arguments and files, run as a user runs them (issue 11, items 3 to 5).

Each test starts `trial-adapter` in a subprocess and holds it to what the table in adapter/errors.py
promises: one line on stderr, no traceback, the exit code of the row. The process has a timeout, so
an alias bomb that is no longer refused fails the test instead of filling the machine's memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from adapter import cli_args
from adapter.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"
TRIAL_FILE = ROOT / "mappings" / "trials" / f"{TRIAL}.yaml"
EXE = Path(sys.executable).with_name("trial-adapter")
COMMAND = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "adapter.cli"]
#: start-up is one to three seconds; a bomb that expands runs until killed
TIMEOUT = 20

BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def trial_adapter(
    *args: str, cwd: Path, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRIAL_ADAPTER_CONFIG"}
    return subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def sweep_args(tmp_path: Path, *extra: str, trial: str = TRIAL) -> list[str]:
    return [
        "sweep",
        "--trial",
        trial,
        "--source",
        str(DEMO),
        "--as-of",
        "2026-06-15",
        "--quiet",
        *extra,
    ]


def one_error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The run's one stderr line, after checking the exit code and that nothing else was said."""
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "unexpected" not in lines[0], lines[0]
    return lines[0]


def line_with(path: Path, fragment: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if fragment in t)


# --- item 3: alias bombs ---------------------------------------------------------------------


def test_an_alias_bomb_in_a_trial_file_exits_2_at_once_naming_file_and_line(tmp_path):
    """The trial's own keys come after the bomb: refused before validation ever expands it."""
    trial = tmp_path / "bomb.yaml"
    trial.write_text(BOMB + TRIAL_FILE.read_text())
    done = trial_adapter(*sweep_args(tmp_path, "--out", "out", trial=str(trial)), cwd=tmp_path)
    line = one_error_line(done, 2)
    assert f"{trial}:2" in line
    assert "aliases (the first on this line) repeat more than" in line
    assert not (tmp_path / "out").exists()


def test_an_alias_bomb_in_a_site_mappings_file_exits_2_naming_file_and_line(tmp_path):
    """A site folder's analytes.yaml of nested aliases."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "analytes.yaml").write_text("analytes: {}\n" + BOMB)
    done = trial_adapter(
        *sweep_args(tmp_path, "--out", "out", "--site-mappings", str(site)), cwd=tmp_path
    )
    line = one_error_line(done, 2)
    assert f"{site / 'analytes.yaml'}:3" in line


def test_an_alias_bomb_in_the_site_configuration_exits_2_naming_file_and_line(tmp_path):
    """--config is read before anything else: the bomb must not get past it."""
    config = tmp_path / "site.yaml"
    config.write_text("source:\n  timeout: 30\n" + BOMB)
    done = trial_adapter(
        *sweep_args(tmp_path, "--out", "out", "--config", str(config)), cwd=tmp_path
    )
    line = one_error_line(done, 2)
    assert f"{config}:4" in line


# --- item 4: nonsense numbers and dates ------------------------------------------------------


def test_a_nan_threshold_in_a_trial_file_exits_2_naming_file_line_and_field(tmp_path):
    """`.nan` made 13 candidates potential candidates with exit 0; now the file is refused."""
    trial = tmp_path / f"{TRIAL}.yaml"
    trial.write_text(TRIAL_FILE.read_text().replace("value: 9.0", "value: .nan", 1))
    done = trial_adapter(*sweep_args(tmp_path, "--out", "out", trial=str(trial)), cwd=tmp_path)
    line = one_error_line(done, 2)
    assert f"{trial}:{line_with(trial, 'value: .nan')}" in line
    criteria = yaml.safe_load(TRIAL_FILE.read_text())["criteria"]
    index = next(i for i, c in enumerate(criteria) if c["id"] == "hemoglobin")
    assert f"(criteria.{index}.value)" in line
    assert "not a finite number" in line


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("analytes.yaml", "analytes:\n  alt:\n    default_uln: .inf\n", "analytes.yaml:3"),
        ("uln.yaml", "uln:\n  alt:\n    - {sex: any, uln: .inf}\n", "uln.yaml:3"),
    ],
)
def test_an_infinite_number_in_a_site_mapping_exits_2(tmp_path, name, text, where):
    """A site ULN of .inf would have made every ALT value a pass."""
    site = tmp_path / "site"
    site.mkdir()
    (site / name).write_text(text)
    done = trial_adapter(
        *sweep_args(tmp_path, "--out", "out", "--site-mappings", str(site)), cwd=tmp_path
    )
    line = one_error_line(done, 2)
    assert where in line
    assert "not a finite number" in line


def test_a_configuration_file_that_is_not_utf8_exits_2_with_its_line(tmp_path):
    """A Latin-1 comment in the site file was a UnicodeDecodeError traceback."""
    config = tmp_path / "site.yaml"
    config.write_bytes(b"source:\n  timeout: 30\n# d\xe9lai d'attente\n")
    done = trial_adapter(
        *sweep_args(tmp_path, "--out", "out", "--config", str(config)), cwd=tmp_path
    )
    line = one_error_line(done, 2)
    assert f"{config}:3: not UTF-8 text (byte 0xE9)" in line


@pytest.mark.parametrize("day", ["0001-01-01", "9999-12-31", "1899-12-31", "3000-01-01"])
def test_an_as_of_outside_the_accepted_range_is_a_bad_argument(tmp_path, day):
    """0001-01-01 made every patient fail with OverflowError; now exit 2 before anything runs."""
    done = trial_adapter(
        "sweep", "--trial", TRIAL, "--source", str(DEMO), "--as-of", day, cwd=tmp_path
    )
    line = one_error_line(done, 2)
    assert f"argument --as-of: {day} is outside 1900-01-01 to 2999-12-31" in line


def test_the_help_states_the_accepted_as_of_range(tmp_path):
    """--help says which days --as-of accepts, and what --timeout accepts."""
    done = trial_adapter("sweep", "--help", cwd=tmp_path)
    assert done.returncode == 0
    shown = " ".join(done.stdout.split())
    assert "from 1900-01-01 to 2999-12-31" in shown
    assert "above 0 and at most 86,400" in shown


@pytest.mark.parametrize("day", [cli_args.AS_OF_MIN, cli_args.AS_OF_MAX])
def test_the_ends_of_the_as_of_range_are_swept_without_errors(tmp_path, capsys, day):
    """Every window and age computation stays in range at both ends: exit 0, no patient errors."""
    code = main(
        [
            "sweep",
            "--trial",
            TRIAL,
            "--source",
            str(DEMO),
            "--as-of",
            day.isoformat(),
            "--out",
            str(tmp_path / "out"),
            "-q",
        ]
    )
    capsys.readouterr()
    assert code == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["errors"] == []
    assert date.fromisoformat(doc["as_of"]) == day


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "1e308", "soon"])
@pytest.mark.parametrize(
    "command",
    [
        ["sweep", "--trial", TRIAL, "--source", str(DEMO)],
        ["codesets", "refresh", "--tx", "http://127.0.0.1:1/fhir"],
        ["survey", "--source", str(DEMO)],
    ],
    ids=["sweep", "codesets", "survey"],
)
def test_a_timeout_that_is_not_a_positive_finite_number_is_a_bad_argument(
    tmp_path, capsys, command, value
):
    """`--timeout nan` passed the `<= 0` test; every command's --timeout refuses it at parsing."""
    code = main([*command, "--timeout", value])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1
    assert "argument --timeout:" in err


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_bad_timeout_is_one_line_and_exit_2_from_the_installed_command(tmp_path, value):
    """The same, as a user meets it."""
    done = trial_adapter(*sweep_args(tmp_path, "--out", "out", "--timeout", value), cwd=tmp_path)
    assert "argument --timeout" in one_error_line(done, 2)


# --- item 5: output places that cannot be made -----------------------------------------------


def _places(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "no-such-target")
    return {
        "a-file": tmp_path / "a-file",
        "under-a-file": tmp_path / "a-file" / "sink",
        "dangling": tmp_path / "dangling",
        "under-dangling": tmp_path / "dangling" / "sink",
    }


@pytest.mark.parametrize("option", ["--out", "--sink"])
@pytest.mark.parametrize(
    ("place", "message"),
    [
        ("a-file", "exists and is not a folder"),
        ("under-a-file", "is not a folder"),
        ("dangling", "is a symbolic link to nothing"),
        ("under-dangling", "is a symbolic link to nothing"),
    ],
)
def test_an_output_folder_that_cannot_be_made_exits_2_in_one_line(tmp_path, option, place, message):
    """A file, a path under a file, a link to nothing: exit 2 before the sweep, nothing written."""
    path = _places(tmp_path)[place]
    others = ["--out", str(tmp_path / "out")] if option == "--sink" else []
    done = trial_adapter(*sweep_args(tmp_path, option, str(path), *others), cwd=tmp_path)
    line = one_error_line(done, 2)
    assert f"{option} {path}" in line
    assert message in line
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("option", ["--out", "--sink"])
def test_an_output_folder_under_a_read_only_folder_exits_2(tmp_path, option):
    """chmod 0500: the folder cannot be created in it."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    others = ["--out", str(tmp_path / "out")] if option == "--sink" else []
    try:
        done = trial_adapter(
            *sweep_args(tmp_path, option, str(locked / "x"), *others), cwd=tmp_path
        )
    finally:
        locked.chmod(0o700)
    line = one_error_line(done, 2)
    assert f"cannot be created in {locked}" in line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("option", ["--out", "--sink"])
def test_an_output_folder_where_even_root_cannot_write_exits_2(tmp_path, option):
    """os.access says yes to root in /proc; the check tries instead of asking."""
    others = ["--out", str(tmp_path / "out")] if option == "--sink" else []
    done = trial_adapter(
        *sweep_args(tmp_path, option, "/proc/trial-adapter", *others), cwd=tmp_path
    )
    line = one_error_line(done, 2)
    assert f"{option} /proc/trial-adapter: cannot be created in /proc" in line


def test_the_writability_check_leaves_nothing_behind(tmp_path):
    """The probe file and folder are removed: a dry run must not leave traces in a sink folder."""
    sink = tmp_path / "sink"
    sink.mkdir()
    done = trial_adapter(
        *sweep_args(tmp_path, "--out", "out", "--sink", str(sink), "--dry-run"), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert list(sink.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "candidates-detail.csv",
        "candidates.csv",
        "report.html",
        "results.json",
    ]


# --- item 5: stdout closed by its reader ------------------------------------------------------


def closed_stdout_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose read end is already closed: every write to it fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return trial_adapter(*args, cwd=tmp_path, stdout=write_end)
    finally:
        os.close(write_end)


def test_a_sweep_whose_stdout_is_closed_stops_quietly_after_writing_its_reports(tmp_path):
    """`sweep | head -1`: exit 1, nothing on stderr, results and candidates written."""
    done = closed_stdout_run(tmp_path, *sweep_args(tmp_path, "--out", "out"))
    assert done.returncode == 1
    assert done.stderr == ""
    assert json.loads((tmp_path / "out" / "results.json").read_text())["trial"] == TRIAL
    assert (tmp_path / "out" / "candidates.csv").is_file()


def test_a_sweep_with_a_folder_sink_still_writes_the_sink_when_stdout_is_closed(tmp_path):
    """The summary is printed last: a closed stdout cannot undo the sink's writes."""
    done = closed_stdout_run(tmp_path, *sweep_args(tmp_path, "--out", "out", "--sink", "sink"))
    assert done.returncode == 1
    assert done.stderr == ""
    assert (tmp_path / "sink" / "ResearchSubject.ndjson").read_text().strip()
    assert (tmp_path / "out" / "results.json").is_file()


@pytest.mark.parametrize("as_json", [False, True])
def test_explain_into_a_closed_stdout_stops_quietly(tmp_path, as_json):
    """`explain ... | head -c 10`: exit 1 and not a word on stderr."""
    patient = json.loads((DEMO / "Patient.ndjson").read_text().splitlines()[0])["id"]
    args = ["explain", "--trial", TRIAL, "--source", str(DEMO), "--patient", patient]
    done = closed_stdout_run(
        tmp_path, *args, "--as-of", "2026-06-15", *(["--json"] if as_json else [])
    )
    assert done.returncode == 1
    assert done.stderr == ""


def test_help_into_a_closed_stdout_says_nothing_on_stderr(tmp_path):
    """No "Exception ignored" from the interpreter's last flush."""
    done = closed_stdout_run(tmp_path, "sweep", "--help")
    assert done.returncode in (0, 1)
    assert done.stderr == ""


def test_a_closed_pipe_of_both_streams_says_nothing(tmp_path):
    """`sweep 2>&1 | head -1`: stderr is the closed pipe too; still no traceback, exit 1."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [*COMMAND, *sweep_args(tmp_path, "--out", "out"), "--log-level", "info"],
            cwd=tmp_path,
            stdout=write_end,
            stderr=write_end,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert (tmp_path / "out" / "results.json").is_file()
