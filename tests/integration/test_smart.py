"""SMART Backend Services end to end: the CLI signs in to a real server that enforces it.

The `smart_server` fixture (conftest.py) starts a sekmet-fhir instance of its own with three
registered clients whose keys the fixture made: the adapter (ES384, read-only system scopes), the
adapter again with an RSA key (RS384) and a loader (system/*.cruds) that puts the demo population
on it. Access tokens live TOKEN_LIFETIME (3) seconds, so a sweep throttled to a few seconds must
buy new ones while it runs.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapter.fhir.auth import build_auth, parse_auth_config

if TYPE_CHECKING:  # conftest is not importable at run time; the names are for the reader
    from conftest import SmartServer, Sweep, SweepRunner

pytestmark = pytest.mark.integration

PAGE_SIZE = 7
BATCH_SIZE = 5
# Over 200 requests at these page and batch sizes: at 50 per second the sweep reads for 4 s or more,
# longer than a token lives, whatever the speed of the machine.
REQUESTS_PER_SECOND = 50
TOKEN_REQUEST = re.compile(r'"POST /auth/token HTTP/1\.1" 200')
FHIR_REQUEST = re.compile(r'"(?:GET|POST) /fhir/\S* HTTP/1\.1" (\d{3})')
JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.")


def write_site_config(folder: Path, auth: dict[str, Any], **source: Any) -> Path:
    """A site file whose source signs in with `auth`."""
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump({"source": {"auth": auth, **source}}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def smart_demo(
    smart_server: SmartServer,
    load_resources: Callable[..., None],
    demo_resources: list[dict[str, Any]],
) -> SmartServer:
    """The demo population loaded on the SMART server, by the loader client."""
    with smart_server.client(smart_server.loader) as client:
        load_resources(client, demo_resources)
    return smart_server


@dataclass(frozen=True)
class LoggedSweep:
    sweep: Sweep
    log: list[str]  # the server's access log lines written during the sweep


@pytest.fixture(scope="module")
def smart_sweep(
    smart_demo: SmartServer, run_sweep: SweepRunner, tmp_path_factory: pytest.TempPathFactory
) -> LoggedSweep:
    """The demo swept over the SMART server, signed in as the ES384 client, throttled."""
    folder = tmp_path_factory.mktemp("smart-sweep")
    config = write_site_config(
        folder, smart_demo.adapter.site_auth(), requests_per_second=REQUESTS_PER_SECOND
    )
    offset = smart_demo.log_size()
    sweep = run_sweep(
        folder / "out",
        "--source",
        smart_demo.base_url,
        "--config",
        str(config),
        "--page-size",
        str(PAGE_SIZE),
        "--batch-size",
        str(BATCH_SIZE),
    )
    return LoggedSweep(sweep, smart_demo.log_since(offset))


def test_server_refuses_a_request_without_a_token(smart_server: SmartServer) -> None:
    """The server really enforces SMART: no token, no data."""
    response = httpx.get(f"{smart_server.base_url}/Patient", timeout=30)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_adapters_client_may_only_read(smart_server: SmartServer) -> None:
    """The scopes the adapter asks for are read-only: the sweep needs no more."""
    token = smart_server.access_token(smart_server.adapter)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    read = httpx.get(f"{smart_server.base_url}/Patient?_count=1", headers=headers, timeout=30)
    write = httpx.post(
        f"{smart_server.base_url}/Patient",
        json={"resourceType": "Patient"},
        headers=headers,
        timeout=30,
    )
    assert (read.status_code, write.status_code) == (200, 403)


def test_smart_sweep_exits_0_with_the_folder_sweeps_counts(
    smart_sweep: LoggedSweep, demo_folder_sweep: Sweep
) -> None:
    """Signed in with SMART Backend Services, the sweep completes and counts as the files do."""
    sweep = smart_sweep.sweep
    assert sweep.code == 0, sweep.stderr[-2000:]
    assert sweep.report["errors"] == []
    assert sweep.report["counts"] == demo_folder_sweep.report["counts"]


def test_smart_sweep_agrees_with_the_folder_sweep_on_every_criterion(
    smart_sweep: LoggedSweep,
    demo_folder_sweep: Sweep,
    verdicts_of: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Same patients, same status, same result for every criterion."""
    rest = verdicts_of(smart_sweep.sweep.report)
    folder = verdicts_of(demo_folder_sweep.report)
    assert rest.keys() == folder.keys()
    differing = sorted(p for p in rest if rest[p] != folder[p])
    assert not differing, f"SMART REST and folder disagree on {differing[:5]}"


def test_token_expiring_mid_sweep_is_renewed(
    smart_sweep: LoggedSweep, smart_server: SmartServer
) -> None:
    """The sweep outlives its first token: it bought more, and every request was answered.

    sekmet writes `exp = int(now) + lifetime` but announces the full lifetime, so a token can die
    up to a second before the adapter's refresh margin: such a request gets 401, and the adapter
    buys a token and sends it again. Either way the sweep completed with every patient decided
    (the tests above), so no request was left unanswered.
    """
    sweep, log = smart_sweep.sweep, smart_sweep.log
    statuses = [m.group(1) for line in log if (m := FHIR_REQUEST.search(line))]
    # The rate limit alone makes the sweep outlive a token, however fast the machine.
    throttled = len(statuses) / REQUESTS_PER_SECOND
    assert throttled > smart_server.token_lifetime, f"{len(statuses)} requests: too few to tell"
    assert sweep.seconds > throttled
    tokens = sum(1 for line in log if TOKEN_REQUEST.search(line))
    assert tokens >= 2, f"{tokens} token request(s) in a {sweep.seconds:.1f} s sweep"
    unexpected = sorted({s for s in statuses if s not in ("200", "401")})
    assert not unexpected, f"answers other than 200 and 401: {unexpected}"


def test_token_rejected_with_401_is_renewed_and_the_request_retried(
    smart_demo: SmartServer,
) -> None:
    """A token the client still believes in but the server has expired: 401, new token, retry.

    The adapter's clock is frozen here, so it never refreshes ahead of time: only the 401 tells it.
    """
    server = smart_demo
    url = f"{server.base_url}/Patient?_count=1"

    async def scenario() -> tuple[int, int, list[str]]:
        frozen = time.time()
        async with httpx.AsyncClient(timeout=30) as http:
            http.auth = build_auth(
                parse_auth_config(server.adapter_rsa.site_auth()),
                env={},
                base_url=server.base_url,
                http=http,
                now=lambda: frozen,
            )
            first = await http.get(url)
            token = first.request.headers["Authorization"].removeprefix("Bearer ")
            expires = jwt.decode(token, options={"verify_signature": False})["exp"]
            await asyncio.sleep(max(0.0, expires - time.time()) + 0.2)
            offset = server.log_size()
            second = await http.get(url)
            renewed = second.request.headers["Authorization"].removeprefix("Bearer ")
            assert renewed != token
            return first.status_code, second.status_code, server.log_since(offset)

    first, second, log = asyncio.run(scenario())
    assert (first, second) == (200, 200)
    calls = [
        ("token" if TOKEN_REQUEST.search(line) else m.group(1) if m else "other")
        for line in log
        if (m := FHIR_REQUEST.search(line)) or TOKEN_REQUEST.search(line)
    ]
    assert calls == ["401", "token", "200"]


def test_unregistered_key_stops_the_sweep_with_one_line(
    smart_server: SmartServer, run_sweep: SweepRunner, tmp_path: Path
) -> None:
    """A key the server does not know: exit 1, one line on stderr, no assertion or traceback."""
    stranger = tmp_path / "stranger.pem"
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    stranger.write_bytes(pem)
    stranger.chmod(0o600)
    config = write_site_config(
        tmp_path, smart_server.adapter.site_auth(private_key_file=str(stranger))
    )
    sweep = run_sweep(
        tmp_path / "out", "--source", smart_server.base_url, "--config", str(config), check=False
    )
    assert sweep.code == 1, sweep.stderr[-2000:]
    assert sweep.results is None
    errors = [line for line in sweep.stderr.splitlines() if "invalid_client" in line]
    assert len(errors) == 1, sweep.stderr[-2000:]
    assert "Traceback" not in sweep.stderr
    assert not JWT_LIKE.search(sweep.stderr)
