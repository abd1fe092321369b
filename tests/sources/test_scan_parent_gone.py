"""A folder source's workers end when the sweep's process is killed (issue 15): SIGKILL, the OOM
killer or a job runner's timeout must not leave readers behind, night after night."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

_SWEEP_LIKE = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from adapter.sources.base import Query
    from adapter.sources.files import FolderSource

    async def main():
        source = FolderSource(Path(sys.argv[1]), workers=2, pool_bytes=0, part_bytes=200)
        async for _ in source.fetch(Query("Observation", patients=frozenset({"p1"}))):
            break
        print(" ".join(str(p) for p in source._pool.pids()), flush=True)
        time.sleep(600)  # killed here, the pool still up

    asyncio.run(main())
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its reaper is gone too
        return stat.read().split(") ", 1)[1][0] != "Z"


def test_the_workers_end_when_the_sweeps_process_is_killed(tmp_path: Path) -> None:
    line = b'{"resourceType":"Observation","id":"o","subject":{"reference":"Patient/p1"}}\n'
    (tmp_path / "Observation.ndjson").write_bytes(line * 50)
    with subprocess.Popen(
        [sys.executable, "-c", _SWEEP_LIKE, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as sweep:
        assert sweep.stdout is not None
        workers = [int(pid) for pid in sweep.stdout.readline().split()]
        assert workers
        assert all(_alive(pid) for pid in workers)
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)
