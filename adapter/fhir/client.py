"""The one HTTP seam to a FHIR server: URL trust, redirects and error classification.

`FhirClient` wraps an `httpx.AsyncClient` that the caller builds, configures (auth, timeouts,
limits) and closes; tests inject one mocked by respx. Every failure leaves as an
`adapter.errors.FhirError` subclass whose URL has no query string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

import httpx
import orjson

from adapter.errors import (
    TEMPORARY_STATUSES,
    ConfigError,
    HttpStatusError,
    InvalidResponseError,
    TemporaryHttpError,
    TransportError,
    UntrustedUrlError,
    redact_url,
)

JsonObject = dict[str, Any]
Params = Mapping[str, str] | Sequence[tuple[str, str]]

FHIR_JSON = "application/fhir+json"
FORM = "application/x-www-form-urlencoded"
MAX_REDIRECTS = 3
OUTCOME_LIMIT = 500

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
# OperationOutcome diagnostics often echo the request URL, query (patient ids) included.
_URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>]+")

Origin = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class _Parsed:
    origin: Origin
    segments: tuple[str, ...]


def _parse(url: str | httpx.URL) -> _Parsed | None:
    """Scheme, host and explicit port, and the decoded path segments; None if not a usable URL."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except httpx.InvalidURL:
        return None
    # Credentials in a link are never legitimate here and are a classic way to disguise a host.
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.host or parsed.userinfo:
        return None
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS[parsed.scheme]
    raw_path = parsed.raw_path.split(b"?", 1)[0].decode("ascii")
    return _Parsed((parsed.scheme, parsed.host.lower(), port), _segments(raw_path))


def _segments(raw_path: str) -> tuple[str, ...]:
    """Path segments, each percent-decoded, with dot segments resolved (RFC 3986 5.2.4).

    Decoding before resolving makes `/fhir/%2e%2e/admin` count as `/admin`, which is how many
    servers will read it.
    """
    out: list[str] = []
    for segment in raw_path.split("/")[1:]:
        text = unquote(segment)
        if text == "..":
            if out:
                out.pop()
        elif text != ".":
            out.append(text)
    if out and out[-1] == "":
        out.pop()
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ServerBase:
    """A FHIR server's base URL, parsed once; `url` always ends with a slash."""

    url: str
    origin: Origin
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, url: str) -> ServerBase:
        """Parse and normalise a base URL; a ConfigError if it cannot be one."""
        try:
            plain: httpx.URL | None = httpx.URL(url)
        except httpx.InvalidURL:
            plain = None
        parsed = _parse(plain) if plain is not None else None
        if plain is None or parsed is None or plain.query or plain.fragment:
            raise ConfigError(
                f"FHIR base URL must be http(s)://host[:port]/path without credentials, "
                f"query or fragment: {redact_url(url)}"
            )
        text = str(plain)
        return cls(text if text.endswith("/") else text + "/", parsed.origin, parsed.segments)

    def contains(self, url: str | httpx.URL) -> bool:
        """Whether `url` has this origin and its path is this base path or below it."""
        parsed = _parse(url)
        return parsed is not None and self._contains(parsed)

    def relative(self, url: str) -> str | None:
        """The path of `url` below this base (`Patient/1`), or None when it is not below it."""
        parsed = _parse(url)
        if parsed is None or not self._contains(parsed):
            return None
        return "/".join(parsed.segments[len(self.segments) :])

    def _contains(self, parsed: _Parsed) -> bool:
        # Segment-wise, so /fhir2 and /fhir-other are not under /fhir.
        depth = len(self.segments)
        return parsed.origin == self.origin and parsed.segments[:depth] == self.segments


def _origin(url: str) -> Origin:
    parsed = _parse(url)
    if parsed is None or parsed.segments:
        raise ConfigError(f"a trusted origin must be http(s)://host[:port]: {redact_url(url)}")
    return parsed.origin


def is_trusted(
    url: str | httpx.URL,
    base: ServerBase | str,
    extra_trusted_origins: Iterable[str] = (),
) -> bool:
    """Whether `url` is under `base` or on one of `extra_trusted_origins` (any path there).

    A parsed comparison: scheme, host (case-insensitive), port (default ports made explicit) and
    then the base path segment by segment. Never a substring test.
    """
    server = base if isinstance(base, ServerBase) else ServerBase.parse(base)
    origins = frozenset(_origin(o) for o in extra_trusted_origins)
    return _trusted(url, server, origins)


def _trusted(url: str | httpx.URL, base: ServerBase, origins: frozenset[Origin]) -> bool:
    parsed = _parse(url)
    if parsed is None:
        return False
    return base._contains(parsed) or parsed.origin in origins


def outcome_text(body: object) -> str:
    """An OperationOutcome's issue diagnostics (or details.text) joined with '; ', URLs redacted.

    Empty when `body` is not an OperationOutcome. Cut to OUTCOME_LIMIT characters: HAPI lists
    every valid search parameter in some of its messages.
    """
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    issues = body.get("issue")
    texts: list[str] = []
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics")
        if not isinstance(text, str) or not text.strip():
            details = issue.get("details")
            text = details.get("text") if isinstance(details, dict) else None
        if isinstance(text, str) and text.strip():
            texts.append(_URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text.strip()))
    joined = "; ".join(texts)
    return joined if len(joined) <= OUTCOME_LIMIT else joined[: OUTCOME_LIMIT - 1] + "…"


def _pairs(params: Params | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    return list(params.items()) if isinstance(params, Mapping) else list(params)


class FhirClient:
    """One FHIR server behind an injected `httpx.AsyncClient`, which the caller owns and closes.

    Requests go only to URLs under the base (or on `extra_trusted_origins`, which the operator
    thereby trusts with the client's credentials); redirects are followed only to such URLs.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        base: str | ServerBase,
        *,
        extra_trusted_origins: Iterable[str] = (),
    ) -> None:
        self.http = http
        self.base = base if isinstance(base, ServerBase) else ServerBase.parse(base)
        self._origins = frozenset(_origin(o) for o in extra_trusted_origins)

    def is_trusted(self, url: str | httpx.URL) -> bool:
        """Whether this client may send a request (and its credentials) to `url`."""
        return _trusted(url, self.base, self._origins)

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

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Any request (for sinks); `json` is sent as FHIR JSON. Error statuses raise."""
        extra = dict(headers or {})
        content = None
        if json is not None:
            content = orjson.dumps(json)
            extra.setdefault("Content-Type", FHIR_JSON)
        return await self._send(method, self.url(url), content=content, headers=extra)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        # The one place a retry policy wraps (a later issue): errors leave here classified, and
        # `FhirError.temporary` says which are worth another attempt.
        return await self._exchange(method, url, content, dict(headers or {}))

    async def _exchange(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str]
    ) -> httpx.Response:
        """One request, following trusted redirects by hand; error statuses raise."""
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._send_once(method, url, content, headers)
            if response.status_code not in _REDIRECTS:
                _raise_for_status(response, url)
                return response
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

    async def _send_once(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str]
    ) -> httpx.Response:
        request = self.http.build_request(
            method, url, content=content, headers={"Accept": FHIR_JSON, **headers}
        )
        try:
            return await self.http.send(request, follow_redirects=False)
        except httpx.TimeoutException as exc:
            raise TransportError("the FHIR server did not answer in time", url=url) from exc
        except httpx.TransportError as exc:
            raise TransportError(
                f"no answer from the FHIR server: {type(exc).__name__}", url=url
            ) from exc
        except httpx.DecodingError as exc:
            raise InvalidResponseError("response body could not be decoded", url=url) from exc


def _raise_for_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status < 400:
        return
    try:
        body: object = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    error = TemporaryHttpError if status in TEMPORARY_STATUSES else HttpStatusError
    raise error(status, url=url, outcome=outcome_text(body))


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
