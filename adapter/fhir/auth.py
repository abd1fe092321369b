"""Credentials for unattended runs against a FHIR server: none, bearer, basic, SMART backend.

Secrets come from environment variables or files that the configuration names, never from the
configuration or the command line; `build_auth` is handed the environment as a mapping, so nothing
below the CLI reads `os.environ`. The `httpx.Auth` flows themselves live in
`adapter.fhir.credentials` and are re-exported here; each adds its Authorization header only to URLs
under the FHIR base (or on `extra_trusted_origins`), whoever asks: `FhirClient` already refuses
other URLs, and this is the second lock on the same door.

SMART Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html): the token
endpoint comes from the configuration or from `[base]/.well-known/smart-configuration`; a client
assertion JWT signed with the site's private key buys an access token, which is cached, refreshed
before it expires, and refreshed once when the FHIR server answers 401.

The auth needs the client for its token requests and the client needs the auth, so:

    http = adapter.fhir.transport.http_client(timeout=...)
    http.auth = build_auth(site.auth, env=os.environ, base_url=site.base_url, http=http)
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, assert_never

import httpx
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

from adapter.errors import ConfigError
from adapter.fhir.credentials import (
    _B64TOKEN,
    ASSERTION_LIFETIME,
    ASSERTION_TYPE,
    DEFAULT_EXPIRES_IN,
    REFRESH_MARGIN,
    Algorithm,
    BasicAuth,
    BearerAuth,
    PrivateKey,
    SmartBackendAuth,
    _absolute_url,
)
from adapter.fhir.urls import ServerBase, require_tls

__all__ = [
    "ASSERTION_LIFETIME",
    "ASSERTION_TYPE",
    "DEFAULT_EXPIRES_IN",
    "DEFAULT_SCOPES",
    "MIN_RSA_BITS",
    "REFRESH_MARGIN",
    "Algorithm",
    "AuthConfig",
    "BasicAuth",
    "BasicAuthConfig",
    "BearerAuth",
    "BearerAuthConfig",
    "EnvName",
    "NoAuthConfig",
    "NonEmpty",
    "PrivateKey",
    "SmartBackendAuth",
    "SmartBackendAuthConfig",
    "build_auth",
    "load_private_key",
    "parse_auth_config",
]

DEFAULT_SCOPES = (
    "system/Patient.rs",
    "system/Observation.rs",
    "system/Condition.rs",
    "system/Procedure.rs",
)
MIN_RSA_BITS = 2048

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# v1 (.read, .write, .*) and v2 (.rs, .cruds, with an optional ?query) system scopes.
_SCOPE = re.compile(
    r"system/(?:\*|[A-Z][A-Za-z]{0,63})\.(?:read|write|\*|(?=[cruds])c?r?u?d?s?)(?:\?\S+)?"
)
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
    So does a FHIR server, trusted origin or token endpoint on plain http other than this
    machine: the credentials would travel in clear text (issue 11). `http` is the client the
    SMART token requests go through (the same one the auth is set on).
    """
    base = ServerBase.parse(base_url)
    origins = tuple(extra_trusted_origins)
    if isinstance(config, NoAuthConfig):
        return None
    require_tls(base.url, "the FHIR server")
    for origin in origins:
        require_tls(origin, "the trusted origin")
    if isinstance(config, SmartBackendAuthConfig) and config.token_endpoint is not None:
        require_tls(config.token_endpoint, "the token endpoint")
    match config:
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
    # Imported here: only SMART Backend Services needs cryptography (issue 15, start-up).
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

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
