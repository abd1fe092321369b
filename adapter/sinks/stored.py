"""What a FHIR server holds: one resource read by id, the resources an identifier search finds,
or every ResearchSubject of a study.

The server sink reads before it writes; these are its reads, each resource kept with its id,
body and version (meta.versionId, else the ETag).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapter.errors import HttpStatusError, InvalidResponseError
from adapter.fhir.paging import iter_pages
from adapter.sinks import resources
from adapter.sinks.people import study_of
from adapter.sinks.responses import (
    json_object,
    meta_version,
    read_resource,
    search_matches,
    version_of,
)

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient
    from adapter.sinks.resources import JsonDict

_NOT_FOUND = 404
# sekmet-fhir and HAPI ignore an unknown search parameter unless asked to be strict (R4 3.1.1.5.1);
# ignored, `identifier=` would match every resource of the type.
STRICT = {"Prefer": "handling=strict"}


@dataclass(frozen=True, slots=True)
class Stored:
    """A resource on the server: its id, its body and version."""

    id: str
    body: JsonDict
    version: str | None


async def read_stored(client: FhirClient, kind: str, resource_id: str) -> Stored | None:
    """The resource at `kind/resource_id`; None on 404. Other errors (410 too) raise."""
    url = f"{kind}/{resource_id}"
    try:
        response = await client.request("GET", url)
    except HttpStatusError as exc:
        if exc.status == _NOT_FOUND:
            return None
        raise
    body = read_resource(response, kind, resource_id, url)
    return Stored(resource_id, body, version_of(body, response))


async def search_stored(
    client: FhirClient, kind: str, system: str, value: str
) -> tuple[list[Stored], int]:
    """The `kind`s with this identifier, and how many the server says match in all."""
    url = client.url(kind, [("identifier", resources.search_token(system, value))])
    response = await client.request("GET", url, headers=STRICT)
    bundle = json_object(response, url)
    found: list[Stored] = []
    for resource in search_matches(bundle, url):
        if resource.get("resourceType") != kind or not resources.has_identifier(
            resource, system, value
        ):
            # Never take a resource that is not ours: the server ignored the parameter.
            raise InvalidResponseError(
                f"the {kind} search by identifier matched resources without it", url=url
            )
        resource_id = resource.get("id")
        if not isinstance(resource_id, str) or not resource_id:
            raise InvalidResponseError(f"a {kind} in the search has no id", url=url)
        found.append(Stored(resource_id, resource, meta_version(resource)))
    total = bundle.get("total")
    return found, max(len(found), total if isinstance(total, int) else 0)


async def search_study_subjects(
    client: FhirClient, study_reference: str, *, page_size: int
) -> list[JsonDict]:
    """Every ResearchSubject of `study_reference` (`ResearchStudy/<id>`): one search, paged.

    Sent strict, like the identifier search: a server that ignored `study` would answer with
    every trial's subjects, so one naming another study is an invalid answer, never taken.
    """
    params = [("study", study_reference), ("_count", str(page_size))]
    url = client.url("ResearchSubject", params)
    first = json_object(await client.request("GET", url, headers=STRICT), url)
    found: list[JsonDict] = []
    async for resource in iter_pages(client, first, url):
        if resource.get("resourceType") != "ResearchSubject":
            continue  # an OperationOutcome of warnings
        if study_of(resource) != study_reference:
            raise InvalidResponseError(
                "the ResearchSubject search by study matched subjects of another study", url=url
            )
        found.append(resource)
    return found


def status_of(stored: Stored) -> str:
    """A stored ResearchSubject's status; a subject without one is an invalid answer."""
    status = stored.body.get("status")
    if not isinstance(status, str):
        raise InvalidResponseError(
            "a ResearchSubject on the server has no status", url=f"ResearchSubject/{stored.id}"
        )
    return status
