"""The one HTTP seam to a FHIR server: URL trust, redirects, error classification, retries, limits.

`FhirClient` wraps an `httpx.AsyncClient` that the caller builds, configures (auth, timeouts)
and closes; tests inject one mocked by respx. Errors are classified once, here; temporary ones
(`FhirError.temporary`) are retried with stamina under a `RetryPolicy` when the request is
idempotent, and every exchange waits for a slot of the `Limiter`. Each attempt, connect to last
body byte, has a deadline, and its body a size limit (adapter.fhir.bodies): a server that
trickles or floods holds neither a request nor the memory (issue 11). Every failure leaves as an
`adapter.errors.FhirError` subclass whose URL has no query string and no resource id.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import stamina

from adapter.errors import (
    CertificateError,
    FhirError,
    HttpStatusError,
    InvalidResponseError,
    TransportError,
    UntrustedUrlError,
    hide_ids,
    redact_url,
)
from adapter.fhir.bodies import DEFAULT_MAX_RESPONSE, read_bounded
from adapter.fhir.limits import (
    Clock,
    Limiter,
    Limits,
    RetryPolicy,
    SearchLimits,
    response_date,
    retry_after_seconds,
)
from adapter.fhir.outcome import status_error
from adapter.fhir.urls import ServerBase, origin_of, parse_url, within
from adapter.turns import pass_turn

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
Params = Mapping[str, str] | Sequence[tuple[str, str]]

FHIR_JSON = "application/fhir+json"
FORM = "application/x-www-form-urlencoded"
MAX_REDIRECTS = 3

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# RFC 9110 9.2.2: methods whose repetition has the effect of one request.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")


def _pairs(params: Params | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    return list(params.items()) if isinstance(params, Mapping) else list(params)


def is_idempotent(method: str, url: str, headers: Mapping[str, str] | None = None) -> bool:
    """Whether sending the request twice has the effect of sending it once, so it may be retried.

    GET, HEAD, OPTIONS, PUT and DELETE are; so are `POST [type]/_search` (a read) and a
    conditional create (`If-None-Exist`). A plain POST create or a transaction is not: a retry
    after a lost answer could create the resources twice.
    """
    method = method.upper()
    if method in _IDEMPOTENT:
        return True
    if method != "POST":
        return False
    if any(k.lower() == "if-none-exist" for k in headers or {}):
        return True
    parsed = parse_url(url)
    return parsed is not None and parsed.segments[-1:] == ("_search",)


#: asked before retrying a write whose answer was lost: the server's answer for what it holds
#: when the write was applied, else None (then the write is sent again)
Applied = Callable[[], Awaitable[httpx.Response | None]]


class _RetryLater(Exception):
    """A temporary failure of one attempt, a signal to stamina that never leaves FhirClient.

    `wait` is the server's Retry-After, already capped.
    """

    def __init__(self, error: FhirError, wait: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait


def retry_reason(error: FhirError) -> str:
    """Why an attempt failed, for the retry log line: `HTTP 503`, or the transport error class."""
    if isinstance(error, HttpStatusError):
        return f"HTTP {error.status}"
    cause = error.__cause__
    return type(cause).__name__ if cause is not None else type(error).__name__


def transport_error(exc: httpx.TransportError, what: str, url: str) -> FhirError:
    """The FhirError for an httpx transport failure talking to `what` (`the FHIR server`).

    A refused TLS certificate is a CertificateError, which is never retried: it will not pass
    by itself, and a nightly job should say so at once rather than after the retry budget.
    """
    refused = _refused_certificate(exc)
    if refused is not None:
        return CertificateError(
            f"the TLS certificate of {what} was refused: "
            f"{getattr(refused, 'verify_message', None) or refused}",
            url=url,
        )
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(f"{what} did not answer in time", url=url)
    return TransportError(f"no answer from {what}: {type(exc).__name__}", url=url)


def _refused_certificate(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        # httpx raises from httpcore's error, which is raised from the ssl module's.
        current = current.__cause__ or current.__context__
    return None


class FhirClient:
    """One FHIR server behind an injected `httpx.AsyncClient`, which the caller owns and closes.

    Requests go only to URLs under the base (or on `extra_trusted_origins`, which the operator
    thereby trusts with the client's credentials); redirects are followed only to such URLs.
    Temporary failures of idempotent requests are retried by `retry`; every exchange holds a
    slot of `limits` (a `Limiter` may be shared by the clients of one server). Each attempt must
    end within `deadline` seconds (None: the injected client's read timeout) with a body of at
    most `max_response_bytes` (None: any); `search_limits` bound each search (fhir.paging).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        base: str | ServerBase,
        *,
        extra_trusted_origins: Iterable[str] = (),
        retry: RetryPolicy | None = None,
        limits: Limits | Limiter | None = None,
        deadline: float | None = None,
        max_response_bytes: int | None = DEFAULT_MAX_RESPONSE,
        search_limits: SearchLimits | None = None,
        clock: Clock = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.http = http
        self.base = base if isinstance(base, ServerBase) else ServerBase.parse(base)
        self._origins = frozenset(origin_of(o) for o in extra_trusted_origins)
        self.retry = retry or RetryPolicy()
        self.limiter = limits if isinstance(limits, Limiter) else Limiter(limits)
        # httpx's timeouts bound each read, not the whole: a server that sends a byte every few
        # seconds never trips them (issue 11 held one request 120 s under a 10 s timeout).
        self.deadline = http.timeout.read if deadline is None else deadline
        self.max_response_bytes = max_response_bytes
        self.search_limits = search_limits or SearchLimits()
        # The retry budget and search time are measured on `clock`; tests give a simulated one.
        self.clock = clock
        self._jitter = jitter

    def is_trusted(self, url: str | httpx.URL) -> bool:
        """Whether this client may send a request (and its credentials) to `url`."""
        return within(url, self.base, self._origins)

    def resolve(self, url_or_path: str) -> str:
        """An absolute URL: a relative path is taken below the base, even with a leading slash."""
        try:
            parsed = httpx.URL(url_or_path)
        except httpx.InvalidURL as exc:
            raise UntrustedUrlError("not a usable URL", url=url_or_path) from exc
        if parsed.scheme or parsed.host:
            return str(httpx.URL(self.base.url).join(parsed))
        return self.base.url + url_or_path.lstrip("/")

    def url(self, url_or_path: str, params: Params | None = None) -> str:
        """The trusted absolute URL for `url_or_path` with `params` added to its query."""
        absolute = self.resolve(url_or_path)
        if not self.is_trusted(absolute):
            raise UntrustedUrlError("URL is outside the configured FHIR server", url=absolute)
        pairs = _pairs(params)
        return str(httpx.URL(absolute).copy_merge_params(tuple(pairs))) if pairs else absolute

    async def get_json(self, url_or_path: str, params: Params | None = None) -> JsonObject:
        """GET a FHIR JSON object; relative paths are taken below the base."""
        response = await self._send("GET", self.url(url_or_path, params))
        return _json_object(response)

    async def post_form_search(self, resource_type: str, params: Params) -> JsonObject:
        """`POST [type]/_search` with `params` as a form body: for searches too long for a URL."""
        if not _RESOURCE_TYPE.fullmatch(resource_type):
            raise ValueError(f"not a FHIR resource type: {resource_type!r}")
        body = urlencode(_pairs(params)).encode("ascii")
        url = self.url(f"{resource_type}/_search")
        response = await self._send("POST", url, content=body, headers={"Content-Type": FORM})
        return _json_object(response)

    def log_path(self, url: str) -> str:
        """A URL as logs show it: the path without query, resource ids and versions replaced.

        Queries carry patient ids (`patient=...`), and an id such as `ta-7710...` maps back to
        its patient (issue 11): `/fhir/ResearchSubject/{id}/_history/{vid}`, `/fhir/Patient`.
        """
        parsed = parse_url(url)
        if parsed is None or parsed.segments[: len(self.base.segments)] != self.base.segments:
            return "/{other}"  # a trusted origin's file URL: nothing of it is logged
        rest = hide_ids(parsed.segments[len(self.base.segments) :], leading_type=True)
        return "/" + "/".join((*self.base.segments, *rest))

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: object = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        applied: Applied | None = None,
    ) -> httpx.Response:
        """Any request (for sinks); `json` is sent as FHIR JSON. Error statuses raise.

        Temporary failures are retried when `idempotent`; None decides by `is_idempotent`.
        `applied` is asked before a retry that follows a lost answer (no HTTP answer: the
        server may have applied the write): the response it returns stands for the write's.
        """
        extra = dict(headers or {})
        content = None
        if json is not None:
            content = orjson.dumps(json)
            extra.setdefault("Content-Type", FHIR_JSON)
        target = self.url(url)
        if idempotent is None:
            idempotent = is_idempotent(method, target, extra)
        return await self._send(
            method, target, content=content, headers=extra, retry=idempotent, applied=applied
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
        applied: Applied | None = None,
    ) -> httpx.Response:
        """The exchange, with retries of temporary failures when `retry`; the last error raises.

        stamina runs the loop (and its test mode makes the waits instant); the waits and the
        budget are the policy's, decided in `backoff`, which logs each retry at warning.
        """
        plain = dict(headers or {})
        policy = self.retry
        started = self.clock()
        failed = 0
        lost = False

        def backoff(exc: Exception) -> bool | float:
            nonlocal failed
            if not isinstance(exc, _RetryLater):
                return False
            failed += 1
            elapsed = self.clock() - started
            wait = policy.next_wait(failed, elapsed, retry_after=exc.wait, jitter=self._jitter())
            if wait is None:
                return False
            path = self.log_path(url)
            fields = {"method": method, "path": path}
            log_retry(f"{method} {path}", fields, exc.error, failed, policy.attempts, wait)
            return wait

        try:
            if not retry or policy.attempts == 1:
                return await self._exchange(method, url, content, plain)
            async for attempt in stamina.retry_context(
                on=backoff,
                attempts=policy.attempts,
                timeout=None,  # the budget is policy.timeout_total, checked in backoff
                wait_initial=policy.wait_initial,
                wait_max=policy.max_wait,
                wait_jitter=policy.wait_jitter,
            ):
                with attempt:
                    if lost and applied is not None:
                        found = await applied()
                        if found is not None:
                            return found
                    try:
                        return await self._exchange(method, url, content, plain)
                    except _RetryLater as exc:
                        lost = isinstance(exc.error, TransportError)
                        raise
        except _RetryLater as exc:
            raise exc.error from exc.error.__cause__
        raise AssertionError("unreachable: stamina either returns or raises")

    async def _exchange(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str]
    ) -> httpx.Response:
        """One request, following trusted redirects by hand; error statuses raise.

        Temporary failures raise `_RetryLater`, which `_send` retries or unwraps.
        """
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = await self._send_once(method, url, content, headers)
            except FhirError as exc:
                # No answer, or (from the auth flow) a token endpoint's 429 or 5xx: an outage
                # takes both down, and the request's retry budget covers both.
                if not exc.temporary:
                    raise
                raise _RetryLater(exc) from exc
            if response.status_code not in _REDIRECTS:
                error = status_error(response, url)
                if error is None:
                    return response
                if error.temporary:
                    raise _RetryLater(error, self._retry_after(response))
                raise error
            location = response.headers.get("Location")
            if not location:
                raise InvalidResponseError(f"HTTP {response.status_code} without Location", url=url)
            target = str(httpx.URL(url).join(location))
            # httpx would follow a redirect anywhere; ours only go where the credentials may go.
            if not self.is_trusted(target):
                raise UntrustedUrlError(
                    f"redirect from {redact_url(url)} leaves the configured FHIR server",
                    url=target,
                )
            # RFC 9110 15.4: 303 always becomes a GET; 301/302 after a POST do in practice too.
            if response.status_code == 303 or (
                response.status_code in (301, 302) and method == "POST"
            ):
                method, content = "GET", None
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            url = target
        raise InvalidResponseError(f"more than {MAX_REDIRECTS} redirects", url=url)

    def _retry_after(self, response: httpx.Response) -> float | None:
        # 429 and 503 may carry Retry-After (RFC 9110 10.2.3); a busy EHR at night uses it.
        seconds = retry_after_seconds(
            response.headers.get("Retry-After"), now=response_date(response.headers.get("Date"))
        )
        return None if seconds is None else self.retry.capped(seconds)

    async def _send_once(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str]
    ) -> httpx.Response:
        request = self.http.build_request(
            method, url, content=content, headers={"Accept": FHIR_JSON, **headers}
        )
        try:
            # The body is read inside the slot, so a slot is one whole exchange; the deadline
            # starts once the slot is held (waiting for it is the adapter's doing).
            async with self.limiter.slot():
                try:
                    async with asyncio.timeout(self.deadline):
                        response = await self.http.send(
                            request, follow_redirects=False, stream=True
                        )
                        response = await read_bounded(response, self.max_response_bytes, url)
                except TimeoutError as exc:
                    raise TransportError("the FHIR server did not answer in time", url=url) from exc
        except httpx.TransportError as exc:
            raise transport_error(exc, "the FHIR server", url) from exc
        except httpx.DecodingError as exc:
            raise InvalidResponseError("response body could not be decoded", url=url) from exc
        # The slot is free: a request waiting for it leaves now, before this answer is parsed
        # and handled here, so the server works on it meanwhile (issue 15).
        await pass_turn()
        return response


def log_retry(
    what: str,
    fields: Mapping[str, str],
    error: FhirError,
    failed: int,
    attempts: int,
    wait: float,
    *,
    logger: logging.Logger = log,
) -> None:
    """One warning line for a retry: `what` failed (`GET /fhir/Patient`, `Bulk file
    Observation.000.ndjson`), why in a fixed word, the attempt and the wait; `fields` go to the
    JSON log as they are (never a query: they may hold patient ids or signatures)."""
    reason = retry_reason(error)
    logger.warning(
        "%s: %s on attempt %d of %d, retrying in %.1f s",
        what,
        reason,
        failed,
        attempts,
        wait,
        extra={
            "event": "retry",
            **fields,
            "reason": reason,
            "attempt": failed,
            "attempts": attempts,
            "wait": round(wait, 3),
        },
    )


def _json_object(response: httpx.Response) -> JsonObject:
    url = str(response.request.url)
    if not response.is_success:
        raise InvalidResponseError(f"unexpected HTTP {response.status_code}", url=url)
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise InvalidResponseError("response body is not JSON", url=url) from exc
    if not isinstance(body, dict):
        raise InvalidResponseError("response body is not a JSON object", url=url)
    return body
