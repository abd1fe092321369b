"""The folder sink: the ResearchStudy and ResearchSubjects as NDJSON files, written atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

# The files hold patient references: only the owner may read them.
FOLDER_MODE = 0o700
FILE_MODE = 0o600


class FolderSink:
    """Writes `ResearchStudy.ndjson` (one line) and `ResearchSubject.ndjson` (sorted by id)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, study: dict[str, Any], subjects: Iterable[dict[str, Any]]) -> None:
        """Replace both files; a reader sees the old file or the new one, never half of one."""
        ordered = sorted(subjects, key=lambda subject: str(subject["id"]))
        # Serialise everything first, so a bad resource leaves both old files in place.
        files = {
            "ResearchStudy.ndjson": _ndjson([study]),
            "ResearchSubject.ndjson": _ndjson(ordered),
        }
        if not self.path.is_dir():
            self.path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        for name, data in files.items():
            self._replace(name, data)
        _fsync_folder(self.path)

    def _replace(self, name: str, data: bytes) -> None:
        # mkstemp creates the file 0o600, in the same folder so os.replace is a rename.
        fd, temp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), FILE_MODE)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise


def _ndjson(resources: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(resource) + b"\n" for resource in resources)


def _fsync_folder(path: Path) -> None:
    """Make the rename durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
