"""Resources from a FHIR server's search API: by patient batch or one patient at a time, paged,
de-duplicated, uncapped.

Two read modes (issue 13), chosen by the server profile (adapter/servers.py) or the site:
`batch` searches many patients at once (`patient=a,b,c`; HAPI, sekmet, Medplum), `per-patient`
names one patient in each search, the form US Core requires of every server (Epic and Oracle
Health take no other): see adapter/sources/per_patient.py. Different patients' searches run
concurrently there, within the client's `Limits.max_concurrent`, and come out in patient-id
order, so runs are reproducible. A batch search for several patients answered 400, or with an
OperationOutcome `not-supported`, switches the source to per-patient for the rest of the run
(logged once at warning; `reads.switched`), and that search is made again patient by patient.

Servers cap the results of one search silently (HAPI's public server ends the next links at
10,000), so a search's first page is read first and its `total` (or, when it has none but has a
next link, a `_summary=count`) decides whether to split it in halves while it would reach
`result_cap`; a search that still comes back capped, or with fewer results than its `total`, is
split and searched again (what it already gave is not yielded twice). What cannot be split
further raises: a tail is never lost.

A search carrying a parameter the profile lists as a post-filter (Epic's Observation `code`) is
filtered after the server has paged it: its `total` counts the unfiltered results and its pages
may hold fewer entries than `_count`. Its total is therefore neither a reason to split it nor
proof of a cut, and no `_summary=count` is asked; only when no total comes is a result set that
reaches the cap taken as cut.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import TYPE_CHECKING

from adapter.errors import FhirError, HttpStatusError, InvalidResponseError, UsageError
from adapter.fhir.paging import SearchStats, bundle_total, iter_pages
from adapter.servers import GENERIC, READ_MODES
from adapter.sources.base import ReadNotes, count_foreign, is_foreign
from adapter.sources.ordered import ordered_map
from adapter.sources.pages import first_time, has_next, make_references_relative
from adapter.sources.per_patient import (
    SWITCH_MESSAGE,
    PatientPlan,
    RefusedBatch,
    needs_patient,
    read_or_none,
    refuses_many,
)
from adapter.sources.searches import (
    FACT_ELEMENTS,
    PATIENT_PARAM,
    Search,
    checked_ids,
    code_token,
    identifier_token,
    is_fhir_id,
    patient_param,
    plan,
    search_for,
    search_params,
    unreached,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

    from adapter.fhir.capability import ServerCapabilities
    from adapter.fhir.client import FhirClient, JsonObject
    from adapter.fhir.paging import ResourceKey
    from adapter.servers import ReadMode, ServerProfile
    from adapter.sources.base import Query, Resource, UnreadableItem

__all__ = [
    "FACT_ELEMENTS",
    "PATIENT_PARAM",
    "RESULT_CAP",
    "RestSource",
    "Search",
    "code_token",
    "is_fhir_id",
    "plan",
    "search_params",
]

log = logging.getLogger(__name__)

RESULT_CAP = 10_000

_ELEMENT_NAME = re.compile(r"[a-z][A-Za-z0-9]{0,63}")


class RestSource:
    """A `Source` over a FHIR server's search API, through an injected `FhirClient`.

    `profile` says what the server requires of a search (adapter/servers.py); `read` chooses
    `batch` or `per-patient` (None: the profile's). Searches whose URL would pass
    `max_url_length` go as `POST [type]/_search` instead: many servers and proxies refuse URLs
    over about 2,000 characters. `result_cap` is the most results the server returns for one
    search (None: no cap); with `count_first` a first page with no total but a next link is
    counted (`_summary=count`) before the rest is read. `page_size` is lowered to the profile's
    largest `_count`. `elements` (e.g. `FACT_ELEMENTS`) names the fields to ask for per
    resource type, sent as `_elements` only when the profile allows it and `capabilities` saw
    the server honour it. Resources whose subject is another server's patient are left out and
    counted in `foreign`; `reads` says how the source read (mode, switch, what was unreached).
    """

    def __init__(
        self,
        client: FhirClient,
        *,
        batch_size: int = 100,
        page_size: int = 1000,
        max_url_length: int = 1900,
        result_cap: int | None = RESULT_CAP,
        count_first: bool = True,
        elements: Mapping[str, Sequence[str]] | None = None,
        capabilities: ServerCapabilities | None = None,
        profile: ServerProfile = GENERIC,
        read: ReadMode | None = None,
    ) -> None:
        if min(batch_size, page_size, max_url_length) < 1:
            raise ValueError("batch_size, page_size and max_url_length must be positive")
        if result_cap is not None and result_cap < 1:
            raise ValueError("result_cap must be positive, or None for no cap")
        mode = profile.read if read is None else read
        if mode not in READ_MODES:
            raise ValueError(f"not a read mode: {mode!r}")
        for kind, names in (elements or {}).items():
            bad = [n for n in names if not _ELEMENT_NAME.fullmatch(n)]
            if bad or isinstance(names, str):
                raise ValueError(f"not a list of element names for {kind}: {names!r}")
        self.client = client
        self.profile = profile
        self.batch_size = batch_size
        self.page_size = profile.page_size(page_size)
        self.max_url_length = max_url_length
        self.result_cap = result_cap
        self.count_first = count_first
        use_elements = (
            profile.elements and capabilities is not None and capabilities.supports_elements
        )
        self.elements: Mapping[str, tuple[str, ...]] = (
            {k: tuple(v) for k, v in elements.items() if v} if elements and use_elements else {}
        )
        #: patients searched at once in per-patient mode: as many as the client's exchanges
        self.concurrency = client.limiter.limits.max_concurrent
        self._counts_work = True
        #: a search naming several patients was answered; until then one asks at a time
        self._many_answered = False
        self._asking: asyncio.Event | None = None
        self.reads = ReadNotes(mode=mode, profile=profile.name)
        self.foreign: Counter[str] = Counter()
        self._foreign_seen: set[tuple[str, str]] = set()
        # A page is parsed whole or its search fails: nothing is ever skipped as unreadable.
        self.unreadable: list[UnreadableItem] = []

    async def fetch(self, query: Query) -> AsyncGenerator[Resource, None]:
        """Resources of `query.resource_type`, each once, references to the base made relative.

        A search of every patient (`patients` None) is one server-wide search in either mode; on
        a server that requires a patient it is a ConfigError (exit 2) before any request.
        """
        kind = query.resource_type
        patient_param(kind)  # a type the source cannot search is a ValueError
        if query.patients is None and "patient" in self.profile.rules(kind).required:
            raise needs_patient(self.profile, kind)
        # One set for the whole fetch: a capped search is searched again in halves, a refused
        # batch patient by patient, and what came already must not come twice.
        seen: set[ResourceKey] = set()
        stream: AsyncGenerator[Resource, None]
        if query.patients is not None and self._one_each(kind):
            stream = self._per_patient(query, checked_ids(query.patients), seen)
        else:
            searches = plan(query, batch_size=self.batch_size, profile=self.profile)
            self._note(unreached(query, self.profile, per_patient=False))
            stream = self._batched(
                kind, searches, seen, lambda ids: self._per_patient(query, ids, seen)
            )
        async with aclosing(stream) as resources:
            async for resource in resources:
                yield resource

    async def group(self, group_id: str) -> Resource | None:
        """`GET Group/{id}` whole, references under the base made relative; None when the
        server has none (404, 410). A `group_id` that is not a FHIR id is a UsageError."""
        if not is_fhir_id(group_id):
            raise UsageError("--cohort group: the Group id is not a valid FHIR id")
        found = await read_or_none(self.client, "Group", group_id)
        if found is not None:
            make_references_relative(found, self.client.base)
        return found

    async def patients_by_identifier(
        self, tokens: Sequence[tuple[str, str]]
    ) -> AsyncIterator[Resource]:
        """The Patients carrying any of the identifiers `(system, value)`, each once.

        `Patient?identifier=system|value`, comma-joined in batches of `batch_size`; one search per
        identifier (concurrently, in the tokens' order) in per-patient mode or where the profile
        makes `identifier` single-valued. An empty system matches an identifier without one.
        """
        wanted = list(dict.fromkeys(identifier_token(system, value) for system, value in tokens))
        rules = self.profile.rules("Patient")
        seen: set[ResourceKey] = set()

        def search(batch: tuple[str, ...]) -> Search:
            return search_for(rules, "Patient", "identifier", batch)

        async def one(token: str) -> list[Resource]:
            mine: set[ResourceKey] = set()
            return [r async for r in self._uncapped(search((token,)), mine)]

        def one_each(items: list[str]) -> AsyncGenerator[Resource, None]:
            return self._in_order("Patient", items, one, seen)

        stream: AsyncGenerator[Resource, None]
        if self.reads.mode == "per-patient" or "identifier" in rules.single_valued:
            stream = one_each(wanted)
        else:
            size = self.batch_size
            batches = [search(tuple(wanted[i : i + size])) for i in range(0, len(wanted), size)]
            stream = self._batched("Patient", batches, seen, one_each)
        async with aclosing(stream) as resources:
            async for resource in resources:
                yield resource

    async def aclose(self) -> None:
        """Nothing to close: the HTTP client belongs to the caller."""

    def _one_each(self, kind: str) -> bool:
        """Whether searches of the type name one patient each: the mode, or the profile."""
        single = self.profile.rules(kind).single_valued
        return self.reads.mode == "per-patient" or patient_param(kind) in single

    async def _batched(
        self,
        kind: str,
        searches: list[Search],
        seen: set[ResourceKey],
        one_each: Callable[[list[str]], AsyncGenerator[Resource, None]],
    ) -> AsyncGenerator[Resource, None]:
        """The batch searches, yielded in batch order; once a batch is refused (or an earlier
        fetch switched the source), the patients of it and of every later batch through
        `one_each`.

        Several batches run at once (issue 15), `concurrency` at most, each paged in turn by its
        next links; the client's limiter bounds the requests in flight over the whole source. A
        batch's resources are held until the batches before it are yielded, so at most
        `concurrency` batches are held; the first failure, or closing the fetch early, cancels
        the batches still running. A lone search is streamed page by page, holding nothing.
        """
        if len(searches) == 1 and self.reads.mode != "per-patient":
            try:
                async for resource in self._uncapped(searches[0], seen):
                    if self._accept(resource, kind):
                        yield resource
                return
            except RefusedBatch as exc:
                # Nothing came before the refusal: its first page is what was refused.
                self._switch(exc.error)

        async def one(search: Search) -> list[Resource] | None:
            """The batch's resources; None when its patients are to be read one at a time."""
            async with self._asking_many(search):
                if search.patients is not None and self.reads.mode == "per-patient":
                    return None  # switched already (by this fetch or an earlier one)
                mine: set[ResourceKey] = set()
                try:
                    return [resource async for resource in self._uncapped(search, mine)]
                except RefusedBatch as exc:
                    self._switch(exc.error)
                    return None

        done = 0
        refused = False
        async with aclosing(ordered_map(one, searches, limit=self.concurrency)) as results:
            async for found in results:
                if found is None:
                    refused = True
                    break  # closing the window cancels the later batches
                for resource in found:
                    if first_time(resource, seen) and self._accept(resource, kind):
                        yield resource
                done += 1
        if refused:
            rest = list(dict.fromkeys(v for s in searches[done:] for v in s.patients or ()))
            async with aclosing(one_each(rest)) as resources:
                async for resource in resources:
                    yield resource

    @asynccontextmanager
    async def _asking_many(self, search: Search) -> AsyncIterator[None]:
        """Until the server has answered one search naming several patients, one such search
        runs and the others wait for its first page: a server that refuses them (issue 13) is
        asked once, not `concurrency` times, before the source reads one patient at a time."""
        if search.patients is None or len(search.patients) < 2:
            yield
            return
        while self._asking is not None and not self._many_answered:
            await self._asking.wait()
        if self._many_answered or self.reads.mode == "per-patient":
            yield
            return
        # This batch asks; if it fails otherwise (or is cancelled), a waiting one asks next.
        asking = self._asking = asyncio.Event()
        try:
            yield
        finally:
            self._asking = None
            asking.set()

    async def _per_patient(
        self, query: Query, ids: list[str], seen: set[ResourceKey]
    ) -> AsyncGenerator[Resource, None]:
        """`query` for each of `ids` (checked, in order), one patient per search or read."""
        steps = PatientPlan.of(query, self.profile)
        if steps.selection is None:
            return  # an empty code set: nothing can match
        self._note(unreached(query, self.profile, per_patient=True))
        names = self.elements.get("Patient")
        read_params = [("_elements", ",".join(names))] if names else None

        async def one(pid: str) -> list[Resource]:
            if steps.reads:
                found = await read_or_none(self.client, "Patient", pid, read_params)
                return [] if found is None else [found]
            # Each patient's own set: what the shared one holds is decided in patient order.
            mine: set[ResourceKey] = set()
            return [r for s in steps.searches(pid) async for r in self._uncapped(s, mine)]

        async with aclosing(self._in_order(query.resource_type, ids, one, seen)) as resources:
            async for resource in resources:
                yield resource

    async def _in_order(
        self,
        kind: str,
        items: list[str],
        one: Callable[[str], Awaitable[list[Resource]]],
        seen: set[ResourceKey],
    ) -> AsyncGenerator[Resource, None]:
        """`one(item)` for each item, `concurrency` at a time, yielded in the items' order."""
        async with aclosing(ordered_map(one, items, limit=self.concurrency)) as results:
            async for found in results:
                for resource in found:
                    if first_time(resource, seen) and self._accept(resource, kind):
                        yield resource

    def _accept(self, resource: Resource, kind: str) -> bool:
        """Whether to yield a search's resource; references to the base are made relative."""
        if resource.get("resourceType") != kind:
            return False  # _include'd resources and search.mode=outcome OperationOutcomes
        make_references_relative(resource, self.client.base)
        if is_foreign(resource):
            # Still absolute: another server's patient, never a local one (issue 10).
            count_foreign(self.foreign, self._foreign_seen, resource)
            return False
        return True

    def _switch(self, error: HttpStatusError) -> None:
        """Read one patient at a time from now on; said once (no patient data, no URL query)."""
        if self.reads.mode == "per-patient":
            return
        self.reads.mode = "per-patient"
        self.reads.switched = True
        log.warning(
            SWITCH_MESSAGE,
            extra={"event": "read_mode_switched", "status": error.status, "url": error.url},
        )

    def _note(self, lines: list[str]) -> None:
        for line in lines:
            if line not in self.reads.unreached:
                self.reads.unreached.append(line)

    async def _uncapped(self, search: Search, seen: set[ResourceKey]) -> AsyncIterator[Resource]:
        """Every result of `search`, split in halves as often as the result cap needs.

        The first page comes first: its `total` (most servers give one) says whether the search
        reaches the cap, so no separate count is asked for; only a first page with no total and
        a next link costs a `_summary=count` request (bench/README.md: requests, not bytes, are
        what a busy server charges for). A post-filtered search's total counts what the server
        then filters out: it is not used (module docstring).
        """
        cap = self.result_cap
        page, url = await self._open(search)
        if cap is not None and self.count_first and not search.post_filtered:
            total = bundle_total(page)
            if total is None and has_next(page):
                total = await self._count(search)
            if total is not None and total >= cap:
                why = f"matches {total:,} resources, at or over the result cap of {cap:,}"
                for half in self._halves(search, why):
                    async for resource in self._uncapped(half, seen):
                        yield resource
                return
        stats = SearchStats()
        # The next page is asked for while this side handles the last (closed here, so that a
        # fetch stopped early cancels it).
        pages = iter_pages(self.client, page, url, seen=seen, stats=stats, prefetch=True)
        async with aclosing(pages) as resources:
            async for resource in resources:
                yield resource
        # A total is the server's own word (and HAPI's cut point is not always the cap exactly);
        # without one, a result set that reached the cap is taken as cut.
        if stats.total is not None:
            cut = stats.total > stats.distinct and not search.post_filtered
            why = f"returned {stats.distinct:,} of the {stats.total:,} resources it announced"
        else:
            cut = cap is not None and stats.matches >= cap
            why = f"stopped at the result cap of {cap:,} ({stats.matches:,} resources, no total)"
        if cut:
            for half in self._halves(search, why):
                async for resource in self._uncapped(half, seen):
                    yield resource

    async def _open(self, search: Search) -> tuple[JsonObject, str]:
        """The first page of `search`; a refusal that asks for one patient at a time is told
        apart (`RefusedBatch`) when the search names several."""
        many = search.patients is not None and len(search.patients) > 1
        try:
            found = await self._first_page(search.resource_type, self._params(search))
        except HttpStatusError as exc:
            if many and refuses_many(exc):
                raise RefusedBatch(exc) from exc
            raise
        if many:
            self._many_answered = True
        return found

    def _halves(self, search: Search, why: str) -> tuple[Search, Search]:
        halves = search.halves()
        if halves is None:
            raise FhirError(
                f"{search.what()} {why}, and cannot be split further by patient or code",
                url=self.client.url(search.resource_type),
            )
        return halves

    async def _count(self, search: Search) -> int | None:
        """The server's count of `search` (`_summary=count`); None when it gives none."""
        if not self._counts_work:
            return None
        params = [*search.selection(), ("_summary", "count")]
        try:
            page, url = await self._first_page(search.resource_type, params)
        except HttpStatusError as exc:
            if exc.temporary or exc.status not in (400, 422):
                raise
            # A server that refuses _summary=count: the capped-result check after each search
            # still holds, and the search itself will show if the 400 was about something else.
            self._counts_work = False
            return None
        if page.get("resourceType") != "Bundle":
            raise InvalidResponseError("a _summary=count search did not return a Bundle", url=url)
        return bundle_total(page)

    def _params(self, search: Search) -> list[tuple[str, str]]:
        params = [*search.selection(), ("_count", str(self.page_size))]
        names = self.elements.get(search.resource_type)
        if names:
            params.append(("_elements", ",".join(names)))
        return params

    async def _first_page(
        self, resource_type: str, params: list[tuple[str, str]]
    ) -> tuple[JsonObject, str]:
        """The first page by GET, or by POST [type]/_search when the URL would be too long."""
        url = self.client.url(resource_type, params)
        if len(url) <= self.max_url_length:
            return await self.client.get_json(url), url
        page = await self.client.post_form_search(resource_type, params)
        return page, self.client.url(f"{resource_type}/_search")
