"""Worker processes that scan the folder source's NDJSON files on every core (issue 15).

`adapter.sources.scan` does the per-line work of a file or a byte range of one in a worker; the
main process takes back only the lines that need the parse, in order. `ScanPool` owns the
processes: started at the first query that pays for them, ended by `shutdown` (the source's
`aclose`). `Prefetch` keeps a query's parts submitted a few ahead of the one being read, so
neither the workers nor the main process wait long, and never more than `ahead` parts' lines are
held at once.

Processes are spawned, not forked: a forked child shares the parent's pages, and tools that add up
the memory of every process (the benchmark) count those again. A spawned child re-runs the parent's
main script (the `trial-adapter` entry point, importing the whole adapter) unless told otherwise:
`_bare_main` hides it while a process starts, so a worker imports the scanning code only.
"""

from __future__ import annotations

import os
import sys
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from adapter.errors import IncompleteInputError
from adapter.sources.scan import Part, Plan, Scanned, scan, worker_start

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

#: `workers=None`: one per core, up to this many (the main process parses what they find)
MAX_WORKERS = 4
#: how long the main process blocks on a worker before the event loop gets a turn, in seconds
_WAIT = 0.05

T = TypeVar("T")


def default_workers(workers: int | None) -> int:
    if workers is None:
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    return max(1, workers)


class ScanPool:
    """A lazily started pool of `workers` spawned processes."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        if self._executor is None:
            # Imported here: most runs (small folders, servers) never start a process.
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=worker_start, initargs=(os.getpid(),)
            )
            # Also when the source is dropped without aclose (processes would outlive it).
            self._finalizer = weakref.finalize(
                self, self._executor.shutdown, wait=False, cancel_futures=True
            )
        with _bare_main():
            return self._executor.submit(function, *args)

    def shutdown(self) -> None:
        """End the processes, waiting for the parts they are scanning (seconds at most)."""
        executor, self._executor = self._executor, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def discard(self) -> None:
        """Drop a broken pool without waiting: the next query starts a new one."""
        executor, self._executor = self._executor, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def pids(self) -> list[int]:
        """The worker processes' ids (tests check that none is left)."""
        processes = getattr(self._executor, "_processes", None) or {}
        return list(processes)


class Prefetch:
    """A query's parts, in order, scanned in the pool a few ahead of the one being read."""

    def __init__(
        self,
        pool: ScanPool,
        plan: Plan,
        parts: list[Part],
        ahead: int,
        shown: Callable[[str], str],
    ) -> None:
        self._pool = pool
        self._shown = shown
        self._plan = plan
        self._todo = deque(parts)
        self._pending: deque[tuple[Part, Future[Scanned]]] = deque()
        self._ahead = max(1, ahead)

    def parts_of(self, path: str) -> Iterator[Scanned | None]:
        """The scanned parts of one file, in order; None while the main process waits."""
        while True:
            self._fill()
            if not self._pending or self._pending[0][0].path != path:
                return
            future = self._pending[0][1]
            while not future.done():
                wait([future], timeout=_WAIT, return_when=FIRST_COMPLETED)
                if not future.done():
                    yield None
            self._pending.popleft()
            try:
                scanned = future.result()
            except BrokenExecutor as exc:  # BrokenProcessPool
                raise self._broken(path) from exc
            self._fill()
            yield scanned

    def cancel(self) -> None:
        """Drop the parts not yet scanned: a query stopped early, or failed."""
        self._todo.clear()
        while self._pending:
            self._pending.popleft()[1].cancel()

    def _broken(self, path: str) -> IncompleteInputError:
        # A worker killed (out of memory?) or crashed: the pool is of no more use.
        self.cancel()
        self._pool.discard()
        return IncompleteInputError(
            f"{self._shown(path)}: a worker process reading the file ended unexpectedly"
        )

    def _fill(self) -> None:
        while self._todo and len(self._pending) < self._ahead:
            part = self._todo.popleft()
            try:
                future = self._pool.submit(scan, self._plan, part)
            except BrokenExecutor as exc:  # BrokenProcessPool
                raise self._broken(part.path) from exc
            self._pending.append((part, future))


@contextmanager
def _bare_main() -> Iterator[None]:
    """Start processes without the parent's `__main__` (see the module docstring)."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main
