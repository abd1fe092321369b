"""The folder sink: the ResearchStudy and ResearchSubjects as NDJSON files, written atomically.

A coordinator may edit ResearchSubject.ndjson by hand (a status set to `withdrawn`, issue 12), so
the file is read before it is replaced; a line that cannot be read is skipped, never fatal.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

# The files hold patient references: only the owner may read them.
FOLDER_MODE = 0o700
FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class EarlierSubjects:
    """What ResearchSubject.ndjson holds before a run replaces it.

    `subjects`: each line that is a JSON object with an id, in file order; `unreadable`: the
    numbers (from 1) of the other non-blank lines.
    """

    subjects: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)


class FolderSink:
    """Writes `ResearchStudy.ndjson` (one line) and `ResearchSubject.ndjson` (sorted by id)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read_subjects(self) -> EarlierSubjects:
        """The subjects file as it is now; empty when there is none. Other OSErrors raise."""
        try:
            lines = (self.path / "ResearchSubject.ndjson").read_bytes().splitlines()
        except FileNotFoundError:
            return EarlierSubjects()
        subjects: list[dict[str, Any]] = []
        unreadable: list[int] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                subject = orjson.loads(line)
            except orjson.JSONDecodeError:
                subject = None
            resource_id = subject.get("id") if isinstance(subject, dict) else None
            if isinstance(resource_id, str) and resource_id:
                subjects.append(subject)
            else:
                unreadable.append(number)
        return EarlierSubjects(subjects, unreadable)

    def write(
        self,
        study: dict[str, Any],
        subjects: Iterable[dict[str, Any]],
        *,
        keep: frozenset[str] = frozenset(),
        keep_ids: frozenset[str] = frozenset(),
        earlier: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Replace both files; a reader sees the old file or the new one, never half of one.

        The subjects file is this run's snapshot, except that earlier lines stay as they were:
        those of the patients in `keep` (references: those this run could not evaluate), for
        nothing is written for them and dropping their line would be a write too, and those whose
        id is in `keep_ids` (subjects whose status people set). `earlier` is
        `read_subjects().subjects` when the caller has read the file already, so what it judged
        is what is kept; by default the file is read here.
        """
        fresh = list(subjects)
        ids = {str(subject["id"]) for subject in fresh}
        if earlier is None:
            earlier = self.read_subjects().subjects if keep or keep_ids else []
        kept = [
            s
            for s in earlier
            if (str(s["id"]) in keep_ids or _of_patient(s, keep)) and str(s["id"]) not in ids
        ]
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


def _of_patient(subject: dict[str, Any], keep: frozenset[str]) -> bool:
    """Whether the subject's individual is a reference in `keep`."""
    individual = subject.get("individual")
    ref = individual.get("reference") if isinstance(individual, dict) else None
    return isinstance(ref, str) and ref in keep


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
