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
