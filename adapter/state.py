"""The state folder (owner-only) and the lock that keeps two sweeps out of one (trial, sink).

The folder is `--state-dir`, else `$XDG_STATE_HOME/trial-adapter`, else
`~/.local/state/trial-adapter` (`default_state_dir`, given the environment by the CLI). It holds
`locks/` and the run ledger (`ledger.sqlite3`, adapter.ledger); Bulk jobs come later.

A sweep that writes to a sink holds `locks/<sha256 of trial and sink>.lock` with `fcntl.flock`
for its whole run. The kernel drops that lock when the process ends however it ends (SIGKILL
included), so a lock left by a dead process is simply taken over; the file only says who holds
it (pid, host, start time), for the message a second sweep prints. Lock files are never deleted:
deleting one while another process waits on it would let two processes hold "the" lock.
flock on NFS is advisory per host at best: keep the state folder on a local disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import socket
import sqlite3
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from adapter.errors import LockHeldError, StateDirError
from adapter.fhir.urls import ServerBase

log = logging.getLogger(__name__)

APP = "trial-adapter"
LOCKS = "locks"
_PRIVATE = 0o700


def default_state_dir(env: Mapping[str, str], home: Path) -> Path:
    """`$XDG_STATE_HOME/trial-adapter`, else `<home>/.local/state/trial-adapter`.

    The XDG Base Directory spec says a relative `XDG_STATE_HOME` is invalid and to be ignored.
    """
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP
    return home / ".local" / "state" / APP


def prepare_state_dir(path: Path) -> Path:
    """Create `path` and `locks/` with mode 0700 (tighten a looser one); refuse another's folder."""
    for folder in (path, path / LOCKS):
        private_folder(folder, "state folder", parents=True)
    return path


def private_folder(folder: Path, what: str, *, parents: bool = False) -> None:
    """Make `folder` (0700; a looser mode tightened), or refuse it: a symlink or a file in its
    place, or another user's folder, is a StateDirError naming `what` it is."""
    try:
        folder.mkdir(mode=_PRIVATE, parents=parents, exist_ok=True)
        info = folder.lstat()
    except OSError as exc:
        raise StateDirError(f"{what} {folder}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"{what} {folder} is not a folder")
    if info.st_uid != os.getuid():
        raise StateDirError(f"{what} {folder} belongs to another user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        try:
            folder.chmod(_PRIVATE)
        except OSError as exc:
            raise StateDirError(f"{what} {folder}: {exc.strerror or exc}") from None


def sink_identity(sink: str) -> str:
    """One spelling per sink: a normalised base URL (explicit port), or an absolute folder path.

    `http://Host/fhir/` and `http://host:80/fhir` are one sink, so they share one lock.
    """
    if sink.startswith(("http://", "https://")):
        base = ServerBase.parse(sink)
        scheme, host, port = base.origin
        return f"{scheme}://{host}:{port}/" + "/".join(base.segments)
    return str(Path(sink).resolve())


def lock_name(trial: str, sink: str) -> str:
    """The lock file's name: a hash, so neither the trial id nor the sink shows in a listing."""
    digest = hashlib.sha256(f"{trial}\0{sink}".encode()).hexdigest()
    return f"sweep-{digest[:32]}.lock"


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds (or last held) a lock, as written inside the lock file."""

    pid: int
    host: str
    since: str

    def describe(self) -> str:
        here = self.host == socket.gethostname()
        return f"pid {self.pid}{'' if here else f' on {self.host}'} since {self.since}"


@contextlib.contextmanager
def sweep_lock(state_dir: Path, trial: str, sink: str, *, now: datetime) -> Iterator[Path]:
    """Hold the (trial, sink) lock for the block; LockHeldError if a live process holds it.

    `sink` is the sink's identity (a normalised base URL or an absolute folder path) and, like
    `trial`, is named in the message; `now` (aware) is written as the start time.
    """
    path = state_dir / LOCKS / lock_name(trial, sink)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StateDirError(f"lock file {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateDirError(f"lock file {path}: {exc.strerror or exc}") from None
            holder = _read_holder(fd)
            raise LockHeldError(
                trial, sink, holder.describe() if holder else "holder unknown"
            ) from None
        previous = _read_holder(fd)
        if previous is not None:
            # Released locks are emptied: content means its process died holding it.
            log.warning(
                "a sweep of %s into %s (%s) ended without releasing its lock; taking it over",
                trial,
                sink,
                previous.describe(),
            )
        mine = Holder(os.getpid(), socket.gethostname(), now.isoformat(timespec="seconds"))
        _write_holder(fd, mine)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        data = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    pid, host, since = data.get("pid"), data.get("host"), data.get("since")
    if not (isinstance(pid, int) and isinstance(host, str) and isinstance(since, str)):
        return None
    return Holder(pid, host, since)


def _write_holder(fd: int, holder: Holder) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    body = {"pid": holder.pid, "host": holder.host, "since": holder.since}
    os.write(fd, orjson.dumps(body) + b"\n")
    os.fsync(fd)


def private_file(path: Path, what: str) -> None:
    """Create an SQLite file 0600 before SQLite does (it would follow the umask), tighten a
    looser one and its WAL files, and refuse a link or another user's file; `what` names it in
    the StateDirError (the run ledger, the Bulk facts store)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateDirError(f"{what} {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateDirError(f"{what} {path} is not a file")
        if info.st_uid != os.getuid():
            raise StateDirError(f"{what} {path} belongs to another user")
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_IMODE(name.lstat().st_mode) & 0o077:
                    name.chmod(0o600)
    except OSError as exc:
        raise StateDirError(f"{what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def open_sqlite(path: Path, what: str, *, timeout: float) -> sqlite3.Connection:
    """An SQLite file of the state folder (the run ledger, the Bulk facts store), owner-only
    (`private_file`) and in WAL mode, in autocommit (callers BEGIN their own transactions).

    A file that cannot be opened is a StateDirError naming `what`; an sqlite3.Error of the WAL
    switch (a file that is no database) is raised as it is, the connection closed, for the
    caller to judge. Two processes opening a new file together wait for each other: SQLite
    answers "database is locked" at once, without its busy wait, while one changes the journal
    mode.
    """
    private_file(path, what)
    try:
        db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise StateDirError(f"{what} {path}: {exc}") from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                db.execute("PRAGMA journal_mode = WAL")
                return db
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    except BaseException:
        db.close()
        raise
