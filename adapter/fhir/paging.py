"""Searchset paging: every entry's resource, page by page, along `Bundle.link[next]`.

A page that fails raises; a search never ends early with part of its results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapter.errors import InvalidResponseError, UntrustedUrlError
from adapter.fhir.client import outcome_text

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from adapter.fhir.client import FhirClient, JsonObject, Params


async def iter_bundle(
    client: FhirClient, first_url: str, params: Params | None = None
) -> AsyncIterator[JsonObject]:
    """Every entry's resource of the search at `first_url` with `params`, to the last page.

    Included and outcome entries are yielded too: callers filter by resourceType.
    """
    url = client.url(first_url, params)
    page = await client.get_json(url)
    async for resource in iter_pages(client, page, url):
        yield resource


async def iter_pages(
    client: FhirClient, first_page: JsonObject, first_url: str
) -> AsyncIterator[JsonObject]:
    """The resources of an already fetched first page (of a POST search), then of the rest."""
    seen = {first_url}
    page, url = first_page, first_url
    while True:
        for resource in _resources(page, url):
            yield resource
        link = _next_link(page, url)
        if link is None:
            return
        target = client.resolve(link)
        # Next links must stay on the server's base: no extra origins, credentials go with them.
        if not client.base.contains(target):
            raise UntrustedUrlError(
                "Bundle next link is outside the configured FHIR server", url=target
            )
        if target in seen:
            raise InvalidResponseError(
                "Bundle next links loop back to a page already read", url=target
            )
        seen.add(target)
        page, url = await client.get_json(target), target


def _resources(page: JsonObject, url: str) -> Iterator[JsonObject]:
    kind = page.get("resourceType")
    if kind != "Bundle":
        what = kind[:64] if isinstance(kind, str) else "no resourceType"
        outcome = outcome_text(page)
        raise InvalidResponseError(
            f"expected a searchset Bundle, got {what}" + (f": {outcome}" if outcome else ""),
            url=url,
        )
    bundle_type = page.get("type")
    if bundle_type is not None and bundle_type != "searchset":
        raise InvalidResponseError("expected a searchset Bundle, got another Bundle type", url=url)
    entries = page.get("entry", [])
    if not isinstance(entries, list):
        raise InvalidResponseError("Bundle.entry is not a list", url=url)
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise InvalidResponseError("a Bundle entry has no resource object", url=url)
        yield resource


def _next_link(page: JsonObject, url: str) -> str | None:
    links = page.get("link", [])
    if not isinstance(links, list):
        raise InvalidResponseError("Bundle.link is not a list", url=url)
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            target = link.get("url")
            if not isinstance(target, str) or not target:
                raise InvalidResponseError("Bundle next link has no url", url=url)
            return target
    return None
