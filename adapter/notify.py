"""Telling people that a sweep ended, by e-mail (SMTP) or a webhook, without patient data.

A nightly job nobody watches needs to say when it ends, and whether it went well. The message
holds the trial, the as-of day, the run id, the counts per status, the number of new candidates,
where the report is and the exit code: numbers and a location, never a patient (the report itself
is the place for names, behind its own permissions). A notification that fails is one warning
line on stderr and nothing more: the sweep's work is done and recorded either way, so a mail
server's bad night must not change the exit code cron or systemd sees.

Secrets are given by reference, as everywhere in the site file (adapter.fhir.auth): the SMTP
password as `password_env` or `password_file`, a webhook's bearer token as `token_env` or
`token_file`, other header values as `{env: NAME}` or `{file: PATH}`, and the webhook URL itself
as `url_env` or `url_file` where it holds its secret in the path (Slack, Teams, Mattermost).
A whole `notify:` section, with both, is in docs/operations.md.

The webhook receives `{"trial", "as_of", "run_id", "counts", "new_candidates", "report",
"exit_code"}` as JSON; the mail is plain text. TLS is always verified: against `ca_bundle` when
given, else against certifi's bundle (never `SSL_CERT_FILE`, as adapter.fhir.transport).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import smtplib
import ssl
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import date
from email.message import EmailMessage
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import certifi
import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from adapter.errors import ConfigError, ExitCode
from adapter.fhir.auth import _read_secret as read_secret
from adapter.fhir.transport import http_client
from adapter.fhir.urls import is_loopback

__all__ = [
    "NotifyConfig",
    "NotifySecrets",
    "SecretRef",
    "SmtpConfig",
    "Summary",
    "WebhookConfig",
    "notify",
    "read_secrets",
]

log = logging.getLogger(__name__)

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# A plain address: no display name, no spaces or line breaks (no header can be smuggled in).
_ADDRESS_PART = r"[^\s@<>,;:\"()\[\]\\]+"
Address = Annotated[str, StringConstraints(pattern=f"^{_ADDRESS_PART}@{_ADDRESS_PART}$")]
# RFC 9110 5.1 field names.
HeaderName = Annotated[str, StringConstraints(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
# Header values that are credentials: given by reference, never in the file.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_EXIT_MEANING = {
    ExitCode.OK: "done",
    ExitCode.FATAL: "FAILED",
    ExitCode.USAGE: "NOT STARTED (bad arguments or configuration)",
    ExitCode.PARTIAL: "done, with patients not evaluated or written",
}


class _Model(BaseModel):
    # hide_input_in_errors: a secret pasted into the wrong field must not be echoed back.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        allow_inf_nan=False,
        populate_by_name=True,
    )


def _one_of(model: BaseModel, names: tuple[str, ...], *, required: bool = True) -> None:
    given = [name for name in names if getattr(model, name) is not None]
    if len(given) > 1 or (required and not given):
        raise ValueError(f"give {'exactly' if required else 'at most'} one of {' or '.join(names)}")


def _refuse_inline(data: Any, secrets: Mapping[str, str]) -> Any:
    if isinstance(data, Mapping):
        for key, instead in secrets.items():
            if key in data:
                raise ValueError(f"`{key}`: secrets never go in the configuration; use {instead}")
    return data


class SecretRef(_Model):
    """A header value read from an environment variable or a file when the message is sent."""

    env: EnvName | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        _one_of(self, ("env", "file"))
        return self


class SmtpConfig(_Model):
    """A mail server and the message's envelope."""

    host: NonEmpty
    port: int = Field(default=587, ge=1, le=65535)
    #: starttls: upgrade a plain connection (port 587); ssl: TLS from the start (port 465);
    #: none: plain text, refused with a password unless the server is this machine
    tls: Literal["starttls", "ssl", "none"] = "starttls"
    username: NonEmpty | None = None
    password_env: EnvName | None = None
    password_file: Path | None = None
    sender: Address = Field(alias="from")
    to: tuple[Address, ...] = Field(min_length=1)
    #: PEM file of the CA certificates the server's certificate is verified with
    ca_bundle: Path | None = None
    #: seconds for each step of the conversation (connect, each command)
    timeout: float = Field(default=30.0, gt=0, le=600)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: Any) -> Any:
        return _refuse_inline(data, {"password": "password_env or password_file"})

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        _one_of(self, ("password_env", "password_file"), required=self.username is not None)
        if self.username is None and (self.password_env or self.password_file):
            raise ValueError("a password needs a username")
        if self.username is not None and self.tls == "none" and not is_loopback(self.host):
            raise ValueError(
                "tls: none would send the SMTP password in clear text: use starttls or ssl "
                "(plain SMTP with a password only to this machine)"
            )
        return self


class WebhookConfig(_Model):
    """An HTTP endpoint that receives the summary as JSON (POST)."""

    url: str | None = None
    url_env: EnvName | None = None
    url_file: Path | None = None
    #: a bearer token, sent as `Authorization: Bearer <token>`
    token_env: EnvName | None = None
    token_file: Path | None = None
    #: more headers: plain values, or `{env: NAME}` / `{file: PATH}` for secret ones
    headers: dict[HeaderName, str | SecretRef] = Field(default_factory=dict)
    ca_bundle: Path | None = None
    #: seconds for the whole request, connect to answer
    timeout: float = Field(default=10.0, gt=0, le=600)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_token(cls, data: Any) -> Any:
        return _refuse_inline(data, {"token": "token_env or token_file"})

    @model_validator(mode="after")
    def _sources(self) -> Self:
        _one_of(self, ("url", "url_env", "url_file"))
        _one_of(self, ("token_env", "token_file"), required=False)
        if self.url is not None:
            problem = webhook_url_problem(self.url)
            if problem:
                raise ValueError(problem)
        for name, value in self.headers.items():
            if isinstance(value, str) and (
                name.lower() in _SECRET_HEADERS or _CONTROL.search(value)
            ):
                raise ValueError(
                    f"header {name}: give a credential by reference ({{env: NAME}} or "
                    "{file: PATH}, or token_env / token_file), and no line breaks"
                )
        return self

    def origin(self) -> str:
        """Where it posts, for messages: the configured URL's origin (its path may be a secret)."""
        if self.url is None:
            return f"the URL in {_where(self.url_env, self.url_file)}"
        url = httpx.URL(self.url)
        return f"{url.scheme}://{url.netloc.decode('ascii')}"


def webhook_url_problem(value: str) -> str:
    """Why `value` cannot be a webhook URL ("" when it can): https, or http to this machine only,
    as for credentials (adapter.fhir.urls.require_tls), since the URL and headers are secrets."""
    try:
        url: httpx.URL | None = httpx.URL(value)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        return "the webhook URL is not an absolute http(s) URL"
    if url.userinfo or url.fragment:
        return "the webhook URL must not hold credentials or a fragment"
    if url.scheme == "http" and not is_loopback(url.host):
        return "the webhook URL is plain http: use https (plain http only to this machine)"
    return ""


class NotifyConfig(_Model):
    """Who is told that a sweep ended, and when."""

    #: always, or only when the exit code is not 0 (a failure, or patients not evaluated)
    when: Literal["always", "failure"] = "always"
    smtp: SmtpConfig | None = None
    webhook: WebhookConfig | None = None

    @model_validator(mode="after")
    def _some(self) -> Self:
        if self.smtp is None and self.webhook is None:
            raise ValueError("give smtp, webhook or both")
        return self

    def describe(self) -> str:
        """One line for `check`: where messages go, no secret."""
        parts = []
        if self.smtp is not None:
            smtp = self.smtp
            count = len(smtp.to)
            parts.append(
                f"smtp {smtp.host}:{smtp.port} ({smtp.tls}) to {count} "
                f"recipient{'s' if count != 1 else ''}"
            )
        if self.webhook is not None:
            parts.append(f"webhook {self.webhook.origin()}")
        return "; ".join(parts) + f" ({self.when})"


# -- what is said --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """What a notification says about one sweep: counts and a location, never a patient."""

    trial: str
    as_of: date
    run_id: str
    exit_code: int
    #: patients per status (candidate, potential-candidate, ineligible); empty when the sweep
    #: ended before deciding
    counts: Mapping[str, int] = field(default_factory=dict)
    #: candidates this run flagged for the first time; None when not known
    new_candidates: int | None = None
    #: the report: a path or a URL; None when no report was written
    report: str | None = None

    def outcome(self) -> str:
        try:
            return _EXIT_MEANING[ExitCode(self.exit_code)]
        except ValueError:
            return "ended"

    def subject(self) -> str:
        new = "" if self.new_candidates is None else f", {self.new_candidates} new candidates"
        return (
            f"trial-adapter {self.trial} {self.as_of.isoformat()}: {self.outcome()} "
            f"(exit {self.exit_code}){new}"
        )

    def text(self) -> str:
        """The plain-text body of the mail."""
        counts = ", ".join(f"{status} {n}" for status, n in self.counts.items()) or "none"
        new = "unknown" if self.new_candidates is None else str(self.new_candidates)
        return "\n".join(
            [
                f"The trial-adapter sweep of {self.trial} as of {self.as_of.isoformat()} ended: "
                f"{self.outcome()} (exit code {self.exit_code}).",
                "",
                f"new candidates: {new}",
                f"counts:         {counts}",
                f"report:         {self.report or 'none written'}",
                f"run id:         {self.run_id} (in every log line of the run)",
                "",
                "This message holds no patient data: the report names the patients.",
                "",
            ]
        )

    def as_json(self) -> dict[str, Any]:
        """The webhook's body."""
        return {
            "trial": self.trial,
            "as_of": self.as_of.isoformat(),
            "run_id": self.run_id,
            "counts": dict(self.counts),
            "new_candidates": self.new_candidates,
            "report": self.report,
            "exit_code": self.exit_code,
        }


# -- secrets -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotifySecrets:
    """The secrets of a NotifyConfig, read from their environment variables and files."""

    smtp_password: str | None = field(default=None, repr=False)
    webhook_url: str | None = field(default=None, repr=False)
    webhook_headers: Mapping[str, str] = field(default_factory=dict, repr=False)


def _where(env_name: str | None, file: Path | None) -> str:
    return f"environment variable {env_name}" if env_name is not None else f"file {file}"


def _secret(what: str, env_name: str | None, file: Path | None, env: Mapping[str, str]) -> str:
    """The secret, as adapter.fhir.auth reads every secret; one line of text (it may go in a
    header, and a line break there would start another)."""
    value = read_secret(what, env_name, file, env)
    if _CONTROL.search(value):
        where = _where(env_name, file)
        raise ConfigError(f"the {what} in {where} holds a line break or control character")
    return value


def read_secrets(config: NotifyConfig, env: Mapping[str, str]) -> NotifySecrets:
    """Every secret `config` names, read now; ConfigError for the first that is missing."""
    password = None
    smtp = config.smtp
    if smtp is not None and smtp.username is not None:
        password = _secret("SMTP password", smtp.password_env, smtp.password_file, env)
    url = None
    headers: dict[str, str] = {}
    hook = config.webhook
    if hook is not None:
        url = hook.url or _secret("webhook URL", hook.url_env, hook.url_file, env)
        problem = webhook_url_problem(url)
        if problem:
            raise ConfigError(f"{problem} (from {_where(hook.url_env, hook.url_file)})")
        for name, value in hook.headers.items():
            if isinstance(value, SecretRef):
                value = _secret(f"header {name}", value.env, value.file, env)
            headers[name] = value
        if hook.token_env is not None or hook.token_file is not None:
            token = _secret("webhook token", hook.token_env, hook.token_file, env)
            headers["Authorization"] = f"Bearer {token}"
    return NotifySecrets(password, url, headers)


# -- sending -------------------------------------------------------------------------------------


async def notify(
    config: NotifyConfig,
    summary: Summary,
    *,
    env: Mapping[str, str],
    http: httpx.AsyncClient | None = None,
) -> None:
    """Send `summary` by every configured channel; a failure is one warning line, never raised.

    `http` posts to the webhook (built with adapter.fhir.transport.http_client when None).
    """
    if config.when == "failure" and summary.exit_code == ExitCode.OK:
        return
    try:
        secrets = read_secrets(config, env)
    except ConfigError as exc:
        log.warning("notification not sent: %s", exc)
        return
    if config.smtp is not None:
        smtp = config.smtp
        where = f"{smtp.host}:{smtp.port}"
        await _guarded("mail", where, _send_mail(smtp, summary, secrets.smtp_password))
    if config.webhook is not None and secrets.webhook_url is not None:
        hook = config.webhook
        await _guarded("webhook", hook.origin(), _post(hook, summary, secrets, http))


async def _guarded(channel: str, where: str, sending: Awaitable[None]) -> None:
    try:
        await sending
    # Broad on purpose: whatever a mail server or receiver does, the sweep's exit code stands.
    # Cancellation (BaseException) still goes through.
    except Exception as exc:
        log.warning(
            "notification by %s to %s failed: %s",
            channel,
            where,
            _reason(exc),
            extra={"notify": channel},
        )
    else:
        log.info("notification sent by %s to %s", channel, where)


class _Refused(Exception):
    """A receiver that answered, but not with success."""


def _reason(exc: Exception) -> str:
    """Why sending failed, in words that hold no secret (server texts are left out)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "every recipient was refused"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"the SMTP server answered {exc.smtp_code}"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return "the SMTP server does not offer STARTTLS (tls: starttls)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "the server's TLS certificate was refused"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, _Refused):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    # cafile only: load_default_certs would read SSL_CERT_FILE / SSL_CERT_DIR from the
    # environment, which must not widen trust (SECURITY.md).
    try:
        return ssl.create_default_context(cafile=str(ca_bundle or certifi.where()))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the CA bundle {ca_bundle}: {exc}") from None


def message(config: SmtpConfig, summary: Summary) -> EmailMessage:
    """The mail for `summary`: plain text, from and to as configured."""
    mail = EmailMessage()
    mail["Subject"] = summary.subject()
    mail["From"] = config.sender
    mail["To"] = ", ".join(config.to)
    mail["Date"] = email.utils.formatdate(localtime=True)
    mail["Message-ID"] = email.utils.make_msgid(domain=config.sender.rsplit("@", 1)[1])
    mail.set_content(summary.text())
    return mail


async def _send_mail(config: SmtpConfig, summary: Summary, password: str | None) -> None:
    mail = message(config, summary)
    context = _tls_context(config.ca_bundle) if config.tls != "none" else None
    # smtplib's timeout bounds each socket operation but not the name lookup: the whole
    # conversation gets a deadline too. A thread left behind ends with its socket timeout.
    async with asyncio.timeout(config.timeout * 4):
        await asyncio.to_thread(_send_mail_sync, config, mail, password, context)


def _send_mail_sync(
    config: SmtpConfig, mail: EmailMessage, password: str | None, context: ssl.SSLContext | None
) -> None:
    smtp: smtplib.SMTP
    if config.tls == "ssl":
        smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout, context=context)
    else:
        smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
    with smtp:
        if config.tls == "starttls":
            # Raises when the server does not offer STARTTLS: never a silent fall back to plain.
            smtp.starttls(context=context)
        if config.username is not None and password is not None:
            smtp.login(config.username, password)
        smtp.send_message(mail)


async def _post(
    config: WebhookConfig,
    summary: Summary,
    secrets: NotifySecrets,
    http: httpx.AsyncClient | None,
) -> None:
    url = secrets.webhook_url
    assert url is not None  # read_secrets gives one whenever a webhook is configured
    headers = {"Content-Type": "application/json", **secrets.webhook_headers}
    body = orjson.dumps(summary.as_json())
    client = http or http_client(timeout=config.timeout, ca_bundle=config.ca_bundle)
    try:
        # A deadline for the whole exchange: a receiver that trickles cannot hold the job.
        async with (
            asyncio.timeout(config.timeout),
            client.stream("POST", url, content=body, headers=headers) as response,
        ):
            # Redirects are not followed (http_client): the token would go where it was sent.
            if not response.is_success:
                # The status only: the URL's path may be its secret.
                raise _Refused(f"HTTP {response.status_code}")
    finally:
        if http is None:
            await client.aclose()
