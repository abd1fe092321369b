"""A `_history` is paged as a search is: its deletions from every page, next links only under
the server's base and never twice, within the site's page and time limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from adapter.bulk.incremental import deleted_in_history
from adapter.errors import InvalidResponseError, LimitExceededError, UntrustedUrlError
from adapter.fhir.client import FhirClient
from adapter.fhir.limits import NO_RETRIES, SearchLimits

BASE = "https://fhir.example.org/r4"
Page = Callable[[int], dict[str, Any]]


def _history(n: int, next_url: str | None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Condition/gone-{n}"}},
            {"request": {"method": "PUT", "url": f"Condition/kept-{n}"}, "resource": {}},
        ],
    }
    if next_url is not None:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def _deleted(page: Page, limits: SearchLimits | None = None) -> set[tuple[str, str]]:
    asked: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        n = int(request.url.params.get("page", "0"))
        asked.append(n)
        return httpx.Response(200, json=page(n))

    async def go() -> set[tuple[str, str]]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            client = FhirClient(http, BASE, retry=NO_RETRIES, search_limits=limits)
            return await deleted_in_history(
                client, "Condition", "2026-01-01T00:00:00Z", page_size=2
            )

    found = asyncio.run(go())
    assert len(asked) == len(set(asked))  # no page asked twice
    return found


def test_the_deletions_of_every_page_are_found() -> None:
    def page(n: int) -> dict[str, Any]:
        return _history(n, f"{BASE}/Condition/_history?page={n + 1}" if n < 2 else None)

    found = _deleted(page)
    assert {key for key in found} == {("Condition", f"gone-{n}") for n in range(3)}


def test_a_next_link_off_the_servers_base_is_refused() -> None:
    def page(n: int) -> dict[str, Any]:
        return _history(n, "https://elsewhere.example.org/r4/Condition/_history?page=1")

    with pytest.raises(UntrustedUrlError):
        _deleted(page)


def test_next_links_that_loop_back_are_refused() -> None:
    def page(n: int) -> dict[str, Any]:
        return _history(n, f"{BASE}/Condition/_history?page={(n + 1) % 2}")

    with pytest.raises(InvalidResponseError, match="loop back"):
        _deleted(page)


def test_a_history_past_the_sites_page_limit_fails() -> None:
    def page(n: int) -> dict[str, Any]:
        return _history(n, f"{BASE}/Condition/_history?page={n + 1}")

    with pytest.raises(LimitExceededError, match="the history has more than 3 pages"):
        _deleted(page, SearchLimits(max_pages=3))
