"""Writing report files with owner-only permissions: they name patients and hold their values."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from adapter.errors import UsageError


def check_writable_folder(path: Path, what: str) -> None:
    """Fail now, with UsageError, unless `path` is a folder this user can write into, or one that
    can be created: checked before the first request, so that a bad `--out` or `--sink` is not
    found after the whole sweep (issue 10, item 5). Nothing is left behind here.

    The check writes rather than asks `os.access`, which says yes to root everywhere, even in
    /proc or on a read-only mount; and a symbolic link to nothing is refused, as `mkdir` would
    only say "File exists" after the sweep (issue 11, item 5).
    """
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if os.path.islink(existing) and not os.path.exists(existing):  # os.path: never raises
        raise UsageError(f"{what} {path}: {existing} is a symbolic link to nothing")
    if existing == path:
        if not os.path.isdir(path):
            raise UsageError(f"{what} {path}: exists and is not a folder")
        problem = _probe(path, folder=False)
        if problem:
            raise UsageError(f"{what} {path}: the folder is not writable ({problem})")
        return
    if not os.path.isdir(existing):
        raise UsageError(f"{what} {path}: cannot be created, {existing} is not a folder")
    problem = _probe(existing, folder=True)
    if problem:
        raise UsageError(f"{what} {path}: cannot be created in {existing} ({problem})")


def _probe(place: Path, *, folder: bool) -> str:
    """Create and remove a file (or, with `folder`, a folder) in `place`; why not, or ""."""
    try:
        if folder:
            os.rmdir(tempfile.mkdtemp(prefix=".trial-adapter-probe-", dir=place))
        else:
            fd, name = tempfile.mkstemp(prefix=".trial-adapter-probe-", dir=place)
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return ""


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700 for the folders this creates."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def write_private(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write atomically (temp file + rename) with mode 0600, so readers never see half a file.

    `data` may come in pieces (`Iterable[bytes]`), written as they come: a results.json of
    100,000 patients is never whole in memory (issue 15).
    """
    make_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes | bytearray):
                fh.write(data)
            else:
                for piece in data:
                    fh.write(piece)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
