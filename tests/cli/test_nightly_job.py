"""The nightly job from one site file (issue 12): trial, output folder and notification come
from the file; the command line wins; the notification names no patient and never comes from a
dry run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback webhook receiver: its URL and the JSON bodies posted to it."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def site_file(tmp_path: Path, **extra: Any) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"trials": [TRIAL], "out_dir": "reports", **extra}))
    return path


def sweep(capsys: pytest.CaptureFixture[str], site: Path, *extra: str) -> tuple[int, str]:
    args = ["sweep", "--config", str(site), "--source", str(DEMO), "--as-of", "2026-06-15"]
    code = main([*args, "-q", *extra])
    return code, capsys.readouterr().err


def test_the_trial_and_report_folder_come_from_the_site_file(tmp_path, capsys):
    code, err = sweep(capsys, site_file(tmp_path))
    assert code == 0, err
    latest = tmp_path / "reports" / TRIAL / "latest"
    doc = json.loads((latest / "results.json").read_text())
    assert doc["trial"] == TRIAL
    assert (latest / "report.html").is_file()


def test_several_trials_in_the_file_need_a_trial_argument(tmp_path, capsys):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"trials": [TRIAL, "t2dm-glycaemic-control"]}))
    code, err = sweep(capsys, site)
    assert code == 2
    assert "--trial is required: several trials are in the site file" in err


def test_a_sweep_that_ends_sends_counts_and_no_patient(tmp_path, capsys, hook):
    url, bodies = hook
    code, err = sweep(capsys, site_file(tmp_path, notify={"webhook": {"url": url}}))
    assert code == 0, err
    [body] = bodies
    assert body["trial"] == TRIAL
    assert body["exit_code"] == 0
    assert body["counts"] == {"candidate": 24, "potential-candidate": 21, "ineligible": 35}
    assert body["report"].endswith("report.html")
    text = json.dumps(body)
    assert "demo-" not in text
    assert "Synthetic" not in text


def test_a_failed_sweep_is_notified_too_and_a_dry_run_never(tmp_path, capsys, hook):
    url, bodies = hook
    site = site_file(tmp_path, notify={"webhook": {"url": url}})
    code, _ = sweep(capsys, site, "--dry-run")
    assert code == 0
    assert bodies == []
    missing = ["sweep", "--config", str(site), "--source", str(tmp_path / "nothing-here")]
    assert main([*missing, "--as-of", "2026-06-15", "-q"]) == 2
    [body] = bodies
    assert body["exit_code"] == 2
    assert body["counts"] == {}
