"""`trial-adapter check` against real servers: a good set-up, a bad token, a missing capability.

- good: the session's open sekmet server as source and sink, folders in a temporary place;
- bad token: the SMART-enforcing instance (`smart_server`), signed in with a key it does not know,
  and with fewer scopes than the trial reads; the same client with its own key passes;
- missing capability: the session's server behind a proxy that takes the Condition `code` search
  parameter out of the CapabilityStatement (the cohort query needs it).

The check runs in-process (`run_checks`), as `trial-adapter check` will call it. Each run reads
nothing but `metadata`, SMART discovery and the token endpoint.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from proxy import FaultProxy

from adapter.commands.check import run_checks
from adapter.errors import ExitCode

if TYPE_CHECKING:  # conftest is not importable at run time; the names are for the reader
    from conftest import SmartServer

pytestmark = pytest.mark.integration

TRIAL = "hcc-ablation-lenvatinib-pd1"


class Check:
    """One run of the check: its exit code and lines."""

    def __init__(self, folder: Path, **site: Any) -> None:
        config = folder / "site.yaml"
        site = {"trials": [TRIAL], "out_dir": "reports", "state_dir": "state"} | site
        config.write_text(yaml.safe_dump(site, sort_keys=False))
        self.lines: list[str] = []
        env = {k: v for k, v in os.environ.items() if k != "TRIAL_ADAPTER_CONFIG"}
        self.code = asyncio.run(
            run_checks(
                config,
                source=None,
                sink=None,
                trials=(),
                env=env,
                say=self.lines.append,
                home=folder,
            )
        )
        self.text = "\n".join(self.lines)

    def line(self, name: str) -> str:
        (found,) = [line for line in self.lines if line[5:].startswith(f"{name}:")]
        return found

    def failed(self) -> list[str]:
        return [line for line in self.lines if line.startswith("FAIL")]


def test_a_good_set_up_against_the_local_server_passes(fhir_base_url: str, tmp_path: Path) -> None:
    """Source and sink the open local server: every check ok or skip, exit 0."""
    run = Check(tmp_path, source={"url": fhir_base_url}, sink={"url": fhir_base_url})
    assert run.code == ExitCode.OK, run.text
    assert run.failed() == []
    assert run.line("source server").startswith(f"ok   source server: {fhir_base_url} answers")
    assert "FHIR 4.0.1" in run.line("source server")
    assert run.line("source capabilities").startswith(
        "ok   source capabilities: Patient by _id; Condition by patient, code"
    )
    # sekmet lists no ResearchStudy or ResearchSubject, and takes them at deterministic ids.
    assert "ResearchStudy, ResearchSubject not listed" in run.line("sink capabilities")
    assert run.line("sink capabilities").startswith("ok")
    assert run.line("out") == f"ok   out: {tmp_path / 'reports'} can be created"
    assert not (tmp_path / "reports").exists()  # checked, not made


# -- a SMART server ------------------------------------------------------------------------------


def smart_site(server: SmartServer, **auth: Any) -> dict[str, Any]:
    return {"source": {"url": server.base_url, "auth": server.adapter.site_auth(**auth)}}


def other_key(folder: Path) -> Path:
    """A P-384 key the SMART server has never seen."""
    path = folder / "stranger.pem"
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def test_the_registered_client_gets_its_token_with_the_scopes_the_trial_reads(
    smart_server: SmartServer, tmp_path: Path
) -> None:
    """The premise of the two below: a real token endpoint, a real grant, exit 0."""
    run = Check(tmp_path, **smart_site(smart_server))
    assert run.code == ExitCode.OK, run.text
    token = run.line("source token")
    assert token.startswith("ok   source token: granted ")
    assert "system/Observation.rs" in token
    assert "/auth/token" in token


def test_a_key_the_server_does_not_know_fails_the_token_check(
    smart_server: SmartServer, tmp_path: Path
) -> None:
    """A wrong key: the token endpoint refuses the assertion, exit 1; the server still answers."""
    run = Check(tmp_path, **smart_site(smart_server, private_key_file=str(other_key(tmp_path))))
    assert run.code == ExitCode.FATAL, run.text
    assert run.line("source token").startswith("FAIL source token: HTTP 4")
    assert "token request refused" in run.line("source token")
    assert "asked without a token" in run.line("source server")
    assert run.failed() == [run.line("source token")]


def test_a_client_asking_too_few_scopes_fails_the_token_check(
    smart_server: SmartServer, tmp_path: Path
) -> None:
    """Fewer scopes than the trial reads: the token comes, and the check names what is missing.

    A server may refuse the request instead (invalid_scope); either way it is a token FAIL, 1.
    """
    scopes = ["system/Patient.rs", "system/Condition.rs"]
    offset = smart_server.log_size()
    run = Check(tmp_path, **smart_site(smart_server, scopes=scopes))
    assert run.code == ExitCode.FATAL, run.text
    token = run.line("source token")
    assert token.startswith("FAIL source token: ")
    assert "system/Observation.rs" in token or "invalid_scope" in token
    assert run.failed() == [token]
    asked = [line for line in smart_server.log_since(offset) if '"GET /fhir/' in line]
    assert asked
    assert all('"GET /fhir/metadata' in line or "/.well-known/" in line for line in asked)


# -- a server that lacks a capability --------------------------------------------------------------


class WithoutConditionCode(FaultProxy):
    """The server's CapabilityStatement, less the `code` search parameter of Condition."""

    async def _forward(self, request: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        status, headers, body = await super()._forward(request)
        if self._relative(request.target) == "metadata" and status == 200:
            statement = json.loads(body)
            for rest in statement.get("rest", []):
                for entry in rest.get("resource", []):
                    if entry.get("type") == "Condition":
                        params = entry.get("searchParam", [])
                        entry["searchParam"] = [p for p in params if p.get("name") != "code"]
            body = json.dumps(statement).encode()
        return status, headers, body


@pytest.fixture
def lacking(fhir_base_url: str) -> Iterator[WithoutConditionCode]:
    with WithoutConditionCode(fhir_base_url) as proxy:
        yield proxy


def test_a_missing_capability_fails_the_check(
    lacking: WithoutConditionCode, fhir_base_url: str, tmp_path: Path
) -> None:
    """No `code` search on Condition: the cohort query cannot be sent, exit 1; metadata only."""
    run = Check(tmp_path, source={"url": lacking.base_url}, sink={"url": fhir_base_url})
    assert run.code == ExitCode.FATAL, run.text
    assert run.line("source capabilities") == (
        "FAIL source capabilities: Condition: no search parameter code"
    )
    assert run.failed() == [run.line("source capabilities")]
    assert [(e.method, e.path) for e in lacking.exchanges] == [("GET", "metadata")]
