"""The state folder and the (trial, sink) lock: one sweep at a time; a dead one's is taken."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from adapter.errors import ExitCode, LockHeldError, StateDirError
from adapter.state import (
    LOCKS,
    default_state_dir,
    lock_name,
    prepare_state_dir,
    sink_identity,
    sweep_lock,
)

ROOT = Path(__file__).resolve().parents[1]
TRIAL = "hcc-ablation-lenvatinib-pd1"
SINK = "http://fhir.test:8080/fhir"
NOW = datetime.fromisoformat("2026-06-15T02:00:00+02:00")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_STATE_HOME": "/var/lib/xdg"}, Path("/var/lib/xdg/trial-adapter")),
        ({}, Path("/home/ward/.local/state/trial-adapter")),
        ({"XDG_STATE_HOME": ""}, Path("/home/ward/.local/state/trial-adapter")),
        ({"XDG_STATE_HOME": "relative/state"}, Path("/home/ward/.local/state/trial-adapter")),
    ],
)
def test_the_default_state_folder_follows_xdg(env: dict[str, str], expected: Path) -> None:
    """$XDG_STATE_HOME/trial-adapter if absolute, else ~/.local/state/trial-adapter."""
    assert default_state_dir(env, Path("/home/ward")) == expected


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_state_folder_is_created_owner_only(tmp_path: Path) -> None:
    """A new state folder (parents too) and its locks/ get mode 0700."""
    folder = prepare_state_dir(tmp_path / "a" / "b" / "state")
    assert mode(folder) == 0o700
    assert mode(folder / LOCKS) == 0o700


def test_a_looser_state_folder_is_tightened(tmp_path: Path) -> None:
    """An existing folder open to group or others is set to 0700."""
    folder = tmp_path / "state"
    folder.mkdir()
    folder.chmod(0o755)
    prepare_state_dir(folder)
    assert mode(folder) == 0o700


def test_a_file_in_place_of_the_state_folder_is_refused(tmp_path: Path) -> None:
    """A state folder that is a file: StateDirError, exit 2, naming the path."""
    (tmp_path / "state").write_text("")
    with pytest.raises(StateDirError, match="state") as caught:
        prepare_state_dir(tmp_path / "state")
    assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://Fhir.test/fhir", "http://fhir.test:80/fhir/"),
        ("https://fhir.test/r4", "https://fhir.test:443/r4"),
    ],
)
def test_one_server_spelled_two_ways_is_one_sink(a: str, b: str) -> None:
    """Host case, default port and a trailing slash do not make another sink (nor another lock)."""
    assert sink_identity(a) == sink_identity(b)
    assert lock_name(TRIAL, sink_identity(a)) == lock_name(TRIAL, sink_identity(b))


def test_a_folder_sink_is_named_by_its_absolute_path(tmp_path: Path, monkeypatch) -> None:
    """`out/subjects` and its absolute path are one sink."""
    monkeypatch.chdir(tmp_path)
    assert sink_identity("out/subjects") == str(tmp_path / "out" / "subjects")


def test_the_lock_file_name_shows_neither_trial_nor_sink() -> None:
    """A listing of locks/ names no trial and no server."""
    name = lock_name(TRIAL, SINK)
    assert TRIAL not in name
    assert "fhir" not in name
    assert name != lock_name(TRIAL, SINK + "2")
    assert name != lock_name("other-trial", SINK)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return prepare_state_dir(tmp_path / "state")


def holder(state: Path) -> dict[str, object]:
    text = (state / LOCKS / lock_name(TRIAL, SINK)).read_text()
    return json.loads(text) if text else {}


def test_the_lock_names_its_holder_while_held_and_is_emptied_after(state: Path) -> None:
    """Inside the block the file holds pid, host and start time; afterwards it is empty."""
    with sweep_lock(state, TRIAL, SINK, now=NOW) as path:
        assert mode(path) == 0o600
        assert holder(state) == {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": "2026-06-15T02:00:00+02:00",
        }
    assert holder(state) == {}
    with sweep_lock(state, TRIAL, SINK, now=NOW):
        pass  # released: it can be taken again


def test_a_second_acquirer_fails_with_who_holds_it(state: Path) -> None:
    """The same (trial, sink) while held: LockHeldError, exit 1, with pid and start time."""
    with (
        sweep_lock(state, TRIAL, SINK, now=NOW),
        pytest.raises(LockHeldError) as caught,
        sweep_lock(state, TRIAL, SINK, now=NOW),
    ):
        pytest.fail("two holders")
    assert caught.value.exit_code == ExitCode.FATAL
    assert str(caught.value) == (
        f"another sweep of {TRIAL} into {SINK} is running "
        f"(pid {os.getpid()} since 2026-06-15T02:00:00+02:00)"
    )


def test_another_trial_or_sink_is_another_lock(state: Path) -> None:
    """Locks are per (trial, sink): other pairs run side by side."""
    with (
        sweep_lock(state, TRIAL, SINK, now=NOW),
        sweep_lock(state, "other-trial", SINK, now=NOW),
        sweep_lock(state, TRIAL, "/srv/subjects", now=NOW),
    ):
        pass


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def test_a_stale_lock_of_a_dead_process_is_taken_over(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lock file naming a dead pid, with no flock held: taken over, with a warning."""
    pid = dead_pid()
    path = state / LOCKS / lock_name(TRIAL, SINK)
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "yesterday"}))
    with (
        caplog.at_level(logging.WARNING, logger="adapter"),
        sweep_lock(state, TRIAL, SINK, now=NOW),
    ):
        assert holder(state)["pid"] == os.getpid()
    assert f"pid {pid} since yesterday" in caplog.text
    assert "ended without releasing its lock" in caplog.text


HOLD = textwrap.dedent(
    """
    import sys
    from datetime import datetime
    from pathlib import Path
    from adapter.state import sweep_lock
    state, trial, sink = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    with sweep_lock(state, trial, sink, now=datetime.now().astimezone()):
        print("held", flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture
def held_elsewhere(state: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the (TRIAL, SINK) lock until its stdin closes."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state), TRIAL, SINK],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline() == "held\n"
        try:
            yield proc
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)


def test_a_lock_held_by_another_process_is_refused(
    state: Path, held_elsewhere: subprocess.Popen[str]
) -> None:
    """Another live process holds it: LockHeldError naming that process's pid."""
    with (
        pytest.raises(LockHeldError, match=f"pid {held_elsewhere.pid} since"),
        sweep_lock(state, TRIAL, SINK, now=NOW),
    ):
        pytest.fail("two holders")


def test_a_lock_is_free_once_its_holder_is_killed(state: Path) -> None:
    """SIGKILL leaves the holder no time to clean up; the kernel releases the flock anyway."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state), TRIAL, SINK],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "held\n"
        proc.kill()
        proc.wait(timeout=30)
    with sweep_lock(state, TRIAL, SINK, now=NOW):
        assert holder(state)["pid"] == os.getpid()
