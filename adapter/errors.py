"""The adapter's one exception tree, and the process exit codes.

```
AdapterError                      base of everything the adapter raises on purpose
├── UsageError                    bad command-line arguments                       exit 2
├── ConfigError                   bad configuration, trial or mapping file         exit 2
│   └── MappingError              a mapping or trial file fails its schema (file, line, field)
├── SourcePathError               a source folder or file that cannot be read      exit 2
├── FhirError                     talking to a FHIR server failed                  exit 1
│   ├── TransportError            no HTTP answer: connection refused, timeout      (temporary)
│   ├── HttpStatusError           an HTTP error status, with URL and OperationOutcome text
│   │   └── TemporaryHttpError    408, 429, 500, 502, 503, 504                     (temporary)
│   ├── UntrustedUrlError         a link, redirect or file URL outside the configured server
│   └── InvalidResponseError      a body that is not the FHIR JSON asked for
└── PatientError                  one patient could not be evaluated or written: the sweep
                                  goes on, lists it under `errors`, and exits 3
```

Messages never hold patient identifiers or values, and URLs in them never carry a query string
(search parameters can hold patient ids): use `redact_url`.

Exit codes (`ExitCode`): 0 the sweep completed (unknown verdicts never change it); 1 fatal; 2 bad
arguments, configuration, trial file or unreadable path; 3 completed, but some patients could not be
evaluated or written.
"""

from __future__ import annotations

import enum
from urllib.parse import urlsplit, urlunsplit


class ExitCode(enum.IntEnum):
    """Process exit status of `trial-adapter`."""

    OK = 0
    FATAL = 1
    USAGE = 2
    PARTIAL = 3


def redact_url(url: str) -> str:
    """The URL without its query string, fragment or credentials, for messages and logs."""
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class AdapterError(Exception):
    """Base of every error the adapter raises on purpose."""

    exit_code: ExitCode = ExitCode.FATAL


class UsageError(AdapterError):
    """Bad command-line arguments."""

    exit_code = ExitCode.USAGE


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
    """A source folder or file that cannot be read."""

    exit_code = ExitCode.USAGE


class FhirError(AdapterError):
    """Talking to a FHIR server failed."""

    temporary: bool = False

    def __init__(self, message: str, *, url: str = "") -> None:
        self.url = redact_url(url) if url else ""
        super().__init__(f"{message} ({self.url})" if self.url else message)


class TransportError(FhirError):
    """No HTTP answer: connection refused, DNS failure, timeout."""

    temporary = True


class HttpStatusError(FhirError):
    """An HTTP error status; `outcome` is the OperationOutcome's diagnostics, when there was one."""

    def __init__(self, status: int, *, url: str, outcome: str = "") -> None:
        self.status = status
        self.outcome = outcome
        text = f"HTTP {status}"
        if outcome:
            text += f": {outcome}"
        super().__init__(text, url=url)


class TemporaryHttpError(HttpStatusError):
    """408, 429 or a 5xx that may pass: worth retrying."""

    temporary = True


class UntrustedUrlError(FhirError):
    """A next link, redirect or file URL whose origin or base path is not the configured server."""


class InvalidResponseError(FhirError):
    """A response body that is not the FHIR JSON that was asked for."""


class PatientError(AdapterError):
    """One patient could not be evaluated or written; reported under `errors`, exit 3."""

    exit_code = ExitCode.PARTIAL

    def __init__(self, patient: str, reason: str) -> None:
        self.patient = patient
        self.reason = reason
        super().__init__(reason)


TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
