"""Where a sweep's reports go without `--out`: `out/<trial>/<run id>/`, and `latest` beside them.

Each run gets its own folder, so a run never writes over another's report (two runs with one
as-of did, when the folder was named by the as-of). `out/<trial>/latest` is a relative symbolic
link to the newest run's folder, replaced atomically (a new link renamed over the old one), so a
reader following it never finds it missing or half made; relative, so `out/` can be moved.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from adapter.errors import OutputError

LATEST = "latest"


def run_out_dir(base: Path, trial_id: str, run_id: str) -> Path:
    """`base/<trial id>/<run id>`; ValueError for an id that is not one plain path segment."""
    for what, name in (("trial id", trial_id), ("run id", run_id)):
        if not name or name in {".", "..", LATEST} or "/" in name or os.sep in name:
            raise ValueError(f"{what} {name!r} cannot name a report folder")
    return base / trial_id / run_id


def point_latest(base: Path, trial_id: str, run_dir: Path) -> Path:
    """Point `base/<trial id>/latest` at `run_dir` (a folder beside it); return the link.

    OutputError when it cannot be made, or when `latest` is a real file or folder (someone's own:
    never replaced).
    """
    folder = base / trial_id
    link = folder / LATEST
    target = os.path.relpath(run_dir, folder)
    if os.path.lexists(link) and not os.path.islink(link):
        raise OutputError(f"{link} exists and is not a symbolic link: it was left as it is")
    temporary = folder / f".{LATEST}.{secrets.token_hex(4)}"
    try:
        os.symlink(target, temporary)
        os.replace(temporary, link)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        why = exc.strerror or type(exc).__name__
        raise OutputError(f"{link}: could not point it at {run_dir} ({why})") from exc
    return link
