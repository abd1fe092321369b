"""Typed site configuration: one file for everything a nightly run needs.

A site file (YAML, `--config` or `TRIAL_ADAPTER_CONFIG`) names the source and sink servers, how to
sign in to them, the trials, the report and state folders and who is told when a sweep ends. It
holds no secret itself: `auth` and `notify` name the environment variables or files the secrets
come from (adapter.fhir.auth, adapter.notify). Relative file paths are read from the config
file's folder, so a site folder can be moved whole. Proxies and CA certificates come from here
too, never from the environment (`HTTPS_PROXY`, `SSL_CERT_FILE`: adapter.fhir.transport).
Command-line options override the file. Example:

```yaml
source:
  url: https://fhir.hospital.example/r4
  auth: {type: smart-backend, client_id: trial-adapter, private_key_file: key.pem,
         algorithm: ES384, kid: key-1}
  profile: epic          # mappings/servers/epic.yaml: per-patient reads
  max_concurrent: 2
  requests_per_second: 10
  proxy: http://proxy.hospital.example:3128
  ca_bundle: hospital-ca.pem
sink:
  url: https://fhir.hospital.example/r4
  auth: {type: bearer, token_env: SINK_TOKEN}
trials: [hcc-ablation-lenvatinib-pd1, trials/local-study.yaml]
out_dir: /srv/trial-adapter/reports
state_dir: /var/lib/trial-adapter
notify:
  smtp: {host: mail.hospital.example, from: trial-adapter@hospital.example,
         to: [research-office@hospital.example]}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapter import mapfiles
from adapter.errors import ConfigError, MappingError
from adapter.fhir.auth import AuthConfig, NoAuthConfig, parse_auth_config
from adapter.fhir.bodies import MIB
from adapter.fhir.limits import Limits, RetryPolicy, SearchLimits
from adapter.notify import NotifyConfig

#: trial names in `trials:` that are files (resolved against the config file's folder); any
#: other name is a trial id, looked up in the mappings
TRIAL_FILE_SUFFIXES = (".yaml", ".yml", ".json")


class ServerConfig(BaseModel):
    """One FHIR server: its authentication, trust, limits and query sizes."""

    # allow_inf_nan=False: `.inf` seconds or a `nan` limit would switch a limit off unseen.
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )

    #: the server's FHIR base URL (`--source` / `--sink` override it); http(s), no query
    url: str | None = None
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
    #: a folder source's worker processes (issue 15): None, one per core (at most 4); 1, none
    workers: int | None = Field(default=None, ge=1, le=64)
    #: the server family (mappings/servers/<name>.yaml, or the site folder's `servers/`):
    #: required and single-valued search parameters, post-filters, `_count` cap... (`--profile`)
    profile: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9\-]{0,63}$")
    #: `batch` (many patients per search) or `per-patient` (one each); default: the profile's
    #: (`--read`)
    read: Literal["batch", "per-patient"] | None = None
    #: Bulk Data export (`sweep --bulk`, issue 14): the longest wait between two status polls
    #: whatever Retry-After says, and the longest an export may take from kick-off to manifest
    bulk_max_wait: float = Field(default=120.0, ge=1, le=3600)
    bulk_seconds: float = Field(default=6 * 3600.0, gt=0)
    #: the largest export file, in MiB, and the longest its download may take, in seconds
    bulk_file_mb: float = Field(default=50 * 1024.0, gt=0)
    bulk_file_seconds: float = Field(default=3600.0, gt=0)
    #: an interrupted export is resumed (polled, its files downloaded) when it was started at
    #: most this many hours ago; an older one is started anew
    bulk_resume_hours: float = Field(default=24.0, gt=0)
    #: incremental Bulk runs (`_since` the last export) between full exports: a full export
    #: every this many days (`--full` forces one)
    full_every_days: int = Field(default=7, ge=1)

    @field_validator("auth", mode="before")
    @classmethod
    def _auth(cls, value: Any) -> AuthConfig:
        return parse_auth_config(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        # A query would be sent with every request; a password in the URL is a secret.
        if value is not None and not _plain_http_url(value, path=True):
            raise ValueError(
                "a FHIR base URL must be http(s)://host[:port]/path, without credentials, "
                "query or fragment"
            )
        return value

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        # A proxy password would be a secret in the configuration.
        if value is not None and not _plain_http_url(value, path=False):
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
    #: the trials a run sweeps: ids from the mappings, or trial files (`--trial` overrides them)
    trials: tuple[str, ...] = ()
    #: the folder the reports go under: each run's in `<trial>/<run id>/`, the newest one
    #: also as `<trial>/latest` (adapter.report.outdirs); `--out` (one run's folder) overrides it
    out_dir: Path | None = None
    #: who is told when a sweep ends, and how (adapter.notify); None: nobody
    notify: NotifyConfig | None = None


_FILE_KEYS = ("token_file", "password_file", "private_key_file")
_FOLDER_KEYS = ("state_dir", "site_mappings", "out_dir")


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
        _resolve_paths(data, path.parent)
    try:
        return mapfiles.validate(SiteConfig, data, path, lines)
    except MappingError:
        raise
    except ValueError as exc:  # pragma: no cover - pydantic wraps validator errors above
        raise ConfigError(f"{path}: {exc}") from None


def _resolve_paths(data: dict[str, Any], folder: Path) -> None:
    """Every relative file or folder of the site file made relative to `folder`, in place.

    Only strings are touched: anything else is left for validation to refuse with its line.
    """

    def at(text: str) -> str:
        return str(folder / Path(text).expanduser())

    def keys(mapping: object, names: tuple[str, ...]) -> None:
        if isinstance(mapping, dict):
            for name in names:
                if isinstance(mapping.get(name), str):
                    mapping[name] = at(mapping[name])

    for side in ("source", "sink", "terminology"):
        server = data.get(side)
        if isinstance(server, dict):
            keys(server.get("auth"), _FILE_KEYS)
            keys(server, ("ca_bundle",))
    keys(data, _FOLDER_KEYS)
    trials = data.get("trials")
    if isinstance(trials, list):
        # An id (`hcc-ablation-lenvatinib-pd1`) is not a path: only file names are resolved.
        data["trials"] = [
            at(t) if isinstance(t, str) and t.endswith(TRIAL_FILE_SUFFIXES) else t for t in trials
        ]
    notify = data.get("notify")
    if isinstance(notify, dict):
        keys(notify.get("smtp"), ("password_file", "ca_bundle"))
        webhook = notify.get("webhook")
        keys(webhook, ("url_file", "token_file", "ca_bundle"))
        headers = webhook.get("headers") if isinstance(webhook, dict) else None
        if isinstance(headers, dict):
            for value in headers.values():
                keys(value, ("file",))


def _plain_http_url(value: str, *, path: bool) -> bool:
    """http(s) with a host and no credentials, query or fragment (and no path unless `path`)."""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return False
    return (
        url.scheme in ("http", "https")
        and bool(url.host)
        and not url.userinfo
        and not url.query
        and not url.fragment
        and (path or url.path in ("", "/"))
    )
