"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
