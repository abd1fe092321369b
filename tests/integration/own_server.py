"""Fixtures that give a test module a FHIR server of its own: `from own_server import fhir,
fhir_base_url` at the top of the module puts them in place of the session's.

For modules that load a population of their own (renamed copies of the demo, Groups, export jobs,
data that changes between runs): the session server holds the demo alone, and other modules
compare the counts of its diagnosis search with the demo's. `private_server` (conftest) starts the
instance and stops it when the module ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

FHIR_JSON = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def fhir_base_url(private_server: str) -> str:
    """The base URL of the module's own server."""
    return private_server


@pytest.fixture(scope="module")
def fhir(fhir_base_url: str) -> Iterator[httpx.Client]:
    """An HTTP client for the module's own server, its base URL as the client's."""
    with httpx.Client(base_url=fhir_base_url + "/", headers=FHIR_JSON, timeout=60) as client:
        yield client
