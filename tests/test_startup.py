"""Start-up imports what the command needs, no more (issue 15, target 4).

Each case runs the command line in a fresh interpreter, as `python -m adapter.cli` runs it, and
reads what it imported from `sys.modules`. Nothing here times anything: the times are measured by
`make bench` (bench/README.md), never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapter.cli import build_parser

#: what only a command's work needs: none of it may load to print a version, help or a usage error
LIBRARIES = (
    "pint",
    "ucumvert",
    "lark",
    "fhir.resources",
    "fhir_core",
    "jinja2",
    "rich",
    "httpx",
    "pydantic",
    "yaml",
    "cryptography",
    "jwt",
    "stamina",
    "sqlite3",
)
COMMANDS = (
    "adapter.config",
    "adapter.connect",
    "adapter.trials",
    "adapter.sweep",
    "adapter.deliver",
    "adapter.sinks",
    "adapter.terminology",
    "adapter.survey",
    "adapter.commands.sweep",
    "adapter.commands.check",
    "adapter.commands.runs",
)

#: `python -m adapter.cli ARGS...`, then sys.modules and the exit status written to a JSON file
RUNNER = """
import json, runpy, sys
out, sys.argv = sys.argv[1], ["trial-adapter", *sys.argv[2:]]
try:
    runpy.run_module("adapter.cli", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
with open(out, "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""


def run_cli(tmp_path: Path, *argv: str) -> tuple[int, set[str], str]:
    """(exit status, modules imported, stdout) of the command line in its own interpreter."""
    out = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # the mapping cache's home
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(out), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.is_file(), done.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    return result["code"], set(result["modules"]), done.stdout


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The `names` (packages included) that are among `modules`."""
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


def test_version_loads_no_library_and_no_command(tmp_path):
    code, modules, stdout = run_cli(tmp_path, "--version")
    assert (code, stdout.strip()) == (0, "trial-adapter 0.1.0")
    assert loaded(modules, LIBRARIES + COMMANDS) == []


HELP = [
    [],
    ["sweep"],
    ["explain"],
    ["codesets"],
    ["codesets", "refresh"],
    ["survey"],
    ["check"],
    ["runs"],
]


def test_every_command_has_its_help_case_here():
    """A new command (or `codesets` action) gets its `--help` checked below."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    actions = commands["codesets"]._subparsers._group_actions[0].choices
    found = [[], *([c] for c in commands), *(["codesets", a] for a in actions)]
    assert sorted(found) == sorted(HELP)


@pytest.mark.parametrize("command", HELP, ids=lambda c: " ".join(c) or "trial-adapter")
def test_help_works_without_loading_the_command(tmp_path, command):
    code, modules, stdout = run_cli(tmp_path, *command, "--help")
    assert code == 0
    assert stdout.startswith(f"usage: trial-adapter {' '.join(command)}".rstrip())
    assert loaded(modules, LIBRARIES + COMMANDS) == []


def test_a_usage_error_is_reported_without_loading_the_command(tmp_path):
    code, modules, _ = run_cli(tmp_path, "sweep", "--batch-size", "0")
    assert code == 2
    assert loaded(modules, LIBRARIES + COMMANDS) == []


def test_an_empty_cohort_sweep_loads_neither_pint_nor_fhir_resources_once_mappings_are_cached(
    tmp_path,
):
    """The first sweep checks the mappings' units with pint and keeps what it proved; the next
    needs no unit engine (no lab value is read) and, without a sink, no FHIR resource models."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "Patient.ndjson").write_text(
        '{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1970-01-01"}\n'
    )
    (source / "Condition.ndjson").write_text(  # essential hypertension: not the trial's cohort
        '{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},'
        '"code":{"coding":[{"system":"http://snomed.info/sct","code":"59621000"}]}}\n'
    )
    argv = ["sweep", "--trial", "hcc-ablation-lenvatinib-pd1", "--source", str(source)]
    argv += ["--as-of", "2026-06-15", "--dry-run", "-q", "--state-dir", str(tmp_path / "state")]
    first_code, first, _ = run_cli(tmp_path, *argv, "--out", str(tmp_path / "first"))
    code, modules, stdout = run_cli(tmp_path, *argv, "--out", str(tmp_path / "second"))
    assert (first_code, code) == (0, 0)
    assert "pint" in first  # the cold start proves the units
    assert loaded(modules, ("pint", "ucumvert", "fhir.resources", "cryptography", "jwt")) == []
    assert "0 patients in the cohort" in stdout
    counts = [
        json.loads((tmp_path / d / "results.json").read_text())["counts"]
        for d in ("first", "second")
    ]
    assert counts[0] == counts[1]
