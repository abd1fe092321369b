"""`trial-adapter check`: one line per check, exit 0 only when all pass (respx servers)."""

from __future__ import annotations

import asyncio
import copy
import gzip
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
import respx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapter.commands.check import run_checks
from adapter.commands.requirements import (
    judge_capabilities,
    missing_scopes,
    needed_scopes,
    source_types,
)
from adapter.errors import ExitCode
from adapter.fhir.capability import parse_capability_statement
from adapter.trials import load_trial

SOURCE = "https://fhir.test/r4"
SINK = "https://writer.test/fhir"
TOKEN_URL = "https://auth.test/oauth2/token"
ACCESS_TOKEN = "eyJhbGciOi.access-token-never-printed"
SINK_TOKEN = "sink-token-never-printed"
TRIAL = "hcc-ablation-lenvatinib-pd1"
READS = ("system/Patient.rs", "system/Condition.rs", "system/Observation.rs", "system/Procedure.rs")
WRITES = (
    "system/ResearchStudy.cru",
    "system/ResearchSubject.crus",
    "system/Provenance.crs",
    "system/Device.crs",
)
ALL = ["read", "vread", "update", "create", "search-type"]


def resource(kind: str, *params: str, update_create: bool = True, **more: Any) -> dict[str, Any]:
    entry = {
        "type": kind,
        "interaction": [{"code": code} for code in ALL],
        "searchParam": [{"name": name, "type": "token"} for name in ("_id", *params)],
        "updateCreate": update_create,
        "versioning": "versioned-update",
    }
    return entry | more


def statement(*resources: dict[str, Any], version: str = "4.0.1") -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": version,
        "format": ["json"],
        "software": {"name": "Test FHIR", "version": "1.0"},
        "rest": [{"mode": "server", "resource": list(resources)}],
    }


GOOD_SOURCE = statement(
    resource("Patient", "identifier"),
    resource("Condition", "patient", "code"),
    resource("Observation", "patient", "code"),
    resource("Procedure", "patient", "code"),
)
GOOD_SINK = statement(
    resource("ResearchStudy", "identifier"),
    resource("ResearchSubject", "identifier"),
    resource("Device", "identifier"),
    resource("Provenance", "target"),
)


class Servers:
    """A source with SMART Backend Services and a sink with a bearer token, as respx routes."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.router = router
        self.granted: str | None = " ".join(READS)
        self.token_status = 200
        self.gzip_token = False
        self.forms: list[dict[str, str]] = []
        router.get(f"{SOURCE}/metadata").respond(json=GOOD_SOURCE)
        router.get(f"{SOURCE}/.well-known/smart-configuration").respond(
            json={
                "token_endpoint": TOKEN_URL,
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_signing_alg_values_supported": ["ES384"],
            }
        )
        router.post(TOKEN_URL).mock(side_effect=self.token)
        router.get(f"{SINK}/metadata").mock(side_effect=self.sink_metadata)
        self.sink_statement = copy.deepcopy(GOOD_SINK)

    def token(self, request: httpx.Request) -> httpx.Response:
        self.forms.append(dict(parse_qsl(request.content.decode())))
        if self.token_status != 200:
            return httpx.Response(self.token_status, json={"error": "invalid_client"})
        body: dict[str, Any] = {
            "access_token": ACCESS_TOKEN,
            "token_type": "bearer",
            "expires_in": 300,
        }
        if self.granted is not None:
            body["scope"] = self.granted
        if self.gzip_token:
            return httpx.Response(
                200, content=gzip.compress(orjson.dumps(body)), headers={"Content-Encoding": "gzip"}
            )
        return httpx.Response(200, json=body)

    def sink_metadata(self, request: httpx.Request) -> httpx.Response:
        # With the token, or without it after the token could not be read: never another.
        assert request.headers.get("Authorization") in (f"Bearer {SINK_TOKEN}", None)
        return httpx.Response(200, json=self.sink_statement)

    def paths(self) -> list[str]:
        return [call.request.url.path for call in self.router.calls]


@pytest.fixture
def servers() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield Servers(router)


@pytest.fixture
def site(tmp_path: Path) -> Callable[..., Path]:
    """`site(**changes)`: a site file with a SMART source, a bearer sink and folders beside it."""
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "key.pem").write_bytes(pem)
    (tmp_path / "key.pem").chmod(0o600)

    def write(**changes: Any) -> Path:
        data: dict[str, Any] = {
            "source": {
                "url": SOURCE,
                "auth": {
                    "type": "smart-backend",
                    "client_id": "trial-adapter",
                    "private_key_file": "key.pem",
                    "algorithm": "ES384",
                    "kid": "k1",
                },
            },
            "sink": {"url": SINK, "auth": {"type": "bearer", "token_env": "SINK_TOKEN"}},
            "trials": [TRIAL],
            "out_dir": "reports",
            "state_dir": "state",
        }
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def check(config: Path | None, env: Mapping[str, str] | None = None, **options: Any) -> Run:
    lines: list[str] = []
    options = {"source": None, "sink": None, "trials": ()} | options
    code = asyncio.run(
        run_checks(
            config,
            env={"SINK_TOKEN": SINK_TOKEN} if env is None else env,
            say=lines.append,
            home=config.parent if config else Path("/nonexistent"),
            **options,
        )
    )
    return Run(code, lines)


class Run:
    def __init__(self, code: ExitCode, lines: list[str]) -> None:
        self.code = code
        self.lines = lines
        self.text = "\n".join(lines)

    def line(self, name: str) -> str:
        found = [line for line in self.lines if line[5:].startswith(f"{name}:")]
        assert len(found) == 1, self.text
        return found[0]

    def failed(self) -> list[str]:
        return [line for line in self.lines if line.startswith("FAIL")]


# -- the command -----------------------------------------------------------------------------------


def test_a_good_set_up_passes_every_check_and_exits_0(servers: Servers, site) -> None:
    """Config, trial, both servers with their auth, token and capabilities, folders: all ok."""
    run = check(site())
    assert run.code == ExitCode.OK, run.text
    assert run.failed() == []
    names = [line[5:].split(":", 1)[0] for line in run.lines]
    assert names == [
        "config",
        "trial",
        "source auth",
        "source server",
        "source token",
        "source capabilities",
        "source profile",
        "sink auth",
        "sink server",
        "sink token",
        "sink capabilities",
        "out",
        "state",
        "notify",
    ]
    assert run.line("source token").startswith("ok   source token: granted system/Patient.rs")
    assert run.line("sink token").startswith("skip")
    assert run.line("notify") == "skip notify: none configured"
    assert "(Test FHIR 1.0, FHIR 4.0.1)" in run.line("source server")


def test_no_token_secret_or_patient_request_is_ever_made_or_printed(servers: Servers, site) -> None:
    """Only metadata, SMART discovery and the token endpoint are asked; no token is printed."""
    run = check(site())
    assert ACCESS_TOKEN not in run.text
    assert SINK_TOKEN not in run.text
    assert set(servers.paths()) == {
        "/r4/metadata",
        "/r4/.well-known/smart-configuration",
        "/oauth2/token",
        "/fhir/metadata",
    }
    assert sorted(servers.forms[0]["scope"].split()) == sorted(READS)


def test_a_missing_secret_is_a_fail_line_and_exit_2(servers: Servers, site) -> None:
    """An unset token variable: FAIL naming it, exit 2; the server is still asked, without it."""
    run = check(site(), env={})
    assert run.code == ExitCode.USAGE
    assert run.line("sink auth") == (
        "FAIL sink auth: the bearer token is missing: environment variable SINK_TOKEN is not set"
    )
    assert run.line("sink token") == "skip sink token: no usable credentials"


def test_a_server_that_does_not_answer_exits_1(servers: Servers, site) -> None:
    """Connection refused at the sink: its server line fails, and the exit code is 1."""
    servers.router.get(f"{SINK}/metadata").mock(side_effect=httpx.ConnectError("refused"))
    run = check(site())
    assert run.code == ExitCode.FATAL
    assert run.line("sink server").startswith("FAIL sink server: ")
    assert "writer.test" in run.line("sink server")
    assert run.line("sink capabilities") == "skip sink capabilities: no CapabilityStatement"


def test_a_token_without_a_needed_scope_exits_1(servers: Servers, site) -> None:
    """The token endpoint grants less than the trial reads: FAIL naming the scope, exit 1."""
    servers.granted = "system/Patient.rs system/Condition.rs system/Procedure.rs"
    run = check(site())
    assert run.code == ExitCode.FATAL
    assert run.line("source token") == (
        "FAIL source token: scope system/Observation.rs not granted "
        "(granted: system/Patient.rs system/Condition.rs system/Procedure.rs)"
    )


def test_a_refused_token_request_exits_1_and_the_server_is_still_asked(
    servers: Servers, site
) -> None:
    """invalid_client (a wrong key): the token fails; metadata is read without a token."""
    servers.token_status = 401
    run = check(site())
    assert run.code == ExitCode.FATAL
    assert run.line("source token").startswith(
        "FAIL source token: HTTP 401: token request refused: invalid_client"
    )
    assert "asked without a token" in run.line("source server")
    assert run.line("source capabilities").startswith("ok")


@pytest.mark.parametrize("how", ["absent", "gzip"])
def test_the_granted_scope_is_read_however_the_token_endpoint_sends_it(
    servers: Servers, site, how: str
) -> None:
    """No `scope` grants what was asked (RFC 6749 5.1); a gzip body is read all the same."""
    if how == "absent":
        servers.granted = None
    else:
        servers.gzip_token = True
        servers.granted = "system/Patient.rs"
    run = check(site())
    if how == "absent":
        assert run.line("source token").startswith("ok   source token: granted system/Patient.rs")
    else:
        assert "scopes system/Condition.rs, system/Observation.rs" in run.line("source token")


def test_a_missing_capability_exits_1(servers: Servers, site) -> None:
    """A sink that lists ResearchSubject without create cannot take the conditional create."""
    subject = servers.sink_statement["rest"][0]["resource"][1]
    subject["interaction"] = [{"code": c} for c in ("read", "update", "search-type")]
    run = check(site())
    assert run.code == ExitCode.FATAL
    assert run.line("sink capabilities") == (
        "FAIL sink capabilities: ResearchSubject: no create interaction"
    )


def test_a_source_that_is_not_r4_exits_1(servers: Servers, site) -> None:
    """A FHIR R5 server: the adapter speaks R4."""
    servers.router.get(f"{SOURCE}/metadata").respond(json=statement(version="5.0.0"))
    run = check(site())
    assert run.code == ExitCode.FATAL
    assert "answers as FHIR 5.0.0" in run.line("source server")


def test_an_out_folder_that_cannot_be_written_exits_2(servers: Servers, site, tmp_path) -> None:
    """out_dir names a file: FAIL out, exit 2; no probe file is left anywhere."""
    (tmp_path / "reports").write_text("not a folder")
    config = site()
    before = sorted(p.name for p in tmp_path.iterdir())
    run = check(config)
    assert run.code == ExitCode.USAGE
    assert run.line("out").startswith("FAIL out: folder ")
    assert "exists and is not a folder" in run.line("out")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_server_and_folder_failures_together_exit_2(servers: Servers, site, tmp_path) -> None:
    """The site's own problems come first: 2 over 1."""
    (tmp_path / "reports").write_text("not a folder")
    servers.router.get(f"{SINK}/metadata").mock(side_effect=httpx.ConnectError("refused"))
    assert check(site()).code == ExitCode.USAGE


def test_a_bad_site_file_is_one_fail_line_and_exit_2(tmp_path) -> None:
    """A typo in the file: the config line fails with file and line, and nothing else runs."""
    path = tmp_path / "site.yaml"
    path.write_text("source:\n  urll: https://fhir.test/r4\n")
    run = check(path)
    assert run.code == ExitCode.USAGE
    assert run.lines == [f"FAIL config: {path}:2 (source.urll): Extra inputs are not permitted"]


def test_an_unknown_trial_exits_2(servers: Servers, site) -> None:
    run = check(site(trials=["no-such-trial"]))
    assert run.code == ExitCode.USAGE
    assert run.line("trial").startswith("FAIL trial: ")


def test_command_line_values_override_the_file(servers: Servers, site, tmp_path) -> None:
    """--source folder, --sink folder, --out and --state-dir replace the file's."""
    folder = tmp_path / "export"
    folder.mkdir()
    run = check(
        site(),
        source=str(folder),
        sink=str(tmp_path / "subjects"),
        out_dir=tmp_path / "elsewhere",
        state_dir=tmp_path / "st",
    )
    assert run.code == ExitCode.OK, run.text
    assert run.line("source") == f"ok   source: folder {folder} can be listed"
    assert run.line("sink") == f"ok   sink: {tmp_path / 'subjects'} can be created"
    assert run.line("out") == f"ok   out: {tmp_path / 'elsewhere'} can be created"
    assert servers.paths() == []


def test_without_sink_and_trial_the_checks_say_skip(servers: Servers, site) -> None:
    """No sink is a skip, not a failure; without a trial every read scope is needed."""
    run = check(site(sink=None, trials=None))
    assert run.code == ExitCode.OK, run.text
    assert run.line("sink") == "skip sink: none configured (--sink or sink.url)"
    assert run.line("trial").startswith("skip trial: none given")


def test_notification_secrets_are_checked_without_sending(servers: Servers, site) -> None:
    """A webhook token variable that is not set: FAIL notify, exit 2; nothing is posted."""
    hook = {"webhook": {"url": "https://alerts.test/hook", "token_env": "ALERTS_TOKEN"}}
    run = check(site(notify=hook))
    assert run.code == ExitCode.USAGE
    assert "environment variable ALERTS_TOKEN is not set" in run.line("notify")
    ok = check(site(notify=hook), env={"SINK_TOKEN": SINK_TOKEN, "ALERTS_TOKEN": "t"})
    assert ok.line("notify").startswith("ok   notify: webhook https://alerts.test")
    assert "alerts.test" not in " ".join(servers.paths())


@pytest.mark.skipif(os.getuid() != 0, reason="making a folder another user's needs root")
def test_a_state_folder_of_another_user_exits_2(servers: Servers, site, tmp_path) -> None:
    (tmp_path / "state").mkdir()
    os.chown(tmp_path / "state", 65534, 65534)
    run = check(site())
    assert run.code == ExitCode.USAGE
    assert run.line("state") == f"FAIL state: folder {tmp_path / 'state'} belongs to another user"


# -- what is needed --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "missing"),
    [
        (READS, []),
        (("system/*.rs",), []),
        (("system/*.read",), []),
        (("system/Patient.read", "system/Condition.read", "system/Observation.read"), []),
        (("system/Patient.rs", "system/Condition.rs", "system/Observation.rs?category=lab"), []),
        (("system/Patient.r", "system/Condition.rs", "system/Observation.rs"), ["Patient"]),
        (("patient/*.rs", "system/Condition.rs", "system/Observation.rs"), ["Patient"]),
        ((), ["Patient", "Condition", "Observation"]),
    ],
)
def test_granted_scopes_are_compared_in_v1_and_v2_forms(
    granted: tuple[str, ...], missing: list[str]
) -> None:
    """`.read` is `.rs`, `*` covers every type, a narrowed scope grants; patient/ does not."""
    needed = needed_scopes("source", ("Patient", "Condition", "Observation"), None)
    assert missing_scopes(needed, granted) == [f"system/{t}.rs" for t in missing]


def test_the_sink_needs_the_scopes_security_md_lists_and_search_where_it_searches() -> None:
    """ResearchStudy found by identifier is searched first: `s` on top of SECURITY.md's `cru`."""
    plain = parse_capability_statement(statement())
    searching = parse_capability_statement(GOOD_SINK)
    assert missing_scopes(needed_scopes("sink", (), plain), WRITES) == []
    assert missing_scopes(needed_scopes("sink", (), searching), WRITES) == [
        "system/ResearchStudy.crus"
    ]


def test_a_trial_needs_patient_condition_and_what_its_criteria_read() -> None:
    assert source_types([load_trial("t2dm-glycaemic-control")]) == (
        "Patient",
        "Condition",
        "Observation",
    )
    assert source_types([]) == ("Patient", "Condition", "Observation", "Procedure")


@pytest.mark.parametrize(
    ("side", "resources", "problem"),
    [
        ("source", [resource("Condition", "patient")], "Condition: no search parameter code"),
        (
            "source",
            [resource("Condition", "patient", "code", interaction=[{"code": "read"}])],
            "Condition: no search-type interaction",
        ),
        (
            "sink",
            [resource("ResearchSubject", update_create=False)],
            "ResearchSubject: PUT at a deterministic id, but no updateCreate",
        ),
        (
            "sink",
            [resource("Provenance", update_create=False, interaction=[{"code": "read"}])],
            "Provenance: no search-type or create interaction",
        ),
    ],
)
def test_a_declared_lack_is_a_problem(side: str, resources: list[Any], problem: str) -> None:
    caps = parse_capability_statement(statement(*resources))
    problems, _notes = judge_capabilities(side, ("Patient", "Condition"), caps)
    assert problems == [problem]


def test_an_unlisted_type_is_a_note_not_a_problem() -> None:
    """sekmet lists no ResearchSubject and takes them at deterministic ids."""
    caps = parse_capability_statement(statement(resource("Device", "identifier")))
    problems, notes = judge_capabilities("sink", (), caps)
    assert problems == []
    assert notes == [
        "ResearchStudy, ResearchSubject, Provenance not listed: written at deterministic ids, "
        "unverified"
    ]


def test_the_source_profile_is_said_with_what_the_capability_statement_says(
    servers: Servers, site
) -> None:
    """Issue 13: `check` reports the profile and the CapabilityStatement together."""
    run = check(site(), profile="epic")
    line = run.line("source profile")
    assert line.startswith("ok   source profile: profile epic")
    assert "reads per patient" in line
    assert "Condition: " in line


def test_an_unknown_profile_is_a_failed_check_naming_the_known_ones(servers: Servers, site) -> None:
    run = check(site(), profile="nosuch")
    line = run.line("source profile")
    assert line.startswith("FAIL")
    assert "unknown server profile 'nosuch'" in line
    assert "epic" in line
    assert run.code == ExitCode.USAGE
