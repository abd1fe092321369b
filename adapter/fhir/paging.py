"""Searchset paging: every entry's resource, page by page, along `Bundle.link[next]`.

A page that fails raises; a search never ends early with part of its results. Offset paging
(HAPI's `_getpagesoffset`) repeats entries when the result set shifts between pages, so each
(resourceType, id) is yielded once per search, or once per `seen` set shared by several searches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapter.errors import InvalidResponseError, UntrustedUrlError
from adapter.fhir.client import outcome_text

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from adapter.fhir.client import FhirClient, JsonObject, Params

ResourceKey = tuple[str, str]


@dataclass(slots=True)
class SearchStats:
    """What one search's pages said, for callers that check for a silently capped result set.

    `total` is the first page's Bundle.total (None when the server gave none). `matches` counts
    the entries whose search.mode is `match` (or absent) as served, repeats included; `distinct`
    counts each of them once, whether or not an earlier search of a shared `seen` set had it.
    """

    total: int | None = None
    matches: int = 0
    distinct: int = 0
    pages: int = 0


async def iter_bundle(
    client: FhirClient,
    first_url: str,
    params: Params | None = None,
    *,
    seen: set[ResourceKey] | None = None,
    stats: SearchStats | None = None,
) -> AsyncIterator[JsonObject]:
    """Every entry's resource of the search at `first_url` with `params`, to the last page.

    Included and outcome entries are yielded too: callers filter by resourceType.
    """
    url = client.url(first_url, params)
    page = await client.get_json(url)
    async for resource in iter_pages(client, page, url, seen=seen, stats=stats):
        yield resource


async def iter_pages(
    client: FhirClient,
    first_page: JsonObject,
    first_url: str,
    *,
    seen: set[ResourceKey] | None = None,
    stats: SearchStats | None = None,
) -> AsyncIterator[JsonObject]:
    """The resources of an already fetched first page (of a POST search), then of the rest.

    A resource whose (resourceType, id) is in `seen` is skipped; those yielded are added to it.
    """
    this_search: set[ResourceKey] = set()
    keys = this_search if seen is None else seen
    counts = SearchStats() if stats is None else stats
    counts.total = bundle_total(first_page)
    read = {first_url}
    page, url = first_page, first_url
    while True:
        counts.pages += 1
        for resource, is_match in _resources(page, url):
            key = _key(resource)
            repeat = key is not None and key in this_search
            if is_match:
                counts.matches += 1
                counts.distinct += not repeat
            if key is not None:
                if repeat or key in keys:
                    continue
                this_search.add(key)
                keys.add(key)
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
        if target in read:
            raise InvalidResponseError(
                "Bundle next links loop back to a page already read", url=target
            )
        read.add(target)
        page, url = await client.get_json(target), target


def _key(resource: JsonObject) -> ResourceKey | None:
    kind, rid = resource.get("resourceType"), resource.get("id")
    return (kind, rid) if isinstance(kind, str) and isinstance(rid, str) and rid else None


def bundle_total(page: JsonObject) -> int | None:
    """Bundle.total when it is a count (a non-negative integer); None when absent or not one."""
    total = page.get("total")
    return total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None


def _resources(page: JsonObject, url: str) -> Iterator[tuple[JsonObject, bool]]:
    """Each entry's resource, and whether it is a match (not an include or an outcome)."""
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
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        yield resource, mode in (None, "match")


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
