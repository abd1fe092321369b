"""The adapter's one exception tree, and the process exit codes of every command.

```
AdapterError                      base of everything the adapter raises on purpose     exit 1
├── UsageError                    bad command-line arguments                           exit 2
│   └── StateDirError             a state folder that cannot be made or is not ours    exit 2
├── ConfigError                   bad configuration, trial or mapping file             exit 2
│   └── MappingError              a mapping or trial file fails its schema (file, line, field)
├── SourcePathError               a --source path that is not a folder                 exit 2
├── IncompleteInputError          the source lacks what the sweep needs: an empty      exit 1
│                                 folder, a needed type's file absent, empty, without
│                                 one readable line, or unreadable; no sink is written
│                                 (one corrupt line is skipped and reported: exit 3)
├── OutputError                   a report or sink folder that failed mid-write        exit 1
├── LockHeldError                 another sweep of the same trial into the same sink   exit 1
├── FhirError                     talking to a FHIR server failed                      exit 1
│   ├── TransportError            no HTTP answer: connection refused, timeout          (temporary)
│   ├── CertificateError          the server's TLS certificate was refused             (final)
│   ├── HttpStatusError           an HTTP error status, with URL and coded OperationOutcome
│   │   └── TemporaryHttpError    408, 429, 500, 502, 503, 504                         (temporary)
│   ├── UntrustedUrlError         a link, redirect or file URL outside the configured server
│   └── InvalidResponseError      a body that is not the FHIR JSON asked for
│       └── LimitExceededError    a body, or a search's pages or time, past the site's limit
└── PatientError                  one patient could not be evaluated or written: the sweep
                                  goes on, lists it under `errors`, and exits 3
```

Messages never hold patient identifiers or values, nor a server's free text: an OperationOutcome's
diagnostics can name a patient (issue 11), so a message shows only its coded issues, and the text,
URL queries removed, is kept in `FhirError.detail` (and `PatientError.detail`) for the owner-only
results. URLs in messages never carry a query string (search parameters can hold patient ids) nor
resource ids (a deterministic `ta-...` id maps back to its patient): use `redact_url`.

Exit codes (`ExitCode`), the one table for every command (`sweep`, `explain`, `codesets`, and
those to come):

| code | meaning |
|---|---|
| 0 | done (unknown verdicts never change it) |
| 1 | fatal: server unreachable, failed search, refused link or certificate, a response or |
|   | search past its limit, incomplete input, a sweep of the same trial into the same sink |
|   | already running, a sink failed mid-write, interrupted, stdout closed by its reader |
|   | (then quietly, without a message) |
| 2 | bad arguments (a `--source` that is not a folder, an `--out` or folder `--sink` that cannot |
|   | be written), configuration (credentials for a plain-http server), trial or mapping file, |
|   | unusable state folder |
| 3 | done, but some patients could not be evaluated or written (listed under `errors`), or |
|   | input lines were unreadable (`unreadable_input`; with one that names no patient for |
|   | sure, nothing is written to the sink) |

`cli.main` is the one place that turns these errors into a one-line message and the exit code.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from adapter.fhir.resource_types import R4_RESOURCE_TYPES


class ExitCode(enum.IntEnum):
    """Process exit status of `trial-adapter`."""

    OK = 0
    FATAL = 1
    USAGE = 2
    PARTIAL = 3


def redact_url(url: str) -> str:
    """The URL for messages and logs: no query, fragment or credentials, and no resource ids.

    `https://h/fhir/ResearchSubject/ta-7710/_history/2?x=1` becomes
    `https://h/fhir/ResearchSubject/{id}/_history/{vid}` (see `hide_ids`); a relative
    `Patient/123` becomes `Patient/{id}`.
    """
    try:
        parts = urlsplit(str(url))
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets
    if port is not None:
        host = f"{host}:{port}"
    path = "/".join(hide_ids(parts.path.split("/")))
    return urlunsplit((parts.scheme, host, path, "", ""))


def hide_ids(segments: Sequence[str], *, leading_type: bool = False) -> list[str]:
    """Path segments with resource ids as `{id}` and versions as `{vid}`.

    A segment after an R4 resource type name is an id, the one after `_history` a version;
    operations (`$export`) and `_search`, `_history` stay, and so does a base path such as Epic's
    `/api/FHIR/R4`. With `leading_type`, the first segment counts as a type whatever its name
    (FhirClient.log_path: the path below the base starts with one).
    """
    shown: list[str] = []
    pending = ""
    for index, segment in enumerate(segments):
        name = unquote(segment)
        if pending and name and not name.startswith(("$", "_")):
            shown.append(pending)
            pending = ""
            continue
        if name == "_history":
            pending = "{vid}"
        elif name in R4_RESOURCE_TYPES or (leading_type and index == 0 and name):
            pending = "{id}"
        else:
            pending = ""
        shown.append(segment)
    return shown


class AdapterError(Exception):
    """Base of every error the adapter raises on purpose."""

    exit_code: ExitCode = ExitCode.FATAL


class UsageError(AdapterError):
    """Bad command-line arguments."""

    exit_code = ExitCode.USAGE


class StateDirError(UsageError):
    """A state folder that cannot be created, is not a folder, or belongs to another user."""


class ConfigError(AdapterError):
    """Bad configuration, trial or mapping file."""

    exit_code = ExitCode.USAGE


class MappingError(ConfigError):
    """A mapping or trial file that fails its schema; the message names file, line and field."""

    def __init__(self, file: str, reason: str, *, line: int | None = None, field: str = "") -> None:
        self.file = file
        self.line = line
        self.field = field
        self.reason = reason
        where = file if line is None else f"{file}:{line}"
        what = f" ({field})" if field else ""
        super().__init__(f"{where}{what}: {reason}")


class SourcePathError(AdapterError):
    """A `--source` path that is not a folder that can be listed."""

    exit_code = ExitCode.USAGE


class IncompleteInputError(AdapterError):
    """The source lacks what the sweep needs: deciding on part of the data would flag patients
    whose missing data would rule them out (issue 10, item 2), so the run stops before any write.
    """


class OutputError(AdapterError):
    """A report file or a sink folder that could not be written once the sweep had run."""


class LockHeldError(AdapterError):
    """Another live process sweeps the same trial into the same sink; the message says which."""

    def __init__(self, trial: str, sink: str, holder: str) -> None:
        self.trial = trial
        self.sink = sink
        self.holder = holder
        super().__init__(f"another sweep of {trial} into {sink} is running ({holder})")


class FhirError(AdapterError):
    """Talking to a FHIR server failed.

    `detail` holds what the server said in its own words (OperationOutcome diagnostics, an OAuth
    error_description), URL queries removed: for the owner-only results, never for a message.
    """

    temporary: bool = False

    def __init__(self, message: str, *, url: str = "", detail: str = "") -> None:
        self.url = redact_url(url) if url else ""
        self.detail = detail
        super().__init__(f"{message} ({self.url})" if self.url else message)


class TransportError(FhirError):
    """No HTTP answer: connection refused, DNS failure, timeout."""

    temporary = True


class CertificateError(FhirError):
    """The server's TLS certificate was refused (expired, wrong host, unknown issuer).

    Not temporary: retrying would only repeat it, and a nightly job must say so at once.
    """


class HttpStatusError(FhirError):
    """An HTTP error status. The message holds `summary`: the OperationOutcome's coded issues
    (`error/processing (system|code)`, adapter.fhir.outcome) or the adapter's own words; the
    server's free text is only in `detail`.
    """

    def __init__(self, status: int, *, url: str, summary: str = "", detail: str = "") -> None:
        self.status = status
        self.summary = summary
        text = f"HTTP {status}"
        if summary:
            text += f": {summary}"
        super().__init__(text, url=url, detail=detail)


class TemporaryHttpError(HttpStatusError):
    """408, 429 or a 5xx that may pass: worth retrying."""

    temporary = True


class UntrustedUrlError(FhirError):
    """A next link, redirect or file URL whose origin or base path is not the configured server."""


class InvalidResponseError(FhirError):
    """A response body that is not the FHIR JSON that was asked for."""


class LimitExceededError(InvalidResponseError):
    """A response body, or a search's pages or time, past the site's limit (ServerConfig
    `max_response_mb`, `max_pages_per_search`, `search_seconds`): a hostile or broken server
    must not exhaust the machine (issue 11). Not temporary: a retry would meet it again.
    """


class PatientError(AdapterError):
    """One patient could not be evaluated or written; reported under `errors`, exit 3."""

    exit_code = ExitCode.PARTIAL

    def __init__(self, patient: str, reason: str, *, detail: str = "") -> None:
        self.patient = patient
        self.reason = reason
        #: the server's own words behind `reason`, if any (see FhirError.detail)
        self.detail = detail
        super().__init__(reason)


TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
