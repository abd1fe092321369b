"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import stamina


@pytest.fixture(autouse=True)
def instant_retries() -> Iterator[None]:
    """stamina's test mode: retries without waiting, as many attempts as each policy allows."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture(scope="session", autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """XDG_STATE_HOME and XDG_CACHE_HOME (the mapping cache) in temporary folders, so no run
    (nor a CLI it starts) touches ~/.local or ~/.cache."""
    home = tmp_path_factory.mktemp("state-home")
    cache = tmp_path_factory.mktemp("cache-home")
    saved = {name: os.environ.get(name) for name in ("XDG_STATE_HOME", "XDG_CACHE_HOME")}
    os.environ["XDG_STATE_HOME"] = str(home)
    os.environ["XDG_CACHE_HOME"] = str(cache)
    yield home
    for name, value in saved.items():
        if value is None:
            del os.environ[name]
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<shared>/data`: TRIAL_ADAPTER_SHARED, or `../shared` beside the checkout.

    Missing data skips the test on a workstation and fails it on CI (`CI=true`).
    """
    root = os.environ.get("TRIAL_ADAPTER_SHARED") or Path(__file__).resolve().parents[2] / "shared"
    data = Path(root) / "data"
    if not data.is_dir():
        message = f"shared data folder {data} not found: set TRIAL_ADAPTER_SHARED"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return data
