"""Options of every run: log level and format, the state folder and its lock, exit codes."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapter.cli import main
from adapter.state import LOCKS, lock_name, sink_identity

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) "
    r"\[[0-9a-f]{8}\] \S"
)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def sweep(tmp_path: Path, *extra: str) -> list[str]:
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
        "--state-dir",
        str(tmp_path / "state"),
        *extra,
    ]


def json_lines(err: str) -> list[dict[str, object]]:
    lines = err.strip().splitlines()
    assert lines
    return [json.loads(line) for line in lines]


def patient_words() -> set[str]:
    """Every id, name part and birth date of the demo patients."""
    words: set[str] = set()
    for line in (DEMO / "Patient.ndjson").read_text().splitlines():
        patient = json.loads(line)
        words.add(patient["id"])
        words.add(patient.get("birthDate", "\0"))
        for name in patient.get("name", []):
            words.update(name.get("given", []))
            words.add(name.get("family", "\0"))
    return words - {"\0"}


@pytest.mark.parametrize("where", ["global", "command"])
def test_json_logs_are_one_object_per_line_with_one_run_id(tmp_path, capsys, where):
    """--log-format json (before or after the command): every stderr line is a JSON object."""
    args = sweep(tmp_path, "--sink", str(tmp_path / "subjects"))
    args = ["--log-format", "json", *args] if where == "global" else [*args, "--log-format", "json"]
    code, out, err = run(capsys, *args)
    assert code == 0
    assert "report:" in out  # the summary stays on stdout, as text
    lines = json_lines(err)
    assert {line["level"] for line in lines} == {"info"}
    assert len({line["run_id"] for line in lines}) == 1
    for line in lines:
        assert {"time", "level", "run_id", "logger", "message"} <= set(line)
        assert dt.datetime.fromisoformat(str(line["time"])).tzinfo is not None


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["sweep", "--trial", TRIAL, "--source", "/no/such/folder"], 2),
        (["sweep", "--trial", TRIAL], 2),
        (["sweep", "--trial", "no-such-trial", "--source", str(DEMO)], 2),
        (["sweep", "--trial", TRIAL, "--source", "http://127.0.0.1:9/fhir", "--timeout", "1"], 1),
    ],
)
def test_with_json_logs_the_final_error_line_is_json_too(tmp_path, capsys, args, code):
    """The error that ends the run is a JSON line with level error, its class and exit code."""
    config = tmp_path / "site.yaml"
    config.write_text("source: {retry_attempts: 2, retry_budget_seconds: 1}\n")
    got, _, err = run(
        capsys, "--log-format", "json", *args, "--config", str(config), "--out", str(tmp_path)
    )
    assert got == code
    lines = json_lines(err)
    last = lines[-1]
    assert last["level"] == "error"
    assert last["exit_code"] == code
    assert str(last["message"]).startswith("error: ")
    assert [line for line in lines if line["level"] == "error"] == [last]
    for retry in (line for line in lines if line.get("event") == "retry"):
        assert retry["level"] == "warning"
        assert {"method", "path", "reason", "attempt", "attempts", "wait"} <= set(retry)
        assert "?" not in str(retry["path"])


@pytest.mark.parametrize(
    ("options", "code"),
    [
        (["--log-format", "json", "--log-level", "loud"], 2),  # the bad level is the error
        (["--log-format", "json", "--log-level"], 2),  # and so is a missing one
        (["--log-form", "json", "--source", "/no/such/folder"], 2),  # argparse's abbreviation
        (["--log-form", "json"], 0),
    ],
)
def test_json_asked_for_in_any_accepted_spelling_makes_every_line_json(
    tmp_path, capsys, options, code
):
    """A bad --log-level, or --log-format abbreviated as argparse allows, keeps the lines JSON."""
    got, _, err = run(capsys, *sweep(tmp_path), *options)
    assert got == code
    lines = json_lines(err)
    assert lines[-1]["level"] == ("error" if code else "info")


def _full_disk(*_args: object) -> None:
    raise OSError(28, "No space left on device")


def _bug(*_args: object) -> None:
    raise KeyError("demo-01")  # a bug whose message holds a patient id


@pytest.mark.parametrize(
    ("target", "failure"),
    [("adapter.state._write_holder", _full_disk), ("adapter.commands.sweep.run_sweep", _bug)],
    ids=["state-folder-disk-full", "a-bug"],
)
def test_an_unexpected_failure_is_one_json_line_without_patient_data(
    tmp_path, capsys, monkeypatch, target, failure
):
    """Even a failure the adapter did not foresee ends with one JSON error line and exit 1."""
    monkeypatch.setattr(target, failure)
    args = sweep(tmp_path, "--sink", str(tmp_path / "subjects"), "--log-format", "json")
    code, _, err = run(capsys, *args)
    assert code == 1
    last = json_lines(err)[-1]
    assert last["level"] == "error"
    assert last["exit_code"] == 1
    assert "demo-" not in err
    assert not (tmp_path / "subjects").exists()


def test_text_lines_carry_time_level_and_run_id(tmp_path, capsys):
    """Text format: `<time> <LEVEL> [<run id>] <message>`, the error line included."""
    code, _, err = run(capsys, *sweep(tmp_path), "--source", "/no/such/folder")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert TEXT_LINE.match(line), line
    assert " ERROR " in line
    assert line.endswith("no such folder") or "no such folder" in line
    _, _, err = run(capsys, *sweep(tmp_path))
    assert all(TEXT_LINE.match(line) for line in err.strip().splitlines()), err


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_debug_output_of_a_demo_sweep_names_no_patient(tmp_path, capsys, fmt):
    """At debug, in either format, stderr holds no patient id, name or birth date."""
    args = sweep(tmp_path, "--sink", str(tmp_path / "subjects"), "--log-level", "debug")
    code, _, err = run(capsys, *args, "--log-format", fmt)
    assert code == 0
    leaked = sorted(word for word in patient_words() if word in err)
    assert not leaked
    assert "demo-" not in err


@pytest.mark.parametrize(
    ("options", "info_lines"),
    [
        ([], True),
        (["--quiet"], False),
        (["--log-level", "warning"], False),
        (["--log-level", "error"], False),
        (["--quiet", "--log-level", "info"], True),  # the explicit level wins
    ],
)
def test_quiet_is_log_level_warning(tmp_path, capsys, options, info_lines):
    """--quiet drops the info lines, as --log-level warning does."""
    code, _, err = run(capsys, *sweep(tmp_path), *options)
    assert code == 0
    assert (" INFO " in err) is info_lines


def test_an_unknown_log_level_is_a_usage_error(tmp_path, capsys):
    """--log-level loud: exit 2 with the choices."""
    code, _, err = run(capsys, *sweep(tmp_path), "--log-level", "loud")
    assert code == 2
    assert "invalid choice" in err


def test_a_sweep_into_a_sink_makes_an_owner_only_state_folder(tmp_path, capsys):
    """--state-dir is created with mode 0700 and holds the (emptied) lock file afterwards."""
    sink = tmp_path / "subjects"
    code, _, _ = run(capsys, *sweep(tmp_path, "--sink", str(sink)))
    assert code == 0
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    lock = state / LOCKS / lock_name(TRIAL, sink_identity(str(sink)))
    assert lock.read_text() == ""


def test_the_site_file_can_name_the_state_folder(tmp_path, capsys):
    """`state_dir:` in the site file, relative to it, when --state-dir is not given."""
    config = tmp_path / "site" / "site.yaml"
    config.parent.mkdir()
    config.write_text("state_dir: state-here\n")
    args = sweep(tmp_path, "--sink", str(tmp_path / "subjects"), "--config", str(config))
    args.remove("--state-dir")
    args.remove(str(tmp_path / "state"))
    code, _, _ = run(capsys, *args)
    assert code == 0
    assert (tmp_path / "site" / "state-here" / LOCKS).is_dir()


HOLD = """
import sys
from datetime import datetime
from pathlib import Path
from adapter.state import prepare_state_dir, sweep_lock
state = prepare_state_dir(Path(sys.argv[1]))
with sweep_lock(state, sys.argv[2], sys.argv[3], now=datetime.now().astimezone()):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def sink_locked(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """Another process holding the lock of (TRIAL, tmp_path/subjects): the sink and its pid."""
    sink = tmp_path / "subjects"
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "state"), TRIAL, sink_identity(str(sink))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline() == "held\n"
        try:
            yield sink, proc.pid
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)


def test_a_second_sweep_into_the_same_sink_exits_1_naming_the_first(tmp_path, sink_locked):
    """Two processes at once: the second CLI run exits 1 with one clear line, writing nothing."""
    sink, pid = sink_locked
    done = subprocess.run(
        [sys.executable, "-m", "adapter.cli", *sweep(tmp_path, "--sink", str(sink))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert TEXT_LINE.match(line)
    assert f"another sweep of {TRIAL} into {sink} is running (pid {pid} since " in line
    assert not sink.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra", [["--dry-run"], []])
def test_dry_runs_and_runs_without_a_sink_take_no_lock(tmp_path, capsys, sink_locked, extra):
    """Only a run that writes to a sink takes the lock, so a rehearsal never blocks or waits."""
    sink, _ = sink_locked
    args = sweep(tmp_path, *extra, *(["--sink", str(sink)] if extra else []))
    code, _, _ = run(capsys, *args)
    assert code == 0


@pytest.fixture
def untrusted_tls_server(tmp_path: Path) -> Iterator[int]:
    """A TLS server on 127.0.0.1 with a self-signed certificate; its port."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate: what the test wants

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_a_refused_certificate_exits_1_at_once_with_a_clear_line(
    tmp_path, capsys, untrusted_tls_server
):
    """A self-signed server certificate: exit 1, one error line naming the certificate, no retry."""
    url = f"https://127.0.0.1:{untrusted_tls_server}/fhir"
    code, _, err = run(capsys, *sweep(tmp_path), "--source", url)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert "the TLS certificate of the FHIR server was refused" in line
    assert "self-signed certificate" in line or "certificate verify failed" in line
    assert "retrying" not in err
