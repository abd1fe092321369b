"""Authentication: config models, bearer/basic, SMART Backend Services against respx servers."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jwt
import pytest
import respx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from adapter.errors import (
    ConfigError,
    HttpStatusError,
    LimitExceededError,
    TemporaryHttpError,
    TransportError,
)
from adapter.fhir.auth import (
    ASSERTION_TYPE,
    BasicAuthConfig,
    BearerAuthConfig,
    NoAuthConfig,
    SmartBackendAuth,
    SmartBackendAuthConfig,
    build_auth,
    parse_auth_config,
)
from adapter.fhir.client import FhirClient

# https: credentials never go over plain http to another machine (adapter.fhir.urls.require_tls)
BASE = "https://fhir.test/fhir"
SMART_CONFIGURATION = f"{BASE}/.well-known/smart-configuration"
TOKEN_URL = "https://auth.test/oauth2/token"
PATIENT = f"{BASE}/Patient/p1"
T0 = 1_750_000_000.0

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class Clock:
    """A settable stand-in for time.time."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class TokenEndpoint:
    """An OAuth token endpoint that verifies each client assertion with the client's public key."""

    def __init__(self, key: Key, algorithm: str) -> None:
        self.public_key = key.public_key()
        self.algorithm = algorithm
        self.forms: list[dict[str, str]] = []
        self.headers: list[dict[str, Any]] = []
        self.claims: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert "authorization" not in request.headers
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        form = dict(parse_qsl(request.content.decode()))
        assertion = form["client_assertion"]
        self.forms.append(form)
        self.headers.append(jwt.get_unverified_header(assertion))
        self.claims.append(
            jwt.decode(
                assertion,
                self.public_key,
                algorithms=[self.algorithm],
                audience=TOKEN_URL,
                # The assertion was made at the frozen T0; its exp is checked exactly below.
                options={"verify_exp": False, "require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        )
        return httpx.Response(
            200,
            json={
                "access_token": f"access-{len(self.forms)}",
                "token_type": "bearer",
                "expires_in": 300,
                "scope": form["scope"],
            },
        )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def write_pem(path: Path, key: Key, password: bytes | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


def smart_config(key_file: Path, algorithm: str = "RS384", **extra: Any) -> SmartBackendAuthConfig:
    return SmartBackendAuthConfig.model_validate(
        {
            "client_id": "trial-adapter",
            "private_key_file": key_file,
            "algorithm": algorithm,
            "kid": "key-2025",
            **extra,
        }
    )


def serve_discovery(**overrides: Any) -> respx.Route:
    """An Epic-like `.well-known/smart-configuration` that points at TOKEN_URL."""
    body = {
        "token_endpoint": TOKEN_URL,
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "scopes_supported": ["system/*.rs", "system/*.read"],
        "capabilities": ["client-confidential-asymmetric"],
        **overrides,
    }
    return respx.get(SMART_CONFIGURATION).respond(200, json=body)


def patient_seen_with(*accepted: str) -> Callable[[httpx.Request], httpx.Response]:
    """The FHIR server: a Patient for an accepted bearer token, 401 for anything else."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") in {f"Bearer {t}" for t in accepted}:
            return httpx.Response(200, json={"resourceType": "Patient", "id": "p1"})
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            json={
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "login", "diagnostics": "Unauthorized"}],
            },
        )

    return handler


def run(
    config: Any,
    call: Callable[[FhirClient, httpx.AsyncClient], Awaitable[Any]],
    *,
    env: Mapping[str, str] | None = None,
    clock: Clock | None = None,
) -> Any:
    """Run `call` with an AsyncClient on BASE whose auth is built from `config`."""

    async def main() -> Any:
        async with httpx.AsyncClient() as http:
            auth = build_auth(config, env=env or {}, base_url=BASE, http=http, now=clock or Clock())
            if auth is not None:  # the `auth` setter takes no None
                http.auth = auth
            return await call(FhirClient(http, BASE), http)

    return asyncio.run(main())


async def get_patient(client: FhirClient, http: httpx.AsyncClient) -> Any:
    return await client.get_json("Patient/p1")


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("type: none", NoAuthConfig),
        ("type: bearer\ntoken_env: EHR_TOKEN", BearerAuthConfig),
        ("type: bearer\ntoken_file: /run/secrets/ehr-token", BearerAuthConfig),
        ("type: basic\nusername: adapter\npassword_env: EHR_PASSWORD", BasicAuthConfig),
        (
            "type: smart-backend\nclient_id: abc\nprivate_key_file: /run/secrets/key.pem\n"
            "algorithm: ES384\nkid: k1\nscopes: [system/Patient.read, system/Observation.rs]",
            SmartBackendAuthConfig,
        ),
    ],
)
def test_auth_config_is_a_union_on_type(text: str, kind: type) -> None:
    """Each `auth:` shape a site file holds parses to its own model."""
    assert isinstance(parse_auth_config(yaml.safe_load(text)), kind)


def test_smart_backend_scopes_default_to_read_and_search_of_the_four_types() -> None:
    """Without scopes the client asks for v2 rs on Patient, Observation, Condition, Procedure."""
    config = smart_config(Path("key.pem"))
    assert config.scopes == [
        "system/Patient.rs",
        "system/Observation.rs",
        "system/Condition.rs",
        "system/Procedure.rs",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "bearer"}, "exactly one of token_env and token_file"),
        ({"type": "bearer", "token_env": "A", "token_file": "f"}, "exactly one"),
        ({"type": "bearer", "token": "abc"}, "use token_env or token_file"),
        ({"type": "basic", "username": "u", "password": "pw"}, "use password_env or"),
        ({"type": "basic", "username": "a:b", "password_env": "P"}, "cannot contain ':'"),
        ({"type": "bearer", "token_env": "not a name"}, "token_env"),
        ({"type": "smart-backend", "client_id": "c"}, "private_key_file"),
        ({"type": "oauth"}, "does not match any of the expected tags"),
    ],
)
def test_auth_config_refuses_bad_shapes(data: dict[str, Any], message: str) -> None:
    """Missing, doubled or inline secrets and unknown types are refused with the field named."""
    with pytest.raises(ValidationError, match=message):
        parse_auth_config(data)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"scopes": ["patient/Observation.rs"]}, "not a SMART system scope"),
        ({"scopes": ["system/Observation.sr"]}, "not a SMART system scope"),
        ({"scopes": []}, "at least 1 item"),
        ({"algorithm": "RS256"}, "RS384"),
        ({"jku": "http://keys.test/jwks.json"}, "https"),
        ({"token_endpoint": "auth.test/token"}, "absolute"),
    ],
)
def test_smart_backend_config_refuses_bad_values(extra: dict[str, Any], message: str) -> None:
    """Non-system scopes, other algorithms, a plain-http jku and relative endpoints are refused."""
    with pytest.raises(ValidationError, match=message):
        parse_auth_config(
            {"type": "smart-backend", **smart_config(Path("k")).model_dump(), **extra}
        )


@pytest.mark.parametrize(
    "scope",
    ["system/Patient.read", "system/Observation.rs", "system/*.cruds", "system/Observation.rs?a=b"],
)
def test_smart_backend_config_takes_v1_and_v2_scopes(scope: str) -> None:
    """SMART v1 `.read` and v2 `.rs` scopes, with wildcards and v2 query filters, are accepted."""
    assert smart_config(Path("k"), scopes=[scope]).scopes == [scope]


def test_config_errors_never_echo_a_pasted_secret() -> None:
    """A token pasted where a variable name belongs is not repeated in the error."""
    secret = "eyJhbGciOiJSUzM4NCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    with pytest.raises(ValidationError) as caught:
        parse_auth_config({"type": "bearer", "token_env": secret})
    assert secret not in str(caught.value)


# -- bearer and basic --------------------------------------------------------------------------


def authorization_sent(config: Any, *, env: Mapping[str, str] | None = None) -> str | None:
    """The Authorization header the FHIR server receives for one read."""
    route = respx.get(PATIENT).respond(200, json={"resourceType": "Patient", "id": "p1"})
    run(config, get_patient, env=env)
    header: str | None = route.calls.last.request.headers.get("authorization")
    return header


@respx.mock
def test_bearer_token_from_environment_variable() -> None:
    """token_env names the variable in the env mapping passed in; the value is stripped."""
    config = BearerAuthConfig(token_env="EHR_TOKEN")
    assert authorization_sent(config, env={"EHR_TOKEN": " s3cr3t-token\n"}) == "Bearer s3cr3t-token"


@respx.mock
def test_bearer_token_from_file(tmp_path: Path) -> None:
    """token_file is read and stripped of its trailing newline."""
    (tmp_path / "token").write_text("file-token\n")
    config = BearerAuthConfig(token_file=tmp_path / "token")
    assert authorization_sent(config) == "Bearer file-token"


@respx.mock
def test_basic_auth_from_password_file(tmp_path: Path) -> None:
    """Basic sends base64 of user:password (UTF-8), the password read from its file."""
    (tmp_path / "pw").write_text("pässwörd\n")
    config = BasicAuthConfig(username="adapter", password_file=tmp_path / "pw")
    expected = base64.b64encode("adapter:pässwörd".encode()).decode()
    assert authorization_sent(config) == f"Basic {expected}"


@respx.mock
def test_no_auth_sends_no_header() -> None:
    """`type: none` builds no auth and sends no Authorization header."""
    assert authorization_sent(NoAuthConfig()) is None


@pytest.mark.parametrize(
    ("config", "env", "named"),
    [
        (BearerAuthConfig(token_env="EHR_TOKEN"), {}, "EHR_TOKEN"),
        (BasicAuthConfig(username="u", password_env="EHR_PW"), {"OTHER": "x"}, "EHR_PW"),
        (BearerAuthConfig(token_env="EHR_TOKEN"), {"EHR_TOKEN": "  \n"}, "EHR_TOKEN"),
        (BearerAuthConfig(token_file=Path("/nonexistent/token")), {}, "/nonexistent/token"),
    ],
)
def test_missing_secret_is_a_config_error_naming_its_source(
    config: Any, env: dict[str, str], named: str
) -> None:
    """An unset or empty variable, or an unreadable file, is a ConfigError naming where."""
    with pytest.raises(ConfigError, match=named):
        build_auth(config, env=env, base_url=BASE, http=httpx.AsyncClient())


def test_malformed_bearer_token_is_refused_without_showing_it() -> None:
    """A token with a space would break the header: refused, and not quoted in the message."""
    with pytest.raises(ConfigError, match="EHR_TOKEN") as caught:
        build_auth(
            BearerAuthConfig(token_env="EHR_TOKEN"),
            env={"EHR_TOKEN": "two words"},
            base_url=BASE,
            http=httpx.AsyncClient(),
        )
    assert "two words" not in str(caught.value)


# -- SMART Backend Services: the assertion and discovery -------------------------------------


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
@respx.mock
def test_client_assertion_is_signed_as_smart_backend_services_requires(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, algorithm: str
) -> None:
    """The token endpoint gets a verifiable assertion; its token then reads the Patient."""
    key: Key = rsa_key if algorithm == "RS384" else ec_key
    config = smart_config(write_pem(tmp_path / "key.pem", key), algorithm)
    discovery = serve_discovery()
    endpoint = TokenEndpoint(key, algorithm)
    respx.post(TOKEN_URL).mock(side_effect=endpoint)
    fhir = respx.get(PATIENT).mock(side_effect=patient_seen_with("access-1"))

    assert run(config, get_patient)["id"] == "p1"

    assert discovery.call_count == 1
    assert "authorization" not in discovery.calls.last.request.headers
    assert endpoint.headers == [{"alg": algorithm, "kid": "key-2025", "typ": "JWT"}]
    [claims] = endpoint.claims
    assert claims["iss"] == claims["sub"] == "trial-adapter"
    assert claims["aud"] == TOKEN_URL
    assert claims["exp"] == T0 + 300
    assert len(claims["jti"]) >= 16
    [form] = endpoint.forms
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == ASSERTION_TYPE
    assert form["scope"] == (
        "system/Patient.rs system/Observation.rs system/Condition.rs system/Procedure.rs"
    )
    assert fhir.calls.last.request.headers["authorization"] == "Bearer access-1"


@respx.mock
def test_configured_token_endpoint_and_jku_skip_discovery(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """A configured token_endpoint is used as is, and jku goes into the assertion header."""
    jku = "https://adapter.example.org/.well-known/jwks.json"
    key_file = write_pem(tmp_path / "key.pem", ec_key)
    config = smart_config(key_file, "ES384", token_endpoint=TOKEN_URL, jku=jku)
    discovery = serve_discovery()
    endpoint = TokenEndpoint(ec_key, "ES384")
    respx.post(TOKEN_URL).mock(side_effect=endpoint)
    respx.get(PATIENT).mock(side_effect=patient_seen_with("access-1"))

    run(config, get_patient)

    assert discovery.call_count == 0
    assert endpoint.headers[0]["jku"] == jku


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"token_endpoint_auth_methods_supported": ["client_secret_basic"]}, "private_key_jwt"),
        ({"grant_types_supported": ["authorization_code"]}, "client_credentials"),
        ({"token_endpoint_auth_signing_alg_values_supported": ["RS256"]}, "RS384"),
    ],
)
@respx.mock
def test_discovery_refuses_a_server_without_backend_services(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, overrides: dict[str, Any], message: str
) -> None:
    """A SMART configuration that lists neither private_key_jwt nor our grant or alg is fatal."""
    serve_discovery(**overrides)
    token = respx.post(TOKEN_URL)
    with pytest.raises(ConfigError, match=message):
        run(smart_config(write_pem(tmp_path / "k.pem", rsa_key)), get_patient)
    assert token.call_count == 0


@respx.mock
def test_discovery_404_says_to_configure_the_token_endpoint(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A server without .well-known/smart-configuration fails with a hint, not a token call."""
    respx.get(SMART_CONFIGURATION).respond(404)
    with pytest.raises(HttpStatusError, match=r"set auth\.token_endpoint"):
        run(smart_config(write_pem(tmp_path / "k.pem", rsa_key)), get_patient)


def test_https_server_refuses_a_plain_http_token_endpoint(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """Against an https FHIR server the assertion never travels over plain http, not even to
    this machine."""
    endpoint = "http://127.0.0.1:9999/oauth2/token"
    config = smart_config(write_pem(tmp_path / "k.pem", rsa_key), token_endpoint=endpoint)
    with pytest.raises(ConfigError, match="must use https"):
        build_auth(config, env={}, base_url="https://fhir.test/fhir", http=httpx.AsyncClient())


@pytest.mark.parametrize(
    ("algorithm", "which", "message"),
    [
        ("RS384", "ec", "RS384 needs an RSA key"),
        ("ES384", "rsa", "ES384 needs an EC key on curve P-384"),
        ("RS384", "encrypted", "is encrypted"),
        ("RS384", "garbage", "is not a PEM private key"),
        ("RS384", "missing", "cannot read the private key file"),
    ],
)
def test_private_key_must_fit_the_algorithm(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    algorithm: str,
    which: str,
    message: str,
) -> None:
    """A key of the wrong kind, encrypted, not PEM or missing is a ConfigError naming the file."""
    path = tmp_path / "key.pem"
    if which == "ec":
        write_pem(path, ec_key)
    elif which in ("rsa", "encrypted"):
        write_pem(path, rsa_key, password=b"pw" if which == "encrypted" else None)
    elif which == "garbage":
        path.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=message) as caught:
        build_auth(smart_config(path, algorithm), env={}, base_url=BASE, http=httpx.AsyncClient())
    assert str(path) in str(caught.value)


# -- SMART Backend Services: caching, refresh, 401 -------------------------------------------


@dataclass
class Smart:
    """A SMART config with its discovery route, verifying token endpoint and token route."""

    config: SmartBackendAuthConfig
    discovery: respx.Route
    endpoint: TokenEndpoint
    token: respx.Route


def smart_setup(tmp_path: Path, key: rsa.RSAPrivateKey) -> Smart:
    endpoint = TokenEndpoint(key, "RS384")
    return Smart(
        smart_config(write_pem(tmp_path / "k.pem", key)),
        serve_discovery(),
        endpoint,
        respx.post(TOKEN_URL).mock(side_effect=endpoint),
    )


@respx.mock
def test_token_is_cached_across_requests(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """Three reads within the token's lifetime make one discovery and one token call."""
    smart = smart_setup(tmp_path, rsa_key)
    respx.get(PATIENT).mock(side_effect=patient_seen_with("access-1"))

    async def three_reads(client: FhirClient, http: httpx.AsyncClient) -> None:
        for _ in range(3):
            await client.get_json("Patient/p1")

    run(smart.config, three_reads)
    assert smart.token.call_count == 1
    assert smart.discovery.call_count == 1


@respx.mock
def test_concurrent_requests_fetch_one_token(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """Five reads started together wait on one token request instead of racing for five."""
    smart = smart_setup(tmp_path, rsa_key)

    async def slow_endpoint(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # a real round trip, so the other reads arrive meanwhile
        return smart.endpoint(request)

    smart.token.mock(side_effect=slow_endpoint)
    fhir = respx.get(PATIENT).mock(side_effect=patient_seen_with("access-1"))

    async def five_reads(client: FhirClient, http: httpx.AsyncClient) -> None:
        await asyncio.gather(*(client.get_json("Patient/p1") for _ in range(5)))

    run(smart.config, five_reads)
    assert smart.token.call_count == 1
    assert fhir.call_count == 5


@respx.mock
def test_token_is_refreshed_a_minute_before_it_expires(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A 300 s token is reused until 240 s have passed, then a new assertion buys a new one."""
    smart = smart_setup(tmp_path, rsa_key)
    fhir = respx.get(PATIENT).mock(side_effect=patient_seen_with("access-1", "access-2"))
    clock = Clock()

    async def reads_over_time(client: FhirClient, http: httpx.AsyncClient) -> list[int]:
        counts = []
        for seconds in (0, 239, 240):
            clock.t = T0 + seconds
            await client.get_json("Patient/p1")
            counts.append(smart.token.call_count)
        return counts

    assert run(smart.config, reads_over_time, clock=clock) == [1, 1, 2]
    assert fhir.calls.last.request.headers["authorization"] == "Bearer access-2"
    assert smart.endpoint.claims[1]["exp"] == T0 + 240 + 300
    assert smart.endpoint.claims[0]["jti"] != smart.endpoint.claims[1]["jti"]


@respx.mock
def test_one_401_fetches_a_new_token_and_retries(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A token the server no longer honours is replaced once and the read succeeds."""
    smart = smart_setup(tmp_path, rsa_key)
    fhir = respx.get(PATIENT).mock(side_effect=patient_seen_with("access-2"))

    assert run(smart.config, get_patient)["id"] == "p1"
    assert smart.token.call_count == 2
    assert [c.request.headers["authorization"] for c in fhir.calls] == [
        "Bearer access-1",
        "Bearer access-2",
    ]


@respx.mock
def test_second_401_is_returned_as_is(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """When the fresh token is refused too, the 401 goes back to the caller: no loop."""
    smart = smart_setup(tmp_path, rsa_key)
    fhir = respx.get(PATIENT).mock(side_effect=patient_seen_with())

    async def raw_read(client: FhirClient, http: httpx.AsyncClient) -> httpx.Response:
        return await http.get(PATIENT)

    assert run(smart.config, raw_read).status_code == 401
    assert smart.token.call_count == 2
    assert fhir.call_count == 2
    with pytest.raises(HttpStatusError, match="HTTP 401"):
        run(smart.config, get_patient)


@pytest.mark.parametrize(
    "description",
    ["Client authentication failed", "bad assertion {assertion}"],
)
@respx.mock
def test_token_endpoint_error_names_the_oauth_code_and_keeps_the_text_in_detail(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, description: str
) -> None:
    """A 400 invalid_client is an HttpStatusError naming the code; the description is only in
    `detail`, the assertion scrubbed from both."""
    serve_discovery()
    sent: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        sent.append(dict(parse_qsl(request.content.decode()))["client_assertion"])
        text = description.format(assertion=sent[-1])
        return httpx.Response(400, json={"error": "invalid_client", "error_description": text})

    respx.post(TOKEN_URL).mock(side_effect=refuse)
    with pytest.raises(HttpStatusError) as caught:
        run(smart_config(write_pem(tmp_path / "k.pem", rsa_key)), get_patient)

    message = str(caught.value)
    assert caught.value.status == 400
    assert message == f"HTTP 400: token request refused: invalid_client ({TOKEN_URL})"
    assert sent[0] not in repr(caught.value.args)
    assert sent[0] not in caught.value.detail
    if "Client authentication failed" in description:
        assert caught.value.detail == "invalid_client: Client authentication failed"
    else:
        assert caught.value.detail == "invalid_client: bad assertion <assertion>"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": "Jane Doe MRN 123456 is locked"}, "HTTP 403: token request refused ("),
        (
            {"error": "access_denied", "error_description": "Jane Doe is restricted"},
            "HTTP 403: token request refused: access_denied (",
        ),
        (
            {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "Jane Doe"}]},
            "HTTP 403: token request refused (",
        ),
    ],
)
@respx.mock
def test_a_token_refusal_names_only_a_registered_oauth_error_code(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, body: dict[str, Any], message: str
) -> None:
    """An `error` that is not a registered OAuth code, or an outcome's text, stays out of the
    message (issue 11): it may name a patient."""
    serve_discovery()
    respx.post(TOKEN_URL).respond(403, json=body)
    with pytest.raises(HttpStatusError) as caught:
        run(smart_config(write_pem(tmp_path / "k.pem", rsa_key)), get_patient)
    assert str(caught.value).startswith(message)
    assert "Jane" not in str(caught.value)
    assert "Jane Doe" in caught.value.detail


@respx.mock
def test_token_endpoint_503_is_temporary(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """An unavailable token endpoint is a TemporaryHttpError, worth a retry later."""
    serve_discovery()
    respx.post(TOKEN_URL).respond(503, text="Service Unavailable")
    with pytest.raises(TemporaryHttpError, match="HTTP 503"):
        run(smart_config(write_pem(tmp_path / "k.pem", rsa_key)), get_patient)


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(503, headers={"Retry-After": "1"}, text="Service Unavailable"),
        httpx.Response(429, json={"error": "slow_down"}),
        httpx.ConnectError("connection refused"),
    ],
    ids=["503", "429", "no-answer"],
)
@respx.mock
def test_a_token_endpoint_that_fails_for_a_moment_is_retried_with_the_request(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, failure: httpx.Response | Exception
) -> None:
    """The token endpoint is down during an outage too: its temporary failure is retried within
    the request's retry budget, as the FHIR server's own would be, not fatal at once."""
    smart = smart_setup(tmp_path, rsa_key)
    smart.token.mock(side_effect=[failure, smart.endpoint])
    respx.get(PATIENT).mock(side_effect=patient_seen_with("access-1"))
    assert run(smart.config, get_patient) == {"resourceType": "Patient", "id": "p1"}
    assert smart.token.call_count == 2


# -- the header goes only to the configured server -------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.test/fhir/Patient/p1",
        "https://fhir.test/other/Patient/p1",
        "http://fhir.test/fhir/Patient/p1",
        "https://fhir.test.evil.test/fhir/Patient/p1",
    ],
)
@pytest.mark.parametrize("kind", ["bearer", "basic", "smart"])
@respx.mock
def test_no_authorization_header_outside_the_base(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, kind: str, url: str
) -> None:
    """Even when asked directly, no auth adds its header to a URL outside the FHIR base."""
    token = respx.post(TOKEN_URL)
    serve_discovery()
    foreign = respx.get(url).respond(200, json={})
    configs: dict[str, Any] = {
        "bearer": BearerAuthConfig(token_env="T"),
        "basic": BasicAuthConfig(username="u", password_env="T"),
        "smart": smart_config(write_pem(tmp_path / "k.pem", rsa_key)),
    }

    async def stray_request(client: FhirClient, http: httpx.AsyncClient) -> None:
        await http.get(url)

    run(configs[kind], stray_request, env={"T": "secret"})
    assert "authorization" not in foreign.calls.last.request.headers
    assert token.call_count == 0


def test_smart_auth_refuses_a_sync_client(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """The token flow is async: a sync httpx.Client is a programming error, said plainly."""
    auth = build_auth(
        smart_config(write_pem(tmp_path / "k.pem", rsa_key)),
        env={},
        base_url=BASE,
        http=httpx.AsyncClient(),
    )
    assert isinstance(auth, SmartBackendAuth)
    assert "access" not in repr(auth)
    with httpx.Client(auth=auth) as sync, pytest.raises(RuntimeError, match="AsyncClient"):
        sync.get(PATIENT)


# -- a token endpoint cannot hold the run or its memory (issue 11) ----------------------------


class _Slow(httpx.AsyncByteStream):
    """`count` pieces of `piece`, each after `delay` seconds."""

    def __init__(self, piece: bytes, count: int, delay: float = 0.0) -> None:
        self.piece, self.count, self.delay = piece, count, delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield self.piece


@respx.mock
def test_a_token_answer_larger_than_a_mib_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A token response is a few hundred bytes: 2 MiB is refused, never read whole."""
    smart = smart_setup(tmp_path, rsa_key)
    smart.token.mock(return_value=httpx.Response(200, stream=_Slow(b" " * 1024, 2048)))
    with pytest.raises(LimitExceededError, match="larger than the 1 MiB limit"):
        run(smart.config, get_patient)


@respx.mock
def test_a_trickling_token_endpoint_ends_at_the_clients_timeout(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """One byte every 50 ms keeps each read alive; the whole answer has the client's timeout
    (0.2 s here) as its deadline, and says which endpoint did not answer."""
    smart = smart_setup(tmp_path, rsa_key)
    smart.token.mock(side_effect=lambda _: httpx.Response(200, stream=_Slow(b" ", 100, 0.05)))

    async def main() -> None:
        async with httpx.AsyncClient(timeout=0.2) as http:
            auth = build_auth(smart.config, env={}, base_url=BASE, http=http, now=Clock())
            assert isinstance(auth, SmartBackendAuth)
            await auth.prefetch()

    with pytest.raises(TransportError, match="the token endpoint did not answer in time"):
        asyncio.run(main())
