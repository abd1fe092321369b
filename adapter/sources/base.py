"""What every source offers the sweep: a search by resource type, codes and patients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from adapter.facts.model import Coding

Resource = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Query:
    """One kind of resource the sweep needs.

    `codes` are exact (system, code) tokens a server can search with `code=`; a source may return
    more than they match (the sweep re-checks every code on the client, with prefix rules), never
    less. `patients` are Patient ids (not references); None means every patient.
    """

    resource_type: str
    codes: frozenset[Coding] | None = None
    patients: frozenset[str] | None = None


class Source(Protocol):
    """A place resources come from. Implementations: FolderSource, RestSource."""

    def fetch(self, query: Query) -> AsyncIterator[Resource]:
        """Resources of `query.resource_type` for `query.patients`, references made relative."""
        ...

    async def aclose(self) -> None: ...


def patient_id_of(resource: Resource) -> str | None:
    """The Patient id a resource belongs to: its own id for a Patient, else subject/patient."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict):
            text = ref.get("reference")
            if isinstance(text, str):
                return _patient_id_from_reference(text)
    return None


def _patient_id_from_reference(text: str) -> str | None:
    # Relative `Patient/123`, absolute `http://x/fhir/Patient/123`, or with `/_history/2`.
    parts = text.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == "Patient" and parts[i + 1]:
            return parts[i + 1]
    return None
