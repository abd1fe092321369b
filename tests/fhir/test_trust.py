"""Trust comes from the site file, never the environment (issue 11, item 6), on local servers.

Real sockets on 127.0.0.1: a FHIR-ish server (plain, and TLS with a CA made here) and a recorder
that stands for a proxy. Proxies and CA bundles named in the environment change nothing; the
site's `proxy` and `ca_bundle` do; credentials never go over plain http to another machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapter.config import ServerConfig
from adapter.connect import fhir_client
from adapter.errors import (
    CertificateError,
    ConfigError,
    ExitCode,
    TransportError,
)
from adapter.fhir.auth import (
    BearerAuthConfig,
    NoAuthConfig,
    SmartBackendAuthConfig,
    build_auth,
)
from adapter.fhir.transport import http_client
from adapter.fhir.urls import is_loopback
from adapter.terminology import tx_client

ENVIRONMENT_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")
METADATA = {"resourceType": "CapabilityStatement", "status": "active"}
TOKEN = {"SITE_TOKEN": "s3cr3t-token"}
BEARER = BearerAuthConfig(token_env="SITE_TOKEN")


# -- local servers ---------------------------------------------------------------------------------


@dataclass
class Local:
    """A server on 127.0.0.1: the request lines and Authorization headers it saw, and how many
    connections it accepted (a refused TLS handshake is one too)."""

    scheme: str
    port: int = 0
    requests: list[str] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)
    connections: int = 0

    @property
    def origin(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


class _Handler(http.server.BaseHTTPRequestHandler):
    local: Local

    def do_GET(self) -> None:
        self._seen()
        body = json.dumps(METADATA).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self) -> None:
        """A proxy that refuses every tunnel, having seen only the CONNECT line."""
        self._seen()
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _seen(self) -> None:
        self.local.requests.append(self.requestline)
        self.local.authorization.append(self.headers.get("Authorization"))

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `Local.requests` instead."""


@contextlib.contextmanager
def serve(tls: ssl.SSLContext | None = None) -> Iterator[Local]:
    local = Local("https" if tls else "http")
    handler = type("Handler", (_Handler,), {"local": local})

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> Any:
            sock, address = self.socket.accept()
            local.connections += 1
            if tls is not None:  # a failed handshake (OSError) drops the connection
                sock = tls.wrap_socket(sock, server_side=True)
            return sock, address

    server = Server(("127.0.0.1", 0), handler)
    local.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield local
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    server: ssl.SSLContext


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA of the test's own and a certificate it signed for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trial-adapter test CA")])
    ca = (
        _certificate(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    host = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    leaf = (
        _certificate(host, ca_name, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (folder / "leaf.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "leaf.pem", folder / "leaf.key")
    return Tls(folder / "ca.pem", context)


def _certificate(
    subject: x509.Name, issuer: x509.Name, key: Any, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def metadata(base: str, config: ServerConfig, env: dict[str, str] | None = None) -> Any:
    """GET [base]/metadata through the client `adapter.connect` builds for `config`."""

    async def main() -> Any:
        async with fhir_client(base, config, env=env or {}) as client:
            return await client.get_json("metadata")

    return asyncio.run(main())


@pytest.fixture
def hostile_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[Local]:
    """Every proxy variable names a recorder, and nothing is exempt from it."""
    with serve() as proxy:
        for name in ENVIRONMENT_PROXIES:
            monkeypatch.setenv(name, proxy.origin)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        yield proxy


# -- the environment changes nothing ---------------------------------------------------------------


def test_proxies_named_in_the_environment_are_never_used(hostile_environment: Local) -> None:
    """HTTP(S)_PROXY and ALL_PROXY set: the request, bearer token included, goes straight to the
    server; the proxy sees nothing (issue 11: every request went to it in clear text)."""
    with serve() as server:
        found = metadata(f"{server.origin}/fhir", ServerConfig(auth=BEARER), TOKEN)
    assert found == METADATA
    assert server.requests == ["GET /fhir/metadata HTTP/1.1"]
    assert server.authorization == ["Bearer s3cr3t-token"]
    assert hostile_environment.requests == []


def test_every_client_the_adapter_builds_ignores_the_environment(
    hostile_environment: Local,
) -> None:
    """The terminology client too (`tx_client` builds through the same function)."""
    for client in (http_client(timeout=5), tx_client(5)):
        assert client.trust_env is False
        with serve() as server:

            async def get(c: httpx.AsyncClient = client, s: Local = server) -> int:
                async with c:
                    return (await c.get(f"{s.origin}/fhir/metadata")).status_code

            assert asyncio.run(get()) == 200
            assert len(server.requests) == 1
    assert hostile_environment.requests == []


def test_a_ca_bundle_named_in_the_environment_is_not_trusted(
    tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE and SSL_CERT_DIR name the test CA: its server is still refused, with a
    CertificateError that says `certificate`, after one attempt (never retried)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    monkeypatch.setenv("SSL_CERT_DIR", str(tls.ca_file.parent))
    with serve(tls.server) as server, pytest.raises(CertificateError) as caught:
        metadata(f"{server.origin}/fhir", ServerConfig(retry_attempts=5, timeout=5))
    message = str(caught.value)
    assert "certificate" in message
    assert "no answer" not in message
    assert not caught.value.temporary
    assert caught.value.exit_code == ExitCode.FATAL
    assert server.connections == 1
    assert server.requests == []


# -- the site file decides -------------------------------------------------------------------------


def test_the_sites_ca_bundle_is_trusted(tls: Tls) -> None:
    """ca_bundle names the CA: its server answers over verified TLS."""
    with serve(tls.server) as server:
        found = metadata(f"{server.origin}/fhir", ServerConfig(ca_bundle=tls.ca_file))
    assert found == METADATA
    assert server.requests == ["GET /fhir/metadata HTTP/1.1"]


@pytest.mark.parametrize(("content", "reason"), [(None, "No such file"), ("not PEM", "no PEM")])
def test_an_unusable_ca_bundle_is_a_config_error_naming_it(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_text(content)
    with pytest.raises(ConfigError, match=reason) as caught:
        http_client(timeout=5, ca_bundle=bundle)
    assert str(bundle) in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE


def test_the_sites_proxy_carries_plain_http_requests() -> None:
    """proxy: an http request goes to the proxy in absolute form; the server sees none."""
    with serve() as proxy, serve() as server:
        config = ServerConfig(proxy=proxy.origin, retry_attempts=1)
        assert metadata(f"{server.origin}/fhir", config) == METADATA
    assert proxy.requests == [f"GET {server.origin}/fhir/metadata HTTP/1.1"]
    assert server.requests == []


def test_https_through_the_sites_proxy_is_a_tunnel_the_proxy_cannot_read(tls: Tls) -> None:
    """An https server behind the proxy: the proxy sees only CONNECT host:port, no token."""
    with serve() as proxy, serve(tls.server) as server:
        config = ServerConfig(
            auth=BEARER, proxy=proxy.origin, ca_bundle=tls.ca_file, retry_attempts=1
        )
        with pytest.raises(TransportError):  # this proxy refuses every tunnel
            metadata(f"{server.origin}/fhir", config, TOKEN)
    assert proxy.requests == [f"CONNECT 127.0.0.1:{server.port} HTTP/1.1"]
    assert proxy.authorization == [None]
    assert server.connections == 0


# -- no credentials in clear text ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("127.4.5.6", True),
        ("[::1]", True),
        ("::1", True),
        ("10.0.0.5", False),
        ("fhir.example", False),
        ("localhost.example", False),
        ("[::2]", False),
        ("0.0.0.0", False),
    ],
)
def test_loopback_is_localhost_127_slash_8_and_colon_colon_1(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    "base",
    ["http://fhir.example/fhir", "http://10.0.0.5:8080/R4", "http://fhir.example.localhost.evil/"],
)
@pytest.mark.parametrize("auth", ["bearer", "smart"])
@respx.mock
def test_credentials_for_a_plain_http_server_are_refused_before_any_request(
    base: str, auth: str, tmp_path: Path
) -> None:
    """A configured auth with an http base URL on another machine: ConfigError (exit 2), one
    line naming the URL; nothing is sent, not even discovery."""
    configs = {"bearer": BEARER, "smart": _smart(tmp_path)}
    with pytest.raises(ConfigError) as caught:
        metadata(base, ServerConfig(auth=configs[auth]), TOKEN)
    message = str(caught.value)
    assert message.startswith(f"the FHIR server {base.rstrip('/')}/ is plain http")
    assert "\n" not in message
    assert caught.value.exit_code == ExitCode.USAGE
    assert not respx.calls


@pytest.mark.parametrize(
    "base",
    ["http://127.0.0.1:8765/fhir", "http://localhost:8080/fhir", "http://[::1]:8080/fhir"],
)
def test_plain_http_to_this_machine_may_carry_credentials(base: str) -> None:
    """The local test server and a tunnel's end on this machine keep working."""
    assert build_auth(BEARER, env=TOKEN, base_url=base, http=httpx.AsyncClient()) is not None


def test_plain_http_without_credentials_is_allowed() -> None:
    """An open test server needs nothing to protect: no auth, no refusal."""
    auth = build_auth(
        NoAuthConfig(), env={}, base_url="http://fhir.example/fhir", http=httpx.AsyncClient()
    )
    assert auth is None


@pytest.mark.parametrize(
    ("origins", "refused"),
    [
        (("http://files.example",), "the trusted origin http://files.example"),
        (("https://files.example", "http://10.1.2.3:9000"), "http://10.1.2.3:9000"),
        (("https://files.example", "http://127.0.0.1:9000"), None),
    ],
)
def test_a_plain_http_trusted_origin_is_refused_with_credentials(
    origins: tuple[str, ...], refused: str | None
) -> None:
    """Trusted origins get the credentials too: the same rule."""

    def build() -> object:
        return build_auth(
            BEARER,
            env=TOKEN,
            base_url="https://fhir.example/fhir",
            http=httpx.AsyncClient(),
            extra_trusted_origins=origins,
        )

    if refused is None:
        assert build() is not None
        return
    with pytest.raises(ConfigError, match="is plain http") as caught:
        build()
    assert refused in str(caught.value)


def test_a_configured_plain_http_token_endpoint_is_refused_without_its_query(
    tmp_path: Path,
) -> None:
    config = _smart(tmp_path, token_endpoint="http://auth.example/token?tenant=t-42")
    with pytest.raises(ConfigError) as caught:
        build_auth(config, env={}, base_url="http://127.0.0.1:8765/fhir", http=httpx.AsyncClient())
    assert str(caught.value).startswith("the token endpoint http://auth.example/token is plain")
    assert "t-42" not in str(caught.value)


@respx.mock
def test_a_discovered_plain_http_token_endpoint_is_refused_before_the_assertion_goes(
    tmp_path: Path,
) -> None:
    """A local server whose SMART configuration names a token endpoint elsewhere over http:
    ConfigError at discovery; no token request."""
    base = "http://127.0.0.1:8765/fhir"
    respx.get(f"{base}/.well-known/smart-configuration").respond(
        200, json={"token_endpoint": "http://auth.example/token"}
    )
    token = respx.post("http://auth.example/token")
    with pytest.raises(ConfigError, match=r"token endpoint http://auth\.example/token .*plain"):
        metadata(base, ServerConfig(auth=_smart(tmp_path)))
    assert token.call_count == 0


def _smart(folder: Path, **extra: Any) -> SmartBackendAuthConfig:
    key = ec.generate_private_key(ec.SECP384R1())
    path = folder / "key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return SmartBackendAuthConfig(
        client_id="trial-adapter", private_key_file=path, algorithm="ES384", kid="k1", **extra
    )
