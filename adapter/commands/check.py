"""`trial-adapter check`: prove the set-up before the first night, as `dbt debug` does.

One line per check on stdout, in the order a sweep meets them:

```
ok   config: /etc/trial-adapter/site.yaml
ok   trial: hcc-ablation-lenvatinib-pd1 (reads Patient, Condition, Observation, Procedure)
ok   source auth: SMART backend client trial-adapter, key /run/secrets/key.pem (ES384) loads
ok   source server: https://fhir.hospital.example/r4 answers (HAPI FHIR 7.4.0, FHIR 4.0.1)
FAIL source token: scope system/Observation.rs not granted (granted: system/Patient.rs ...)
ok   source capabilities: Patient by _id; Condition by patient, code; ...
skip sink: none configured (--sink or sink.url)
ok   out: /srv/trial-adapter/reports is writable
```

The exit code is 0 only when nothing failed; else the errors.py table's: 2 when the site file, a
secret, a trial or a folder is wrong (the site's to fix), 1 when a server, its token or its
capabilities are (the server's to fix, or its client registration). Both kinds: 2.

No patient data is read or printed: per server only `metadata` (without the `_elements` probe,
which searches Patient), SMART discovery and the token endpoint, and of a token only its granted
scopes. Requests are not retried: the check says how the servers answer now.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from adapter import notify, state
from adapter.commands.requirements import (
    describe_capabilities,
    judge_capabilities,
    missing_scopes,
    needed_scopes,
    source_types,
)
from adapter.config import ServerConfig, load_site_config
from adapter.connect import fhir_client, is_url, resolve_profile
from adapter.errors import AdapterError, ConfigError, ExitCode, MappingError, redact_url
from adapter.fhir.auth import (
    AuthConfig,
    BasicAuthConfig,
    BearerAuthConfig,
    NoAuthConfig,
    SmartBackendAuth,
    SmartBackendAuthConfig,
)
from adapter.fhir.bodies import SMALL_RESPONSE
from adapter.fhir.capability import ServerCapabilities
from adapter.fhir.capability import read_capabilities as read_metadata
from adapter.fhir.client import FhirClient
from adapter.fhir.urls import ServerBase
from adapter.report.files import check_writable_folder
from adapter.servers import GENERIC, ReadMode, ServerProfile
from adapter.servers import describe as describe_profile
from adapter.site_mappings import load_mappings
from adapter.trials import Trial, load_trial

Say = Callable[[str], None]

DEFAULT_OUT = Path("out")


class Status(enum.StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Line:
    """One check's result, as printed."""

    status: Status
    name: str
    message: str
    exit_code: ExitCode = ExitCode.OK

    def __str__(self) -> str:
        return f"{self.status.value:<4} {self.name}: {self.message}"


@dataclass
class Checks:
    """The lines said so far, and the exit code they add up to."""

    say: Say
    lines: list[Line] = field(default_factory=list)

    def add(self, line: Line) -> None:
        self.lines.append(line)
        self.say(str(line))

    def ok(self, name: str, message: str) -> None:
        self.add(Line(Status.OK, name, message))

    def skip(self, name: str, message: str) -> None:
        self.add(Line(Status.SKIP, name, message))

    def fail(self, name: str, message: str, exit_code: ExitCode = ExitCode.FATAL) -> None:
        self.add(Line(Status.FAIL, name, message, exit_code))

    def error(self, name: str, exc: AdapterError) -> None:
        """A failure whose message and code are the error's (its message holds no patient)."""
        self.fail(name, str(exc), exc.exit_code)

    @property
    def exit_code(self) -> ExitCode:
        return max((line.exit_code for line in self.lines), default=ExitCode.OK)


# -- the command -----------------------------------------------------------------------------------


async def run_checks(
    config_path: Path | None,
    *,
    source: str | None,
    sink: str | None,
    trials: Sequence[str],
    env: Mapping[str, str],
    say: Say,
    mappings: Path | None = None,
    site_mappings: Path | None = None,
    out_dir: Path | None = None,
    state_dir: Path | None = None,
    timeout: float | None = None,
    home: Path | None = None,
    profile: str | None = None,
    read: str | None = None,
) -> ExitCode:
    """Every check, each said as its line; the exit code they add up to.

    The site file and the trials are loaded here, so that a bad one is a FAIL line too.
    Command-line values (`source`, `sink`, `trials`, `site_mappings`, `out_dir`, `state_dir`,
    `timeout`) override the file's; `home` is where the default state folder is (~).
    """
    checks = Checks(say)
    try:
        site = load_site_config(config_path)
    except ConfigError as exc:
        checks.error("config", exc)
        return checks.exit_code
    checks.ok("config", str(config_path) if config_path else "none given: the defaults")
    server = {k: v for k, v in (("profile", profile), ("read", read)) if v is not None}
    if server:  # --profile and --read are the source server's
        site = site.model_copy(update={"source": site.source.model_copy(update=server)})
    loaded = _load_trials(
        checks, trials or site.trials, mappings, site_mappings or site.site_mappings
    )
    types = source_types(loaded)
    for side, given, config in (
        ("source", source or site.source.url, site.source),
        ("sink", sink or site.sink.url, site.sink),
    ):
        if timeout is not None:
            config = config.model_copy(update={"timeout": timeout})
        if not given:
            checks.skip(side, f"none configured (--{side} or {side}.url)")
        elif is_url(given):
            server_profile = GENERIC
            if side == "source":
                try:
                    server_profile = resolve_profile(
                        config, mappings, site_mappings or site.site_mappings
                    )
                except (ConfigError, MappingError) as exc:
                    checks.error("source profile", exc)
                    continue
            await _check_server(checks, side, given, config, types, env, server_profile)
        elif side == "source":
            _source_folder(checks, Path(given))
        else:
            _writable(checks, "sink", Path(given))
    out = out_dir or site.out_dir
    _writable(checks, "out", out or DEFAULT_OUT, note="" if out else " (the default)")
    chosen = state_dir or site.state_dir
    _state_folder(checks, chosen or state.default_state_dir(env, home or Path.home()))
    if site.notify is None:
        checks.skip("notify", "none configured")
    else:
        try:
            notify.read_secrets(site.notify, env)
        except ConfigError as exc:
            checks.error("notify", exc)
        else:
            checks.ok("notify", f"{site.notify.describe()}; its secrets resolve (nothing sent)")
    return checks.exit_code


def _load_trials(
    checks: Checks, names: Sequence[str], mappings_dir: Path | None, site_mappings: Path | None
) -> list[Trial]:
    if not names:
        checks.skip("trial", "none given (--trial or trials:); the source needs every read scope")
        return []
    try:
        maps = load_mappings(mappings_dir, site_mappings)
    except ConfigError as exc:
        checks.error("mappings", exc)
        return []
    loaded = []
    for name in names:
        try:
            trial = load_trial(name, mappings_dir, site_mappings, mappings=maps)
        except ConfigError as exc:
            checks.error("trial", exc)
            continue
        checks.ok("trial", _describe_trial(trial))
        loaded.append(trial)
    return loaded


def _describe_trial(trial: Trial) -> str:
    return f"{trial.id} (reads {', '.join(source_types([trial]))})"


# -- a FHIR server ---------------------------------------------------------------------------------


def describe_auth(auth: AuthConfig) -> str:
    """What signs in, and where its secret came from; never the secret."""
    match auth:
        case BearerAuthConfig():
            return f"bearer token from {_where(auth.token_env, auth.token_file)} resolves"
        case BasicAuthConfig():
            where = _where(auth.password_env, auth.password_file)
            return f"basic, user {auth.username}, password from {where} resolves"
        case SmartBackendAuthConfig():
            return (
                f"SMART backend client {auth.client_id}, key {auth.private_key_file} "
                f"({auth.algorithm}, kid {auth.kid}) loads"
            )
        case _:
            return "none (an open server)"


def _where(env_name: str | None, file: Path | None) -> str:
    return f"environment variable {env_name}" if env_name else f"file {file}"


async def _check_server(
    checks: Checks,
    side: str,
    url: str,
    config: ServerConfig,
    types: Sequence[str],
    env: Mapping[str, str],
    profile: ServerProfile = GENERIC,
) -> None:
    try:
        ServerBase.parse(url)
    except ConfigError as exc:
        checks.error(side, exc)
        return
    # One attempt per request: the check says how the server answers now, at once.
    quick = config.model_copy(update={"retry_attempts": 1})
    try:
        async with fhir_client(url, quick, env=env, profile=profile) as client:
            checks.ok(f"{side} auth", describe_auth(config.auth))
            caps = await _probe(checks, side, client, config.auth, types)
        if side == "source":
            _profile_line(checks, profile, caps, config.read or profile.read)
        return
    except ConfigError as exc:  # entering: a secret, the CA bundle, credentials over http
        checks.error(f"{side} auth", exc)
    if isinstance(config.auth, NoAuthConfig):
        checks.skip(f"{side} server", "not asked")
        return
    # Whether the server answers at all, without the credentials that could not be used.
    bare_config = quick.model_copy(update={"auth": NoAuthConfig()})
    async with fhir_client(url, bare_config, env=env, profile=profile) as bare:
        caps = await _probe(checks, side, bare, None, types)
    if side == "source":
        _profile_line(checks, profile, caps, config.read or profile.read)


def _profile_line(
    checks: Checks, profile: ServerProfile, caps: ServerCapabilities | None, read: ReadMode
) -> None:
    """What the server profile and the CapabilityStatement say together (issue 13): one line;
    their disagreements are said but fail nothing (a CapabilityStatement is often incomplete)."""
    checks.ok("source profile", "; ".join(describe_profile(profile, caps, read)))


async def _probe(
    checks: Checks,
    side: str,
    client: FhirClient,
    auth_config: AuthConfig | None,
    types: Sequence[str],
) -> ServerCapabilities | None:
    """Token, metadata, scopes and capabilities, each its line; never raises an AdapterError.
    Returns the CapabilityStatement read, if any."""
    http = client.http
    auth = http.auth
    witness = GrantWitness()
    token_error: AdapterError | None = None
    if isinstance(auth, SmartBackendAuth):
        http.event_hooks = {"request": [], "response": [witness]}
        try:
            await auth.prefetch()
        except AdapterError as exc:
            token_error = exc
            # A no-op auth: whether the server answers does not depend on the token.
            http.auth = httpx.Auth()
    caps = await _server(checks, side, client, without_token=token_error is not None)
    name = f"{side} token"
    if auth_config is None:
        checks.skip(name, "no usable credentials")
    elif isinstance(auth_config, NoAuthConfig):
        checks.skip(name, "no credentials configured")
    elif not isinstance(auth_config, SmartBackendAuthConfig):
        checks.skip(name, f"a {auth_config.type} credential's grants cannot be read without data")
    elif token_error is not None:
        checks.error(name, token_error)
    else:
        granted = witness.scopes if witness.scopes is not None else tuple(auth_config.scopes)
        missing = missing_scopes(needed_scopes(side, types, caps), granted)
        shown = " ".join(granted) or "none"
        if missing:
            plural = "s" if len(missing) > 1 else ""
            checks.fail(name, f"scope{plural} {', '.join(missing)} not granted (granted: {shown})")
        else:
            checks.ok(name, f"granted {shown} by {witness.endpoint or 'the token endpoint'}")
    name = f"{side} capabilities"
    if caps is None:
        checks.skip(name, "no CapabilityStatement")
        return None
    problems, notes = judge_capabilities(side, types, caps)
    if problems:
        checks.fail(name, "; ".join(problems))
    else:
        said = describe_capabilities(side, types, caps)
        checks.ok(name, said + "".join(f" ({note})" for note in notes))
    return caps


async def _server(
    checks: Checks, side: str, client: FhirClient, *, without_token: bool
) -> ServerCapabilities | None:
    name = f"{side} server"
    base = redact_url(client.base.url).rstrip("/")
    try:
        caps = await read_metadata(client, probe_elements=False)
    except AdapterError as exc:
        checks.error(name, exc)
        return None
    version = caps.fhir_version or ""
    if version and not version.startswith("4.0"):
        checks.fail(name, f"{base} answers as FHIR {version}: the adapter speaks R4 (4.0.x)")
        return caps
    what = f"{caps.software or 'software not named'}, FHIR {version or 'version not stated'}"
    asked = ", asked without a token" if without_token else ""
    checks.ok(name, f"{base} answers ({what}{asked})")
    return caps


class GrantWitness:
    """An httpx response hook that keeps the scopes a token endpoint grants, as the SMART auth
    reads its answer: the body is copied as it streams past, never read twice or apart from the
    auth's own size limit, and only `scope` is kept of it (never the token)."""

    def __init__(self) -> None:
        self.scopes: tuple[str, ...] | None = None
        self.endpoint = ""

    async def __call__(self, response: httpx.Response) -> None:
        request = response.request
        if request.method != "POST" or not isinstance(response.stream, httpx.AsyncByteStream):
            return
        try:
            form = request.content
        except httpx.RequestNotRead:
            return
        if b"grant_type=client_credentials" not in form:
            return
        self.endpoint = redact_url(str(request.url))
        response.stream = _Tee(response.stream, response.headers, self._seen)

    def _seen(self, body: bytes) -> None:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return  # the auth says what is wrong with the answer
        scope = parsed.get("scope") if isinstance(parsed, dict) else None
        # RFC 6749 5.1: a token response leaves out `scope` when it grants what was asked.
        self.scopes = tuple(scope.split()) if isinstance(scope, str) else None


class _Tee(httpx.AsyncByteStream):
    def __init__(
        self, inner: httpx.AsyncByteStream, headers: httpx.Headers, seen: Callable[[bytes], None]
    ) -> None:
        self._inner = inner
        self._headers = headers
        self._seen = seen
        self._raw = bytearray()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            if len(self._raw) <= SMALL_RESPONSE:
                self._raw += chunk
            yield chunk
        if len(self._raw) <= SMALL_RESPONSE:
            encoding = self._headers.get("Content-Encoding")
            headers = {"Content-Encoding": encoding} if encoding else {}
            with contextlib.suppress(httpx.DecodingError):
                self._seen(httpx.Response(200, headers=headers, content=bytes(self._raw)).read())

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- folders ---------------------------------------------------------------------------------------


def _source_folder(checks: Checks, path: Path) -> None:
    try:
        with os.scandir(path):
            pass
    except OSError as exc:
        checks.fail("source", f"folder {path}: {exc.strerror or exc}", ExitCode.USAGE)
        return
    checks.ok("source", f"folder {path} can be listed")


def _writable(checks: Checks, name: str, path: Path, *, note: str = "") -> None:
    """check_writable_folder's test (a file made and removed, nothing left), as a line."""
    try:
        check_writable_folder(path, "folder")
    except AdapterError as exc:
        checks.error(name, exc)
        return
    made = "is writable" if path.is_dir() else "can be created"
    checks.ok(name, f"{path} {made}{note}")


def _state_folder(checks: Checks, path: Path) -> None:
    """The state folder: writable, and not another user's (adapter.state refuses that)."""
    try:
        info = path.lstat()
    except OSError:
        info = None
    if info is not None and info.st_uid != os.getuid():
        checks.fail("state", f"folder {path} belongs to another user", ExitCode.USAGE)
        return
    _writable(checks, "state", path)
