"""Writing report files with owner-only permissions: they name patients and hold their values."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
