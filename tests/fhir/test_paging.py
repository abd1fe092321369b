"""Searchset paging along link[next], with HAPI-shaped Bundles served by respx."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
import stamina

from adapter.errors import (
    InvalidResponseError,
    TemporaryHttpError,
    UntrustedUrlError,
)
from adapter.fhir.client import FhirClient
from adapter.fhir.paging import SearchStats, iter_bundle, iter_pages

BASE = "http://fhir.test/fhir"


@pytest.fixture(autouse=True)
def instant_retries() -> Iterator[None]:
    """stamina's test mode: no waits, and the policy's own number of attempts (at most 100)."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


def page_url(offset: int) -> str:
    """A HAPI next link: absolute, on the base, with a search id and an offset."""
    return f"{BASE}?_getpages=abc&_getpagesoffset={offset}&_count=2&_bundletype=searchset"


def bundle(ids: list[str], *, next_url: str | None = None, total: int = 5) -> dict[str, Any]:
    links = [{"relation": "self", "url": f"{BASE}/Observation?_count=2"}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"{BASE}/Observation/{i}",
                "resource": {"resourceType": "Observation", "id": i},
                "search": {"mode": "match"},
            }
            for i in ids
        ],
    }


def collect(first_url: str = "Observation", params: Any = None) -> list[str]:
    """The ids iter_bundle yields, from a fresh injected client."""

    async def main() -> list[str]:
        async with httpx.AsyncClient() as http:
            client = FhirClient(http, BASE)
            return [r["id"] async for r in iter_bundle(client, first_url, params)]

    return asyncio.run(main())


def serve_pages(*pages: dict[str, Any]) -> None:
    """First page at Observation, the following ones at HAPI's _getpagesoffset links."""
    respx.get(f"{BASE}/Observation").respond(200, json=pages[0])
    for n, page in enumerate(pages[1:], start=1):
        respx.get(BASE, params={"_getpagesoffset": str(2 * n)}).respond(200, json=page)


@respx.mock
def test_follows_next_links_to_the_last_page() -> None:
    """Three pages are read in order and every resource is yielded once."""
    serve_pages(
        bundle(["1", "2"], next_url=page_url(2)),
        bundle(["3", "4"], next_url=page_url(4)),
        bundle(["5"]),
    )
    assert collect("Observation", {"_count": "2"}) == ["1", "2", "3", "4", "5"]
    assert len(respx.calls) == 3


@respx.mock
def test_empty_searchset_yields_nothing() -> None:
    """A Bundle with total 0 and no entry is an empty search, not an error."""
    respx.get(f"{BASE}/Observation").respond(
        200, json={"resourceType": "Bundle", "type": "searchset", "total": 0}
    )
    assert collect() == []


@respx.mock
def test_included_and_outcome_entries_are_yielded_for_the_caller_to_filter() -> None:
    """Paging yields every entry's resource; filtering by type is the caller's job."""
    page = bundle(["1"])
    page["entry"].append(
        {
            "resource": {"resourceType": "OperationOutcome", "id": "oo"},
            "search": {"mode": "outcome"},
        }
    )
    respx.get(f"{BASE}/Observation").respond(200, json=page)
    assert collect() == ["1", "oo"]


@respx.mock
def test_relative_next_link_is_taken_below_the_base() -> None:
    """A relative next link (some servers send one) resolves below the base, not the host root."""
    first = bundle(["1"], next_url="Observation?_getpages=abc&_getpagesoffset=2")
    respx.get(f"{BASE}/Observation", params={"_getpagesoffset": "2"}).respond(
        200, json=bundle(["2"])
    )
    respx.get(f"{BASE}/Observation").respond(200, json=first)
    assert collect() == ["1", "2"]


@pytest.mark.parametrize(
    ("next_url", "named"),
    [
        ("http://evil.test/fhir?_getpages=abc", "http://evil.test/fhir"),
        ("http://fhir.test:8080/fhir?_getpages=abc", "http://fhir.test:8080/fhir"),
        ("https://fhir.test/fhir?_getpages=abc", "https://fhir.test/fhir"),
        ("http://fhir.test/fhir-other?_getpages=abc", "http://fhir.test/fhir-other"),
        ("http://fhir.test/other?_getpages=abc", "http://fhir.test/other"),
        ("http://fhir.test/fhir/../other?_getpages=abc", "http://fhir.test/other"),
    ],
)
@respx.mock
def test_foreign_next_link_is_refused_naming_the_redacted_link(next_url: str, named: str) -> None:
    """A next link off the base raises UntrustedUrlError naming it without its query."""
    serve_pages(bundle(["1", "2"], next_url=next_url))
    with pytest.raises(UntrustedUrlError) as caught:
        collect()
    assert caught.value.url == named
    assert "_getpages" not in str(caught.value)
    assert len(respx.calls) == 1


@pytest.mark.parametrize(
    ("trusted", "next_url"),
    [
        ("https://files.test", "https://files.test/fhir/Observation?page=2"),
        ("http://fhir.test", "http://fhir.test/other/Observation?page=2"),
    ],
)
@respx.mock
def test_a_next_link_onto_a_trusted_origin_is_refused_by_paging_itself(
    trusted: str, next_url: str
) -> None:
    """The client would send to an origin the site trusts (a Bulk file server), so only
    paging's own check stands between a next link and it: that check alone must refuse it."""
    respx.get(f"{BASE}/Observation").respond(200, json=bundle(["1"], next_url=next_url))
    elsewhere = respx.get(next_url).respond(200, json=bundle(["2"]))

    async def main() -> list[str]:
        async with httpx.AsyncClient() as http:
            client = FhirClient(http, BASE, extra_trusted_origins=[trusted])
            assert client.is_trusted(next_url)  # the premise: the client's check would pass
            return [r["id"] async for r in iter_bundle(client, "Observation")]

    with pytest.raises(UntrustedUrlError, match="next link is outside"):
        asyncio.run(main())
    assert not elsewhere.called


@respx.mock
def test_next_link_loop_is_detected() -> None:
    """A next link back to a page already read raises instead of paging forever."""
    serve_pages(
        bundle(["1", "2"], next_url=page_url(2)),
        bundle(["3", "4"], next_url=page_url(2)),
    )
    with pytest.raises(InvalidResponseError, match="loop"):
        collect()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"resourceType": "Patient", "id": "1"}, "got Patient"),
        (
            {
                "resourceType": "OperationOutcome",
                "issue": [
                    {"severity": "error", "code": "expired", "diagnostics": "search expired"}
                ],
            },
            r"got OperationOutcome: error/expired \(",
        ),
        ({"resourceType": "Jane Doe 1970-01-02"}, "got an unknown resourceType"),
        ({"resourceType": "Bundle", "type": "history"}, "Bundle type"),
        (
            {"resourceType": "Bundle", "type": "searchset", "entry": [{"fullUrl": "x"}]},
            "no resource",
        ),
        ({"resourceType": "Bundle", "type": "searchset", "entry": {}}, "not a list"),
    ],
)
@respx.mock
def test_a_page_that_is_not_a_searchset_bundle_is_invalid(
    body: dict[str, Any], message: str
) -> None:
    """A body other than a searchset Bundle raises InvalidResponseError saying what it was."""
    respx.get(f"{BASE}/Observation").respond(200, json=body)
    with pytest.raises(InvalidResponseError, match=message):
        collect()


@respx.mock
def test_a_failed_later_page_raises_instead_of_ending_the_search() -> None:
    """An error on page 2 propagates; the search never looks complete with page 1 alone."""
    respx.get(f"{BASE}/Observation").respond(200, json=bundle(["1", "2"], next_url=page_url(2)))
    respx.get(BASE, params={"_getpagesoffset": "2"}).respond(503)
    seen: list[str] = []

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            async for resource in iter_bundle(FhirClient(http, BASE), "Observation", None):
                seen.append(resource["id"])

    with pytest.raises(TemporaryHttpError):
        asyncio.run(main())
    assert seen == ["1", "2"]


@respx.mock
def test_iter_pages_continues_from_an_already_fetched_first_page() -> None:
    """iter_pages starts from a page in hand (a POST search) and follows its next links."""
    respx.get(BASE, params={"_getpagesoffset": "2"}).respond(200, json=bundle(["3"]))

    async def main() -> list[str]:
        async with httpx.AsyncClient() as http:
            client = FhirClient(http, BASE)
            first = bundle(["1", "2"], next_url=page_url(2))
            pages = iter_pages(client, first, f"{BASE}/Observation/_search")
            return [r["id"] async for r in pages]

    assert asyncio.run(main()) == ["1", "2", "3"]


def collect_with(
    first_url: str = "Observation",
    *,
    seen: set[tuple[str, str]] | None = None,
    stats: SearchStats | None = None,
) -> list[tuple[str, str | None]]:
    """(resourceType, id) of what iter_bundle yields, sharing `seen` and filling `stats`."""

    async def main() -> list[tuple[str, str | None]]:
        async with httpx.AsyncClient() as http:
            client = FhirClient(http, BASE)
            pages = iter_bundle(client, first_url, seen=seen, stats=stats)
            return [(r["resourceType"], r.get("id")) async for r in pages]

    return asyncio.run(main())


@respx.mock
def test_entries_repeated_across_pages_are_yielded_once() -> None:
    """Offset paging that repeats an entry on the next page yields it once, and counts it."""
    serve_pages(
        bundle(["1", "2"], next_url=page_url(2)),
        bundle(["2", "3"], next_url=page_url(4)),
        bundle(["3", "4"]),
    )
    stats = SearchStats()
    assert [rid for _, rid in collect_with(stats=stats)] == ["1", "2", "3", "4"]
    assert stats == SearchStats(total=5, matches=6, distinct=4, pages=3)


@respx.mock
def test_the_same_id_of_another_type_is_not_a_duplicate() -> None:
    """De-duplication is by (resourceType, id): an included Patient/1 beside Observation/1 stays."""
    page = bundle(["1"])
    page["entry"].append(
        {"resource": {"resourceType": "Patient", "id": "1"}, "search": {"mode": "include"}}
    )
    respx.get(f"{BASE}/Observation").respond(200, json=page)
    stats = SearchStats()
    assert collect_with(stats=stats) == [("Observation", "1"), ("Patient", "1")]
    assert (stats.matches, stats.distinct) == (1, 1)


@respx.mock
def test_a_shared_seen_set_spans_searches() -> None:
    """Resources already in `seen` (from an earlier search of the same fetch) are skipped."""
    respx.get(f"{BASE}/Observation").respond(200, json=bundle(["1", "2", "3"]))
    seen = {("Observation", "2")}
    stats = SearchStats()
    assert collect_with(seen=seen, stats=stats) == [("Observation", "1"), ("Observation", "3")]
    assert seen == {("Observation", "1"), ("Observation", "2"), ("Observation", "3")}
    assert (stats.matches, stats.distinct) == (3, 3)


@respx.mock
def test_resources_without_an_id_are_never_dropped() -> None:
    """An outcome entry without id cannot be a duplicate; it is yielded every time."""
    page = bundle([])
    outcome = {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}
    page["entry"] = [outcome, outcome]
    respx.get(f"{BASE}/Observation").respond(200, json=page)
    stats = SearchStats()
    assert len(collect_with(stats=stats)) == 2
    assert stats.matches == 0


@pytest.mark.parametrize(("total", "read"), [(7, 7), (0, 0), (None, None), ("7", None), (-1, None)])
@respx.mock
def test_stats_total_is_the_first_pages_count_when_it_is_one(total: Any, read: int | None) -> None:
    """Bundle.total is kept when it is a non-negative integer, None otherwise."""
    page = bundle([])
    if total is None:
        del page["total"]
    else:
        page["total"] = total
    respx.get(f"{BASE}/Observation").respond(200, json=page)
    stats = SearchStats()
    collect_with(stats=stats)
    assert stats.total == read


def _paged(prefetch: bool, stop_after: int | None = None) -> list[str]:
    """Events of reading three pages from a page in hand: each page asked for, each resource
    handed on; `stop_after` resources, then the caller stops."""
    events: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["_getpagesoffset"])
        events.append(f"asked {offset}")
        more = page_url(offset + 2) if offset < 4 else None
        return httpx.Response(200, json=bundle([str(offset + 1), str(offset + 2)], next_url=more))

    async def main() -> None:
        with respx.mock:
            respx.get(BASE).mock(side_effect=answer)
            async with httpx.AsyncClient() as http:
                client = FhirClient(http, BASE)
                first = bundle(["a", "b"], next_url=page_url(2))
                pages = iter_pages(client, first, f"{BASE}/Observation/_search", prefetch=prefetch)
                async with contextlib.aclosing(pages) as resources:
                    async for resource in resources:
                        events.append(f"handed {resource['id']}")
                        await asyncio.sleep(0)  # the caller's work, during which others may run
                        if stop_after is not None and len(events) >= stop_after:
                            break

    asyncio.run(main())
    return events


def test_with_prefetch_the_next_page_is_asked_for_before_this_one_is_handed_on() -> None:
    events = _paged(prefetch=True)
    # asked while the caller handles the page before it
    assert events.index("asked 2") < events.index("handed b")
    assert events.index("asked 4") < events.index("handed 4")
    assert [e for e in events if e.startswith("handed")] == [
        "handed a", "handed b", "handed 3", "handed 4", "handed 5", "handed 6"
    ]  # fmt: skip


def test_without_prefetch_a_page_is_asked_for_when_the_last_one_is_handed_on() -> None:
    events = _paged(prefetch=False)
    assert events.index("handed b") < events.index("asked 2")


def test_a_caller_that_stops_early_leaves_no_page_request_running() -> None:
    """At most the one page after the last read is asked for, and it is cancelled or done."""
    events = _paged(prefetch=True, stop_after=2)
    assert "asked 4" not in events


@respx.mock
def test_a_long_page_lets_other_tasks_run_while_it_is_handed_on() -> None:
    """A page of 1,000 resources handed on without awaiting: others still get turns."""
    ids = [str(n) for n in range(1000)]
    turns: list[int] = []

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            client = FhirClient(http, BASE)
            handed = 0

            async def other() -> None:
                while handed < len(ids):
                    turns.append(handed)
                    await asyncio.sleep(0)

            watcher = asyncio.ensure_future(other())
            await asyncio.sleep(0)
            async for _resource in iter_pages(client, bundle(ids), f"{BASE}/Observation"):
                handed += 1
            await watcher

    asyncio.run(main())
    assert any(0 < n < len(ids) for n in turns)
