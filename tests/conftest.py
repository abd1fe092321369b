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
    """XDG_STATE_HOME in a temporary folder, so no run (nor a CLI it starts) touches ~/.local."""
    home = tmp_path_factory.mktemp("state-home")
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(home)
    yield home
    if saved is None:
        del os.environ["XDG_STATE_HOME"]
    else:
        os.environ["XDG_STATE_HOME"] = saved


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
