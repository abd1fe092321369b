"""Runs as the user sees them: `trial-adapter runs`, and what results.json says of its run.

`list_runs` prints the recent runs of the ledger as a table or a JSON list. The ledger's `runs`
table holds no patient data, so neither does this listing; it reads the ledger and never creates
one (a state folder with no ledger yet lists nothing).

`run_metadata` and `with_changes` are the keys a sweep adds to results.json (issue 12): the run's
id, times, source and versions, each patient's `new` flag and the `no_longer_qualifies` list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from adapter import __version__
from adapter.errors import ExitCode
from adapter.ledger import LEDGER_FILE, Changes, Ledger, RunRecord, source_label, stamp
from adapter.report.entries import Entries

#: the version of results.json's layout; 1 is the first that states it (with `run_id`)
RESULTS_SCHEMA_VERSION = 1

#: runs listed by default
RECENT = 20
_HEADERS = (
    "run",
    "trial",
    "as of",
    "started",
    "took",
    "result",
    "candidate",
    "potential",
    "ineligible",
    "errors",
    "source",
)
#: columns aligned right: the counts
_NUMBERS = frozenset({"candidate", "potential", "ineligible", "errors"})


def list_runs(state_dir: Path, *, as_json: bool, limit: int = RECENT) -> str:
    """The `limit` most recent runs, newest first, ending with a newline."""
    records: list[RunRecord] = []
    if (state_dir / LEDGER_FILE).is_file():
        with Ledger.open(state_dir) as ledger:
            records = ledger.runs(limit)
    if as_json:
        body = [run_json(r) for r in records]
        return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n"
    if not records:
        return f"no runs recorded in {state_dir}\n"
    return table([row(r) for r in records])


def run_json(run: RunRecord) -> dict[str, Any]:
    """One run as `runs --json` lists it: every column of the ledger's `runs` row."""
    return {
        "run_id": run.run_id,
        "trial": run.trial_id,
        "source": run.source,
        "adapter_version": run.adapter_version,
        "trial_sha256": run.trial_sha256,
        "as_of": run.as_of.isoformat(),
        "dry_run": run.dry_run,
        "started": run.started.isoformat(),
        "finished": None if run.finished is None else run.finished.isoformat(),
        "exit_code": run.exit_code,
        "errors": run.errors,
        "counts": None if run.counts is None else dict(run.counts),
    }


def row(run: RunRecord) -> dict[str, str]:
    """One run as the table shows it: times to the second in their own offset."""
    counts = run.counts or {}
    return {
        "run": run.run_id,
        "trial": run.trial_id,
        "as of": run.as_of.isoformat(),
        "started": run.started.isoformat(sep=" "),
        "took": "" if run.finished is None else took(run.finished - run.started),
        "result": result(run),
        "candidate": str(counts.get("candidate", "")),
        "potential": str(counts.get("potential-candidate", "")),
        "ineligible": str(counts.get("ineligible", "")),
        "errors": "" if run.errors is None else str(run.errors),
        "source": run.source,
    }


def result(run: RunRecord) -> str:
    """`ok`, `partial`, `fatal`... from the exit code; `unfinished` for a run still running or
    killed (the ledger cannot tell which); `(dry run)` after a rehearsal's."""
    if run.finished is None or run.exit_code is None:
        text = "unfinished"
    else:
        try:
            text = f"{ExitCode(run.exit_code).name.lower()} ({run.exit_code})"
        except ValueError:
            text = f"exit {run.exit_code}"
    return f"{text} (dry run)" if run.dry_run else text


def took(span: timedelta) -> str:
    """A duration as `1h02m`, `3m05s` or `12s`."""
    seconds = max(0, int(span.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


def table(rows: Sequence[dict[str, str]]) -> str:
    """Columns two spaces apart, counts aligned right, the last column not padded."""
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in _HEADERS}

    def line(cells: dict[str, str]) -> str:
        parts = [
            cells[h].rjust(widths[h]) if h in _NUMBERS else cells[h].ljust(widths[h])
            for h in _HEADERS
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line({h: h for h in _HEADERS}), *(line(r) for r in rows)]) + "\n"


def run_metadata(
    run_id: str, *, source: str, started: datetime, finished: datetime | None
) -> dict[str, Any]:
    """The six keys results.json gains; `finished` is None until the run is done."""
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "adapter_version": __version__,
        "run_id": run_id,
        "source": source_label(source),
        "started": stamp(started),
        "finished": None if finished is None else stamp(finished),
    }


def changes_json(changes: Changes) -> dict[str, Any]:
    """results.json's top-level `compared_with` (None on a trial's first run) and
    `no_longer_qualifies`."""
    last = changes.compared_with
    return {
        "compared_with": None
        if last is None
        else {"run_id": last.run_id, "as_of": last.as_of.isoformat()},
        "no_longer_qualifies": [
            {
                "patient": n.patient,
                "previous_status": n.previous_status.value,
                "changed": list(n.changed),
                "people_status": n.people_status,
            }
            for n in changes.no_longer
        ],
    }


def with_changes(doc: Mapping[str, Any], changes: Changes) -> dict[str, Any]:
    """A copy of a results.json document with `new` on every patient and `changes_json`'s keys."""

    def with_new(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "new": p["patient"] in changes.new}

    listed = doc["patients"]
    if isinstance(listed, Entries):  # made as they are read (issue 15)
        patients: Entries | list[dict[str, Any]] = listed.map(with_new)
    else:
        patients = [with_new(p) for p in listed]
    return {**doc, "patients": patients, **changes_json(changes)}
