"""What a Bulk Data export is made of, as plain data: the request, the manifest, the job's state.

`ExportRequest` is what the adapter asks for (level, types, type filters, since). `Manifest` is
the server's completion answer (Bulk Data Access IG v2, "Response - Complete Status"): its
`transactionTime`, `requiresAccessToken`, `output`, `error` and `deleted` file lists. `JobState`
is what the state folder keeps of a job between runs (`bulk/<job key>/job.json`, owner-only), so
that an interrupted run resumes polling or downloading instead of starting a new export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Level = Literal["system", "patient", "group"]


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """A kick-off: `level` (with `group_id` for a Group), `types` (`_type`), `type_filters`
    (`_typeFilter`, each `Type?search`), `since` (`_since`, an instant) or None."""

    level: Level
    types: tuple[str, ...]
    group_id: str | None = None
    type_filters: tuple[str, ...] = ()
    since: str | None = None

    def path(self) -> str:
        """The kick-off path below the base: `$export`, `Patient/$export`, `Group/<id>/$export`."""
        if self.level == "system":
            return "$export"
        if self.level == "patient":
            return "Patient/$export"
        return f"Group/{self.group_id}/$export"


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One file of a manifest: its resource type, URL and (when the server says) count."""

    type: str
    url: str
    count: int | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    """The complete-status answer of an export job."""

    transaction_time: str
    requires_access_token: bool
    output: tuple[OutputFile, ...]
    error: tuple[OutputFile, ...] = ()
    deleted: tuple[OutputFile, ...] = ()
    request: str = ""


@dataclass(slots=True)
class DownloadedFile:
    """A file fetched whole: where it lies in the job folder, its size and SHA-256."""

    url: str
    type: str
    path: str  # relative to the job folder
    size: int
    sha256: str


@dataclass(slots=True)
class JobState:
    """A job as the state folder keeps it (job.json): enough to resume after any interruption.

    `status_url` is set once the kick-off was accepted; `manifest` once polling completed;
    `downloaded` grows file by file (a file counts only once it is whole on disk); `swept` is set
    when the sweep that used the files finished, before the files and the job are deleted.
    """

    request: ExportRequest
    kicked_off: str  # ISO instant of the kick-off
    status_url: str | None = None
    manifest: Manifest | None = None
    downloaded: list[DownloadedFile] = field(default_factory=list)
    swept: bool = False
