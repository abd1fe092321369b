"""SIGTERM (systemd stop, a Kubernetes pod ending) mid-sink ends the sweep as Ctrl-C does: exit 1
with one line, results.json saying the sink failed ("interrupted") and which patients were and
were not written, the run ledger recording it as ended; a rerun then completes the writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL_FILE = ROOT / "mappings" / "trials" / "hcc-ablation-lenvatinib-pd1.yaml"


def trial_copy(folder: Path) -> Path:
    definition = yaml.safe_load(TRIAL_FILE.read_text())
    trial_id = f"term-{uuid.uuid4().hex[:12]}"
    definition["id"] = trial_id
    definition["study"] = {"system": "urn:trial-adapter:sigterm-test", "value": trial_id}
    path = folder / f"{trial_id}.yaml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return path


def command(trial: Path, sink: str, out: Path, site: Path, state: Path) -> list[str]:
    return [
        sys.executable, "-m", "adapter.cli", "sweep", "--trial", str(trial),
        "--source", str(DEMO), "--sink", sink, "--as-of", "2026-06-15", "--out", str(out),
        "--config", str(site), "--state-dir", str(state), "-q",
    ]  # fmt: skip


def test_sigterm_mid_sink_is_recorded_and_a_rerun_completes(fhir_base_url: str, tmp_path: Path):
    trial = trial_copy(tmp_path)
    slow = tmp_path / "slow.yaml"
    slow.write_text(yaml.safe_dump({"sink": {"requests_per_second": 4}}))
    state, out = tmp_path / "state", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "TRIAL_ADAPTER_CONFIG"}
    run = subprocess.Popen(
        command(trial, fhir_base_url, out, slow, state),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    results = out / "results.json"
    deadline = time.monotonic() + 60
    while not results.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # some writes made, most not
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)

    assert run.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1].endswith("interrupted")
    assert "Traceback" not in stderr
    writes = json.loads(results.read_text())["sink_writes"]
    assert writes["status"] == "failed"
    assert writes["error"] == "interrupted"
    assert writes["not_written"], "the signal came after every write"
    runs = subprocess.run(
        [sys.executable, "-m", "adapter.cli", "runs", "--json", "--state-dir", str(state)],
        capture_output=True, text=True, check=True, env=env, cwd=ROOT,
    )  # fmt: skip
    [recorded] = json.loads(runs.stdout)
    assert recorded["exit_code"] == 1
    assert recorded["finished"] is not None

    fast = tmp_path / "fast.yaml"
    fast.write_text("{}\n")
    again = subprocess.run(
        command(trial, fhir_base_url, tmp_path / "again", fast, state),
        capture_output=True, text=True, check=False, env=env, cwd=ROOT, timeout=180,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    done = json.loads((tmp_path / "again" / "results.json").read_text())["sink_writes"]
    assert done["status"] == "complete"
    assert done["not_written"] == done["unconfirmed"] == []
