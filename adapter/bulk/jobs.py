"""A Bulk Data job's folder in the state folder: its saved state, its files, what a resume keeps.

`bulk/<key>/` (mode 0700) holds one export job of one trial on one server: its state in a hidden
`.job.json` (a `JobState`, owner-only, replaced atomically), the output files at the top in Bulk
naming (`Observation.000.ndjson`), the error files in `errors/` and the deleted-resource files
in `deleted/`. `adapter.sources.files.FolderSource` reads the folder as it is: it reads only the
top, skips hidden names (the state, downloads in progress `.<name>.part`, temporary files) and
subfolders. The state is hidden because FolderSource reads every `*.json` at the top too.

The key (`job_key`) leaves `_since` out: an incremental export of a trial on a server takes the
slot of the last one. A resume trusts only what it can check: a downloaded file counts when it is
on disk with its recorded size (and SHA-256, with `verify`); everything else is deleted, so an
unrecorded or half-written file is never swept. The state file holds the status URL and the
manifest's file URLs, signed ones included: it is a secret, and nothing of it is logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

import orjson

from adapter.bulk.model import DownloadedFile, ExportRequest, JobState, Manifest, OutputFile
from adapter.errors import StateDirError
from adapter.state import private_folder, sink_identity

log = logging.getLogger(__name__)

BULK = "bulk"
STATE_FILE = ".job.json"
ERRORS = "errors"
DELETED = "deleted"
VERSION = 1
#: sections of a manifest and the subfolder of each ("" is the top, where FolderSource reads)
Section = Literal["output", "error", "deleted"]
SUBFOLDERS: dict[Section, str] = {"output": "", "error": ERRORS, "deleted": DELETED}

_PRIVATE = 0o700
_KEY = re.compile(r"[0-9a-f]{16,64}")
# A resource type as a file name may carry it: the manifest is a server's word, never a path.
_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_FILE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}\.\d{3,}\.ndjson")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Clocks set back a little (NTP) do not make a fresh job stale; a kick-off further in the future
# than this is a clock that cannot be trusted.
_CLOCK_SLACK = timedelta(minutes=5)


class CorruptStateError(ValueError):
    """A state file that is not a version-1 JobState; the message never quotes its content."""


def job_key(base_url: str, request: ExportRequest, trial_id: str) -> str:
    """The job's folder name: a hash of the server, trial and what is exported, but not `_since`.

    Types and type filters are sorted, so their order does not make a new job; the base URL is
    normalised as a sink's is (`http://Host/fhir/` and `http://host:80/fhir` are one server).
    """
    canonical = {
        "base": sink_identity(base_url),
        "trial": trial_id,
        "level": request.level,
        "group": request.group_id,
        "types": sorted(set(request.types)),
        "type_filters": sorted(set(request.type_filters)),
    }
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def file_name(kind: str, index: int) -> str:
    """`Observation.000.ndjson`: Bulk naming, the name FolderSource takes the type from."""
    if not _TYPE.fullmatch(kind):
        raise ValueError("not a FHIR resource type")
    if index < 0:
        raise ValueError("a file index is never negative")
    return f"{kind}.{index:03d}.ndjson"


def relative_path(section: Section, kind: str, index: int) -> str:
    """Where a manifest's file lies in the job folder: `Observation.000.ndjson`,
    `errors/OperationOutcome.000.ndjson`, `deleted/Bundle.000.ndjson`."""
    sub = SUBFOLDERS[section]
    name = file_name(kind, index)
    return f"{sub}/{name}" if sub else name


def section_of(file: DownloadedFile) -> Section:
    """Which part of the manifest a downloaded file came from, by its place in the folder."""
    head = file.path.split("/", 1)[0] if "/" in file.path else ""
    for section, sub in SUBFOLDERS.items():
        if head == sub:
            return section
    raise ValueError("not a path of a job folder")


def part_path(dest: Path) -> Path:
    """Where `dest` is written while it downloads: hidden, so FolderSource never reads it."""
    return dest.with_name(f".{dest.name}.part")


def stale(state: JobState, now: datetime, max_age_hours: float) -> bool:
    """Whether the job was kicked off more than `max_age_hours` before `now` (aware), and so is
    not resumed: servers delete finished exports after a while, and the data has moved on. A
    kick-off time that cannot be read, or lies in the future, counts as stale."""
    try:
        kicked = datetime.fromisoformat(state.kicked_off)
        age = now - kicked
    except (TypeError, ValueError):
        return True  # unreadable, or naive against aware: nothing to measure
    return age > timedelta(hours=max_age_hours) or age < -_CLOCK_SLACK


@dataclass(frozen=True, slots=True)
class JobFolder:
    """`<state folder>/bulk/<key>/`, made by `open`. Files are created 0600 by the downloads."""

    path: Path
    key: str

    @classmethod
    def open(cls, state_dir: Path, key: str) -> JobFolder:
        """The job folder of `key`, created 0700 (with `bulk/`) if absent.

        A folder that is a symbolic link, not a folder, or another user's is a StateDirError.
        """
        if not _KEY.fullmatch(key):
            raise ValueError("a job key is a hexadecimal hash")
        folder = cls(state_dir / BULK / key, key)
        folder._make()
        return folder

    @property
    def source_dir(self) -> Path:
        """The folder to give `FolderSource`: the output files, at the top."""
        return self.path

    def file_path(self, kind: str, index: int, section: Section = "output") -> Path:
        """The path of a manifest's file: `<Type>.<nnn>.ndjson` at the top for `output`, in
        `errors/` or `deleted/` for those sections (see `relative_path`)."""
        return self.path / relative_path(section, kind, index)

    def load(self, *, verify: bool = False) -> JobState | None:
        """The saved state, with only the downloads still whole on disk; None when there is none.

        A file counts when it is a regular file of the recorded size and, with `verify`, of the
        recorded SHA-256. Every other file in the folder (a `.part`, an unrecorded or damaged
        file) is deleted. A state file that cannot be read or is not version 1 gives None, and
        the whole folder is emptied: nothing in it can be trusted to be what it claims.
        """
        self._make()
        try:
            data = (self.path / STATE_FILE).read_bytes()
        except FileNotFoundError:
            self._discard(keep=set())
            return None
        except OSError as exc:
            self._corrupt(exc.strerror or type(exc).__name__)
            return None
        try:
            state = decode_state(data)
        except CorruptStateError as exc:
            self._corrupt(str(exc))
            return None
        whole = [f for f in state.downloaded if self._is_whole(f, verify=verify)]
        dropped = len(state.downloaded) - len(whole)
        if dropped:
            log.warning(
                "bulk job %s: %d downloaded files are missing or damaged; they are fetched again",
                self.key[:8],
                dropped,
                extra={"event": "bulk_resume_dropped", "files": dropped},
            )
            state.downloaded = whole
            self.save(state)
        self._discard(keep={f.path for f in whole})
        return state

    def save(self, state: JobState) -> None:
        """Write the state atomically: a 0600 temporary file, fsync, rename, fsync of the folder.

        A kill at any moment leaves either the old state or the new one, never half of one.
        """
        self._make()
        data = encode_state(state)
        target = self.path / STATE_FILE
        temporary = self.path / f"{STATE_FILE}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            with open(fd, "wb", closefd=True) as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        fsync_folder(self.path)

    def clear(self) -> None:
        """Delete the job: its files, its state and the folder itself (`save` makes it again)."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.path)

    # -- inside ----------------------------------------------------------------------------------

    def _make(self) -> None:
        for folder in (self.path.parent, self.path, self.path / ERRORS, self.path / DELETED):
            _private_folder(folder)

    def _is_whole(self, file: DownloadedFile, *, verify: bool) -> bool:
        path = self.path / file.path
        try:
            info = path.lstat()
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_size != file.size:
            return False
        return not verify or sha256_of(path) == file.sha256

    def _discard(self, keep: set[str], *, keep_state: bool = True) -> None:
        """Delete everything in the folder but the paths in `keep` (and the state file)."""
        kept = {ERRORS, DELETED, STATE_FILE} if keep_state else {ERRORS, DELETED}
        try:
            for sub in ("", ERRORS, DELETED):
                folder = self.path / sub if sub else self.path
                with os.scandir(folder) as entries:
                    names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
                for name, is_dir in names:
                    relative = f"{sub}/{name}" if sub else name
                    if relative in keep or (not sub and name in kept):
                        continue
                    if is_dir:
                        shutil.rmtree(folder / name)
                    else:
                        (folder / name).unlink()
        except OSError as exc:
            raise StateDirError(f"Bulk job folder {self.path}: {exc.strerror or exc}") from None

    def _corrupt(self, reason: str) -> None:
        log.warning(
            "bulk job %s: its saved state cannot be used (%s); the job's files are discarded",
            self.key[:8],
            reason,
            extra={"event": "bulk_state_discarded"},
        )
        self._discard(keep=set(), keep_state=False)


def _private_folder(folder: Path) -> None:
    private_folder(folder, "Bulk job folder")


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX: the rename lives in the folder's entry)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- JSON ------------------------------------------------------------------------------------------


def encode_state(state: JobState) -> bytes:
    """The state as version-1 JSON (plain data, never pickle)."""
    request = state.request
    manifest = state.manifest
    body: dict[str, Any] = {
        "version": VERSION,
        "request": {
            "level": request.level,
            "types": list(request.types),
            "group_id": request.group_id,
            "type_filters": list(request.type_filters),
            "since": request.since,
        },
        "kicked_off": state.kicked_off,
        "status_url": state.status_url,
        "manifest": None if manifest is None else _encode_manifest(manifest),
        "downloaded": [
            {"url": f.url, "type": f.type, "path": f.path, "size": f.size, "sha256": f.sha256}
            for f in state.downloaded
        ],
        "swept": state.swept,
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2)


def _encode_manifest(manifest: Manifest) -> dict[str, Any]:
    def files(items: tuple[OutputFile, ...]) -> list[dict[str, Any]]:
        return [{"type": f.type, "url": f.url, "count": f.count} for f in items]

    return {
        "transaction_time": manifest.transaction_time,
        "requires_access_token": manifest.requires_access_token,
        "output": files(manifest.output),
        "error": files(manifest.error),
        "deleted": files(manifest.deleted),
        "request": manifest.request,
    }


def decode_state(data: bytes) -> JobState:
    """A JobState from `encode_state`'s JSON; CorruptStateError for anything else."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CorruptStateError("not JSON") from None
    obj = _Object(body, "state")
    version = body.get("version")
    if type(version) is not int or version != VERSION:  # True == 1 in Python
        raise CorruptStateError("not a version-1 job state")
    request = obj.object("request")
    level = request.string("level")
    if level not in ("system", "patient", "group"):
        raise CorruptStateError("request.level is not an export level")
    manifest = obj.optional_object("manifest")
    return JobState(
        request=ExportRequest(
            level=cast("Literal['system', 'patient', 'group']", level),
            types=tuple(request.strings("types")),
            group_id=request.optional_string("group_id"),
            type_filters=tuple(request.strings("type_filters")),
            since=request.optional_string("since"),
        ),
        kicked_off=obj.string("kicked_off"),
        status_url=obj.optional_string("status_url"),
        manifest=None if manifest is None else _decode_manifest(manifest),
        downloaded=[_decode_downloaded(item) for item in obj.objects("downloaded")],
        swept=obj.boolean("swept"),
    )


def _decode_manifest(obj: _Object) -> Manifest:
    def files(key: str) -> tuple[OutputFile, ...]:
        return tuple(
            OutputFile(type=f.string("type"), url=f.string("url"), count=f.optional_count("count"))
            for f in obj.objects(key)
        )

    return Manifest(
        transaction_time=obj.string("transaction_time"),
        requires_access_token=obj.boolean("requires_access_token"),
        output=files("output"),
        error=files("error"),
        deleted=files("deleted"),
        request=obj.string("request"),
    )


def _decode_downloaded(obj: _Object) -> DownloadedFile:
    path = obj.string("path")
    # The path is joined to the job folder and its file may be deleted: only names this module
    # makes are accepted, never `..`, an absolute path or a hidden name.
    head, _, name = path.rpartition("/")
    if head not in ("", ERRORS, DELETED) or not _FILE_NAME.fullmatch(name):
        raise CorruptStateError("a downloaded file's path is not one of a job folder")
    digest = obj.string("sha256")
    if not _SHA256.fullmatch(digest):
        raise CorruptStateError("a downloaded file's sha256 is not a SHA-256")
    size = obj.optional_count("size")
    if size is None:
        raise CorruptStateError("a downloaded file has no size")
    return DownloadedFile(
        url=obj.string("url"), type=obj.string("type"), path=path, size=size, sha256=digest
    )


class _Object:
    """A JSON object read field by field, each of its expected type or CorruptStateError (which
    names the field, never its value)."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise CorruptStateError(f"{where} is not an object")
        self._value: dict[str, Any] = value
        self._where = where

    def _get(self, key: str, kinds: tuple[type, ...], what: str, *, optional: bool = False) -> Any:
        value = self._value.get(key)
        if value is None and optional:
            return None
        # bool is an int to Python, never a count or a string here
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise CorruptStateError(f"{self._where}.{key} is not {what}")
        return value

    def string(self, key: str) -> str:
        return cast("str", self._get(key, (str,), "a string"))

    def optional_string(self, key: str) -> str | None:
        return cast("str | None", self._get(key, (str,), "a string", optional=True))

    def boolean(self, key: str) -> bool:
        return cast("bool", self._get(key, (bool,), "true or false"))

    def optional_count(self, key: str) -> int | None:
        value = cast("int | None", self._get(key, (int,), "a count", optional=True))
        if value is not None and value < 0:
            raise CorruptStateError(f"{self._where}.{key} is not a count")
        return value

    def strings(self, key: str) -> list[str]:
        items = cast("list[Any]", self._get(key, (list,), "a list"))
        if not all(isinstance(item, str) for item in items):
            raise CorruptStateError(f"{self._where}.{key} is not a list of strings")
        return cast("list[str]", items)

    def object(self, key: str) -> _Object:
        return _Object(self._value.get(key), f"{self._where}.{key}")

    def optional_object(self, key: str) -> _Object | None:
        value = self._value.get(key)
        return None if value is None else _Object(value, f"{self._where}.{key}")

    def objects(self, key: str) -> list[_Object]:
        items = cast("list[Any]", self._get(key, (list,), "a list"))
        return [_Object(item, f"{self._where}.{key}[]") for item in items]
