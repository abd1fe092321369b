"""Resources from a FHIR server's search API: batched by patient, paged, de-duplicated, uncapped.

Servers cap the results of one search silently (HAPI's public server ends the next links at
10,000), so a batch's first page is read first and its `total` (or, when it has none but has a
next link, a `_summary=count`) decides whether to split it in halves while it would reach
`result_cap`; a search that still comes back capped, or with fewer results than its `total`, is
split and searched again (what it already gave is not yielded twice). What cannot be split
further raises: a tail is never lost.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapter.errors import FhirError, HttpStatusError, InvalidResponseError, PatientError
from adapter.fhir.paging import SearchStats, bundle_total, iter_pages
from adapter.sources.base import count_foreign, is_foreign

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from adapter.facts.model import Coding
    from adapter.fhir.capability import ServerCapabilities
    from adapter.fhir.client import FhirClient, JsonObject
    from adapter.fhir.paging import ResourceKey
    from adapter.fhir.urls import ServerBase
    from adapter.sources.base import Query, Resource, UnreadableItem

# The search parameter that selects by patient, per resource type; `patient=123` (a bare id) is
# valid for reference parameters (R4 search, "reference").
PATIENT_PARAM = {
    "Patient": "_id",
    "Observation": "patient",
    "Condition": "patient",
    "Procedure": "patient",
}

# What adapter/facts/extract.py (and sources.base.patient_id_of) read, as `_elements` names.
# Choice types are named twice: R4 3.1.1.5.9 asks for base names (`effective`), but some servers
# (sekmet-fhir 0.1.1) match only the JSON names (`effectiveDateTime`); each ignores the other
# form. Mandatory elements come back anyway; `meta` carries the versionId the reports cite.
FACT_ELEMENTS: Mapping[str, tuple[str, ...]] = {
    "Patient": (
        *("meta", "identifier", "name", "gender", "birthDate", "extension"),
        *("deceased", "deceasedBoolean", "deceasedDateTime"),
    ),
    "Condition": (
        *("meta", "subject", "code", "clinicalStatus", "verificationStatus"),
        *("onset", "onsetDateTime", "onsetPeriod", "recordedDate", "stage"),
        *("abatement", "abatementDateTime", "abatementPeriod", "abatementAge"),
        *("abatementRange", "abatementString", "abatementBoolean"),
    ),
    "Procedure": (
        *("meta", "subject", "status", "code"),
        *("performed", "performedDateTime", "performedPeriod"),
    ),
    "Observation": (
        *("meta", "subject", "status", "code", "issued"),
        *("effective", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        *("value", "valueQuantity", "valueInteger", "valueCodeableConcept"),
        *("dataAbsentReason", "referenceRange", "component"),
    ),
}

RESULT_CAP = 10_000

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# R4 search, "Escaping Search Parameters": these are escaped with a backslash inside a value.
_SEARCH_SPECIALS = re.compile(r"([\\,|$])")
_ELEMENT_NAME = re.compile(r"[a-z][A-Za-z0-9]{0,63}")


def is_fhir_id(text: str) -> bool:
    """Whether `text` is a valid FHIR resource id (R4 `id` datatype)."""
    return _FHIR_ID.fullmatch(text) is not None


def code_token(coding: Coding) -> str:
    """`system|code`, escaped; just `code` (any system, so never fewer matches) without a system."""
    code = _escape(coding.code)
    return f"{_escape(coding.system)}|{code}" if coding.system else code


def _escape(value: str) -> str:
    return _SEARCH_SPECIALS.sub(r"\\\1", value)


@dataclass(frozen=True, slots=True)
class Search:
    """One search of a query: a batch of patients (None: all) and the code tokens (None: any)."""

    resource_type: str
    patient_param: str
    patients: tuple[str, ...] | None
    codes: tuple[str, ...] | None

    def selection(self) -> list[tuple[str, str]]:
        """The parameters that choose the resources: patients, then codes."""
        out: list[tuple[str, str]] = []
        if self.patients is not None:
            out.append((self.patient_param, ",".join(self.patients)))
        if self.codes is not None:
            out.append(("code", ",".join(self.codes)))
        return out

    def halves(self) -> tuple[Search, Search] | None:
        """Two searches that together select the same: by patients first, then by codes."""
        if self.patients is not None and len(self.patients) > 1:
            mid = len(self.patients) // 2
            return (
                Search(self.resource_type, self.patient_param, self.patients[:mid], self.codes),
                Search(self.resource_type, self.patient_param, self.patients[mid:], self.codes),
            )
        if self.codes is not None and len(self.codes) > 1:
            mid = len(self.codes) // 2
            return (
                Search(self.resource_type, self.patient_param, self.patients, self.codes[:mid]),
                Search(self.resource_type, self.patient_param, self.patients, self.codes[mid:]),
            )
        return None

    def what(self) -> str:
        """The search in words, for messages: no ids, no codes."""
        who = "every patient" if self.patients is None else _plural(len(self.patients), "patient")
        codes = "any code" if self.codes is None else _plural(len(self.codes), "code")
        return f"the {self.resource_type} search for {who} and {codes}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def plan(query: Query, *, batch_size: int) -> list[Search]:
    """The searches that answer `query`, in a reproducible order.

    One per batch of patients (ids sorted), or one over every patient when `patients` is None; none
    when `patients` or `codes` is an empty set, since nothing can match.
    """
    param = PATIENT_PARAM.get(query.resource_type)
    if param is None:
        raise ValueError(f"RestSource cannot search {query.resource_type!r}")
    if query.codes is not None and query.resource_type == "Patient":
        raise ValueError("a Patient search takes no codes")
    codes = None
    if query.codes is not None:
        if not query.codes:
            return []
        codes = tuple(sorted(code_token(c) for c in query.codes))
    if query.patients is None:
        return [Search(query.resource_type, param, None, codes)]
    ids = sorted(query.patients)
    for pid in ids:
        if not is_fhir_id(pid):
            # The id stays out of the message (it is patient data), and out of every URL.
            raise PatientError(pid[:64], "not a valid FHIR id; refusing to put it in a search URL")
    return [
        Search(query.resource_type, param, tuple(ids[i : i + batch_size]), codes)
        for i in range(0, len(ids), batch_size)
    ]


def search_params(query: Query, *, batch_size: int, page_size: int) -> list[list[tuple[str, str]]]:
    """The parameter lists of `plan(query)`, each with `_count`: pure, for tests and logs."""
    return [
        [*search.selection(), ("_count", str(page_size))]
        for search in plan(query, batch_size=batch_size)
    ]


class RestSource:
    """A `Source` over a FHIR server's search API, through an injected `FhirClient`.

    Searches whose URL would pass `max_url_length` go as `POST [type]/_search` instead: many
    servers and proxies refuse URLs over about 2,000 characters. `result_cap` is the most results
    the server returns for one search (None: no cap); with `count_first` a first page with no
    total but a next link is counted (`_summary=count`) before the rest is read. `elements`
    (e.g. `FACT_ELEMENTS`) names the fields to ask for per
    resource type, sent as `_elements` only when `capabilities` saw the server honour it.
    Resources whose subject is another server's patient are left out and counted in `foreign`.
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
    ) -> None:
        if min(batch_size, page_size, max_url_length) < 1:
            raise ValueError("batch_size, page_size and max_url_length must be positive")
        if result_cap is not None and result_cap < 1:
            raise ValueError("result_cap must be positive, or None for no cap")
        for kind, names in (elements or {}).items():
            bad = [n for n in names if not _ELEMENT_NAME.fullmatch(n)]
            if bad or isinstance(names, str):
                raise ValueError(f"not a list of element names for {kind}: {names!r}")
        self.client = client
        self.batch_size = batch_size
        self.page_size = page_size
        self.max_url_length = max_url_length
        self.result_cap = result_cap
        self.count_first = count_first
        use_elements = capabilities is not None and capabilities.supports_elements
        self.elements: Mapping[str, tuple[str, ...]] = (
            {k: tuple(v) for k, v in elements.items() if v} if elements and use_elements else {}
        )
        self._counts_work = True
        self.foreign: Counter[str] = Counter()
        self._foreign_seen: set[tuple[str, str]] = set()
        # A page is parsed whole or its search fails: nothing is ever skipped as unreadable.
        self.unreadable: list[UnreadableItem] = []

    async def fetch(self, query: Query) -> AsyncIterator[Resource]:
        """Resources of `query.resource_type`, each once, references to the base made relative."""
        # One set for the whole fetch: a capped search is searched again in halves, and the
        # resources it already gave must not come twice.
        seen: set[ResourceKey] = set()
        for search in plan(query, batch_size=self.batch_size):
            async for resource in self._uncapped(search, seen):
                if resource.get("resourceType") != query.resource_type:
                    continue  # _include'd resources and search.mode=outcome OperationOutcomes
                _make_references_relative(resource, self.client.base)
                if is_foreign(resource):
                    # Still absolute: another server's patient, never a local one (issue 10).
                    count_foreign(self.foreign, self._foreign_seen, resource)
                    continue
                yield resource

    async def aclose(self) -> None:
        """Nothing to close: the HTTP client belongs to the caller."""

    async def _uncapped(self, search: Search, seen: set[ResourceKey]) -> AsyncIterator[Resource]:
        """Every result of `search`, split in halves as often as the result cap needs.

        The first page comes first: its `total` (most servers give one) says whether the search
        reaches the cap, so no separate count is asked for; only a first page with no total and
        a next link costs a `_summary=count` request (bench/README.md: requests, not bytes, are
        what a busy server charges for).
        """
        cap = self.result_cap
        page, url = await self._first_page(search.resource_type, self._params(search))
        if cap is not None and self.count_first:
            total = bundle_total(page)
            if total is None and _has_next(page):
                total = await self._count(search)
            if total is not None and total >= cap:
                why = f"matches {total:,} resources, at or over the result cap of {cap:,}"
                for half in self._halves(search, why):
                    async for resource in self._uncapped(half, seen):
                        yield resource
                return
        stats = SearchStats()
        async for resource in iter_pages(self.client, page, url, seen=seen, stats=stats):
            yield resource
        # A total is the server's own word (and HAPI's cut point is not always the cap exactly);
        # without one, a result set that reached the cap is taken as cut.
        if stats.total is not None:
            cut = stats.total > stats.distinct
            why = f"returned {stats.distinct:,} of the {stats.total:,} resources it announced"
        else:
            cut = cap is not None and stats.matches >= cap
            why = f"stopped at the result cap of {cap:,} ({stats.matches:,} resources, no total)"
        if cut:
            for half in self._halves(search, why):
                async for resource in self._uncapped(half, seen):
                    yield resource

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


def _has_next(page: JsonObject) -> bool:
    links = page.get("link")
    return isinstance(links, list) and any(
        isinstance(link, dict) and link.get("relation") == "next" for link in links
    )


def _make_references_relative(node: Any, base: ServerBase) -> None:
    """Rewrite absolute references below `base` (`http://x/fhir/Patient/1`) as `Patient/1`."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and "://" in ref:
            relative = base.relative(ref)
            if relative:
                node["reference"] = relative
        for value in node.values():
            if isinstance(value, dict | list):
                _make_references_relative(value, base)
    elif isinstance(node, list):
        for item in node:
            _make_references_relative(item, base)
