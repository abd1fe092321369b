"""A bounded sample of every resource of one type from a FHIR server: type-wide searches, paged.

The code survey reads `Observation?_count=N` (and Condition, Procedure) across all patients,
following `Bundle.link[next]` with the paging checks of `adapter.fhir.paging`, and stops at `limit`
resources. Many hospital servers (Epic, Oracle Health) refuse a search without a `patient`: that
refusal is a `TypeWideSearchRefused`, so the caller can say so in one line instead of a bare 400.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from adapter.errors import FhirError, HttpStatusError, InvalidResponseError
from adapter.fhir.outcome import coded_issues, outcome_text
from adapter.fhir.paging import iter_pages

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from adapter.fhir.capability import ServerCapabilities
    from adapter.fhir.client import FhirClient, JsonObject
    from adapter.sources.base import Resource

#: What the survey reads of each type, as `_elements` names (choice types named twice, as in
#: sources.rest.FACT_ELEMENTS: base names per R4 3.1.1.5.9, JSON names for servers that want them).
SURVEY_ELEMENTS: Mapping[str, tuple[str, ...]] = {
    "Observation": (
        *("code", "component", "dataAbsentReason", "value", "valueQuantity"),
        *("valueCodeableConcept", "valueString", "valueBoolean", "valueInteger", "valueRange"),
        *("valueRatio", "valueSampledData", "valueTime", "valueDateTime", "valuePeriod"),
    ),
    "Condition": ("code",),
    "Procedure": ("code",),
}

DEFAULT_SAMPLE = 10_000
# Any 4xx but 401 (credentials) on the first page of a type-wide search is the server's "no":
# Epic answers 400 "patient is required", others 403 or 422 for the same rule.
_AUTH_STATUSES = frozenset({401})


class TypeWideSearchRefused(FhirError):
    """The server refuses searches across all patients (it wants a `patient` parameter)."""


class TypeSample:
    """Reads at most `limit` resources of a type with one paged type-wide search.

    `read` and `complete` (whether the search ended before the limit) are kept per type.
    """

    def __init__(
        self,
        client: FhirClient,
        *,
        limit: int = DEFAULT_SAMPLE,
        page_size: int = 1000,
        capabilities: ServerCapabilities | None = None,
        elements: Mapping[str, Sequence[str]] = SURVEY_ELEMENTS,
    ) -> None:
        if limit < 1 or page_size < 1:
            raise ValueError("limit and page_size must be positive")
        self.client = client
        self.limit = limit
        self.page_size = min(page_size, limit)
        use_elements = capabilities is not None and capabilities.supports_elements
        self.elements = {k: tuple(v) for k, v in elements.items()} if use_elements else {}
        self.read: dict[str, int] = {}
        self.complete: dict[str, bool] = {}

    def params(self, resource_type: str) -> list[tuple[str, str]]:
        """The first page's search parameters: pure, for tests and logs."""
        params = [("_count", str(self.page_size))]
        names = self.elements.get(resource_type)
        if names:
            params.append(("_elements", ",".join(names)))
        return params

    async def fetch(self, resource_type: str) -> AsyncIterator[Resource]:
        """Resources of `resource_type`, at most `limit`, in the server's order."""
        first_url = self.client.url(resource_type, self.params(resource_type))
        page = await self._first_page(resource_type, first_url)
        count = 0
        self.complete[resource_type] = False
        async for resource in iter_pages(self.client, page, first_url):
            if resource.get("resourceType") != resource_type:
                continue  # included resources and outcome entries
            if count >= self.limit:
                self.read[resource_type] = count
                return
            count += 1
            yield resource
        self.read[resource_type] = count
        self.complete[resource_type] = True

    async def _first_page(self, resource_type: str, url: str) -> JsonObject:
        try:
            page = await self.client.get_json(url)
        except HttpStatusError as exc:
            if exc.temporary or exc.status in _AUTH_STATUSES or not 400 <= exc.status < 500:
                raise
            answer = f"HTTP {exc.status}"
            raise _refused(resource_type, answer, exc.summary, url, exc.detail) from None
        if page.get("resourceType") == "OperationOutcome":
            coded, text = coded_issues(page), outcome_text(page)
            raise _refused(resource_type, "an OperationOutcome", coded, url, text)
        if page.get("resourceType") != "Bundle":
            raise InvalidResponseError(
                f"the {resource_type} search did not return a Bundle", url=url
            )
        refusal = _outcome_only(page)
        if refusal is not None:
            raise _refused(resource_type, "an OperationOutcome", refusal, url)
        return page


def _outcome_only(page: JsonObject) -> str | None:
    """The coded issues of an error outcome in a Bundle that holds no match: a refusal dressed
    as a page (coded only: its free text can name a patient)."""
    entries = page.get("entry")
    if not isinstance(entries, list):
        return None
    errors: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        resource = entry["resource"]
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        if resource.get("resourceType") != "OperationOutcome":
            if mode in (None, "match"):
                return None
            continue
        issues = resource.get("issue")
        if any(
            isinstance(i, dict) and i.get("severity") in ("error", "fatal")
            for i in (issues if isinstance(issues, list) else [])
        ):
            errors.append(coded_issues(resource) or "an error outcome")
    return "; ".join(errors) if errors else None


def _refused(
    resource_type: str, answer: str, coded: str, url: str, detail: str = ""
) -> TypeWideSearchRefused:
    said = f": {coded}" if coded else ""
    return TypeWideSearchRefused(
        f"the server refuses a type-wide {resource_type} search ({answer}{said}); survey it "
        "one patient at a time: --read per-patient (or --profile NAME) with --cohort group:ID "
        "or --cohort file:PATH",
        url=url,
        detail=detail,
    )
