"""The faults the proxy of tests/integration/proxy.py injects, and its records of what it did.

Each fault is a small frozen value a test hands to `FaultProxy.inject`; `Rule` matches it to
requests, and `Exchange` is one request as the proxy saw it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# -- faults ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """Answer `code` (429, 503...) with an OperationOutcome, without forwarding the request.

    The outcome's one issue has `issue_code` and `diagnostics` (default: `injected HTTP <code>`).
    """

    code: int
    retry_after: str | None = None
    diagnostics: str | None = None
    issue_code: str = "transient"


@dataclass(frozen=True)
class Delay:
    """Forward after `seconds`: a slow server."""

    seconds: float


@dataclass(frozen=True)
class Hang:
    """Never answer: wait (up to `seconds`) for the client to give up, then close."""

    seconds: float = 30.0


@dataclass(frozen=True)
class ResetMidBody:
    """Forward; send the head and `fraction` of the body, then reset the connection."""

    fraction: float = 0.5


@dataclass(frozen=True)
class MalformedJson:
    """Forward; answer with the upstream status and a body cut short (no longer JSON)."""


@dataclass(frozen=True)
class LostResponse:
    """Forward (a write is applied upstream), then close the connection without an answer."""


@dataclass(frozen=True)
class Outage:
    """From the matching request on, for `seconds`: refuse connections, or answer 503 to all."""

    seconds: float
    mode: Literal["refuse", "503"] = "refuse"


@dataclass(frozen=True)
class HugeBody:
    """Answer 200 with `size` bytes of blanks, streamed; `declared`: with a Content-Length, else
    none (the body ends when the connection closes). Sending stops when the client leaves."""

    size: int
    declared: bool = True


@dataclass(frozen=True)
class EndlessPages:
    """Answer an empty searchset whose next link (`[type]?_endless=<n>`) is new every time."""


@dataclass(frozen=True)
class Trickle:
    """Answer 200 with a Content-Length of `size`, then one byte every `interval` seconds."""

    interval: float = 1.0
    size: int = 600


Hostile = HugeBody | EndlessPages | Trickle


Fault = Status | Delay | Hang | ResetMidBody | MalformedJson | LostResponse | Outage | Hostile


@dataclass
class Rule:
    """`fault` on the `nth` (1-based; None: every) request matching `method` and `path`.

    `path` is a regular expression matched in full against the path below the base, without the
    query (`Observation`, `ResearchSubject/ta-1f...`, `metadata`).
    """

    fault: Fault
    method: str
    path: re.Pattern[str]
    nth: frozenset[int] | None
    seen: int = 0
    fired: int = 0

    def hit(self, method: str, path: str) -> bool:
        """Count a request; whether the fault applies to it."""
        if method != self.method or not self.path.fullmatch(path):
            return False
        self.seen += 1
        if self.nth is None or self.seen in self.nth:
            self.fired += 1
            return True
        return False


@dataclass(frozen=True)
class Exchange:
    """One request the proxy saw: the upstream status (None: not forwarded) and the fault;
    for a `HugeBody` or `Trickle`, how many seconds the client stayed for the answer."""

    method: str
    path: str
    status: int | None
    fault: str | None = None
    seconds: float | None = None
