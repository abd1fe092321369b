"""Benchmarks (`make bench`): the folder source and whole sweeps over the shared Synthea data.

Medians of N runs, printed as a table; nothing here asserts a time (tests never do).
Compare with ../shared/PERFORMANCE.md: orjson over the 88,674 Observation lines of
synthea-r4-615 takes about 0.28 s on this kind of machine.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from adapter.sources.base import Query
from adapter.sources.files import FolderSource
from adapter.sweep import run_sweep
from adapter.trials import load_trial

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRIAL_ADAPTER_SHARED") or ROOT.parent / "shared") / "data"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def median_seconds(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def _read_all(folder: Path, resource_type: str) -> int:
    source = FolderSource(folder)
    n = 0
    async for _ in source.fetch(Query(resource_type)):
        n += 1
    return n


def main() -> int:
    data = SHARED / "synthea-r4-615"
    if not data.is_dir():
        print(f"no benchmark data at {data}: set TRIAL_ADAPTER_SHARED", file=sys.stderr)
        return 2
    rows: list[tuple[str, float, str]] = []
    count = asyncio.run(_read_all(data, "Observation"))
    rows.append(
        (
            "read every Observation (gz NDJSON)",
            median_seconds(lambda: asyncio.run(_read_all(data, "Observation"))),
            f"{count} resources",
        )
    )
    for trial_id, as_of in (
        ("t2dm-glycaemic-control", date(2021, 4, 1)),
        ("hcc-ablation-lenvatinib-pd1", date(2021, 4, 1)),
    ):
        trial = load_trial(trial_id)
        result = asyncio.run(run_sweep(trial, FolderSource(data), as_of))
        seconds = median_seconds(
            lambda trial=trial, as_of=as_of: asyncio.run(
                run_sweep(trial, FolderSource(data), as_of)
            )
        )
        rows.append(
            (
                f"sweep {trial_id}",
                seconds,
                f"{len(result.verdicts)} patients, {result.stats['Observation']} Observations read",
            )
        )
    print(f"{'benchmark':45} {'median s':>9}  notes (runs: {RUNS})")
    for name, seconds, note in rows:
        print(f"{name:45} {seconds:9.3f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
