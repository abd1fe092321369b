"""Notifications when a sweep ends: a local SMTP server (aiosmtpd) and a local HTTP receiver."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy
import ipaddress
import json
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from adapter.notify import NotifyConfig, Summary, notify, read_secrets
from adapter.report.results import sweep_json
from adapter.sources.files import FolderSource
from adapter.sweep import run_sweep
from adapter.trials import load_trial

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"
AS_OF = dt.date(2026, 6, 15)
REPORT = "/srv/trial-adapter/reports/hcc-ablation-lenvatinib-pd1/2026-06-15/results.json"
LOGGER = "adapter.notify"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def send(config: dict[str, Any], summary: Summary, env: dict[str, str] | None = None) -> None:
    asyncio.run(notify(NotifyConfig.model_validate(config), summary, env=env or {}))


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The adapter's warning lines (aiosmtpd logs its own side of a refused handshake)."""
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == LOGGER
    ]


# -- a summary of the demo, and what it must not hold ----------------------------------------------


@dataclass(frozen=True)
class Demo:
    summary: Summary
    ids: frozenset[str]  # every demo patient id and MRN
    names: frozenset[str]  # every family and given name


@pytest.fixture(scope="module")
def demo() -> Demo:
    """The demo swept as of 2026-06-15, summed up as the CLI would."""
    result = asyncio.run(run_sweep(load_trial(TRIAL), FolderSource(DEMO), AS_OF))
    doc = sweep_json(result, sink=None, writes={})
    patients = [
        json.loads(line) for line in (DEMO / "Patient.ndjson").read_text().splitlines() if line
    ]
    ids = {p["id"] for p in patients} | {i["value"] for p in patients for i in p["identifier"]}
    names = {n["family"] for p in patients for n in p["name"]}
    names |= {g for p in patients for n in p["name"] for g in n["given"]}
    summary = Summary(
        trial=TRIAL,
        as_of=AS_OF,
        run_id="3f9a2c1b",
        exit_code=0,
        counts=doc["counts"],
        new_candidates=doc["counts"]["candidate"],
        report=REPORT,
    )
    assert doc["counts"]["candidate"] > 0  # the premise: there is someone not to name
    return Demo(summary, frozenset(ids), frozenset(names))


def assert_names_nobody(text: str, demo: Demo) -> None:
    for word in demo.ids | demo.names:
        assert word not in text


# -- a local SMTP server ---------------------------------------------------------------------------


@dataclass
class Mailbox:
    """What an aiosmtpd server received, and the logins it accepted."""

    messages: list[Message] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login.decode(), data.password.decode()))
        # handled=False: aiosmtpd answers 235 or 535 itself.
        return AuthResult(success=data.password == b"mail-s3cret", handled=False)


@dataclass
class SmtpServer:
    port: int
    mailbox: Mailbox


@contextlib.contextmanager
def smtp_server(**options: Any) -> Iterator[SmtpServer]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=mailbox.authenticate,
        **options,
    )
    controller.start()
    try:
        yield SmtpServer(port, mailbox)
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A plain SMTP server on a free loopback port, AUTH allowed without TLS (this machine)."""
    with smtp_server(auth_require_tls=False) as server:
        yield server


def smtp_config(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "smtp": {
            "host": "127.0.0.1",
            "port": port,
            "tls": "none",
            "from": "trial-adapter@hospital.example",
            "to": ["research-office@hospital.example", "oncall@hospital.example"],
            **extra,
        }
    }


def test_the_mail_arrives_with_counts_new_candidates_report_and_exit_code(
    smtp: SmtpServer, demo: Demo, caplog: pytest.LogCaptureFixture
) -> None:
    """Plain text, to every recipient; the numbers and the report's place, nothing else."""
    caplog.set_level(logging.INFO, LOGGER)
    send(smtp_config(smtp.port), demo.summary)
    (mail,) = smtp.mailbox.messages
    assert smtp.mailbox.recipients == [
        ["research-office@hospital.example", "oncall@hospital.example"]
    ]
    assert mail["From"] == "trial-adapter@hospital.example"
    assert mail.get_content_type() == "text/plain"
    counts = demo.summary.counts
    new = demo.summary.new_candidates
    assert mail["Subject"] == (
        f"trial-adapter {TRIAL} 2026-06-15: done (exit 0), {new} new candidates"
    )
    body = mail.get_payload(decode=True).decode()
    assert f"new candidates: {new}" in body
    assert (
        f"candidate {counts['candidate']}, potential-candidate {counts['potential-candidate']}, "
        f"ineligible {counts['ineligible']}"
    ) in body
    assert f"report:         {REPORT}" in body
    assert "(exit code 0)" in body
    assert "3f9a2c1b" in body
    assert warnings(caplog) == []


def test_the_mail_names_no_patient_of_the_demo(smtp: SmtpServer, demo: Demo) -> None:
    """No id, MRN or name of any demo patient, in any header or the body."""
    send(smtp_config(smtp.port), demo.summary)
    (mail,) = smtp.mailbox.messages
    assert_names_nobody(mail.as_string(), demo)


def test_the_smtp_password_is_read_from_its_file_and_used_to_log_in(
    smtp: SmtpServer, demo: Demo, tmp_path: Path
) -> None:
    """password_file, relative paths aside: the login happens with the file's secret."""
    secret = tmp_path / "smtp-password"
    secret.write_text("mail-s3cret\n")
    config = smtp_config(smtp.port, username="trial-adapter", password_file=str(secret))
    send(config, demo.summary)
    assert smtp.mailbox.logins == [("trial-adapter", "mail-s3cret")]
    assert len(smtp.mailbox.messages) == 1


def test_a_refused_login_is_one_warning_without_the_password(
    smtp: SmtpServer, demo: Demo, caplog: pytest.LogCaptureFixture
) -> None:
    config = smtp_config(smtp.port, username="trial-adapter", password_env="SMTP_PASSWORD")
    send(config, demo.summary, env={"SMTP_PASSWORD": "wrong-password"})
    assert smtp.mailbox.messages == []
    (line,) = warnings(caplog)
    assert line == (
        f"notification by mail to 127.0.0.1:{smtp.port} failed: the SMTP server answered 535"
    )
    assert "wrong-password" not in caplog.text


def test_a_mail_server_that_is_not_there_is_one_warning_and_no_exception(
    demo: Demo, caplog: pytest.LogCaptureFixture
) -> None:
    """Connection refused: logged once, swallowed; the sweep's exit code stands."""
    port = free_port()
    send(smtp_config(port), demo.summary)
    (line,) = warnings(caplog)
    assert line.startswith(f"notification by mail to 127.0.0.1:{port} failed: ")
    assert "refused" in line.lower()


def test_a_missing_password_variable_is_one_warning(
    demo: Demo, caplog: pytest.LogCaptureFixture
) -> None:
    config = smtp_config(free_port(), username="u", password_env="NO_SUCH_SMTP_PASSWORD")
    send(config, demo.summary)
    assert warnings(caplog) == [
        "notification not sent: the SMTP password is missing: environment variable "
        "NO_SUCH_SMTP_PASSWORD is not set"
    ]


# -- STARTTLS, verified ----------------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
def tls_smtp(tmp_path: Path) -> Iterator[tuple[SmtpServer, Path]]:
    """An SMTP server that requires STARTTLS with a self-signed certificate; the certificate."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with smtp_server(tls_context=context, require_starttls=True) as server:
        yield server, cert


def test_starttls_verifies_the_server_against_the_sites_ca_bundle(
    tls_smtp: tuple[SmtpServer, Path], demo: Demo, caplog: pytest.LogCaptureFixture
) -> None:
    """With the certificate as ca_bundle the mail goes; without it, the certificate is refused."""
    server, cert = tls_smtp
    config = smtp_config(server.port, tls="starttls")
    config["smtp"]["host"] = "localhost"
    send(config, demo.summary)
    (line,) = warnings(caplog)
    assert line.endswith("failed: the server's TLS certificate was refused")
    assert server.mailbox.messages == []

    caplog.clear()
    config["smtp"]["ca_bundle"] = str(cert)
    send(config, demo.summary)
    assert warnings(caplog) == []
    assert len(server.mailbox.messages) == 1


# -- a local webhook receiver ----------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    status: int = 204
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A tiny HTTP server on a loopback port that keeps what is posted to it."""
    got = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            got.bodies.append(json.loads(self.rfile.read(length)))
            got.headers.append(dict(self.headers))
            self.send_response(got.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/trial-adapter"
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_webhook_receives_the_summary_as_json(
    receiver: Receiver, demo: Demo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Exactly the agreed keys; the bearer token and a header secret come from their files."""
    token = tmp_path / "token"
    token.write_text("hook-token\n")
    key = tmp_path / "key"
    key.write_text("k-123")
    hook = {
        "url": receiver.url,
        "token_file": str(token),
        "headers": {"X-Team": "research", "X-Key": {"file": str(key)}},
    }
    send({"webhook": hook}, demo.summary)
    (body,) = receiver.bodies
    assert body == {
        "trial": TRIAL,
        "as_of": "2026-06-15",
        "run_id": "3f9a2c1b",
        "counts": dict(demo.summary.counts),
        "new_candidates": demo.summary.new_candidates,
        "report": REPORT,
        "exit_code": 0,
    }
    headers = receiver.headers[0]
    assert headers["Authorization"] == "Bearer hook-token"
    assert (headers["X-Team"], headers["X-Key"]) == ("research", "k-123")
    assert headers["Content-Type"] == "application/json"
    assert_names_nobody(json.dumps(body), demo)
    assert warnings(caplog) == []


def test_a_receiver_that_fails_is_one_warning_naming_its_origin_only(
    receiver: Receiver, demo: Demo, caplog: pytest.LogCaptureFixture
) -> None:
    """HTTP 500: one warning with the status and the origin, not the URL's (secret) path."""
    receiver.status = 500
    send({"webhook": {"url_env": "HOOK_URL"}}, demo.summary, env={"HOOK_URL": receiver.url})
    (line,) = warnings(caplog)
    assert line == (
        "notification by webhook to the URL in environment variable HOOK_URL failed: HTTP 500"
    )
    assert "/hooks/" not in caplog.text


def test_both_channels_are_tried_when_one_fails(
    receiver: Receiver, demo: Demo, caplog: pytest.LogCaptureFixture
) -> None:
    """A mail server that is down does not keep the webhook from being called."""
    config = smtp_config(free_port()) | {"webhook": {"url": receiver.url}}
    send(config, demo.summary)
    assert len(receiver.bodies) == 1
    assert len(warnings(caplog)) == 1


def test_a_redirect_is_not_followed(demo: Demo, caplog: pytest.LogCaptureFixture) -> None:
    """The bearer token goes where it was configured to go, or nowhere."""
    with respx.mock(assert_all_called=True) as router:
        router.post("https://alerts.test/hook").respond(
            302, headers={"Location": "https://elsewhere.test/steal"}
        )
        send(
            {"webhook": {"url": "https://alerts.test/hook", "token_env": "T"}},
            demo.summary,
            env={"T": "tok"},
        )
    assert warnings(caplog) == ["notification by webhook to https://alerts.test failed: HTTP 302"]


@pytest.mark.parametrize(("when", "code", "sent"), [("failure", 0, 0), ("failure", 1, 1)])
def test_when_failure_sends_only_for_a_non_zero_exit(
    receiver: Receiver, demo: Demo, when: str, code: int, sent: int
) -> None:
    summary = Summary(TRIAL, AS_OF, "r1", exit_code=code)
    send({"when": when, "webhook": {"url": receiver.url}}, summary)
    assert len(receiver.bodies) == sent
    if sent:
        assert receiver.bodies[0]["counts"] == {}
        assert receiver.bodies[0]["new_candidates"] is None


def test_a_failed_sweep_says_so_in_the_subject() -> None:
    summary = Summary(TRIAL, AS_OF, "r1", exit_code=1)
    assert summary.subject() == f"trial-adapter {TRIAL} 2026-06-15: FAILED (exit 1)"
    assert "report:         none written" in summary.text()


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "give smtp, webhook or both"),
        ({"smtp": {"host": "m", "from": "a@b", "to": ["c@d"], "password": "pw"}}, "password_env"),
        (
            {"smtp": {"host": "m", "from": "a@b", "to": ["c@d"], "username": "u"}},
            "exactly one of password_env or password_file",
        ),
        (
            {
                "smtp": {
                    "host": "mail.example",
                    "tls": "none",
                    "from": "a@b",
                    "to": ["c@d"],
                    "username": "u",
                    "password_env": "P",
                }
            },
            "clear text",
        ),
        ({"smtp": {"host": "m", "from": "a@b", "to": []}}, "at least 1"),
        ({"smtp": {"host": "m", "from": "A <a@b>", "to": ["c@d"]}}, "pattern"),
        ({"smtp": {"host": "m", "from": "a@b", "to": ["c@d\r\nBcc: x@y"]}}, "pattern"),
        ({"webhook": {"url": "http://alerts.example/hook"}}, "plain http"),
        ({"webhook": {"url": "https://u:pw@alerts.example/hook"}}, "credentials"),
        ({"webhook": {"url": "https://a.example", "url_env": "U"}}, "exactly one of url"),
        ({"webhook": {"url": "https://a.example", "token": "t0k"}}, "token_env or token_file"),
        (
            {"webhook": {"url": "https://a.example", "headers": {"Authorization": "Bearer x"}}},
            "by reference",
        ),
    ],
)
def test_a_bad_notify_section_is_refused_without_echoing_secrets(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        NotifyConfig.model_validate(config)
    assert message in str(info.value)
    for secret in ("pw", "t0k", "Bearer x"):
        assert f"'{secret}'" not in str(info.value)


def test_secrets_by_reference_are_read_only_when_asked(tmp_path: Path) -> None:
    """The file is read by read_secrets (and notify), not when the configuration is loaded."""
    config = NotifyConfig.model_validate(
        {"webhook": {"url_file": str(tmp_path / "url"), "token_env": "T"}}
    )
    (tmp_path / "url").write_text("https://hooks.example/services/T0/B0/XYZ\n")
    secrets = read_secrets(config, {"T": "tok"})
    assert secrets.webhook_url == "https://hooks.example/services/T0/B0/XYZ"
    assert secrets.webhook_headers == {"Authorization": "Bearer tok"}
    assert "XYZ" not in repr(secrets)


def test_a_webhook_url_from_the_environment_follows_the_same_rule(
    demo: Demo, caplog: pytest.LogCaptureFixture
) -> None:
    """Plain http to another machine, even from a variable: not sent, one warning."""
    with respx.mock(assert_all_called=False) as router:
        route = router.post("http://alerts.example/hook").respond(204)
        send({"webhook": {"url_env": "U"}}, demo.summary, env={"U": "http://alerts.example/hook"})
    assert not route.called
    (line,) = warnings(caplog)
    assert line.startswith("notification not sent: the webhook URL is plain http")


def test_httpx_is_used_with_the_injected_client(demo: Demo) -> None:
    """An injected client carries the request (adapter.fhir.transport's seam)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            config = NotifyConfig.model_validate({"webhook": {"url": "https://a.example/h"}})
            await notify(config, demo.summary, env={}, http=http)

    asyncio.run(go())
    assert [r.url.path for r in seen] == ["/h"]
