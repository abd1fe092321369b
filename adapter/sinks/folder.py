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

    def write(
        self,
        study: dict[str, Any],
        subjects: Iterable[dict[str, Any]],
        *,
        keep: frozenset[str] = frozenset(),
    ) -> None:
        """Replace both files; a reader sees the old file or the new one, never half of one.

        The subjects file is this run's snapshot, except that the earlier lines of the patients
        in `keep` (references: those this run could not evaluate) stay as they were: nothing is
        written for them, and dropping their line would be a write too.
        """
        fresh = list(subjects)
        ids = {str(subject["id"]) for subject in fresh}
        kept = [s for s in self._earlier(keep) if str(s.get("id")) not in ids]
        ordered = sorted([*fresh, *kept], key=lambda subject: str(subject["id"]))
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

    def _earlier(self, keep: frozenset[str]) -> list[dict[str, Any]]:
        """The subjects of the current file whose individual is in `keep`."""
        if not keep:
            return []
        try:
            lines = (self.path / "ResearchSubject.ndjson").read_bytes().splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            try:
                subject = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            individual = subject.get("individual") if isinstance(subject, dict) else None
            ref = individual.get("reference") if isinstance(individual, dict) else None
            if ref in keep and "id" in subject:
                found.append(subject)
        return found

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
