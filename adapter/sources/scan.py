"""Scanning one NDJSON file, or a byte range of a big plain one, for the lines a query needs.

This is the per-line work of the folder source (issue 15), written to run in a worker process:
it imports only the standard library, orjson and the line pre-checks, so a worker starts in a
fraction of the adapter's start-up. `scan` reads a part and hands back only the lines that need
the parse, with their numbers in the part, and counts the rest; the main process parses those
and applies every rule of the folder source to them (`adapter.sources.files`), so the result is
the same as reading the file in one process.

The pre-checks apply, as in one process, only after a line of the part has parsed as the type:
the lines before (`checked` False) come back unchecked, and the main process checks them itself
when an earlier part of the file has already confirmed the type.
"""

from __future__ import annotations

import gzip
import io
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple, cast

import orjson

from adapter.sources.prechecks import (
    block_is_plain,
    line_regex,
    may_be_wanted_patient,
    may_belong,
    may_belong_plain,
    may_hold_code,
    passes_over,
)

# gzip's own 8 KiB reads make line iteration about a third slower than 1 MiB ones.
BUFFER = 1 << 20
BOM = b"\xef\xbb\xbf"


class Plan(NamedTuple):
    """What a query asks of each line, in a form a worker process receives."""

    resource_type: str
    #: `prefilter`'s wanted Patient ids; None: every line goes on to the codes
    wanted: frozenset[bytes] | None
    #: `code_needles`; None: no code test
    needles: tuple[bytes, ...] | None
    #: `Query.line_pattern` of an everyone-query; None: no such test
    pattern: str | None = None


class Part(NamedTuple):
    """A whole file (`end` None), or the lines starting in bytes `start` to `end` of a plain one."""

    path: str
    start: int = 0
    end: int | None = None


class Scanned(NamedTuple):
    """What `scan` hands back for a part: never more than the lines that need the parse."""

    #: `(number in the part, line, checked)`: checked lines passed the pre-checks
    lines: list[tuple[int, bytes, bool]]
    #: lines in the part, blank ones included: the next part's numbers start after them
    lines_read: int
    #: lines dropped unparsed as other patients' (`may_belong`, `may_be_wanted_patient`)
    dropped: int
    #: lines of wanted patients dropped unparsed as holding none of the codes
    code_skipped: int
    #: `("gzip", "")` or `("os", why)`: reading stopped there, after the lines above
    error: tuple[str, str] | None = None


def scan(plan: Plan, part: Part, block: int = BUFFER) -> Scanned:
    """The lines of the part that need the parse, and counts of the others (see the module).

    The part is read in blocks of whole lines (`blocks`, `block` bytes at a time), each searched
    once for what makes a line need the whole patient pre-check (`block_is_plain`); in a plain
    block the lines get `may_belong_plain`, which decides as `may_belong` does at half the cost.
    """
    found: list[tuple[int, bytes, bool]] = []
    count = dropped = code_skipped = 0
    wanted = plan.wanted
    ids = wanted or frozenset()
    belongs: Callable[[bytes, frozenset[bytes]], bool] | None
    needles = plan.needles
    pattern = line_regex(plan.pattern)
    kind = plan.resource_type
    patients = plan.resource_type == "Patient"
    confirmed = False
    error: tuple[str, str] | None = None
    try:
        with open_part(part) as stream:
            for data in blocks(stream, block):
                if wanted is None:
                    belongs = None
                elif patients:
                    belongs = may_be_wanted_patient
                else:
                    belongs = may_belong_plain if block_is_plain(data) else may_belong
                for line in io.BytesIO(data):
                    count += 1
                    if count == 1 and part.start == 0 and line.startswith(BOM):
                        line = line[len(BOM) :]
                    if not line or line.isspace():
                        continue
                    if confirmed:
                        if belongs is not None and not belongs(line, ids):
                            dropped += 1
                        elif (needles is not None and not may_hold_code(line, needles)) or (
                            pattern is not None and passes_over(line, pattern, kind)
                        ):
                            code_skipped += 1
                        else:
                            found.append((count, line, True))
                        continue
                    found.append((count, line, False))
                    confirmed = is_of_type(line, plan.resource_type)
    except (gzip.BadGzipFile, EOFError, zlib.error):
        error = ("gzip", "")
    except OSError as exc:
        error = ("os", exc.strerror or type(exc).__name__)
    return Scanned(found, count, dropped, code_skipped, error)


def blocks(stream: io.BufferedReader, size: int = BUFFER) -> Iterator[bytes]:
    """The stream's bytes in blocks of whole lines, the last one without its newline if the
    stream ends so; reading stops, as line iteration does, at the first read that fails.

    Each read is one `read1` of `size` bytes: with `size` the buffer's size, the same reads of
    the file (or gzip stream) that iterating over its lines makes, so a read error leaves behind
    the same lines. A line longer than a read is gathered over several.
    """
    pending: list[bytes] = []
    while chunk := stream.read1(size):
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            pending.append(chunk)
            continue
        if pending:
            pending.append(chunk[:cut])
            yield b"".join(pending)
            pending = []
        else:
            yield chunk[:cut] if cut < len(chunk) else chunk
        if cut < len(chunk):
            pending.append(chunk[cut:])
    if pending:
        yield b"".join(pending)


def is_of_type(line: bytes, resource_type: str) -> bool:
    """Whether the line parses as one object of the type: what confirms a file in the reader."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get("resourceType") == resource_type


def split(path: str, size: int, part_bytes: int) -> list[Part]:
    """A plain file of `size` bytes as parts of about `part_bytes`, each starting on a line."""
    if part_bytes <= 0 or size <= part_bytes or path.endswith(".gz"):
        return [Part(path)]
    starts = [0]
    with open(path, "rb") as stream:
        for nominal in range(part_bytes, size, part_bytes):
            if nominal <= starts[-1]:
                continue
            # The line holding byte nominal - 1 belongs to the part before.
            stream.seek(nominal - 1)
            start = nominal - 1 + len(stream.readline())
            if start < size and start > starts[-1]:
                starts.append(start)
    ends: list[int | None] = [*starts[1:], None]
    return [Part(path, start, end) for start, end in zip(starts, ends, strict=True)]


def open_stream(path: str) -> io.BufferedReader:
    """A whole file, gzipped or not, with the reader's large buffers."""
    if path.endswith(".gz"):
        # GzipFile offers readinto(), all BufferedReader needs of its raw stream.
        return io.BufferedReader(cast("io.RawIOBase", gzip.open(path, "rb")), BUFFER)
    return io.BufferedReader(io.FileIO(path, "rb"), BUFFER)


def open_part(part: Part) -> io.BufferedReader:
    if part.end is None and part.start == 0:
        return open_stream(part.path)
    raw = open(part.path, "rb", buffering=0)  # noqa: SIM115 (the reader below closes it)
    raw.seek(part.start)
    left = None if part.end is None else part.end - part.start
    return io.BufferedReader(_Window(raw, left), BUFFER)


class _Window(io.RawIOBase):
    """A plain file from where it stands, for at most `left` bytes (None: to its end)."""

    def __init__(self, raw: io.FileIO, left: int | None) -> None:
        self._raw = raw
        self._left = left

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        if self._left is not None:
            view = view[: self._left]
        got = self._raw.readinto(view) or 0
        if self._left is not None:
            self._left -= got
        return got

    def close(self) -> None:
        self._raw.close()
        super().close()


def worker_start(parent: int) -> None:
    """A worker's start.

    Ctrl-C reaches every process of the terminal, and the main process alone handles it (ending
    the workers in its `aclose`), without a traceback from each. And a worker ends when the
    sweep's process is gone however it went (SIGKILL, the machine's OOM killer): else it would
    wait for ever to hand a result to nobody, holding its memory, after every killed night.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # `parent` comes from the sweep: a worker still starting when it was killed has been
    # adopted already, and its own getppid() would be the adopter's.
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_end_with, args=(parent,), name="parent-watch", daemon=True).start()


#: seconds between two looks at whether the sweep's process is still there
PARENT_CHECK = 1.0


def _end_with(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK)
        if os.getppid() != parent:  # adopted by init (or a subreaper): the sweep is gone
            os._exit(1)


def loaded_modules() -> list[str]:
    """The modules this process has imported (tests check what a worker costs)."""
    import sys

    return sorted(sys.modules)


def worker_pid() -> int:
    return os.getpid()
