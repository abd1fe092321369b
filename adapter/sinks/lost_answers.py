"""Creating a ResearchSubject when the server's answer may be lost (issue 10): pure HTTP helpers
of the server sink.

A write whose answer was lost may have been applied. Retried blindly, a PUT stores a second,
identical version and a conditional create answers 200 with what the first attempt created;
either way the adapter's own creation would be left without its Provenance (issue 10: 10 of 26
subjects were). These tell our subject from anyone else's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapter.errors import HttpStatusError
from adapter.sinks import resources
from adapter.sinks.responses import returned_resource, written
from adapter.sinks.stored import read_stored

if TYPE_CHECKING:
    import httpx

    from adapter.fhir.client import FhirClient
    from adapter.sinks.resources import JsonDict

_NOT_FOUND = 404
_GONE = 410


async def put_new_subject(client: FhirClient, body: JsonDict) -> tuple[str, str | None]:
    """PUT a new subject at its fixed id, never retried blindly: its id and version.

    Before a retry that follows a lost answer the id is read: our subject there is the write done.
    """
    kind, resource_id = "ResearchSubject", str(body["id"])

    async def applied() -> httpx.Response | None:
        try:
            response = await client.request("GET", f"{kind}/{resource_id}")
        except HttpStatusError as exc:
            if exc.status in (_NOT_FOUND, _GONE):
                return None
            raise
        found = returned_resource(response, kind)
        ours = found is not None and resources.is_same_subject(found, resources.without_id(body))
        return response if ours else None

    response = await client.request("PUT", f"{kind}/{resource_id}", json=body, applied=applied)
    return written(response, kind)


async def created_by_us(client: FhirClient, response: httpx.Response, sent: JsonDict) -> bool:
    """Whether the subject a conditional create answered 200 with is the one we sent.

    FhirClient retries a conditional create whose answer was lost; the retry finds what the
    first attempt created and answers 200. That subject is ours and needs its Provenance.
    """
    found = returned_resource(response, "ResearchSubject")
    if found is None:  # Prefer: return=minimal: read what the Location names
        subject_id = written(response, "ResearchSubject")[0]
        stored = await read_stored(client, "ResearchSubject", subject_id)
        found = None if stored is None else stored.body
    return found is not None and resources.is_same_subject(found, resources.without_id(sent))
