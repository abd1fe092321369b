"""Fixtures for tests against real FHIR servers.

- `fhir_base_url` / `fhir`: the local sekmet-fhir server that tools/run-tests.sh starts (open, no
  authentication).
- `smart_server`: a second sekmet-fhir instance with SMART Backend Services enforced, started here
  for the session (tools/fhir-server/server.sh start --smart) with client keys made here, and
  stopped at the end of the session, whatever happened.
- `extended_server`: a third sekmet-fhir instance, open, with the standard R4 search parameters
  sekmet lacks for ResearchSubject (identifier, status, study, individual, patient) and
  ResearchStudy (identifier, status, title) added at start (tools/fhir-server/server.sh
  --search-params), so the server sink takes its conditional-create path there; started for the
  session and stopped at its end.
- `run_sweep`, `demo_resources`, `load_resources`, `demo_folder_sweep`: the CLI in a subprocess,
  the demo population and how to PUT it on a server, the demo swept from its files.

Missing prerequisites skip a test on a workstation and fail it on CI (`CI=true`), so CI cannot pass
without having run it; the `live` tests (tests/integration/test_live.py, `make test-live`) are the
exception: they skip whenever no live server is named or reachable.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
SERVER_SH = ROOT / "tools" / "fhir-server" / "server.sh"
FHIR_VENV = ROOT / ".venv-fhir"
TRIAL = "hcc-ablation-lenvatinib-pd1"
AS_OF = "2026-06-15"
TRANSACTION_SIZE = 500  # entries per transaction Bundle
FHIR_JSON = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}

#: seconds an access token of the SMART server lives: shorter than a throttled sweep
TOKEN_LIFETIME = 3
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
READ_SCOPES = (
    "system/Patient.rs",
    "system/Condition.rs",
    "system/Observation.rs",
    "system/Procedure.rs",
)


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(message: str) -> NoReturn:
    """A prerequisite is missing: skip on a workstation, fail on CI."""
    if on_ci():
        pytest.fail(message)
    pytest.skip(message)


# -- the open local server (tools/run-tests.sh) ----------------------------------------------------


@pytest.fixture(scope="session")
def fhir_base_url() -> str:
    """FHIR_BASE_URL, without a trailing slash.

    Unset, the test skips on a workstation and fails on CI (`CI=true`), so CI cannot pass without
    having run the integration tests.
    """
    url = os.environ.get("FHIR_BASE_URL", "").strip()
    if not url:
        missing(
            "FHIR_BASE_URL is not set: run `make test` or `tools/run-tests.sh`, which start a "
            "local FHIR server (tools/fhir-server/server.sh) and set it"
        )
    return url.rstrip("/")


@pytest.fixture(scope="session")
def fhir(fhir_base_url: str) -> Iterator[httpx.Client]:
    """An HTTP client for the server, with the FHIR base as its base URL."""
    with httpx.Client(base_url=fhir_base_url + "/", headers=FHIR_JSON, timeout=60) as client:
        yield client


# -- the CLI -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """One CLI run: exit code, stderr, results.json (None when the run wrote none), wall time."""

    code: int
    stderr: str
    results: dict[str, Any] | None
    seconds: float

    @property
    def report(self) -> dict[str, Any]:
        """results.json, which a run that completed always writes."""
        assert self.results is not None, f"no results.json; exit {self.code}: {self.stderr[-2000:]}"
        return self.results


SweepRunner = Callable[..., Sweep]


def sweep_cli(
    out: Path,
    *args: str,
    trial: str | Path = TRIAL,
    check: bool = True,
    timeout: float = 180,
) -> Sweep:
    """Run `trial-adapter sweep` in a subprocess, as cron would.

    With `check`, anything but a completed sweep (exit 0 or 3 with a results.json) fails the test.
    TRIAL_ADAPTER_CONFIG is not inherited: a test that wants a site file passes --config.
    """
    command = [sys.executable, "-m", "adapter.cli", "sweep", "--trial", str(trial)]
    command += ["--as-of", AS_OF, "--out", str(out), *args]
    env = {k: v for k, v in os.environ.items() if k != "TRIAL_ADAPTER_CONFIG"}
    started = time.monotonic()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, env=env, cwd=ROOT
    )
    seconds = time.monotonic() - started
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    if check and (done.returncode not in (0, 3) or results is None):
        pytest.fail(f"sweep exited {done.returncode}; stderr:\n{done.stderr[-3000:]}")
    return Sweep(done.returncode, done.stderr, results, seconds)


@pytest.fixture(scope="session")
def run_sweep() -> SweepRunner:
    """`run_sweep(out, *args, trial=..., check=True)`: the CLI in a subprocess (see sweep_cli)."""
    return sweep_cli


def verdicts(results: dict[str, Any]) -> dict[str, tuple[str, dict[str, str]]]:
    """Patient -> (status, criterion id -> result)."""
    return {
        p["patient"]: (p["status"], {cid: c["result"] for cid, c in p["criteria"].items()})
        for p in results["patients"]
    }


@pytest.fixture(scope="session")
def verdicts_of() -> Callable[[dict[str, Any]], dict[str, tuple[str, dict[str, str]]]]:
    """`verdicts_of(results)`: patient -> (status, criterion id -> result)."""
    return verdicts


@pytest.fixture(scope="session")
def demo_folder_sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """The demo population swept from its files: what every server sweep must agree with."""
    return sweep_cli(tmp_path_factory.mktemp("demo-folder"), "--source", str(DEMO))


# -- the demo population on a server ---------------------------------------------------------------


def read_demo() -> list[dict[str, Any]]:
    """Every resource of the demo population's NDJSON files."""
    resources = []
    for path in sorted(DEMO.glob("*.ndjson")):
        lines = path.read_text().splitlines()
        resources.extend(json.loads(line) for line in lines if line.strip())
    return resources


@pytest.fixture(scope="session")
def demo_resources() -> list[dict[str, Any]]:
    """The demo population's resources, shared: copy (copy.deepcopy) before changing any."""
    return read_demo()


def put_all(client: httpx.Client, resources: Iterable[dict[str, Any]]) -> None:
    """PUT every resource by id through transaction Bundles posted to the client's base URL."""
    items = list(resources)
    for start in range(0, len(items), TRANSACTION_SIZE):
        chunk = items[start : start + TRANSACTION_SIZE]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in chunk
            ],
        }
        response = client.post("", json=bundle)
        assert response.status_code == 200, response.text[:2000]
        reply = response.json()
        assert reply["type"] == "transaction-response"
        statuses = [entry["response"]["status"] for entry in reply["entry"]]
        assert len(statuses) == len(chunk)
        assert all(s.startswith(("200", "201")) for s in statuses), statuses


@pytest.fixture(scope="session")
def load_resources() -> Callable[[httpx.Client, Iterable[dict[str, Any]]], None]:
    """`load_resources(client, resources)`: PUT them by transaction Bundles (see put_all)."""
    return put_all


# -- a SMART Backend Services server -------------------------------------------------------------


@dataclass(frozen=True)
class SmartClient:
    """A client registered on the SMART server, with its private key in a 0600 PEM file."""

    client_id: str
    kid: str
    algorithm: str
    key_file: Path
    scopes: tuple[str, ...]

    def site_auth(self, **extra: Any) -> dict[str, Any]:
        """The `auth:` mapping of a site file that signs in as this client."""
        return {
            "type": "smart-backend",
            "client_id": self.client_id,
            "private_key_file": str(self.key_file),
            "algorithm": self.algorithm,
            "kid": self.kid,
            "scopes": list(self.scopes),
            **extra,
        }


@dataclass(frozen=True)
class SmartServer:
    """sekmet-fhir with SMART Backend Services enforced on every /fhir request but /metadata."""

    base_url: str
    log_file: Path
    token_lifetime: int
    adapter: SmartClient  # ES384, read-only scopes: what the adapter signs in as
    adapter_rsa: SmartClient  # RS384, read-only scopes
    loader: SmartClient  # RS384, system/*.cruds: loads the test data

    @property
    def token_endpoint(self) -> str:
        # sekmet: <root>/auth/token, where root is the base URL without /fhir.
        return self.base_url.removesuffix("/fhir") + "/auth/token"

    def access_token(self, client: SmartClient, scopes: Iterable[str] | None = None) -> str:
        """A fresh access token for `client`, bought with a signed assertion."""
        key = serialization.load_pem_private_key(client.key_file.read_bytes(), password=None)
        assertion = jwt.encode(
            {
                "iss": client.client_id,
                "sub": client.client_id,
                "aud": self.token_endpoint,
                "exp": int(time.time()) + 240,
                "jti": uuid.uuid4().hex,
            },
            key,
            algorithm=client.algorithm,
            headers={"kid": client.kid, "typ": "JWT"},
        )
        form = {
            "grant_type": "client_credentials",
            "scope": " ".join(client.scopes if scopes is None else scopes),
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        response = httpx.post(self.token_endpoint, data=form, timeout=30)
        assert response.status_code == 200, response.text[:500]
        token: str = response.json()["access_token"]
        return token

    def client(self, as_client: SmartClient) -> httpx.Client:
        """An HTTP client for the FHIR base that buys a new token for every request."""

        def bearer(request: httpx.Request) -> httpx.Request:
            request.headers["Authorization"] = f"Bearer {self.access_token(as_client)}"
            return request

        return httpx.Client(base_url=self.base_url, headers=FHIR_JSON, timeout=60, auth=bearer)

    def log_size(self) -> int:
        return self.log_file.stat().st_size

    def log_since(self, offset: int) -> list[str]:
        """The server's access log lines written after byte `offset` (see log_size)."""
        with self.log_file.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace").splitlines()


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    """The key as unencrypted PKCS#8 PEM, created owner-only (0600) before anything is written."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def public_jwk(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, kid: str, alg: str) -> Any:
    """The public half of `key` as a JWK with `kid` and `alg`."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def make_client(
    folder: Path, client_id: str, algorithm: str, scopes: tuple[str, ...]
) -> tuple[SmartClient, dict[str, Any]]:
    """A new key pair: the client (private key written to `folder`) and its registration."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "ES384":
        key = ec.generate_private_key(ec.SECP384R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = f"{client_id}-{uuid.uuid4().hex[:8]}"
    key_file = folder / f"{client_id}.pem"
    write_private_key(key_file, key)
    registration = {
        "client_id": client_id,
        "scopes": " ".join(scopes),
        "jwks": {"keys": [public_jwk(key, kid, algorithm)]},
    }
    return SmartClient(client_id, kid, algorithm, key_file, scopes), registration


def server_sh(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SERVER_SH), command, "--smart"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


@pytest.fixture(scope="session")
def smart_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmartServer]:
    """A sekmet-fhir instance of its own with SMART Backend Services and three clients.

    Its state (settings, log, PID) is in a temporary folder, so it never meets a server someone
    else started; it is stopped when the session ends, passed or failed.
    """
    if not (FHIR_VENV / "bin" / "sekmet").exists() and not on_ci():
        pytest.skip(
            f"{FHIR_VENV} is missing: run `make test` (or tools/fhir-server/server.sh start) once"
        )
    folder = tmp_path_factory.mktemp("smart")
    keys = folder / "keys"
    keys.mkdir(mode=0o700)
    adapter, adapter_reg = make_client(keys, "trial-adapter", "ES384", READ_SCOPES)
    adapter_rsa, adapter_rsa_reg = make_client(keys, "trial-adapter-rsa", "RS384", READ_SCOPES)
    loader, loader_reg = make_client(keys, "test-loader", "RS384", ("system/*.cruds",))
    auth = {
        "types": ["smart"],
        "token_lifetime": TOKEN_LIFETIME,
        "enforce_scopes": True,
        "smart_clients": [adapter_reg, adapter_rsa_reg, loader_reg],
    }
    auth_file = folder / "server_auth.yaml"
    auth_file.write_text(yaml.safe_dump(auth, sort_keys=False))
    state = folder / "state"
    env = {**os.environ, "FHIR_STATE_DIR": str(state), "FHIR_SMART_AUTH": str(auth_file)}
    env.pop("FHIR_SMART", None)
    try:
        started = server_sh("start", env)
        if started.returncode != 0:
            pytest.fail(f"the SMART server did not start:\n{started.stderr[-3000:]}")
        yield SmartServer(
            base_url=started.stdout.strip().rstrip("/"),
            log_file=state / "server.log",
            token_lifetime=TOKEN_LIFETIME,
            adapter=adapter,
            adapter_rsa=adapter_rsa,
            loader=loader,
        )
    finally:
        stopped = server_sh("stop", env)
        if stopped.returncode != 0:
            sys.stderr.write(f"stopping the SMART server failed:\n{stopped.stderr}\n")


# -- a server with the R4 ResearchStudy and ResearchSubject search parameters ----------------------

#: The standard R4 search parameters sekmet 0.1.1 lacks for the resources the sink writes:
#: (base, code, type, expression, target), as published at hl7.org/fhir/R4/searchparameter-registry.
R4_RESEARCH_SEARCH_PARAMETERS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("ResearchSubject", "identifier", "token", "ResearchSubject.identifier", ()),
    ("ResearchSubject", "status", "token", "ResearchSubject.status", ()),
    ("ResearchSubject", "study", "reference", "ResearchSubject.study", ("ResearchStudy",)),
    ("ResearchSubject", "individual", "reference", "ResearchSubject.individual", ("Patient",)),
    ("ResearchSubject", "patient", "reference", "ResearchSubject.individual", ("Patient",)),
    ("ResearchStudy", "identifier", "token", "ResearchStudy.identifier", ()),
    ("ResearchStudy", "status", "token", "ResearchStudy.status", ()),
    ("ResearchStudy", "title", "string", "ResearchStudy.title", ()),
)
EXTENDED_PORT = 8767  # preferred; any free port when it is taken


def research_search_parameters() -> dict[str, Any]:
    """R4_RESEARCH_SEARCH_PARAMETERS as a Bundle of SearchParameter resources."""
    entries = []
    for base, code, kind, expression, targets in R4_RESEARCH_SEARCH_PARAMETERS:
        resource: dict[str, Any] = {
            "resourceType": "SearchParameter",
            "url": f"http://hl7.org/fhir/SearchParameter/{base}-{code}",
            "name": code,
            "status": "active",
            "description": f"{base} {code} (FHIR R4)",
            "code": code,
            "base": [base],
            "type": kind,
            "expression": expression,
        }
        if targets:
            resource["target"] = list(targets)
        entries.append({"resource": resource})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


@dataclass(frozen=True)
class ExtendedServer:
    """sekmet-fhir, open, with R4_RESEARCH_SEARCH_PARAMETERS added; its access log."""

    base_url: str
    log_file: Path
    search_parameters: tuple[tuple[str, str, str], ...]  # (base, code, type) added

    def log_size(self) -> int:
        return self.log_file.stat().st_size

    def log_since(self, offset: int) -> list[str]:
        """The server's log lines written after byte `offset` (see log_size)."""
        with self.log_file.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace").splitlines()


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def any_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def run_server_sh(
    command: str, env: dict[str, str], *options: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SERVER_SH), command, *options],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


@pytest.fixture(scope="session")
def extended_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtendedServer]:
    """A sekmet-fhir instance of its own with the R4 research search parameters added.

    Its state is in a temporary folder and its port EXTENDED_PORT (else any free one), so it never
    meets the session's server; it is stopped when the session ends, passed or failed.
    """
    if not (FHIR_VENV / "bin" / "sekmet").exists() and not on_ci():
        pytest.skip(
            f"{FHIR_VENV} is missing: run `make test` (or tools/fhir-server/server.sh start) once"
        )
    folder = tmp_path_factory.mktemp("extended")
    params_file = folder / "search-parameters.json"
    params_file.write_text(json.dumps(research_search_parameters(), indent=1))
    state = folder / "state"
    env = {**os.environ, "FHIR_STATE_DIR": str(state)}
    for name in ("FHIR_SMART", "FHIR_SEARCH_PARAMS", "FHIR_PORT"):
        env.pop(name, None)
    env["FHIR_PORT"] = str(EXTENDED_PORT if port_is_free(EXTENDED_PORT) else any_free_port())
    try:
        started = run_server_sh("start", env, f"--search-params={params_file}")
        if started.returncode != 0:
            pytest.fail(f"the extended server did not start:\n{started.stderr[-3000:]}")
        yield ExtendedServer(
            base_url=started.stdout.strip().rstrip("/"),
            log_file=state / "server.log",
            search_parameters=tuple(p[:3] for p in R4_RESEARCH_SEARCH_PARAMETERS),
        )
    finally:
        stopped = run_server_sh("stop", env)
        if stopped.returncode != 0:
            sys.stderr.write(f"stopping the extended server failed:\n{stopped.stderr}\n")


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain sekmet-fhir instance of the module's own (its base URL), for tests that load a
    population of their own: the session's server holds the demo, whose counts other modules
    compare. Its state is in a temporary folder; it is stopped when the module ends."""
    if not (FHIR_VENV / "bin" / "sekmet").exists() and not on_ci():
        pytest.skip(
            f"{FHIR_VENV} is missing: run `make test` (or tools/fhir-server/server.sh start) once"
        )
    env = {**os.environ, "FHIR_STATE_DIR": str(tmp_path_factory.mktemp("private") / "state")}
    for name in ("FHIR_SMART", "FHIR_SEARCH_PARAMS"):
        env.pop(name, None)
    env["FHIR_PORT"] = str(any_free_port())
    try:
        started = run_server_sh("start", env)
        if started.returncode != 0:
            pytest.fail(f"the private server did not start:\n{started.stderr[-3000:]}")
        yield started.stdout.strip().rstrip("/")
    finally:
        stopped = run_server_sh("stop", env)
        if stopped.returncode != 0:
            sys.stderr.write(f"stopping the private server failed:\n{stopped.stderr}\n")
