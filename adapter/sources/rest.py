"""Resources from a FHIR server's search API: batched by patient, paged, de-duplicated."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from adapter.errors import PatientError
from adapter.fhir.paging import iter_bundle, iter_pages

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from adapter.facts.model import Coding
    from adapter.fhir.client import FhirClient, ServerBase
    from adapter.sources.base import Query, Resource

# The search parameter that selects by patient, per resource type; `patient=123` (a bare id) is
# valid for reference parameters (R4 search, "reference").
PATIENT_PARAM = {
    "Patient": "_id",
    "Observation": "patient",
    "Condition": "patient",
    "Procedure": "patient",
}

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# R4 search, "Escaping Search Parameters": these are escaped with a backslash inside a value.
_SEARCH_SPECIALS = re.compile(r"([\\,|$])")


def is_fhir_id(text: str) -> bool:
    """Whether `text` is a valid FHIR resource id (R4 `id` datatype)."""
    return _FHIR_ID.fullmatch(text) is not None


def code_token(coding: Coding) -> str:
    """`system|code`, escaped; just `code` (any system, so never fewer matches) without a system."""
    code = _escape(coding.code)
    return f"{_escape(coding.system)}|{code}" if coding.system else code


def _escape(value: str) -> str:
    return _SEARCH_SPECIALS.sub(r"\\\1", value)


def search_params(query: Query, *, batch_size: int, page_size: int) -> list[list[tuple[str, str]]]:
    """The searches that answer `query`, as parameter lists, in a reproducible order.

    One per batch of patients (ids sorted), or one over every patient when `patients` is None; none
    when `patients` or `codes` is an empty set, since nothing can match.
    """
    param = PATIENT_PARAM.get(query.resource_type)
    if param is None:
        raise ValueError(f"RestSource cannot search {query.resource_type!r}")
    if query.codes is not None and query.resource_type == "Patient":
        raise ValueError("a Patient search takes no codes")
    common: list[tuple[str, str]] = []
    if query.codes is not None:
        if not query.codes:
            return []
        common.append(("code", ",".join(sorted(code_token(c) for c in query.codes))))
    common.append(("_count", str(page_size)))
    if query.patients is None:
        return [common]
    ids = sorted(query.patients)
    for pid in ids:
        if not is_fhir_id(pid):
            # The id stays out of the message (it is patient data), and out of every URL.
            raise PatientError(pid[:64], "not a valid FHIR id; refusing to put it in a search URL")
    batches = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    return [[(param, ",".join(batch)), *common] for batch in batches]


class RestSource:
    """A `Source` over a FHIR server's search API, through an injected `FhirClient`.

    Searches whose URL would pass `max_url_length` go as `POST [type]/_search` instead: many
    servers and proxies refuse URLs over about 2,000 characters.
    """

    def __init__(
        self,
        client: FhirClient,
        *,
        batch_size: int = 100,
        page_size: int = 200,
        max_url_length: int = 1900,
    ) -> None:
        if min(batch_size, page_size, max_url_length) < 1:
            raise ValueError("batch_size, page_size and max_url_length must be positive")
        self.client = client
        self.batch_size = batch_size
        self.page_size = page_size
        self.max_url_length = max_url_length

    async def fetch(self, query: Query) -> AsyncIterator[Resource]:
        """Resources of `query.resource_type`, each once, references to the base made relative."""
        searches = search_params(query, batch_size=self.batch_size, page_size=self.page_size)
        # Offset paging repeats entries when the result set shifts between pages.
        seen: set[str] = set()
        for params in searches:
            async for resource in self._search(query.resource_type, params):
                if resource.get("resourceType") != query.resource_type:
                    continue  # _include'd resources and search.mode=outcome OperationOutcomes
                rid = resource.get("id")
                if isinstance(rid, str):
                    if rid in seen:
                        continue
                    seen.add(rid)
                _make_references_relative(resource, self.client.base)
                yield resource

    async def aclose(self) -> None:
        """Nothing to close: the HTTP client belongs to the caller."""

    async def _search(
        self, resource_type: str, params: list[tuple[str, str]]
    ) -> AsyncIterator[Resource]:
        url = self.client.url(resource_type, params)
        if len(url) <= self.max_url_length:
            async for resource in iter_bundle(self.client, url):
                yield resource
            return
        page = await self.client.post_form_search(resource_type, params)
        search_url = self.client.url(f"{resource_type}/_search")
        async for resource in iter_pages(self.client, page, search_url):
            yield resource


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
