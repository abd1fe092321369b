"""The protocol half of a Bulk Data export (HL7 Bulk Data Access IG v2): kick-off, status, DELETE.

`check_export` refuses a level the CapabilityStatement does not offer, before any request.
`kick_off` starts a job and returns its status URL; `poll` waits on that URL, honouring
`Retry-After` within bounds, until the manifest (adapter.bulk.manifest) comes; `delete_job`
tells the server the files may go. Every request goes through `FhirClient`, so trust, limits and
auth are its; the server's own text (OperationOutcome diagnostics) never reaches a message.

```
FhirError
├── BulkUnsupportedError        no $export at the level asked                          exit 1
├── BulkKickOffLostError        no answer to the kick-off: not sent again              exit 1
└── HttpStatusError
    ├── BulkKickOffError        the kick-off was refused (4xx/5xx), coded issues       exit 1
    ├── BulkJobFailedError      the status URL reports the job failed                   exit 1
    └── BulkJobGoneError        404/410 on the status URL: expired or deleted; start anew
```
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Final, Self

import httpx
import orjson

from adapter.bulk.manifest import parse_manifest
from adapter.bulk.model import ExportRequest, Level, Manifest
from adapter.errors import (
    FhirError,
    HttpStatusError,
    InvalidResponseError,
    LimitExceededError,
    UntrustedUrlError,
    UsageError,
)
from adapter.fhir.capability import ServerCapabilities
from adapter.fhir.client import FhirClient
from adapter.fhir.limits import Clock, Sleep, response_date, retry_after_seconds
from adapter.fhir.outcome import coded_issues, outcome_text

log = logging.getLogger(__name__)

NDJSON: Final = "application/fhir+ndjson"
#: a kick-off URL longer than this goes as a POST of a Parameters resource instead: proxies and
#: servers refuse URLs past 2,000 characters or so, and _typeFilter lists of codes grow fast
MAX_GET_URL: Final = 1900
#: polls in a row that may fail with a temporary error (each after FhirClient's own retries)
MAX_FAILED_POLLS: Final = 3
#: X-Progress is shown, cut to this many characters (the IG asks servers for fewer than 100)
PROGRESS_CHARS: Final = 100

# Export IG v2, "Headers": Accept for the OperationOutcome of an error, Prefer respond-async.
# handling=lenient (RFC 7240; IG v2 "Query Parameters"): a server that cannot honour _typeFilter
# may ignore it rather than fail; the sweep checks every code itself, so a wider export is fine.
_KICK_OFF_HEADERS: Final = {
    "Accept": "application/fhir+json",
    "Prefer": "respond-async, handling=lenient",
}
# IG v2, "Bulk Data Status Request": the client SHOULD ask for application/json.
_STATUS_HEADERS: Final = {"Accept": "application/json"}
_CAPABILITY_LEVEL: Final[Mapping[Level, str]] = {
    "system": "system",
    "patient": "Patient",
    "group": "Group",
}
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# R4 issue-type hierarchy: `transient` and its children. IG v2 asks a server whose status request
# failed without the job failing to say so with one of these.
_TRANSIENT = frozenset(
    {"transient", "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled"}
)
_GONE = frozenset({404, 410})
_AUTH = frozenset({401, 403})


class BulkUnsupportedError(FhirError):
    """The server's CapabilityStatement offers no `$export` at the level asked."""


class BulkKickOffLostError(FhirError):
    """The kick-off got no answer: the server may have started a job, so it is not sent again.

    Not temporary: a retry by anyone would start a second export.
    """


class _BulkStatusError(HttpStatusError):
    """An HttpStatusError whose message says which step of the export it met."""

    step = ""

    def __init__(self, status: int, *, url: str, summary: str = "", detail: str = "") -> None:
        super().__init__(status, url=url, summary=summary, detail=detail)
        self.args = (f"{self.step}: {self.args[0]}",)

    @classmethod
    def from_error(cls, error: HttpStatusError) -> Self:
        # error.url is redacted already; redacting it again leaves it as it is.
        return cls(error.status, url=error.url, summary=error.summary, detail=error.detail)


class BulkKickOffError(_BulkStatusError):
    """The server refused the kick-off (4xx or 5xx); its coded issues are in the message."""

    step = "the $export kick-off was refused"


class BulkJobFailedError(_BulkStatusError):
    """The status URL answered that the job failed (an error status that will not pass)."""

    step = "the export job failed"


class BulkJobGoneError(_BulkStatusError):
    """The status URL answered 404 or 410: the job expired or was deleted; export anew."""

    step = "the export job is gone (expired or deleted)"


def check_export(
    caps: ServerCapabilities, request: ExportRequest, *, profile_levels: tuple[str, ...] = ()
) -> None:
    """BulkUnsupportedError unless the CapabilityStatement offers `$export` at `request.level`.

    The CapabilityStatement is the server's own word, so it alone decides; a server profile
    (`ServerProfile.export`, lowercase levels) that claims the level is named in the message,
    to point at the disagreement, but does not make the export go ahead.
    """
    wanted = _CAPABILITY_LEVEL[request.level]
    offered = caps.export_levels
    if wanted in offered:
        return
    message = (
        f"the server's CapabilityStatement offers no $export ({request.level} level); "
        f"it offers: {', '.join(offered) or 'none'}"
    )
    if request.level in profile_levels:
        message += (
            f" (the server profile claims {request.level}-level export, but only the "
            "CapabilityStatement is taken as the server's word)"
        )
    raise BulkUnsupportedError(message)


async def kick_off(client: FhirClient, request: ExportRequest) -> str:
    """Start an export; the absolute status URL (Content-Location) of its job.

    A 400 (or a 405 to a POST) to a kick-off that carried `_typeFilter` is asked again once
    without it: which parameter a 400 is about is only in the server's free text, and
    `_typeFilter` is the optional one (IG v2 marks it experimental). Errors raise
    BulkKickOffError (coded issues only), BulkKickOffLostError or UntrustedUrlError.
    """
    if request.level == "group" and not _FHIR_ID.fullmatch(request.group_id or ""):
        raise UsageError("the Group of a group-level export needs a FHIR id ([A-Za-z0-9-.]{1,64})")
    try:
        return await _kick_off(client, request, request.type_filters)
    except BulkKickOffError as exc:
        # A POST refused with 405 is a server that takes GET only (IG v2: POST is a MAY); the
        # kick-off without _typeFilter is usually short enough for a GET.
        if not request.type_filters or exc.status not in (400, 405):
            raise
        log.info(
            "%s: the kick-off with _typeFilter was refused (HTTP %d); asking again without it",
            client.log_path(client.url(request.path())),
            exc.status,
            extra={"event": "bulk_typefilter_dropped", "status": exc.status},
        )
    return await _kick_off(client, request, ())


async def _kick_off(client: FhirClient, request: ExportRequest, filters: tuple[str, ...]) -> str:
    params = _kick_off_params(request, filters)
    url = client.url(request.path(), params)
    method = "GET"
    body: dict[str, object] | None = None
    if len(url) > MAX_GET_URL:
        method, url, body = "POST", client.url(request.path()), _parameters(params)
    try:
        # idempotent=True lets FhirClient retry answered temporary statuses, Retry-After
        # honoured: a 429 "export already running" (IG v2 "Response - Error") or a 503 started
        # no job. (A gateway's 502/504 might hide one; a second job costs the server work, not
        # the sweep, which polls only the status URL it is given.) After a lost answer (no HTTP
        # answer at all) FhirClient asks `applied`, which refuses: that job may be running.
        response = await client.request(
            method, url, json=body, headers=_KICK_OFF_HEADERS, idempotent=True, applied=_lost
        )
    except BulkKickOffLostError as exc:
        raise BulkKickOffLostError(str(exc), url=url) from None
    except HttpStatusError as exc:
        raise BulkKickOffError.from_error(exc) from exc
    if response.status_code != 202:
        raise InvalidResponseError(
            f"the $export kick-off answered HTTP {response.status_code}, not 202 Accepted", url=url
        )
    location = response.headers.get("Content-Location")
    if not location:
        raise InvalidResponseError(
            "the $export kick-off answered 202 without a Content-Location", url=url
        )
    try:
        # IG v2 asks for an absolute URL; a relative one is read against the kick-off's.
        status_url = str(httpx.URL(str(response.request.url)).join(location.strip()))
    except httpx.InvalidURL as exc:
        raise InvalidResponseError("the export status URL is not a URL", url=url) from exc
    if not client.is_trusted(status_url):
        raise UntrustedUrlError(
            "the export status URL is outside the configured FHIR server", url=status_url
        )
    return status_url


async def _lost() -> httpx.Response | None:
    raise BulkKickOffLostError(
        "no answer to the $export kick-off; not sent again, since the server may have started "
        "the export"
    )


def _kick_off_params(request: ExportRequest, filters: tuple[str, ...]) -> list[tuple[str, str]]:
    params = [("_outputFormat", NDJSON)]
    if request.types:
        params.append(("_type", ",".join(request.types)))
    # One _typeFilter per query: IG v2 lets a client repeat it, read as one comma-joined list,
    # which keeps the commas inside a query (`code=a,b`) apart from those between queries.
    params += [("_typeFilter", f) for f in filters]
    if request.since:
        params.append(("_since", request.since))
    return params


def _parameters(params: list[tuple[str, str]]) -> dict[str, object]:
    """The kick-off's parameters as a FHIR Parameters resource, for a POST.

    IG v2 "Bulk Data Kick-off Request": a server MAY accept a POST of a Parameters resource;
    OperationDefinition-export gives each parameter's type: `_outputFormat`, `_type` and
    `_typeFilter` are strings (valueString; `_type` comma-joined as in the GET, `_typeFilter`
    repeated), `_since` an instant (valueInstant).
    """
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": name, "valueInstant" if name == "_since" else "valueString": value}
            for name, value in params
        ],
    }


async def poll(
    client: FhirClient,
    status_url: str,
    *,
    max_wait: float,
    deadline_seconds: float,
    progress: Callable[[str | None], None] | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    limit_name: str = "deadline_seconds",
) -> Manifest:
    """Poll `status_url` until the job completes; its manifest.

    202: `X-Progress` goes to `progress` (None when absent): it is the server's text, so it is
    only shown, cut to PROGRESS_CHARS printable characters, and never logged here. The next
    poll waits `Retry-After` (seconds or an HTTP-date) within [1, `max_wait`], else 1, 2, 4 ...
    up to `max_wait` seconds. Temporary failures are FhirClient's to retry (a 429 with
    Retry-After waits as asked); MAX_FAILED_POLLS failed polls in a row raise the last error,
    and the job stays resumable. Past `deadline_seconds` (the site's limit `limit_name`):
    LimitExceededError. 404/410: BulkJobGoneError. A job failure: BulkJobFailedError. 401/403
    raise as they are: the job may be alive, and a run with working credentials can resume it.
    """
    if max_wait < 1:
        raise ValueError("max_wait must be at least 1 second")
    target = client.url(status_url)
    started = clock()
    step = 1.0
    failed = 0
    while True:
        wait: float | None = None
        try:
            response = await client.request("GET", target, headers=_STATUS_HEADERS)
        except FhirError as exc:
            _raise_unless_passing(exc)
            failed += 1
            if failed >= MAX_FAILED_POLLS:
                raise
        else:
            failed = 0
            if response.status_code == 200:
                return _manifest(response, target)
            if response.status_code != 202:
                raise InvalidResponseError(
                    f"the export status URL answered HTTP {response.status_code}", url=target
                )
            if progress is not None:
                progress(shown_progress(response.headers.get("X-Progress")))
            wait = retry_after_seconds(
                response.headers.get("Retry-After"),
                now=response_date(response.headers.get("Date")),
            )
        if wait is None:
            wait, step = step, min(step * 2, max_wait)
        wait = min(max(wait, 1.0), max_wait)
        remaining = deadline_seconds - (clock() - started)
        if remaining <= 0:
            raise LimitExceededError(
                f"the export job did not complete within {deadline_seconds:g} s, the site's "
                f"limit ({limit_name})",
                url=target,
            )
        await sleep(min(wait, remaining))


def _raise_unless_passing(error: FhirError) -> None:
    """Raise what a failed poll means, unless it is a temporary failure worth polling through."""
    if not isinstance(error, HttpStatusError):
        if error.temporary:
            return
        raise error
    if error.status in _GONE:
        raise BulkJobGoneError.from_error(error) from error
    if error.status in _AUTH:
        raise error
    # IG v2 "Response - Error Status": a failed job answers 4xx/5xx with an OperationOutcome
    # (the IG's example: 500, `error/processing`); a poll that failed while the job goes on
    # SHOULD carry a transient issue code. So a 500 with coded, non-transient issues is the job's
    # failure; a bare 500, a 429 or a 503 are the server's passing trouble.
    if error.temporary and not (error.status == 500 and _names_failure(error.summary)):
        return
    raise BulkJobFailedError.from_error(error) from error


def _names_failure(summary: str) -> bool:
    """Whether coded issues (adapter.fhir.outcome.coded_issues: `error/processing (s|c); ...`)
    name at least one issue and no transient one."""
    codes = [part.split(" ", 1)[0].partition("/")[2] for part in summary.split("; ") if "/" in part]
    return bool(codes) and not any(code in _TRANSIENT for code in codes)


def _manifest(response: httpx.Response, url: str) -> Manifest:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise InvalidResponseError("the export manifest is not JSON", url=url) from exc
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        summary = coded_issues(body)
        raise InvalidResponseError(
            "the export status URL answered 200 with an OperationOutcome, not a manifest"
            + (f": {summary}" if summary else ""),
            url=url,
            detail=outcome_text(body),
        )
    return parse_manifest(body, url=url)


def shown_progress(value: str | None) -> str | None:
    """An X-Progress header as it may be shown: printable characters only, whitespace runs as
    one space, at most PROGRESS_CHARS; None when absent or empty."""
    if value is None:
        return None
    text = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    return text[:PROGRESS_CHARS] or None


async def delete_job(client: FhirClient, status_url: str) -> None:
    """DELETE the job (IG v2 "Bulk Data Delete Request"): the server may drop its files.

    Never raises a FhirError: the sweep's work is done, and a server that keeps the files will
    expire them (their `Expires`). A job already gone (404, 410) is what was asked; any other
    failure is logged at warning with its status and coded issues, never the server's text.
    """
    try:
        await client.request("DELETE", status_url)
    except HttpStatusError as exc:
        if exc.status in _GONE:
            return
        reason = f"HTTP {exc.status}" + (f": {exc.summary}" if exc.summary else "")
        _warn_delete(client, status_url, reason)
    except FhirError as exc:
        cause = exc.__cause__
        _warn_delete(client, status_url, type(cause or exc).__name__)


def _warn_delete(client: FhirClient, status_url: str, reason: str) -> None:
    log.warning(
        "DELETE %s: the export job could not be deleted (%s); the server will expire its files",
        client.log_path(status_url),
        reason,
        extra={"event": "bulk_delete_failed", "reason": reason},
    )
