"""Per-patient reads (issue 13): every search names one patient, the US Core-portable form.

Epic and Oracle Health document Condition and Observation search as per patient (`patient`
required and single-valued) with `code` applied after the search. So in this mode a Patient is
read (`GET Patient/{id}`, which every server offers) rather than searched; other types are
searched with one `patient` and, where the profile says the server filters by it, `code`;
Observations whose `code` is no filter are searched by category instead (`searches.select`),
and what that cannot reach is said in words (`searches.unreached`).

Also here: when a multi-patient search's refusal means "one patient at a time, please"
(`refuses_many`), and the error for a server-wide search on a server that needs a patient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapter.errors import ConfigError, HttpStatusError, InvalidResponseError
from adapter.fhir.resource_types import shown_type
from adapter.sources.searches import patient_param, search_for, select

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient, JsonObject, Params
    from adapter.servers import ServerProfile, TypeRules
    from adapter.sources.base import Query
    from adapter.sources.searches import Search, Selection

#: logged once, at warning, when a server refuses a multi-patient search (no patient data)
SWITCH_MESSAGE = (
    "the server refused a search for several patients; reading one patient at a time from now on"
)
#: a read answered with these means the resource is not there (410: deleted), not a failure
ABSENT_STATUSES = frozenset({404, 410})
# `error/not-supported (...)` in HttpStatusError.summary (adapter.fhir.outcome.coded_issues):
# the issue code is shown only when it is in the R4 issue-type value set.
_NOT_SUPPORTED = re.compile(r"(?:^|; )[a-z?]+/not-supported(?=$| |;)")


class RefusedBatch(Exception):
    """A search naming several patients refused as if the server took one at a time: caught
    by RestSource, which then reads one patient at a time; never leaves the source."""

    def __init__(self, error: HttpStatusError) -> None:
        super().__init__(str(error))
        self.error = error


def refuses_many(error: HttpStatusError) -> bool:
    """Whether `error`, the answer to a search naming several patients, may mean the server
    takes one patient per search: a 400, or an OperationOutcome issue `not-supported`.

    A temporary error (429, 5xx) says nothing about the search's form and is not one.
    """
    if error.temporary:
        return False
    return error.status == 400 or _NOT_SUPPORTED.search(error.summary) is not None


def needs_patient(profile: ServerProfile, resource_type: str) -> ConfigError:
    """The error for a search of every patient where `profile` requires one (exit 2)."""
    return ConfigError(
        f"{profile.name} servers need a patient on every {resource_type} search: "
        "use --cohort group:ID or --cohort file:PATH"
    )


@dataclass(frozen=True, slots=True)
class PatientPlan:
    """How one query is read for each patient: a Patient read, or the searches of `selection`.

    None as `selection` means nothing can match (an empty code set): no request at all.
    """

    query: Query
    rules: TypeRules
    selection: Selection | None

    @classmethod
    def of(cls, query: Query, profile: ServerProfile) -> PatientPlan:
        rules = profile.rules(query.resource_type)
        patient_param(query.resource_type)  # a type the source cannot search is a ValueError
        return cls(query, rules, select(query, rules, per_patient=True))

    @property
    def reads(self) -> bool:
        """Patients are read by id (`GET Patient/{id}`), not searched."""
        return self.query.resource_type == "Patient"

    def searches(self, patient: str) -> list[Search]:
        """The searches of one patient (a checked FHIR id), in a reproducible order."""
        if self.selection is None or self.reads:
            return []
        kind = self.query.resource_type
        param = patient_param(kind)
        groups = self.selection.groups(self.rules)
        excluded = self.selection.excluded
        return [
            search_for(self.rules, kind, param, (patient,), *group, excluded) for group in groups
        ]


async def read_or_none(
    client: FhirClient, resource_type: str, rid: str, params: Params | None = None
) -> JsonObject | None:
    """`GET [type]/[id]` (`rid` a checked FHIR id); None when the server has none (404, 410)."""
    try:
        body = await client.get_json(f"{resource_type}/{rid}", params)
    except HttpStatusError as exc:
        if exc.status in ABSENT_STATUSES:
            return None
        raise
    if body.get("resourceType") != resource_type:
        raise InvalidResponseError(
            f"a {resource_type} read returned {shown_type(body.get('resourceType'))}",
            url=client.url(resource_type),
        )
    return body
