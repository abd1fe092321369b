"""Downloading a Bulk Data export's files: streamed to disk, bounded, retried whole, the token kept.

Each file is streamed into a hidden `.<name>.part` (0600) beside its final name, hashed on the
way, and renamed once whole, so a kill never leaves a half file under a name FolderSource reads.
A file has a size limit (counted decoded: a gzip bomb is caught) and a deadline for the whole of
it, retries included. Temporary failures (429, 5xx, no answer, a body cut short) restart the
file from its first byte within the client's RetryPolicy: Bulk servers offer no ranges to trust.

The access token goes only where the manifest says files need it (`requiresAccessToken`) and
only to the server or an origin the site trusts (Bulk Data Access IG v2, "Response - Complete
Status"); a file that needs it elsewhere is refused unread. Files that do not need it are
fetched with no Authorization header at all, even from the server itself: they are typically
pre-signed storage URLs, and their query is the secret. So nothing logs a file's URL: logs name
the file (`Observation.003.ndjson`), and messages show a URL without its query.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import stamina

from adapter.bulk.jobs import JobFolder, Section, fsync_folder, part_path, relative_path
from adapter.bulk.model import DownloadedFile, JobState, Manifest, OutputFile
from adapter.errors import (
    FhirError,
    HttpStatusError,
    InvalidResponseError,
    LimitExceededError,
    OutputError,
    UntrustedUrlError,
)
from adapter.fhir.bodies import declared_length, describe
from adapter.fhir.client import FhirClient, log_retry, transport_error
from adapter.fhir.limits import Clock, response_date, retry_after_seconds
from adapter.fhir.outcome import status_error
from adapter.fhir.urls import is_loopback, parse_url

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"
MAX_REDIRECTS = 5
#: an error answer's body is read this far, for its OperationOutcome's coded issues
ERROR_BODY_LIMIT = 64 * 1024
WHAT = "the Bulk file server"

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# An auth that adds nothing: given explicitly, httpx uses it instead of the client's own.
_NO_AUTH = httpx.Auth()
# The client's default headers that may go to an origin the site does not trust; the others
# (a server profile's headers, cookies) are the FHIR server's business.
_NEUTRAL_HEADERS = frozenset({"accept", "accept-encoding", "connection", "user-agent"})


class _RetryLater(Exception):
    """A temporary failure of one attempt; `wait` is the server's Retry-After, capped."""

    def __init__(self, error: FhirError, wait: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait


class _Unauthorized(Exception):
    """A 401 to a request that carried the token, whose auth did not try a fresh one itself."""

    def __init__(self, error: HttpStatusError) -> None:
        super().__init__(str(error))
        self.error = error


class _Transfer:
    """One file's download: the rules of its URLs, its limits, and its deadline on `clock`, which
    starts when the first attempt holds its slot (waiting for one is the adapter's doing)."""

    def __init__(
        self,
        client: FhirClient,
        dest: Path,
        *,
        requires_token: bool,
        max_bytes: int,
        deadline: float,
        clock: Clock,
    ) -> None:
        self.client = client
        self.dest = dest
        self.requires_token = requires_token
        self.max_bytes = max_bytes
        self.deadline = deadline
        self._clock = clock
        self._start: float | None = None

    def elapsed(self) -> float:
        return 0.0 if self._start is None else self._clock() - self._start

    async def fetch(self, url: str) -> tuple[int, str]:
        """One attempt at the file, and one more at once after a 401 its auth did not retry."""
        try:
            return await self._attempt(url)
        except _Unauthorized as exc:
            # A long export outlives its token; an auth that refreshes on 401 has already done
            # so (SmartBackendAuth), any other gets this one chance to hand out a fresh token.
            log.info("Bulk file %s: HTTP 401, once more with a fresh token", self.dest.name)
            first = exc.error
        try:
            return await self._attempt(url)
        except _Unauthorized as exc:
            raise exc.error from first

    async def _attempt(self, url: str) -> tuple[int, str]:
        async with self.client.limiter.slot():
            if self._start is None:
                self._start = self._clock()
            remaining = self.deadline - self.elapsed()
            if remaining <= 0:
                raise self._past_deadline(url)
            try:
                # The clock is checked per chunk; this also ends an attempt that gets none.
                async with asyncio.timeout(remaining):
                    return await self._follow(url)
            except TimeoutError:
                raise self._past_deadline(url) from None

    async def _follow(self, url: str) -> tuple[int, str]:
        """GET `url`, following redirects by hand, and stream the body to disk."""
        http = self.client.http
        for _ in range(MAX_REDIRECTS + 1):
            with_token = self.requires_token and self.client.is_trusted(url)
            request = self._request(url, with_token=with_token)
            auth = http.auth if with_token else _NO_AUTH
            try:
                response = await http.send(request, auth=auth, follow_redirects=False, stream=True)
                try:
                    if response.status_code in _REDIRECTS:
                        url = _next_hop(url, response)
                        continue
                    if not 200 <= response.status_code < 300:
                        await self._refuse(response, url, with_token=with_token)
                    return await self._write(response, url)
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                raise _RetryLater(transport_error(exc, WHAT, url)) from exc
            except httpx.DecodingError as exc:
                # Most often a compressed body cut short: worth another attempt, as a cut one is.
                error = InvalidResponseError("a file's body could not be decoded", url=url)
                raise _RetryLater(error) from exc
        raise InvalidResponseError(f"more than {MAX_REDIRECTS} redirects", url=url)

    def _request(self, url: str, *, with_token: bool) -> httpx.Request:
        request = self.client.http.build_request("GET", url, headers={"Accept": NDJSON})
        # Credentials only ever come from the auth flow, and only when `with_token`.
        request.headers.pop("Authorization", None)
        if not self.client.is_trusted(url):
            for name in list(request.headers.keys()):
                if name.lower() not in _NEUTRAL_HEADERS:
                    del request.headers[name]
        return request

    async def _refuse(self, response: httpx.Response, url: str, *, with_token: bool) -> None:
        """Raise the error that an error (or unexpected) status stands for."""
        status = response.status_code
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= ERROR_BODY_LIMIT:
                break
        read = httpx.Response(status, content=bytes(body))  # already decoded: no headers
        error = status_error(read, url)
        if error is None:
            raise InvalidResponseError(f"unexpected HTTP {status}", url=url)
        if error.temporary:
            raise _RetryLater(error, self._retry_after(response))
        refreshed = any(earlier.status_code == 401 for earlier in response.history)
        if status == 401 and with_token and self.client.http.auth is not None and not refreshed:
            raise _Unauthorized(error)
        raise error

    def _retry_after(self, response: httpx.Response) -> float | None:
        seconds = retry_after_seconds(
            response.headers.get("Retry-After"), now=response_date(response.headers.get("Date"))
        )
        return None if seconds is None else self.client.retry.capped(seconds)

    async def _write(self, response: httpx.Response, url: str) -> tuple[int, str]:
        """Stream the body into `.<name>.part`, then rename it to `dest`: (size, SHA-256 hex)."""
        declared = declared_length(response)
        if declared is not None and declared > self.max_bytes:
            raise self._too_large(url)
        part = part_path(self.dest)
        with contextlib.suppress(FileNotFoundError):
            part.unlink()  # left by a run that was killed
        digest = hashlib.sha256()
        size = 0
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with open(os.open(part, flags, 0o600), "wb", closefd=True) as stream:
                async for chunk in response.aiter_bytes():  # decoded: gzip counts as it unpacks
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise self._too_large(url)
                    if self.elapsed() > self.deadline:
                        raise self._past_deadline(url)
                    digest.update(chunk)
                    stream.write(chunk)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(part, self.dest)
            fsync_folder(self.dest.parent)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                part.unlink()
            if isinstance(exc, OSError):  # a full disk, say: not the server's fault
                where = self.dest.parent
                raise OutputError(f"Bulk file {self.dest.name} in {where}: {exc.strerror}") from exc
            raise
        return size, digest.hexdigest()

    def _too_large(self, url: str) -> LimitExceededError:
        limit = describe(self.max_bytes)
        return LimitExceededError(
            f"Bulk file {self.dest.name} larger than the {limit} limit", url=url
        )

    def _past_deadline(self, url: str) -> LimitExceededError:
        return LimitExceededError(
            f"Bulk file {self.dest.name} not downloaded within its {self.deadline:g} s limit",
            url=url,
        )


async def download(
    client: FhirClient,
    file: OutputFile,
    dest: Path,
    *,
    requires_token: bool,
    max_bytes: int,
    deadline_seconds: float,
    clock: Clock = time.monotonic,
) -> DownloadedFile:
    """Fetch `file` whole into `dest` (mode 0600); its record, `path` being `dest.name`.

    The token (the client's auth) goes with a request only when `requires_token` and the URL is
    trusted (`client.is_trusted`); with `requires_token` the first URL must be trusted, else
    UntrustedUrlError before any request. Other requests carry no Authorization header. Every
    URL is https (plain http only to this machine). Up to `MAX_REDIRECTS` redirects are
    followed, each hop under the same rules (none from https to http; a hop off the trusted
    origins goes without the token). A body past `max_bytes`, or a file not done
    `deadline_seconds` after its first attempt started, is a LimitExceededError. Temporary
    failures are retried from the first byte under `client.retry` within the deadline; a 401 to
    the token gets one attempt with a fresh one. Each attempt holds a slot of `client.limiter`.
    """
    _check_url(file.url)
    if requires_token and not client.is_trusted(file.url):
        raise UntrustedUrlError(
            "a Bulk file needs the access token (requiresAccessToken) but lies outside the FHIR "
            "server and its trusted origins",
            url=file.url,
        )
    transfer = _Transfer(
        client,
        dest,
        requires_token=requires_token,
        max_bytes=max_bytes,
        deadline=deadline_seconds,
        clock=clock,
    )
    policy = client.retry
    failed = 0

    def backoff(exc: Exception) -> bool | float:
        nonlocal failed
        if not isinstance(exc, _RetryLater):
            return False
        failed += 1
        # The policy's attempts bound the retries and the file's deadline their time; its
        # budget for one request (timeout_total) is not applied, since one file may take longer.
        wait = policy.next_wait(failed, 0.0, retry_after=exc.wait, jitter=random.random())
        if wait is None or transfer.elapsed() + wait > deadline_seconds:
            return False
        what = f"Bulk file {dest.name}"
        log_retry(what, {"file": dest.name}, exc.error, failed, policy.attempts, wait, logger=log)
        return wait

    try:
        async for attempt in stamina.retry_context(
            on=backoff,
            attempts=policy.attempts,
            timeout=None,  # the file's deadline is checked in backoff
            wait_initial=policy.wait_initial,
            wait_max=policy.max_wait,
            wait_jitter=policy.wait_jitter,
        ):
            with attempt:
                size, digest = await transfer.fetch(file.url)
    except _RetryLater as exc:
        raise exc.error from exc.error.__cause__
    log.debug("Bulk file %s downloaded: %d bytes", dest.name, size)
    return DownloadedFile(url=file.url, type=file.type, path=dest.name, size=size, sha256=digest)


def plan_files(manifest: Manifest) -> list[tuple[str, OutputFile]]:
    """Every file of the manifest with its path in the job folder, in manifest order.

    Files are numbered per type within each section in manifest order (`Observation.000`,
    `Observation.001`), so a file's path is the same in every run that reads this manifest.
    A type that is not a FHIR resource type name is an InvalidResponseError: it becomes a path.
    """
    sections: tuple[tuple[Section, tuple[OutputFile, ...]], ...] = (
        ("output", manifest.output),
        ("error", manifest.error),
        ("deleted", manifest.deleted),
    )
    planned: list[tuple[str, OutputFile]] = []
    for section, files in sections:
        seen: dict[str, int] = {}
        for file in files:
            index = seen.get(file.type, 0)
            seen[file.type] = index + 1
            try:
                planned.append((relative_path(section, file.type, index), file))
            except ValueError:
                raise InvalidResponseError(
                    f"the export manifest's {section} names a type that is not a FHIR resource type"
                ) from None
    return planned


async def download_all(
    client: FhirClient,
    manifest: Manifest,
    folder: JobFolder,
    state: JobState,
    *,
    max_bytes: int,
    deadline_seconds: float,
    concurrency: int,
    on_file: Callable[[DownloadedFile], None] | None = None,
    clock: Clock = time.monotonic,
) -> JobState:
    """Download the manifest's files that `state.downloaded` lacks; `state`, updated and saved.

    Output files go to the top of the folder, error files to `errors/`, deleted-resource files to
    `deleted/` (see `plan_files` for their names); at most `concurrency` at once. `state.manifest`
    becomes `manifest`, and the state is saved after each finished file (a kill loses only the
    files in flight), then `on_file` is called with its record. A file counts as downloaded when
    a record has its path and its URL without query (signed URLs change when a manifest is
    fetched again). The first failure cancels the downloads in flight and is raised as it is.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    planned = plan_files(manifest)
    have = {(f.path, _without_query(f.url)) for f in state.downloaded}
    todo = [(path, f) for path, f in planned if (path, _without_query(f.url)) not in have]
    # A record of a path about to be rewritten no longer describes it, whatever happens next.
    rewritten = {path for path, _ in todo}
    state.manifest = manifest
    state.downloaded = [f for f in state.downloaded if f.path not in rewritten]
    folder.save(state)
    gate = asyncio.Semaphore(concurrency)

    async def one(path: str, file: OutputFile) -> None:
        async with gate:
            record = await download(
                client,
                file,
                folder.path / path,
                requires_token=manifest.requires_access_token,
                max_bytes=max_bytes,
                deadline_seconds=deadline_seconds,
                clock=clock,
            )
        record.path = path
        state.downloaded.append(record)
        folder.save(state)
        if on_file is not None:
            on_file(record)

    await _all_or_first_error([one(path, file) for path, file in todo])
    return state


async def _all_or_first_error(jobs: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run `jobs` together; on the first failure cancel the others and raise it (not a group)."""
    tasks = [asyncio.create_task(job) for job in jobs]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # no-op for the finished ones
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


# -- URL rules ---------------------------------------------------------------------------------


def _check_url(url: str) -> None:
    """https, or plain http only to this machine (as `adapter.bulk.manifest.is_file_url`)."""
    parsed = parse_url(url)
    if parsed is None:
        raise UntrustedUrlError("a Bulk file URL is not an absolute http(s) URL", url=url)
    scheme, host, _ = parsed.origin
    if scheme != "https" and not is_loopback(host):
        raise UntrustedUrlError(
            "a Bulk file on plain http, which only this machine may use", url=url
        )


def _next_hop(url: str, response: httpx.Response) -> str:
    location = response.headers.get("Location")
    if not location:
        raise InvalidResponseError(f"HTTP {response.status_code} without Location", url=url)
    try:
        target = str(httpx.URL(url).join(location))
    except httpx.InvalidURL:
        raise UntrustedUrlError("a redirect to an unusable URL", url=url) from None
    parsed = parse_url(target)
    if parsed is None:
        raise UntrustedUrlError("a redirect to a URL that is not http(s)", url=url)
    if httpx.URL(url).scheme == "https" and parsed.origin[0] != "https":
        raise UntrustedUrlError("a redirect from https to plain http", url=target)
    _check_url(target)
    return target


def _without_query(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
