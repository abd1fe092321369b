"""Progress of a sweep's stages (issue 12): a bar on a terminal, a status line a minute elsewhere.

The sweep and the sink stage are handed a `Progress` and never import the UI: `choose_progress`
(at the CLI edge) picks `TerminalProgress` (rich bars on a terminal), `PlainProgress` (one log
line at most every minute, for cron and CI logs) or `NoProgress` (`--quiet`). Progress carries
stage names and counts only, never a patient.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, TextIO

if TYPE_CHECKING:
    import rich.progress

log = logging.getLogger("adapter")

#: seconds between two of PlainProgress's status lines
PLAIN_EVERY: Final = 60.0
#: what a stage counts, for the status line; a resource type's stage counts resources read
_COUNTED: Final = {
    "cohort": "patients in the cohort",
    "evaluation": "patients evaluated",
    "writes": "patients written",
}


class Progress(Protocol):
    """One stage at a time: `stage` starts one (ending the last), `advance` counts, `done` ends."""

    def stage(self, name: str, total: int | None) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def done(self) -> None: ...


class NoProgress:
    """Nothing shown (`--quiet`, or a log level above info)."""

    def stage(self, name: str, total: int | None) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        return None

    def done(self) -> None:
        return None


class PlainProgress:
    """One info line on the `adapter` logger at most every PLAIN_EVERY seconds, e.g.
    `progress: Observation 12,345 read`; the clock is injectable for tests."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, every: float = PLAIN_EVERY
    ) -> None:
        self._clock = clock
        self._every = every
        self._last = clock()
        self._name: str | None = None
        self._total: int | None = None
        self._count = 0

    def stage(self, name: str, total: int | None) -> None:
        self._name, self._total, self._count = name, total, 0
        self._maybe_say()

    def advance(self, n: int = 1) -> None:
        self._count += n
        self._maybe_say()

    def done(self) -> None:
        self._name = None

    def _maybe_say(self) -> None:
        if self._name is None:
            return
        now = self._clock()
        if now - self._last < self._every:
            return
        self._last = now
        log.info("progress: %s", self.line())

    def line(self) -> str:
        """The current stage and its count, e.g. `evaluation 40 of 80 patients evaluated`."""
        count = f"{self._count:,}"
        if self._total is not None:
            count += f" of {self._total:,}"
        return f"{self._name} {count} {_COUNTED.get(self._name or '', 'read')}"


class TerminalProgress:
    """A transient rich bar per stage on `stream` (a terminal); rich is imported at the first."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar: rich.progress.Progress | None = None
        self._task: rich.progress.TaskID | None = None

    def stage(self, name: str, total: int | None) -> None:
        # Lazily: rich costs start-up time that `--version` and quiet runs need not pay.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.done()
        bar = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=self._stream, stderr=True),
            transient=True,
            # The log handler holds the real stderr: rich must not swap sys.stderr underneath it.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        bar.start()
        self._bar, self._task = bar, bar.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar, self._task = None, None


def choose_progress(
    stream: TextIO,
    *,
    quiet: bool,
    term: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Progress:
    """NoProgress when quiet; bars on a terminal (`term`, the TERM variable, not `dumb`); else
    a plain status line every minute."""
    if quiet:
        return NoProgress()
    if stream.isatty() and term != "dumb":
        return TerminalProgress(stream)
    return PlainProgress(clock=clock)
