"""Typed site configuration: how to reach the source and sink FHIR servers.

A site file (YAML, `--config` or `TRIAL_ADAPTER_CONFIG`) holds no secret itself: `auth` names the
environment variables or files the secrets come from (see adapter.fhir.auth). Relative file paths
are read from the config file's folder. Proxies and CA certificates come from here too, never
from the environment (`HTTPS_PROXY`, `SSL_CERT_FILE`: adapter.fhir.transport). Example:

```yaml
source:
  auth: {type: smart-backend, client_id: trial-adapter, private_key_file: key.pem,
         algorithm: ES384, kid: key-1}
  max_concurrent: 2
  requests_per_second: 10
  proxy: http://proxy.hospital.example:3128
  ca_bundle: hospital-ca.pem
sink:
  auth: {type: bearer, token_env: SINK_TOKEN}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapter import mapfiles
from adapter.errors import ConfigError, MappingError
from adapter.fhir.auth import AuthConfig, NoAuthConfig, parse_auth_config
from adapter.fhir.bodies import MIB
from adapter.fhir.limits import Limits, RetryPolicy, SearchLimits


class ServerConfig(BaseModel):
    """One FHIR server: its authentication, trust, limits and query sizes."""

    # allow_inf_nan=False: `.inf` seconds or a `nan` limit would switch a limit off unseen.
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )

    auth: AuthConfig = NoAuthConfig(type="none")
    #: other origins (scheme://host:port) trusted with the credentials, e.g. a Bulk file server
    trusted_origins: tuple[str, ...] = ()
    #: an HTTP proxy for every request to this server (http(s)://host:port); https goes through
    #: it in a CONNECT tunnel. The environment's HTTP(S)_PROXY is never used.
    proxy: str | None = None
    #: PEM file of the CA certificates to verify this server with, instead of the bundled ones
    #: (certifi); relative to the config file's folder. SSL_CERT_FILE is never used.
    ca_bundle: Path | None = None
    #: the deadline of each attempt of a request, connect to last body byte (`--timeout`)
    timeout: float = Field(default=60.0, gt=0)
    max_concurrent: int = Field(default=4, ge=1)
    requests_per_second: float | None = Field(default=None, gt=0)
    #: retries of temporary failures (408, 429, 5xx, no answer); attempts count the first one.
    #: The defaults outlast a one-minute outage (adapter.fhir.limits.RetryPolicy).
    retry_attempts: int = Field(default=10, ge=1)
    #: the longest wait between attempts, Retry-After included
    retry_max_wait: float = Field(default=120.0, ge=0)
    #: no retry starts later than this many seconds after a request's first attempt
    retry_budget_seconds: float = Field(default=300.0, gt=0)
    #: the largest response body read, in MiB (Bulk files are not responses of this kind)
    max_response_mb: float = Field(default=256.0, gt=0)
    #: the most pages one search may follow, and the longest it may take, in seconds
    max_pages_per_search: int = Field(default=10_000, ge=1)
    search_seconds: float = Field(default=3600.0, gt=0)
    batch_size: int = Field(default=100, ge=1)
    #: _count; servers cap it themselves (sekmet and HAPI at 1,000 / 500), and on a busy server
    #: each page costs about the same whatever it holds (bench/README.md)
    page_size: int = Field(default=1000, ge=1)
    #: the most results a server returns for one query (public HAPI: 10,000); None: no cap
    result_cap: int | None = Field(default=10_000, ge=1)
    #: ask for only the fields the criteria read, where the server honours `_elements`
    use_elements: bool = True

    @field_validator("auth", mode="before")
    @classmethod
    def _auth(cls, value: Any) -> AuthConfig:
        return parse_auth_config(value)

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url: httpx.URL | None = httpx.URL(value)
        except httpx.InvalidURL:
            url = None
        if (
            url is None
            or url.scheme not in ("http", "https")
            or not url.host
            or url.userinfo
            or url.path not in ("", "/")
            or url.query
            or url.fragment
        ):
            # A proxy password would be a secret in the configuration.
            raise ValueError("a proxy must be http(s)://host[:port], without credentials or path")
        return value

    def max_response_bytes(self) -> int:
        return int(self.max_response_mb * MIB)

    def search_limits(self) -> SearchLimits:
        return SearchLimits(max_pages=self.max_pages_per_search, seconds=self.search_seconds)

    def limits(self) -> Limits:
        return Limits(
            max_concurrent=self.max_concurrent, requests_per_second=self.requests_per_second
        )

    def retry(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.retry_attempts,
            max_wait=self.retry_max_wait,
            timeout_total=self.retry_budget_seconds,
        )


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    source: ServerConfig = ServerConfig()
    sink: ServerConfig = ServerConfig()
    #: the terminology server of `codesets refresh` (its proxy, CA bundle and timeout; no auth)
    terminology: ServerConfig = ServerConfig()
    #: the identifier system of the hospital's medical record number, shown in the worklist;
    #: without it the identifier of type MR is taken, else none (never another identifier:
    #: Synthea's first one is a social security number)
    mrn_system: str | None = None
    #: the state folder (locks); `--state-dir` overrides it, and without either the CLI uses
    #: $XDG_STATE_HOME/trial-adapter or ~/.local/state/trial-adapter (adapter.state)
    state_dir: Path | None = None
    #: the site mappings folder merged over the bundled one (adapter.site_mappings);
    #: `--site-mappings` overrides it
    site_mappings: Path | None = None


_FILE_KEYS = ("token_file", "password_file", "private_key_file")


def load_site_config(path: Path | None) -> SiteConfig:
    """The site file at `path` (defaults everywhere when None), validated with file and line."""
    if path is None:
        return SiteConfig()
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    data, lines = mapfiles.read_yaml(path)
    if data is None:
        data = {}
    if isinstance(data, dict):
        for side in ("source", "sink", "terminology"):
            server = data.get(side)
            auth = server.get("auth") if isinstance(server, dict) else None
            if isinstance(auth, dict):
                for key in _FILE_KEYS:
                    if isinstance(auth.get(key), str):
                        auth[key] = str((path.parent / auth[key]).expanduser())
            if isinstance(server, dict) and isinstance(server.get("ca_bundle"), str):
                server["ca_bundle"] = str(path.parent / Path(server["ca_bundle"]).expanduser())
        if isinstance(data.get("state_dir"), str):
            data["state_dir"] = str(path.parent / Path(data["state_dir"]).expanduser())
        if isinstance(data.get("site_mappings"), str):
            data["site_mappings"] = str(path.parent / Path(data["site_mappings"]).expanduser())
    try:
        return mapfiles.validate(SiteConfig, data, path, lines)
    except MappingError:
        raise
    except ValueError as exc:  # pragma: no cover - pydantic wraps validator errors above
        raise ConfigError(f"{path}: {exc}") from None
