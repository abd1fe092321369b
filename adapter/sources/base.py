"""What every source offers the sweep: a search by resource type, codes and patients."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
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
    #: Observation category tokens (`laboratory`, `vital-signs`) the analyte mappings name for
    #: the codes: a per-patient read searches by them where the server's `code` is no filter
    #: (issue 13); never sent where `code` works, as Observations without a category count too
    categories: frozenset[str] | None = None
    #: the needed analytes that name no category: a search by category cannot reach them
    uncategorised: frozenset[str] = frozenset()
    #: code strings (any system) of which a resource must hold one, as the `code` of a coding
    #: anywhere in it, for the caller to use it (issue 15): a folder source may skip, unparsed,
    #: the lines of wanted patients that hold none, counting them in `code_skipped`. None: no
    #: such test (every resource of the wanted patients may matter).
    line_codes: frozenset[str] | None = None
    #: exact codes whose resources an earlier query of the run already fetched (the cohort's
    #: Conditions, issue 15): a source may leave those out (a server by `code:not`), and the
    #: caller drops any it returns again, so a source that ignores this is still right
    exclude_codes: frozenset[Coding] | None = None
    #: a regular expression (for bytes, as text) that the raw line of every resource the caller
    #: can use matches (`adapter.codes.line_pattern`): a folder source may pass over, counting
    #: them in `code_skipped`, lines that parse whole as the type but do not match (issue 15)
    line_pattern: str | None = None


@dataclass(frozen=True, slots=True)
class UnreadableItem:
    """A line (or whole JSON file) a source skipped because it could not be parsed (issue 11).

    Never its content: `file` as messages show it, `line` 1-based, `reason` a fixed text. `patient`
    is the Patient id the raw bytes name beyond doubt (`adapter.sources.unreadable`), or None when
    nobody's data can be ruled out.
    """

    file: str
    line: int
    reason: str
    patient: str | None


@dataclass(slots=True)
class ReadNotes:
    """How a source read, for the run's log and results.json (issue 13): never patient data.

    `mode`: `files`, `batch` (searches name many patients) or `per-patient` (one each).
    `switched`: the server refused a multi-patient search, and the rest of the run went
    per-patient. `unreached`: what the mode cannot reach, in words (Observations without one of
    the categories searched, analytes no category names).
    """

    mode: str = "files"
    profile: str | None = None
    switched: bool = False
    unreached: list[str] = field(default_factory=list)


class Source(Protocol):
    """A place resources come from. Implementations: FolderSource, RestSource.

    `foreign` counts, per type, the resources left out because their subject is another server's
    patient (`is_foreign`): they never count as a local patient's. `unreadable` lists, once each,
    the items skipped as unparseable (a server's answers are parsed whole, so RestSource's stays
    empty: a bad page fails its search instead).
    """

    foreign: Counter[str]
    unreadable: list[UnreadableItem]
    reads: ReadNotes

    def fetch(self, query: Query) -> AsyncIterator[Resource]:
        """Resources of `query.resource_type` for `query.patients`, references made relative.

        A type the source lacks, or a search that fails, raises: it is never an empty answer.
        """
        ...

    async def group(self, group_id: str) -> Resource | None:
        """The Group `group_id` whole, references made relative; None when there is none."""
        ...

    def patients_by_identifier(self, tokens: Sequence[tuple[str, str]]) -> AsyncIterator[Resource]:
        """The Patients carrying any of the identifiers `(system, value)`, each once.

        An empty system matches an identifier without one (R4 token search `|value`).
        """
        ...

    async def aclose(self) -> None: ...


def patient_id_of(resource: Resource) -> str | None:
    """The local Patient id a resource belongs to: its own id for a Patient, else subject/patient.

    Only a relative reference (`Patient/123`, `Patient/123/_history/2`) is a local patient's:
    sources make references under their own base relative, so an absolute one left is another
    server's (`http://other.example/fhir/Patient/123` is not local `123`).
    """
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    text = _subject_reference(resource)
    if text is None or _ABSOLUTE.match(text):
        return None
    return _patient_id_from_reference(text)


def is_foreign(resource: Resource) -> bool:
    """Whether the resource's subject is not a local patient's: an absolute reference that the
    source did not make relative, such as another server's `.../Patient/<id>` or a `urn:uuid:`
    no Bundle entry resolves (issue 10: counted and reported, never dropped unseen)."""
    if resource.get("resourceType") == "Patient":
        return False
    text = _subject_reference(resource)
    return text is not None and _ABSOLUTE.match(text) is not None


def count_foreign(counts: Counter[str], seen: set[tuple[str, str]], resource: Resource) -> None:
    """Count a resource left out as another server's patient's once per type and id, however
    many fetches meet it (the cohort's Conditions are fetched again per patient)."""
    kind = str(resource.get("resourceType"))
    rid = resource.get("id")
    if isinstance(rid, str):
        if (kind, rid) in seen:
            return
        seen.add((kind, rid))
    counts[kind] += 1


# RFC 3986 scheme: `http:`, `https:`, `urn:`.
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def _subject_reference(resource: Resource) -> str | None:
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict):
            text = ref.get("reference")
            if isinstance(text, str):
                return text
    return None


def _patient_id_from_reference(text: str) -> str | None:
    # `Patient/123` or `Patient/123/_history/2`; in an absolute URL, its `.../Patient/123` part.
    parts = text.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == "Patient" and parts[i + 1]:
            return parts[i + 1]
    return None


def identifier_pairs(patient: Resource) -> Iterator[tuple[str, str]]:
    """`(system, value)` of each of the resource's identifiers; `""` for an absent system."""
    identifiers = patient.get("identifier")
    for identifier in identifiers if isinstance(identifiers, list) else ():
        if not isinstance(identifier, dict):
            continue
        system = identifier.get("system") or ""
        value = identifier.get("value")
        if isinstance(system, str) and isinstance(value, str):
            yield system, value
