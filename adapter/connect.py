"""Opening sources and FHIR servers from the command line's words and the site configuration.

The one place that builds FHIR server clients: each server gets its own `httpx.AsyncClient`
(adapter.fhir.transport: TLS verification on, proxy and CA bundle from the site file and never
from the environment, redirects left to FhirClient's trust checks), its authentication, retries,
deadline, body and search limits from `ServerConfig`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from adapter.config import ServerConfig, SiteConfig
from adapter.errors import ConfigError
from adapter.fhir.auth import AuthConfig, SmartBackendAuthConfig, build_auth
from adapter.fhir.capability import ServerCapabilities, read_capabilities
from adapter.fhir.client import FhirClient
from adapter.fhir.transport import http_client
from adapter.servers import (
    DEFAULT_PROFILE,
    GENERIC,
    ServerProfile,
    load_profiles,
    profile_named,
    scopes_for,
)
from adapter.site_mappings import default_mappings_dir
from adapter.sources.base import Source
from adapter.sources.files import FolderSource
from adapter.sources.rest import FACT_ELEMENTS, RestSource

Say = Callable[[str], None]


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


@contextlib.asynccontextmanager
async def fhir_client(
    url: str, config: ServerConfig, *, env: Mapping[str, str], profile: ServerProfile = GENERIC
) -> AsyncIterator[FhirClient]:
    """A FhirClient for `url` with the configured auth, retries and limits; closed on exit.

    The server `profile`'s headers go with every request, and its token quirks shape the SMART
    Backend Services request (v1 scopes; the signing algorithms it accepts are checked first).

    A configured auth against a plain-http server or origin (other than this machine) is a
    ConfigError here, before any request (adapter.fhir.auth.build_auth).
    """
    client = http_client(timeout=config.timeout, proxy=config.proxy, ca_bundle=config.ca_bundle)
    async with client as http:
        http.headers.update(profile.headers)
        auth = build_auth(
            _auth_for(config.auth, profile),
            env=env,
            base_url=url,
            http=http,
            extra_trusted_origins=config.trusted_origins,
        )
        if auth is not None:
            http.auth = auth
        yield FhirClient(
            http,
            url,
            extra_trusted_origins=config.trusted_origins,
            retry=config.retry(),
            limits=config.limits(),
            deadline=config.timeout,
            max_response_bytes=config.max_response_bytes(),
            search_limits=config.search_limits(),
        )


def resolve_profile(
    config: ServerConfig, mappings_dir: Path | None, site_dir: Path | None
) -> ServerProfile:
    """The profile the source configuration names (`profile`, `--profile`), else `generic`."""
    profiles = load_profiles(mappings_dir or default_mappings_dir(), site_dir)
    return profile_named(config.profile or DEFAULT_PROFILE, profiles)


def source_profile(args: Any, site: SiteConfig) -> ServerProfile:
    """The source server's profile for a command's arguments (`--profile`, `--mappings`,
    `--site-mappings`, already merged into `site`); `generic` for a folder, which has none."""
    if not is_url(str(args.source)):
        return GENERIC
    site_dir = getattr(args, "site_mappings", None) or site.site_mappings
    return resolve_profile(site.source, getattr(args, "mappings", None), site_dir)


def _auth_for(auth: AuthConfig, profile: ServerProfile) -> AuthConfig:
    """The configured auth with the profile's token quirks applied (SMART Backend only)."""
    if not isinstance(auth, SmartBackendAuthConfig):
        return auth
    quirks = profile.token
    if auth.algorithm not in quirks.algorithms:
        raise ConfigError(
            f"source.auth.algorithm {auth.algorithm} is not one the {profile.name} profile's "
            f"token endpoint accepts ({', '.join(quirks.algorithms)})"
        )
    return auth.model_copy(update={"scopes": scopes_for(profile, auth.scopes)})


async def capabilities(client: FhirClient, say: Say) -> ServerCapabilities:
    """Read the CapabilityStatement once, and say (without patient data) what was adapted."""
    caps = await read_capabilities(client)
    for line in caps.describe():
        say(line)
    return caps


@contextlib.asynccontextmanager
async def open_source(
    text: str,
    config: ServerConfig,
    *,
    env: Mapping[str, str],
    say: Say,
    batch_size: int | None = None,
    page_size: int | None = None,
    profile: ServerProfile = GENERIC,
    exported: frozenset[str] = frozenset(),
) -> AsyncIterator[Source]:
    """A FolderSource for a path, a RestSource (capabilities read first) for a base URL.

    A server is searched as `profile` says, in `config.read` mode (default: the profile's).
    `exported`: the types a Bulk export in the folder asked for (a missing file is none of them).
    """
    if not is_url(text):
        folder = FolderSource(Path(text), exported=exported, workers=config.workers)
        try:
            yield folder
        finally:
            await folder.aclose()
        return
    async with fhir_client(text, config, env=env, profile=profile) as client:
        caps = await capabilities(client, say)
        rest = RestSource(
            client,
            batch_size=batch_size or config.batch_size,
            page_size=page_size or config.page_size,
            result_cap=config.result_cap,
            elements=FACT_ELEMENTS if config.use_elements else None,
            capabilities=caps,
            profile=profile,
            read=config.read,
        )
        say(f"server profile {profile.name}: reads {rest.reads.mode}")
        try:
            yield rest
        finally:
            await rest.aclose()
