"""An ordered, bounded concurrent map: `fn` over items, at most `limit` at once, results in order.

Per-patient reads run different patients' searches at the same time, but a run must be
reproducible, so results come out in the items' order: item k's after item k-1's, however the
server's answers interleave. The window is bounded: at most `limit` tasks exist at any time
(100,000 patients never make 100,000 tasks), and only their results are held.

The first failure cancels every task still running, waits for them, and raises. Closing the
generator early (`aclose`, or the caller's `async with aclosing(...)` ending) does the same,
so no task outlives its generator and no coroutine is left un-awaited.
"""

from __future__ import annotations

import asyncio
from collections import deque
from itertools import islice
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable

T = TypeVar("T")
R = TypeVar("R")


async def ordered_map(
    fn: Callable[[T], Awaitable[R]], items: Iterable[T], *, limit: int
) -> AsyncGenerator[R, None]:
    """`fn(item)` for each item, at most `limit` running at once, yielded in the items' order."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    waiting = iter(items)
    window: deque[asyncio.Future[R]] = deque()

    def fill() -> None:
        # A coroutine is made only when its task starts: none is ever left un-awaited.
        for item in islice(waiting, limit - len(window)):
            window.append(asyncio.ensure_future(fn(item)))

    try:
        fill()
        while window:
            head = window[0]
            if not head.done():
                await asyncio.wait(window, return_when=asyncio.FIRST_COMPLETED)
            for task in window:
                if task.done() and (task.cancelled() or task.exception() is not None):
                    task.result()  # raises its error; `finally` cancels the others
            if not head.done():
                continue
            window.popleft()
            # The next item starts before this result is handed over, so the server stays busy
            # while the caller works on it.
            fill()
            yield head.result()
    finally:
        for task in window:
            task.cancel()
        if window:
            await asyncio.gather(*window, return_exceptions=True)
