"""The one way the adapter builds an `httpx.AsyncClient`: trust from the site file, not the shell.

httpx by default takes proxies from `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`, CA certificates
from `SSL_CERT_FILE`/`SSL_CERT_DIR` and credentials from `~/.netrc` (issue 11 saw a bearer token
go in clear text to a proxy named in the environment, and a self-signed server trusted through
`SSL_CERT_FILE`). Every client here has `trust_env=False`; a proxy and a CA bundle come only
from the site configuration (`ServerConfig.proxy`, `ServerConfig.ca_bundle`). TLS verification
is always on, and redirects are left to FhirClient's trust checks.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import httpx

from adapter.errors import ConfigError, redact_url

if TYPE_CHECKING:
    from pathlib import Path


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext | bool:
    """The certificates to verify servers with: `ca_bundle` (PEM) alone, else certifi's.

    True stands for httpx's default (certifi), which with `trust_env=False` ignores the
    environment. An unreadable bundle is a ConfigError naming the file.
    """
    if ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_bundle))
    except ssl.SSLError:
        reason = "it holds no PEM certificate"
    except OSError as exc:
        reason = exc.strerror or "it cannot be read"
    raise ConfigError(f"cannot use the CA bundle {ca_bundle}: {reason}")


def http_client(
    *, timeout: float, proxy: str | None = None, ca_bundle: Path | None = None
) -> httpx.AsyncClient:
    """An AsyncClient that ignores the environment, verifies TLS and follows no redirect.

    `proxy` (http(s)://host:port) carries every request; https goes through it in a CONNECT
    tunnel, so the proxy sees neither the credentials nor the data.
    """
    try:
        return httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            verify=tls_context(ca_bundle),
            proxy=proxy,
            trust_env=False,
        )
    except ValueError as exc:  # httpx refuses a proxy URL it cannot use
        raise ConfigError(f"cannot use the proxy {redact_url(proxy or '')}: {exc}") from None
