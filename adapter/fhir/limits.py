"""How hard one client may push a busy server, and how far a server may push back.

`Limits`, `RetryPolicy` and `SearchLimits` (pages and seconds one search may take) are small
frozen value objects (like httpx's `Limits` and `Timeout`), given to `FhirClient`; `Limiter` is
the running state built from a `Limits`, which clients that talk to the same server may share.
Timeouts stay on the injected `httpx.AsyncClient`; FhirClient adds a deadline per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Limits:
    """At most `max_concurrent` requests in flight, and at most `requests_per_second` (None: any).

    The rate is a token bucket holding up to `burst` requests, so a quiet client may send
    `burst` at once and then one every 1/rate seconds.
    """

    max_concurrent: int = 4
    requests_per_second: float | None = None
    burst: int = 1

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.burst < 1:
            raise ValueError("max_concurrent and burst must be at least 1")
        rate = self.requests_per_second
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError("requests_per_second must be a positive number, or None for no limit")


class Limiter:
    """The running limits of one server: a semaphore and an optional token bucket.

    `clock` (monotonic seconds) and `sleep` are injected so that tests run without waiting.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.limits = limits or Limits()
        self._slots = asyncio.Semaphore(self.limits.max_concurrent)
        rate = self.limits.requests_per_second
        self._bucket = None if rate is None else _TokenBucket(rate, self.limits.burst, clock, sleep)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the concurrent slots, entered only when the rate allows another request."""
        async with self._slots:
            if self._bucket is not None:
                await self._bucket.take()
            yield


class _TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Clock, sleep: Sleep) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._last: float | None = None
        # One waiter at a time, so requests leave in the order they asked.
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                if self._last is not None:
                    self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self._rate)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of temporary failures (408, 429, 500, 502, 503, 504, no answer).

    `attempts` counts the first one (1: no retries). Waits grow exponentially from `wait_initial`
    with up to `wait_jitter` seconds of random jitter; a `Retry-After` from the server replaces
    that wait. No wait is longer than `max_wait`, and no retry is scheduled that would start
    more than `timeout_total` seconds (the retry budget) after the first attempt (None: no
    such limit).

    The defaults outlast a server that is gone for a few minutes: waits of 1, 2, 4, ... 64 s and
    then 120 s, up to 10 attempts within 300 s, so a one-minute outage costs one more attempt
    after it ends (tests/fhir/test_retries.py proves it on a simulated clock).
    """

    attempts: int = 10
    max_wait: float = 120.0
    timeout_total: float | None = 300.0
    wait_initial: float = 1.0
    wait_jitter: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if min(self.max_wait, self.wait_initial, self.wait_jitter) < 0:
            raise ValueError("retry waits cannot be negative")
        if self.timeout_total is not None and self.timeout_total <= 0:
            raise ValueError("timeout_total must be positive, or None for no limit")

    def capped(self, seconds: float) -> float:
        """A wait the server asked for, within 0 and `max_wait`."""
        return min(max(seconds, 0.0), self.max_wait)

    def backoff(self, failed: int, jitter: float) -> float:
        """The wait after the `failed`-th failed attempt (1-based); `jitter` is in [0, 1)."""
        try:
            wait = self.wait_initial * 2.0 ** (failed - 1)
        except OverflowError:  # pragma: no cover - needs over a thousand attempts
            wait = self.max_wait
        return self.capped(wait + jitter * self.wait_jitter)

    def next_wait(
        self, failed: int, elapsed: float, *, retry_after: float | None, jitter: float
    ) -> float | None:
        """The wait before the next attempt, or None when attempts or budget are spent.

        `failed` attempts have failed `elapsed` seconds after the first one started.
        """
        if failed >= self.attempts:
            return None
        wait = self.capped(retry_after) if retry_after is not None else self.backoff(failed, jitter)
        if self.timeout_total is not None and elapsed + wait > self.timeout_total:
            return None
        return wait


NO_RETRIES = RetryPolicy(attempts=1)


@dataclass(frozen=True, slots=True)
class SearchLimits:
    """How far one search may go along its next links: `max_pages` pages, `seconds` of time.

    A hostile or broken server can hand out distinct next links for ever (issue 11 followed
    1,437 in 90 s): past either limit the search fails rather than running on. None: no limit.
    """

    max_pages: int | None = 10_000
    seconds: float | None = 3600.0

    def __post_init__(self) -> None:
        if self.max_pages is not None and self.max_pages < 1:
            raise ValueError("max_pages must be at least 1, or None for no limit")
        if self.seconds is not None and not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError("seconds must be a positive number, or None for no limit")


def retry_after_seconds(value: str | None, *, now: datetime) -> float | None:
    """Seconds a `Retry-After` value asks to wait (RFC 9110 10.2.3); None if absent or unreadable.

    The value is either delay-seconds or an HTTP-date, taken relative to `now` (the response's
    `Date` when it has one, so the two clocks never need to agree). A date in the past is 0.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; an obsolete form may parse naive
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def response_date(value: str | None) -> datetime:
    """The server's `Date` header as an aware datetime; the local clock if absent or unreadable."""
    if value is not None:
        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            parsed = None
        if parsed is not None:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)
