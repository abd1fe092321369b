"""`source.workers` in the site file: how many worker processes read a folder source (issue 15);
1 reads in the sweep's own process, and the results are the same either way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from adapter.config import ServerConfig
from adapter.connect import open_source
from adapter.sources.files import FolderSource

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo"


def test_workers_are_a_positive_number_or_unset() -> None:
    assert ServerConfig().workers is None
    assert ServerConfig(workers=2).workers == 2
    with pytest.raises(ValidationError):
        ServerConfig(workers=0)


@pytest.mark.parametrize("workers", [1, 3])
def test_a_folder_source_gets_the_configured_workers(workers: int) -> None:
    async def main() -> int:
        config = ServerConfig(workers=workers)
        async with open_source(str(DEMO), config, env={}, say=lambda _m: None) as source:
            assert isinstance(source, FolderSource)
            return source._pool.workers

    assert asyncio.run(main()) == workers
