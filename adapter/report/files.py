"""Writing report files with owner-only permissions: they name patients and hold their values."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from adapter.errors import UsageError


def check_writable_folder(path: Path, what: str) -> None:
    """Fail now, with UsageError, unless `path` is a folder this user can write into, or one that
    can be created: checked before the first request, so that a bad `--out` or `--sink` is not
    found after the whole sweep (issue 10, item 5). Nothing is created here."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing == path:
        if not path.is_dir():
            raise UsageError(f"{what} {path}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{what} {path}: the folder is not writable")
        return
    if not existing.is_dir():
        raise UsageError(f"{what} {path}: cannot be created, {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: cannot be created, {existing} is not writable")


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700 for the folders this creates."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write atomically (temp file + rename) with mode 0600, so readers never see half a file."""
    make_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
