"""Log lines on stderr: text or JSON, each with its time, level and the run's id.

`configured` installs one handler on the root logger for the length of a command and takes it
away afterwards. Text lines read `2026-06-15T02:00:03.120+02:00 INFO [3f9a2c1b] message`; with
`json` each line is one object, `{"time", "level", "run_id", "logger", "message", ...}` plus the
`extra` fields a call passed (a retry adds method, path, reason, attempt, attempts, wait).

Patient data never goes into a log line at any level. Libraries that would put it there are
held at warning: httpx and httpcore log every request URL, and search URLs carry patient ids.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final, Literal, TextIO

import orjson

LogFormat = Literal["text", "json"]
LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: loggers kept at warning or above whatever the level: their debug and info lines name URLs
#: with queries (httpx, httpcore), or repeat our own retry lines (stamina.retry_scheduled)
QUIET_LIBRARIES: Final = ("httpx", "httpcore", "stamina")
_OWN = "adapter"
# Every attribute a plain LogRecord has; the rest came in through `extra`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def new_run_id() -> str:
    """A short random id that tells one run's lines from another's in a shared log."""
    return secrets.token_hex(4)


def _time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> [<run id>] <message>`, one line."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"{_time(record)} {record.levelname} [{self.run_id}] {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra` fields are kept beside the standard ones."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "run_id": self.run_id,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value
        return orjson.dumps(doc, default=str).decode()


def set_level(level: int) -> None:
    """Our records from `level` up; other libraries' from warning up (see QUIET_LIBRARIES)."""
    logging.getLogger().setLevel(max(level, logging.WARNING))
    logging.getLogger(_OWN).setLevel(level)
    for name in QUIET_LIBRARIES:
        floor = logging.ERROR if name == "stamina" else logging.WARNING
        logging.getLogger(name).setLevel(max(level, floor))


@contextlib.contextmanager
def configured(
    *, level: int, fmt: LogFormat, run_id: str, stream: TextIO
) -> Iterator[logging.Handler]:
    """Send log records of `level` and above (ours) to `stream` in `fmt` for the block.

    Other libraries' records pass at warning and above only. Levels and handlers are restored
    afterwards, so a test (or a program) that calls `cli.main` twice starts clean each time.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(run_id) if fmt == "json" else TextFormatter(run_id))
    root = logging.getLogger()
    touched = [root, logging.getLogger(_OWN), *map(logging.getLogger, QUIET_LIBRARIES)]
    saved = [(logger, logger.level) for logger in touched]
    root.addHandler(handler)
    set_level(level)
    # Python warnings become log lines too, so that with json every stderr line stays JSON.
    logging.captureWarnings(True)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        for logger, old_level in saved:
            logger.setLevel(old_level)
