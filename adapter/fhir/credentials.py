"""The `httpx.Auth` flows behind `adapter.fhir.auth`: bearer, basic, SMART Backend Services.

Every auth here adds its Authorization header only to URLs under the FHIR base (or on
`extra_trusted_origins`), whoever asks: `FhirClient` already refuses other URLs, and this is the
second lock on the same door.

SMART Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html): the token
endpoint comes from the configuration or from `[base]/.well-known/smart-configuration`; a client
assertion JWT signed with the site's private key buys an access token, which is cached, refreshed
before it expires, and refreshed once when the FHIR server answers 401.

Build these through `adapter.fhir.auth.build_auth`, which reads the secrets; this module reads none.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import httpx
import orjson

from adapter.errors import (
    TEMPORARY_STATUSES,
    ConfigError,
    FhirError,
    HttpStatusError,
    InvalidResponseError,
    TemporaryHttpError,
    TransportError,
    redact_url,
)
from adapter.fhir.bodies import SMALL_RESPONSE, read_bounded
from adapter.fhir.client import transport_error
from adapter.fhir.outcome import cut, outcome_text, parse_body
from adapter.fhir.urls import ServerBase, is_loopback, is_trusted

if TYPE_CHECKING:
    # cryptography and PyJWT are imported where a key is loaded or an assertion signed: every
    # start reads this module (the site file's auth types), few sign anything (issue 15).
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

# The logger keeps the name it had before the flows moved out of auth.py.
log = logging.getLogger("adapter.fhir.auth")

Algorithm = Literal["RS384", "ES384"]
PrivateKey: TypeAlias = "rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey"

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART Backend Services: the assertion's exp is "no more than five minutes in the future".
ASSERTION_LIFETIME = 300
# expires_in is required by SMART, whose recommended lifetime is 300 s: assume that when absent.
DEFAULT_EXPIRES_IN = 300
# Refresh this long before expiry (at most a fifth of the lifetime), to cover clock skew and
# requests that are still on their way when the token runs out.
REFRESH_MARGIN = 60.0

# RFC 6750 b64token: what may follow "Bearer " without breaking the header.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# OAuth error codes registered with IANA (RFC 6749 5.2, 6750 3.1, 8628, 8693, 8707, 9396,
# 9449, 7591): a message names one of these; anything else a server says stays in `detail`.
_OAUTH_ERRORS = """
    invalid_request invalid_client invalid_grant unauthorized_client unsupported_grant_type
    invalid_scope access_denied unsupported_response_type server_error temporarily_unavailable
    invalid_token insufficient_scope authorization_pending slow_down expired_token
    invalid_target unsupported_token_type invalid_authorization_details invalid_dpop_proof
    use_dpop_nonce invalid_redirect_uri invalid_client_metadata invalid_software_statement
    unapproved_software_statement
    """
OAUTH_ERRORS = frozenset(_OAUTH_ERRORS.split())


def _absolute_url(value: str) -> httpx.URL | None:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return None
    if url.scheme not in ("http", "https") or not url.host or url.userinfo or url.fragment:
        return None
    return url


# -- auth flows ----------------------------------------------------------------------------------


class _ServerAuth(httpx.Auth):
    """An auth that hands its credentials only to URLs under the FHIR base."""

    def __init__(self, *, base: ServerBase | str, extra_trusted_origins: Iterable[str]) -> None:
        self._base = base if isinstance(base, ServerBase) else ServerBase.parse(base)
        self._origins = tuple(extra_trusted_origins)
        is_trusted(self._base.url, self._base, self._origins)  # a bad origin fails here, not later

    def may_authorize(self, url: httpx.URL | str) -> bool:
        """Whether credentials may go to `url` (the same test as `FhirClient.is_trusted`)."""
        return is_trusted(url, self._base, self._origins)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={self._base.url!r})"


class _HeaderAuth(_ServerAuth):
    def __init__(
        self, header: str, *, base: ServerBase | str, extra_trusted_origins: Iterable[str]
    ) -> None:
        super().__init__(base=base, extra_trusted_origins=extra_trusted_origins)
        self.__header = header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.may_authorize(request.url):
            request.headers["Authorization"] = self.__header
        yield request


class BearerAuth(_HeaderAuth):
    """`Authorization: Bearer <token>` on requests under the FHIR base."""

    def __init__(
        self, token: str, *, base: ServerBase | str, extra_trusted_origins: Iterable[str] = ()
    ) -> None:
        super().__init__(f"Bearer {token}", base=base, extra_trusted_origins=extra_trusted_origins)


class BasicAuth(_HeaderAuth):
    """HTTP Basic (RFC 7617, UTF-8) on requests under the FHIR base."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        base: ServerBase | str,
        extra_trusted_origins: Iterable[str] = (),
    ) -> None:
        pair = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        super().__init__(f"Basic {pair}", base=base, extra_trusted_origins=extra_trusted_origins)


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    refresh_at: float


class SmartBackendAuth(_ServerAuth):
    """SMART Backend Services: client_credentials with a signed client assertion (async only).

    One token at a time, fetched under a lock so concurrent requests share it; refreshed a margin
    before it expires and once after a 401, when the request is retried once with the new token.
    """

    def __init__(
        self,
        *,
        client_id: str,
        private_key: PrivateKey,
        algorithm: Algorithm,
        kid: str,
        scopes: Sequence[str],
        http: httpx.AsyncClient,
        base: ServerBase | str,
        token_endpoint: str | None = None,
        jku: str | None = None,
        extra_trusted_origins: Iterable[str] = (),
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(base=base, extra_trusted_origins=extra_trusted_origins)
        self._client_id = client_id
        self._key = private_key
        self._algorithm = algorithm
        self._kid = kid
        self._scope = " ".join(scopes)
        self._http = http
        self._jku = jku
        self._now = now
        self._endpoint = None if token_endpoint is None else self._checked_endpoint(token_endpoint)
        self._token: _Token | None = None
        self._lock = asyncio.Lock()

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("SMART Backend Services auth needs an httpx.AsyncClient")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self.may_authorize(request.url):
            yield request
            return
        await request.aread()  # so the request can be sent a second time after a 401
        token = await self._access_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            # Tokens die early (revoked, server restarted, clocks apart): one fresh token and one
            # retry; a second 401 is the server's answer and goes back to the caller.
            token = await self._access_token(rejected=token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    async def prefetch(self) -> None:
        """Discover the endpoint and fetch a token now, so bad credentials fail before a sweep."""
        await self._access_token()

    async def _access_token(self, *, rejected: str | None = None) -> str:
        async with self._lock:
            token = self._token
            if token is not None and token.value != rejected and self._now() < token.refresh_at:
                return token.value
            self._token = None
            self._token = token = await self._fetch_token()
            return token.value

    async def _fetch_token(self) -> _Token:
        if self._endpoint is None:
            self._endpoint = await self._discover()
        endpoint = self._endpoint
        started = self._now()
        assertion = self._assertion(endpoint, started)
        form = {
            "grant_type": "client_credentials",
            "scope": self._scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        request = self._http.build_request(
            "POST", endpoint, data=form, headers={"Accept": "application/json"}
        )
        # The assertion in the body is the credential; no Authorization header goes here at all.
        request.headers.pop("Authorization", None)
        response = await self._send(request, "the token endpoint", endpoint)
        if not response.is_success:
            raise _token_error(response, endpoint, assertion)
        body = _json_object(response, endpoint, "token response")
        value = body.get("access_token")
        if not isinstance(value, str) or not _B64TOKEN.fullmatch(value):
            raise InvalidResponseError(
                "the token response has no usable access_token", url=endpoint
            )
        token_type = body.get("token_type")
        # RFC 6749 5.1: token_type is case-insensitive; Epic answers "Bearer", SMART shows "bearer".
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise InvalidResponseError(
                f"the token response's token_type is {str(token_type)[:20]!r}, not bearer",
                url=endpoint,
            )
        lifetime = _lifetime(body.get("expires_in"), endpoint)
        log.debug(
            "SMART access token for %s: %d s, scope %s",
            self._client_id,
            lifetime,
            body.get("scope") if isinstance(body.get("scope"), str) else "(not stated)",
        )
        return _Token(value, started + lifetime - min(REFRESH_MARGIN, lifetime / 5))

    def _assertion(self, audience: str, issued: float) -> str:
        headers = {"kid": self._kid, "typ": "JWT"}
        if self._jku is not None:
            headers["jku"] = self._jku
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": audience,
            "exp": int(issued) + ASSERTION_LIFETIME,
            "jti": uuid.uuid4().hex,
        }
        import jwt

        return jwt.encode(claims, self._key, algorithm=self._algorithm, headers=headers)

    async def _discover(self) -> str:
        url = self._base.url + ".well-known/smart-configuration"
        request = self._http.build_request("GET", url, headers={"Accept": "application/json"})
        request.headers.pop("Authorization", None)
        response = await self._send(request, "the FHIR server", url)
        status = response.status_code
        if not response.is_success:
            if status < 400:
                raise InvalidResponseError(f"SMART discovery answered HTTP {status}", url=url)
            hint = "no SMART configuration; set auth.token_endpoint" if status == 404 else ""
            error = TemporaryHttpError if status in TEMPORARY_STATUSES else HttpStatusError
            raise error(
                status,
                url=url,
                summary=hint or "SMART discovery failed",
                detail=outcome_text(parse_body(response.content)),
            )
        body = _json_object(response, url, "SMART configuration")
        endpoint = body.get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise InvalidResponseError(
                "the SMART configuration has no token_endpoint; set auth.token_endpoint", url=url
            )
        _require_listed(body, "token_endpoint_auth_methods_supported", "private_key_jwt", url)
        _require_listed(body, "grant_types_supported", "client_credentials", url)
        _require_listed(
            body, "token_endpoint_auth_signing_alg_values_supported", self._algorithm, url
        )
        return self._checked_endpoint(endpoint, discovered_at=url)

    def _checked_endpoint(self, endpoint: str, *, discovered_at: str = "") -> str:
        where = f" (from {redact_url(discovered_at)})" if discovered_at else ""
        url = _absolute_url(endpoint)
        if url is None:
            raise ConfigError(
                f"the token endpoint {redact_url(endpoint)}{where} is not an absolute http(s) URL"
            )
        # No downgrade: against an https server the assertion only travels over TLS too.
        if self._base.origin[0] == "https" and url.scheme != "https":
            raise ConfigError(
                f"the token endpoint {redact_url(endpoint)}{where} must use https, as the FHIR "
                "server does"
            )
        # The assertion buys a token: plain http only to this machine (issue 11).
        if url.scheme != "https" and not is_loopback(url.host):
            raise ConfigError(
                f"the token endpoint {redact_url(endpoint)}{where} is plain http: use https "
                "(plain http only to this machine: localhost, 127.0.0.0/8, ::1)"
            )
        return endpoint  # as given: `aud` must match the registered endpoint string exactly

    async def _send(self, request: httpx.Request, what: str, url: str) -> httpx.Response:
        # auth=None: the token and discovery requests must not re-enter this auth flow. Their
        # answers are small: a bounded body and a whole-request deadline, as FhirClient's.
        try:
            async with asyncio.timeout(self._http.timeout.read):
                response = await self._http.send(
                    request, auth=None, follow_redirects=False, stream=True
                )
                return await read_bounded(response, SMALL_RESPONSE, url)
        except TimeoutError as exc:
            raise TransportError(f"{what} did not answer in time", url=url) from exc
        except httpx.TransportError as exc:
            raise transport_error(exc, what, url) from exc


def _require_listed(body: Mapping[str, object], key: str, value: str, url: str) -> None:
    listed = body.get(key)
    if listed is not None and (not isinstance(listed, list) or value not in listed):
        raise ConfigError(
            f"the FHIR server's SMART configuration ({redact_url(url)}) does not list {value} in "
            f"{key}, which SMART Backend Services needs"
        )


def _json_object(response: httpx.Response, url: str, what: str) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise InvalidResponseError(f"the {what} is not a JSON object", url=url)
    return body


def _lifetime(value: object, url: str) -> int:
    if value is None:
        return DEFAULT_EXPIRES_IN
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and value.strip().isdigit():
        seconds = int(value)  # some servers send "300"
    if seconds is None or seconds < 1:
        raise InvalidResponseError("the token response's expires_in is not a lifetime", url=url)
    return int(seconds)


def _token_error(response: httpx.Response, endpoint: str, assertion: str) -> FhirError:
    """The token endpoint's refusal: its registered OAuth error code in the message (RFC 6749
    5.2), its free text (error_description, an OperationOutcome's) only in `detail`, scrubbed."""
    status = response.status_code
    if status < 400:
        return InvalidResponseError(f"the token endpoint answered HTTP {status}", url=endpoint)
    body = parse_body(response.content)
    code = body.get("error") if isinstance(body, dict) else None
    text = ""
    if isinstance(body, dict):
        parts = [code, body.get("error_description")]
        text = ": ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
        text = text or outcome_text(body)
    summary = "token request refused"
    if isinstance(code, str) and code in OAUTH_ERRORS:
        summary += f": {code}"
    error = TemporaryHttpError if status in TEMPORARY_STATUSES else HttpStatusError
    return error(status, url=endpoint, summary=summary, detail=_scrub(text, assertion))


def _scrub(text: str, assertion: str) -> str:
    """Server text made safe for a message: no echoed assertion or JWT, no URL queries."""
    text = text.replace(assertion, "<assertion>")
    text = _JWT_LIKE.sub("<JWT>", text)
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)
    return cut(_CONTROL.sub(" ", text))
