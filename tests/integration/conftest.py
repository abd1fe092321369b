"""Fixtures for tests against a real local FHIR server (started by tools/run-tests.sh)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture(scope="session")
def fhir_base_url() -> str:
    """FHIR_BASE_URL, without a trailing slash.

    Unset, the test skips on a workstation and fails on CI (`CI=true`), so CI cannot pass without
    having run the integration tests.
    """
    url = os.environ.get("FHIR_BASE_URL", "").strip()
    if not url:
        message = (
            "FHIR_BASE_URL is not set: run `make test` or `tools/run-tests.sh`, which start a "
            "local FHIR server (tools/fhir-server/server.sh) and set it"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url.rstrip("/")


@pytest.fixture(scope="session")
def fhir(fhir_base_url: str) -> Iterator[httpx.Client]:
    """An HTTP client for the server, with the FHIR base as its base URL."""
    headers = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
    with httpx.Client(base_url=fhir_base_url + "/", headers=headers, timeout=60) as client:
        yield client
