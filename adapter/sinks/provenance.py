"""Finding and sending the Provenance of ResearchSubject versions, on the path the server allows.

trial-spec 'What gets written' (v2): a Provenance is PUT at its deterministic id; where the server
declares that PUT cannot create (`updateCreate` false) it is created with
`If-None-Exist: target=ResearchSubject/<id>/_history/<v>` where `Provenance?target` is searchable,
else by one POST that is never retried blindly. Whether a version already has its Provenance is
asked the same way: a read of the id, a search by target, or (POST path) one search of every
Provenance carrying the adapter's tag, made once per run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from adapter.errors import HttpStatusError
from adapter.fhir.capability import WritePath
from adapter.fhir.paging import iter_bundle
from adapter.sinks import resources
from adapter.sinks.plan import PlannedWrite
from adapter.sinks.resources import TAG
from adapter.sinks.responses import json_object, returned_resource, search_matches, targets
from adapter.sinks.stored import STRICT

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient
    from adapter.sinks.resources import JsonDict

_CREATED = 201
_NOT_FOUND = 404
_GONE = 410


def target(subject_id: str, version: str | None) -> str:
    """Provenance.target of one subject version (unversioned on a server that keeps none)."""
    reference = f"ResearchSubject/{subject_id}"
    return reference if version is None else f"{reference}/_history/{version}"


def target_condition(reference: str) -> str:
    """The `If-None-Exist` query of a Provenance: `target=ResearchSubject/<id>/_history/<v>`."""
    return urlencode([("target", reference)], quote_via=quote, safe="/")


class ProvenanceStore:
    """The Provenance of one server, on its `WritePath` (FIXED_ID, CONDITIONAL or POST)."""

    def __init__(self, client: FhirClient, path: WritePath) -> None:
        self._client = client
        self.path = path
        #: POST path: the targets of the adapter's Provenance on the server (searched once)
        self._tagged: set[str] | None = None

    def plan(self, body: JsonDict | None, patient: str, reason: str = "written") -> PlannedWrite:
        """The write `send` makes for `body`; None: a dry-run change, whose version is unknown."""
        why = f"provenance of the ResearchSubject {reason}"
        if self.path is WritePath.FIXED_ID:
            resource_id = None if body is None else body["id"]
            return PlannedWrite("PUT", "Provenance", why, resource_id=resource_id, patient=patient)
        condition = None
        if self.path is WritePath.CONDITIONAL and body is not None:
            condition = target_condition(body["target"][0]["reference"])
        return PlannedWrite("POST", "Provenance", why, condition=condition, patient=patient)

    async def exists(self, body: JsonDict) -> bool:
        """Whether the server holds a Provenance of `body`'s target (on FIXED_ID: its id).

        On FIXED_ID, one people deleted (410 Gone) counts as there: it is never resurrected.
        """
        wanted = body["target"][0]["reference"]
        if self.path is WritePath.FIXED_ID:
            try:
                await self._client.request("GET", f"Provenance/{body['id']}")
            except HttpStatusError as exc:
                if exc.status == _NOT_FOUND:
                    return False
                if exc.status == _GONE:
                    return True
                raise
            return True
        if self.path is WritePath.CONDITIONAL:
            url = self._client.url("Provenance", [("target", wanted)])
            # A server that does not know `target` must refuse it, not answer every Provenance.
            response = await self._client.request("GET", url, headers=STRICT)
            # sekmet-fhir 0.1.1 ignores the version in a reference search: every version's
            # Provenance comes back, so the exact target is checked here.
            found = search_matches(json_object(response, url), url)
            return any(wanted in targets(p) for p in found)
        return wanted in await self._adapter_targets()

    async def send(self, body: JsonDict) -> None:
        """Write `body` (a Provenance with its deterministic id) on the path."""
        if self.path is WritePath.FIXED_ID:  # idempotent: its id is fixed
            await self._client.request("PUT", f"Provenance/{body['id']}", json=body)
            return
        wanted = body["target"][0]["reference"]
        created = resources.without_id(body)
        if self.path is WritePath.CONDITIONAL:
            # A conditional create may be retried (adapter.fhir.client.is_idempotent).
            headers = {"If-None-Exist": target_condition(wanted)}
            response = await self._client.request(
                "POST", "Provenance", json=created, headers=headers
            )
            found = returned_resource(response, "Provenance")
            if response.status_code == _CREATED or found is None or wanted in targets(found):
                return
            # 200 with another version's Provenance: the server ignored the version in the
            # condition (sekmet-fhir 0.1.1), and none has this target (exists() searched).
        # One POST, never retried blindly: a lost answer is found by the next run's search.
        await self._client.request("POST", "Provenance", json=created, idempotent=False)
        if self._tagged is not None:
            self._tagged.add(wanted)

    async def _adapter_targets(self) -> set[str]:
        """The targets of every Provenance carrying the adapter's tag: one paged search a run.

        The POST path's lookup: without a `target` search or a PUT at a known id, a Provenance
        can only be found among the adapter's own.
        """
        if self._tagged is None:
            tag = f"{TAG['system']}|{TAG['code']}"
            found: set[str] = set()
            async for resource in iter_bundle(self._client, "Provenance", [("_tag", tag)]):
                if resource.get("resourceType") == "Provenance":
                    found |= targets(resource)
            self._tagged = found
        return self._tagged
