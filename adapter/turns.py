"""One turn of the event loop, for code that runs long without awaiting (issue 15)."""

from __future__ import annotations

import types
from collections.abc import Generator


@types.coroutine
def pass_turn() -> Generator[None, None, None]:
    """Let the tasks that are ready run once: what `asyncio.sleep(0)` does, without being a
    wait (tests that record the retry waits replace `asyncio.sleep`)."""
    yield
