"""The survey on servers that answer one patient at a time (issue 13).

Epic and Oracle Health refuse a search across all patients, so the type-wide sample of
`adapter.sources.sample` cannot be taken there. The survey then reads a sample of patients whole
instead: the members of a Group or the lines of a file (`--cohort`), spread evenly over the sorted
ids, each read by the REST source in per-patient mode (Observations by the categories the trials'
analytes name, where the server's `code` is no filter). Which codes and units the site sends shows
as well from a few hundred patients as from a type-wide sample.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING

from adapter.cohorts import CohortSpec, read_members
from adapter.errors import UsageError
from adapter.sources.base import Query
from adapter.sources.rest import RestSource
from adapter.survey.outputs import Sample

if TYPE_CHECKING:
    from adapter.fhir.capability import ServerCapabilities
    from adapter.fhir.client import FhirClient
    from adapter.servers import ServerProfile
    from adapter.survey.tally import Tally

Say = Callable[[str], None]
#: patients read whole when the survey must go patient by patient
DEFAULT_PATIENTS = 200


def needs_per_patient(profile: ServerProfile, read: str | None) -> bool:
    """Whether the server must be surveyed patient by patient: its profile or `--read` says so."""
    if read is not None:
        return read == "per-patient"
    return profile.read == "per-patient" or profile.needs_one_patient("Observation")


def require_cohort(profile: ServerProfile, cohort: CohortSpec | None) -> CohortSpec:
    """The Group or file to sample, or a UsageError (exit 2) saying how to name one."""
    if cohort is None or cohort.kind == "search":
        raise UsageError(
            f"the {profile.name} server answers one patient at a time: give the survey the "
            "patients to read with --cohort group:ID or --cohort file:PATH"
        )
    return cohort


def spread(ids: list[str], count: int) -> list[str]:
    """At most `count` of the sorted `ids`, evenly spaced: reproducible, and not only the
    patients whose ids happen to sort first (often the oldest records)."""
    ordered = sorted(ids)
    if len(ordered) <= count:
        return ordered
    step = len(ordered) / count
    return [ordered[int(i * step)] for i in range(count)]


async def read_per_patient(
    client: FhirClient,
    tally: Tally,
    *,
    kinds: tuple[str, ...],
    profile: ServerProfile,
    capabilities: ServerCapabilities,
    cohort: CohortSpec | None,
    categories: frozenset[str],
    as_of: date,
    limit: int,
    patients: int,
    page_size: int,
    say: Say,
) -> dict[str, Sample]:
    """Tally up to `limit` resources per type of at most `patients` cohort members."""
    cohort = require_cohort(profile, cohort)
    source = RestSource(
        client,
        page_size=page_size,
        capabilities=capabilities,
        profile=profile,
        read="per-patient",
    )
    members = await read_members(cohort, source, as_of)
    chosen = frozenset(spread(members.ids, patients))
    say(f"surveying {len(chosen):,} of {len(members.ids):,} patients, one at a time")
    read: dict[str, Sample] = {}
    for kind in kinds:
        query = Query(
            kind,
            patients=chosen,
            categories=categories if kind == "Observation" else None,
        )
        count, complete = 0, True
        # aclosing: a break cancels the patients' searches still running at once.
        async with contextlib.aclosing(source.fetch(query)) as resources:
            async for resource in resources:
                if count >= limit:
                    complete = False
                    break
                count += 1
                tally.add(resource)
        read[kind] = Sample(count, limit, complete)
        say(f"{kind}: {count:,} read" + ("" if complete else " (limit)"))
    for what in source.reads.unreached:
        say(f"not reached one patient at a time: {what}")
    return read
