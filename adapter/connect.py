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

from adapter.config import ServerConfig
from adapter.fhir.auth import build_auth
from adapter.fhir.capability import ServerCapabilities, read_capabilities
from adapter.fhir.client import FhirClient
from adapter.fhir.transport import http_client
from adapter.sources.base import Source
from adapter.sources.files import FolderSource
from adapter.sources.rest import FACT_ELEMENTS, RestSource

Say = Callable[[str], None]


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


@contextlib.asynccontextmanager
async def fhir_client(
    url: str, config: ServerConfig, *, env: Mapping[str, str]
) -> AsyncIterator[FhirClient]:
    """A FhirClient for `url` with the configured auth, retries and limits; closed on exit.

    A configured auth against a plain-http server or origin (other than this machine) is a
    ConfigError here, before any request (adapter.fhir.auth.build_auth).
    """
    client = http_client(timeout=config.timeout, proxy=config.proxy, ca_bundle=config.ca_bundle)
    async with client as http:
        auth = build_auth(
            config.auth,
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
) -> AsyncIterator[Source]:
    """A FolderSource for a path, a RestSource (capabilities read first) for a base URL."""
    if not is_url(text):
        folder = FolderSource(Path(text))
        try:
            yield folder
        finally:
            await folder.aclose()
        return
    async with fhir_client(text, config, env=env) as client:
        caps = await capabilities(client, say)
        rest = RestSource(
            client,
            batch_size=batch_size or config.batch_size,
            page_size=page_size or config.page_size,
            result_cap=config.result_cap,
            elements=FACT_ELEMENTS if config.use_elements else None,
            capabilities=caps,
        )
        try:
            yield rest
        finally:
            await rest.aclose()
