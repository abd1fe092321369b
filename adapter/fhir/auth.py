"""Credentials for unattended runs against a FHIR server: none, bearer, basic, SMART backend.

Secrets come from environment variables or files that the configuration names, never from the
configuration or the command line; `build_auth` is handed the environment as a mapping, so nothing
below the CLI reads `os.environ`. Every `httpx.Auth` here adds its Authorization header only to URLs
under the FHIR base (or on `extra_trusted_origins`), whoever asks: `FhirClient` already refuses
other URLs, and this is the second lock on the same door.

SMART Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html): the token
endpoint comes from the configuration or from `[base]/.well-known/smart-configuration`; a client
assertion JWT signed with the site's private key buys an access token, which is cached, refreshed
before it expires, and refreshed once when the FHIR server answers 401.

The auth needs the client for its token requests and the client needs the auth, so:

    http = httpx.AsyncClient(timeout=...)
    http.auth = build_auth(site.auth, env=os.environ, base_url=site.base_url, http=http)
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
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, assert_never

import httpx
import jwt
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

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
from adapter.fhir.client import OUTCOME_LIMIT, ServerBase, is_trusted, outcome_text

log = logging.getLogger(__name__)

Algorithm = Literal["RS384", "ES384"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

DEFAULT_SCOPES = (
    "system/Patient.rs",
    "system/Observation.rs",
    "system/Condition.rs",
    "system/Procedure.rs",
)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART Backend Services: the assertion's exp is "no more than five minutes in the future".
ASSERTION_LIFETIME = 300
# expires_in is required by SMART, whose recommended lifetime is 300 s: assume that when absent.
DEFAULT_EXPIRES_IN = 300
# Refresh this long before expiry (at most a fifth of the lifetime), to cover clock skew and
# requests that are still on their way when the token runs out.
REFRESH_MARGIN = 60.0
MIN_RSA_BITS = 2048

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# v1 (.read, .write, .*) and v2 (.rs, .cruds, with an optional ?query) system scopes.
_SCOPE = re.compile(
    r"system/(?:\*|[A-Z][A-Za-z]{0,63})\.(?:read|write|\*|(?=[cruds])c?r?u?d?s?)(?:\?\S+)?"
)
# RFC 6750 b64token: what may follow "Bearer " without breaking the header.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INLINE_SECRETS = {
    "token": "token_env or token_file",
    "password": "password_env or password_file",
    "private_key": "private_key_file",
    "client_secret": "smart-backend with private_key_file (client secrets are not supported)",
}

EnvName = Annotated[str, StringConstraints(pattern=_ENV_NAME)]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


# -- configuration -------------------------------------------------------------------------------


class _AuthModel(BaseModel):
    # hide_input_in_errors: a secret pasted into the wrong field must not be echoed back.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key, instead in _INLINE_SECRETS.items():
                if key in data:
                    raise ValueError(
                        f"`{key}`: secrets never go in the configuration; use {instead}"
                    )
        return data

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        sources = type(self)._sources
        if sources and sum(getattr(self, name) is not None for name in sources) != 1:
            raise ValueError(f"give exactly one of {' and '.join(sources)}")
        return self

    _sources: ClassVar[tuple[str, ...]] = ()


class NoAuthConfig(_AuthModel):
    """No credentials: an open test server."""

    type: Literal["none"] = "none"


class BearerAuthConfig(_AuthModel):
    """A fixed bearer token, from an environment variable or a file."""

    _sources = ("token_env", "token_file")
    type: Literal["bearer"] = "bearer"
    token_env: EnvName | None = None
    token_file: Path | None = None


class BasicAuthConfig(_AuthModel):
    """HTTP Basic; the password from an environment variable or a file."""

    _sources = ("password_env", "password_file")
    type: Literal["basic"] = "basic"
    username: NonEmpty
    password_env: EnvName | None = None
    password_file: Path | None = None

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("a Basic user name cannot contain ':' (RFC 7617)")
        return value


class SmartBackendAuthConfig(_AuthModel):
    """SMART Backend Services: a registered client that signs its own assertion."""

    type: Literal["smart-backend"] = "smart-backend"
    client_id: NonEmpty
    private_key_file: Path
    algorithm: Algorithm
    kid: NonEmpty
    scopes: list[str] = Field(default_factory=lambda: list(DEFAULT_SCOPES), min_length=1)
    token_endpoint: str | None = None
    jku: str | None = None

    @field_validator("scopes")
    @classmethod
    def _system_scopes(cls, value: list[str]) -> list[str]:
        for scope in value:
            if not _SCOPE.fullmatch(scope):
                raise ValueError(
                    f"{scope!r} is not a SMART system scope "
                    "(system/<Type>.rs, system/<Type>.read, system/*.cruds ...)"
                )
        return value

    @field_validator("token_endpoint", "jku")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        # SMART: jku is "the TLS-protected URL to the JWK Set".
        schemes = ("https",) if info.field_name == "jku" else ("http", "https")
        url = None if value is None else _absolute_url(value)
        if value is not None and (url is None or url.scheme not in schemes):
            raise ValueError(f"not an absolute {'/'.join(schemes)} URL without credentials")
        return value


AuthConfig = Annotated[
    NoAuthConfig | BearerAuthConfig | BasicAuthConfig | SmartBackendAuthConfig,
    Field(discriminator="type"),
]
_AUTH_CONFIG: TypeAdapter[AuthConfig] = TypeAdapter(
    AuthConfig, config=ConfigDict(hide_input_in_errors=True)
)


def parse_auth_config(data: object) -> AuthConfig:
    """A site file's `auth:` mapping, validated; errors never echo the input (a pasted token)."""
    return _AUTH_CONFIG.validate_python(data)


def _absolute_url(value: str) -> httpx.URL | None:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return None
    if url.scheme not in ("http", "https") or not url.host or url.userinfo or url.fragment:
        return None
    return url


# -- building ------------------------------------------------------------------------------------


def build_auth(
    config: AuthConfig,
    *,
    env: Mapping[str, str],
    base_url: str,
    http: httpx.AsyncClient,
    extra_trusted_origins: Iterable[str] = (),
    now: Callable[[], float] = time.time,
) -> httpx.Auth | None:
    """The `httpx.Auth` for `config` with its secrets read now; None for `type: none`.

    Missing or unreadable secrets raise ConfigError naming the variable or file, never the value.
    `http` is the client the SMART token requests go through (the same one the auth is set on).
    """
    base = ServerBase.parse(base_url)
    origins = tuple(extra_trusted_origins)
    match config:
        case NoAuthConfig():
            return None
        case BearerAuthConfig():
            token = _read_secret("bearer token", config.token_env, config.token_file, env)
            if not _B64TOKEN.fullmatch(token):
                raise ConfigError(
                    f"the bearer token in {_source(config.token_env, config.token_file)} holds "
                    "characters a token cannot have (spaces, quotes, non-ASCII)"
                )
            return BearerAuth(token, base=base, extra_trusted_origins=origins)
        case BasicAuthConfig():
            password = _read_secret("password", config.password_env, config.password_file, env)
            return BasicAuth(config.username, password, base=base, extra_trusted_origins=origins)
        case SmartBackendAuthConfig():
            return SmartBackendAuth(
                client_id=config.client_id,
                private_key=load_private_key(config.private_key_file, config.algorithm),
                algorithm=config.algorithm,
                kid=config.kid,
                scopes=config.scopes,
                http=http,
                base=base,
                token_endpoint=config.token_endpoint,
                jku=config.jku,
                extra_trusted_origins=origins,
                now=now,
            )
        case _:
            assert_never(config)


def _source(env_name: str | None, file: Path | None) -> str:
    return f"environment variable {env_name}" if env_name is not None else f"file {file}"


def _read_secret(what: str, env_name: str | None, file: Path | None, env: Mapping[str, str]) -> str:
    """The secret from the env var or file, stripped; ConfigError naming where, never what."""
    where = _source(env_name, file)
    if env_name is not None:
        value = env.get(env_name)
        if value is None:
            raise ConfigError(f"the {what} is missing: {where} is not set")
    elif file is not None:
        try:
            value = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the {what} from {where}: {exc.strerror}") from None
        except UnicodeDecodeError:
            # `from None`: the decode error carries the file's bytes.
            raise ConfigError(f"the {what} in {where} is not UTF-8 text") from None
    else:  # pragma: no cover - the config models require one of the two
        raise ConfigError(f"no source for the {what}")
    value = value.strip()
    if not value:
        raise ConfigError(f"the {what} in {where} is empty")
    return value


def load_private_key(path: Path, algorithm: Algorithm) -> PrivateKey:
    """The unencrypted PEM key in `path`, checked to fit `algorithm` (RSA >= 2048, EC P-384)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the private key file {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"the private key file {path} is encrypted: give an unencrypted PEM key and protect "
            "the file instead"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"the private key file {path} is not a PEM private key") from None
    if algorithm == "RS384":
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS:
            return key
        raise ConfigError(f"RS384 needs an RSA key of at least {MIN_RSA_BITS} bits: {path}")
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return key
    raise ConfigError(f"ES384 needs an EC key on curve P-384: {path}")


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
            raise error(status, url=url, outcome=hint or "SMART discovery failed")
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
        return endpoint  # as given: `aud` must match the registered endpoint string exactly

    async def _send(self, request: httpx.Request, what: str, url: str) -> httpx.Response:
        # auth=None: the token and discovery requests must not re-enter this auth flow.
        try:
            return await self._http.send(request, auth=None, follow_redirects=False)
        except httpx.TimeoutException as exc:
            raise TransportError(f"{what} did not answer in time", url=url) from exc
        except httpx.TransportError as exc:
            raise TransportError(f"no answer from {what}: {type(exc).__name__}", url=url) from exc


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
    """The token endpoint's refusal with its OAuth error text (RFC 6749 5.2), secrets removed."""
    status = response.status_code
    if status < 400:
        return InvalidResponseError(f"the token endpoint answered HTTP {status}", url=endpoint)
    try:
        body: object = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    text = ""
    if isinstance(body, dict):
        parts = [body.get("error"), body.get("error_description")]
        text = ": ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
        text = text or outcome_text(body)
    text = _scrub(text, assertion)
    error = TemporaryHttpError if status in TEMPORARY_STATUSES else HttpStatusError
    outcome = f"token request refused: {text}" if text else "token request refused"
    return error(status, url=endpoint, outcome=outcome)


def _scrub(text: str, assertion: str) -> str:
    """Server text made safe for a message: no echoed assertion or JWT, no URL queries."""
    text = text.replace(assertion, "<assertion>")
    text = _JWT_LIKE.sub("<JWT>", text)
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= OUTCOME_LIMIT else text[: OUTCOME_LIMIT - 1] + "…"
