"""Searchset paging: every entry's resource, page by page, along `Bundle.link[next]`.

A page that fails raises; a search never ends early with part of its results. Offset paging
(HAPI's `_getpagesoffset`) repeats entries when the result set shifts between pages, so each
(resourceType, id) is yielded once per search, or once per `seen` set shared by several searches.
A search that passes the client's `SearchLimits` (pages, seconds) raises LimitExceededError: a
server handing out distinct next links for ever must not keep the run going (issue 11).

Next links get their own origin check here, stricter than the client's: they must stay under the
base, even where the client would trust another origin (a Bulk file server) with its credentials.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapter.errors import InvalidResponseError, LimitExceededError, UntrustedUrlError
from adapter.fhir.outcome import coded_issues, outcome_text
from adapter.fhir.resource_types import shown_type
from adapter.turns import pass_turn

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Iterator

    from adapter.fhir.client import FhirClient, JsonObject, Params
    from adapter.fhir.limits import SearchLimits

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
    started = client.clock()
    url = client.url(first_url, params)
    page = await client.get_json(url)
    pages = iter_pages(client, page, url, seen=seen, stats=stats, started=started)
    async for resource in pages:
        yield resource


async def iter_pages(
    client: FhirClient,
    first_page: JsonObject,
    first_url: str,
    *,
    seen: set[ResourceKey] | None = None,
    stats: SearchStats | None = None,
    limits: SearchLimits | None = None,
    started: float | None = None,
    prefetch: bool = False,
) -> AsyncGenerator[JsonObject, None]:
    """The resources of an already fetched first page (of a POST search), then of the rest.

    A resource whose (resourceType, id) is in `seen` is skipped; those yielded are added to it.
    `limits` (default: the client's) bound the pages, the first one included, and the time
    since `started` on the client's clock (default: now), checked before each next page.
    `prefetch` asks for the next page before handing on this one's resources: for a caller that
    reads to the end (a caller that stops early may have had one page more asked for).
    """
    this_search: set[ResourceKey] = set()
    keys = this_search if seen is None else seen
    counts = SearchStats() if stats is None else stats
    counts.total = bundle_total(first_page)
    limit = client.search_limits if limits is None else limits
    begun = client.clock() if started is None else started
    read = {first_url}
    page, url = first_page, first_url
    coming: asyncio.Future[JsonObject] | None = None
    try:
        while True:
            counts.pages += 1
            # With `prefetch`, the next page is asked for before this one is handed on (issue
            # 15): the server works on it while the caller handles this one.
            try:
                target, refused = next_target(client, page, url, read, limit, begun), None
            except (UntrustedUrlError, InvalidResponseError, LimitExceededError) as exc:
                target, refused = None, exc  # raised once this page is handed on, as before
            if target is not None:
                read.add(target)
                if prefetch:
                    coming = asyncio.ensure_future(client.get_json(target))
                    await pass_turn()  # it may leave now
            for n, (resource, is_match) in enumerate(_resources(page, url), 1):
                if n % _TURN_EVERY == 0:
                    # Now and then, other searches may read their answers and send requests.
                    await pass_turn()
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
            if refused is not None:
                raise refused
            if target is None:
                return
            page = await (coming if coming is not None else client.get_json(target))
            url, coming = target, None
    finally:
        if coming is not None and not coming.done():
            # The caller stopped early, or failed: the page is not wanted. Not awaited, so that
            # a cancellation of the caller itself is never swallowed here.
            coming.cancel()
            coming.add_done_callback(_retrieved)


def _retrieved(done: asyncio.Future[JsonObject]) -> None:
    """Take a dropped page's outcome, so that asyncio does not log it as never retrieved."""
    if not done.cancelled():
        done.exception()


#: resources handed on between two turns of the event loop
_TURN_EVERY = 200


def next_target(
    client: FhirClient,
    page: JsonObject,
    url: str,
    read: set[str],
    limit: SearchLimits,
    begun: float,
    what: str = "the search",
) -> str | None:
    """The page after `page` (read from `url`), checked: on the server's base, not one of
    `read` already, within `limit` since `begun`; None when there is none. `what` names the
    paged answer in the limits' messages (a search, a history)."""
    link = next_link(page, url)
    if link is None:
        return None
    target = client.resolve(link)
    # Next links must stay on the server's base: no extra origins, credentials go with them.
    if not client.base.contains(target):
        raise UntrustedUrlError(
            "Bundle next link is outside the configured FHIR server", url=target
        )
    if target in read:
        raise InvalidResponseError("Bundle next links loop back to a page already read", url=target)
    if limit.max_pages is not None and len(read) >= limit.max_pages:
        raise LimitExceededError(
            f"{what} has more than {limit.max_pages:,} pages, the site's limit "
            "(max_pages_per_search)",
            url=target,
        )
    if limit.seconds is not None and client.clock() - begun > limit.seconds:
        raise LimitExceededError(
            f"{what} took longer than {limit.seconds:g} s, the site's limit (search_seconds)",
            url=target,
        )
    return target


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
        coded = coded_issues(page)
        raise InvalidResponseError(
            f"expected a searchset Bundle, got {shown_type(kind)}"
            + (f": {coded}" if coded else ""),
            url=url,
            detail=outcome_text(page),
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


def next_link(page: JsonObject, url: str) -> str | None:
    """The `next` link of a Bundle page (not yet checked for trust), None at the last page."""
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
