"""What a FHIR server says it can do: its CapabilityStatement, read once per run, and a probe.

`read_capabilities` reads `GET [base]/metadata` into a frozen `ServerCapabilities`. The
CapabilityStatement cannot say whether `_elements` is honoured, so one tiny search probes it: a
server that subsets marks the resources with the SUBSETTED tag (R4 3.1.1.5.9, "_elements").
A field of the wrong shape counts as absent: servers fill CapabilityStatements loosely.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from adapter.errors import HttpStatusError, InvalidResponseError
from adapter.fhir.resource_types import shown_type

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient, JsonObject

SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")
_JSON_FORMATS = frozenset({"json", "application/fhir+json", "application/json+fhir"})

# What the adapter asks of each resource type: search parameters of the REST source, and the
# types the server sink writes (each on the path `write_path` chooses).
SEARCHES: Mapping[str, tuple[str, ...]] = {
    "Patient": ("_id",),
    "Condition": ("patient", "code"),
    "Observation": ("patient", "code"),
    "Procedure": ("patient", "code"),
}
WRITES = ("ResearchStudy", "Device", "ResearchSubject", "Provenance")


class WritePath(enum.StrEnum):
    """How the server sink creates a resource of one type (trial-spec, 'What gets written')."""

    FIXED_ID = "fixed id"  # read, then PUT at the deterministic id
    CONDITIONAL = "conditional"  # search, then POST with If-None-Exist
    POST = "post"  # Provenance only: one POST, never retried; later runs search for it


class ElementsSupport(enum.StrEnum):
    """What the `_elements` probe found."""

    HONOURED = "honoured"  # the probe's resources carried the SUBSETTED tag
    IGNORED = "ignored"  # full resources came back, or the parameter was refused
    UNKNOWN = "unknown"  # not probed, or no resource to look at


@dataclass(frozen=True, slots=True)
class ResourceCapabilities:
    """One `rest.resource` entry: interactions, search parameter names and write options."""

    type: str
    interactions: frozenset[str] = frozenset()
    search_params: frozenset[str] = frozenset()
    operations: frozenset[str] = frozenset()
    conditional_create: bool = False
    conditional_update: bool = False
    update_create: bool = False
    versioning: str | None = None  # no-version | versioned | versioned-update

    def supports(self, interaction: str) -> bool:
        """Whether `interaction` (read, vread, update, create, search-type...) is listed."""
        return interaction in self.interactions


@dataclass(frozen=True, slots=True)
class ServerCapabilities:
    """The server's CapabilityStatement (its first `rest` of mode server) and the probes."""

    fhir_version: str | None = None
    software: str | None = None
    formats: tuple[str, ...] = ()
    resources: tuple[ResourceCapabilities, ...] = ()
    system_interactions: frozenset[str] = frozenset()
    operations: frozenset[str] = frozenset()  # system level, names without `$`
    elements: ElementsSupport = ElementsSupport.UNKNOWN

    def resource(self, resource_type: str) -> ResourceCapabilities | None:
        """The entry for `resource_type`; None when the server does not list it."""
        for entry in self.resources:
            if entry.type == resource_type:
                return entry
        return None

    def searches(self, resource_type: str, param: str) -> bool:
        """Whether `param` is a listed search parameter of `resource_type`."""
        entry = self.resource(resource_type)
        return entry is not None and param in entry.search_params

    def write_path(self, resource_type: str) -> WritePath:
        """The path the server sink takes to create a `resource_type`.

        A type searchable by `identifier` is created conditionally. Provenance has no identifier:
        PUT at its deterministic id, unless the server declares that PUT cannot create
        (`updateCreate` false); then If-None-Exist on `target` where that is searchable, else a
        plain POST (trial-spec v2). An unlisted type gets the fixed id, as without capabilities.
        """
        entry = self.resource(resource_type)
        if resource_type != "Provenance":
            return (
                WritePath.CONDITIONAL
                if self.searches(resource_type, "identifier")
                else (WritePath.FIXED_ID)
            )
        if entry is None or entry.update_create:
            return WritePath.FIXED_ID
        return WritePath.CONDITIONAL if "target" in entry.search_params else WritePath.POST

    @property
    def supports_json(self) -> bool:
        return any(f.split(";")[0].strip() in _JSON_FORMATS for f in self.formats)

    @property
    def supports_elements(self) -> bool:
        """Whether a search may ask for `_elements`: only when the probe saw it honoured."""
        return self.elements is ElementsSupport.HONOURED

    @property
    def transaction(self) -> bool:
        return "transaction" in self.system_interactions

    @property
    def batch(self) -> bool:
        return "batch" in self.system_interactions

    @property
    def export_levels(self) -> tuple[str, ...]:
        """Where `$export` is offered: `system`, `Patient`, `Group`."""
        levels = ["system"] if "export" in self.operations else []
        levels += [r.type for r in self.resources if "export" in r.operations]
        return tuple(levels)

    def describe(self) -> list[str]:
        """Short lines for the log: what the server offers and what the adapter does about it."""
        lines = [
            f"server: {self.software or 'software not named'}, "
            f"FHIR {self.fhir_version or 'version not stated'}"
        ]
        if self.formats and not self.supports_json:
            lines.append("formats: FHIR JSON is not listed; JSON is asked for anyway")
        lines.append(_ELEMENTS_LINES[self.elements])
        for kind, params in SEARCHES.items():
            lines.extend(self._search_lines(kind, params))
        for kind in WRITES:
            lines.extend(self._write_lines(kind))
        system = [name for name in ("transaction", "batch") if name in self.system_interactions]
        lines.append(f"system interactions: {', '.join(system) or 'no transaction or batch'}")
        export = self.export_levels
        lines.append(f"$export: {', '.join(export)}" if export else "$export: not offered")
        return lines

    def _search_lines(self, kind: str, params: Sequence[str]) -> list[str]:
        entry = self.resource(kind)
        if entry is None:
            return [f"{kind}: not listed; searches are sent anyway"]
        if not entry.supports("search-type"):
            return [f"{kind}: no search-type interaction listed; searches are sent anyway"]
        # Common parameters (_id...) are often left out of the list even when supported.
        return [
            f"{kind}: no search parameter '{p}' listed; searches use it anyway"
            for p in params
            if not p.startswith("_") and p not in entry.search_params
        ]

    def _write_lines(self, kind: str) -> list[str]:
        """What the sink's path for `kind` meets: judged on the writes that path sends only."""
        entry = self.resource(kind)
        if entry is None:
            return [f"{kind}: not listed; using deterministic ids (GET, then PUT); may fail"]
        path = self.write_path(kind)
        lines = []
        if kind == "Provenance":
            if path is WritePath.CONDITIONAL:
                lines.append(f"{kind}: updateCreate is false; created with If-None-Exist on target")
            elif path is WritePath.POST:
                lines.append(
                    f"{kind}: updateCreate is false and no search parameter 'target'; created by "
                    "one POST each, found on later runs by a search of the adapter's tag"
                )
        elif path is WritePath.FIXED_ID:
            lines.append(f"{kind}: no search parameter 'identifier'; using deterministic ids")
        needed = ["read", "update"] if path is WritePath.FIXED_ID else ["search-type", "create"]
        if kind == "ResearchSubject" and path is not WritePath.FIXED_ID:
            needed.append("update")  # the If-Match update of potential-candidate -> candidate
        missing = [i for i in needed if not entry.supports(i)]
        if missing:
            lines.append(f"{kind}: no {' or '.join(missing)} interaction listed; writes may fail")
        # Only a PUT at a new id needs updateCreate (issue 10): conditional creates do not.
        if path is WritePath.FIXED_ID and not entry.update_create:
            lines.append(f"{kind}: updateCreate is false; creating at a deterministic id may fail")
        if kind == "ResearchSubject" and entry.versioning in (None, "no-version"):
            lines.append(f"{kind}: not versioned; If-Match updates may be refused")
        return lines


_ELEMENTS_LINES = {
    ElementsSupport.HONOURED: "_elements: honoured (SUBSETTED tag seen); searches ask for "
    "only the fields the criteria read",
    ElementsSupport.IGNORED: "_elements: not honoured; whole resources are read",
    ElementsSupport.UNKNOWN: "_elements: unknown (not probed or nothing to probe); "
    "whole resources are read",
}


async def read_capabilities(
    client: FhirClient, *, probe_elements: bool = True
) -> ServerCapabilities:
    """`GET [base]/metadata`, parsed, and the `_elements` probe (unless `probe_elements` is off)."""
    statement = await client.get_json("metadata")
    capabilities = parse_capability_statement(statement, url=client.url("metadata"))
    if not probe_elements:
        return capabilities
    return replace(capabilities, elements=await probe_elements_support(client))


async def probe_elements_support(client: FhirClient) -> ElementsSupport:
    """One tiny search, `Patient?_count=1&_elements=id`: SUBSETTED on its resource means honoured.

    A refusal of the parameter (a 4xx other than auth) means ignored; temporary failures and
    auth errors raise, since every later search would meet them too.
    """
    try:
        page = await client.get_json("Patient", [("_count", "1"), ("_elements", "id")])
    except HttpStatusError as exc:
        if exc.temporary or exc.status in (401, 403):
            raise
        return ElementsSupport.IGNORED
    resources = [
        e["resource"]
        for e in _list(page.get("entry"))
        if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if not patients:
        return ElementsSupport.UNKNOWN
    return ElementsSupport.HONOURED if _is_subsetted(patients[0]) else ElementsSupport.IGNORED


def _is_subsetted(resource: JsonObject) -> bool:
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return any(
        isinstance(t, dict) and (t.get("system"), t.get("code")) == SUBSETTED for t in _list(tags)
    )


def parse_capability_statement(body: JsonObject, *, url: str = "") -> ServerCapabilities:
    """An R4 CapabilityStatement as `ServerCapabilities` (the probe left UNKNOWN)."""
    if body.get("resourceType") != "CapabilityStatement":
        what = shown_type(body.get("resourceType"))
        raise InvalidResponseError(f"expected a CapabilityStatement, got {what}", url=url)
    rest = _server_rest(body.get("rest"))
    software = body.get("software")
    name = _text(software.get("name")) if isinstance(software, dict) else None
    version = _text(software.get("version")) if isinstance(software, dict) else None
    return ServerCapabilities(
        fhir_version=_text(body.get("fhirVersion")),
        software=" ".join(p for p in (name, version) if p) or None,
        formats=tuple(f for f in _list(body.get("format")) if isinstance(f, str)),
        resources=tuple(
            _resource(r)
            for r in _list(rest.get("resource"))
            if isinstance(r, dict) and _text(r.get("type"))
        ),
        system_interactions=_codes(rest.get("interaction")),
        operations=_names(rest.get("operation")),
    )


def _server_rest(value: object) -> dict[str, Any]:
    rests = [r for r in _list(value) if isinstance(r, dict)]
    for rest in rests:
        if rest.get("mode") == "server":
            return rest
    return rests[0] if rests else {}


def _resource(entry: dict[str, Any]) -> ResourceCapabilities:
    versioning = entry.get("versioning")
    return ResourceCapabilities(
        type=str(entry["type"]),
        interactions=_codes(entry.get("interaction")),
        search_params=_names(entry.get("searchParam")),
        operations=_names(entry.get("operation")),
        conditional_create=entry.get("conditionalCreate") is True,
        conditional_update=entry.get("conditionalUpdate") is True,
        update_create=entry.get("updateCreate") is True,
        versioning=versioning if isinstance(versioning, str) else None,
    )


def _codes(value: object) -> frozenset[str]:
    return frozenset(
        code for i in _list(value) if isinstance(i, dict) and (code := _text(i.get("code")))
    )


def _names(value: object) -> frozenset[str]:
    # Operation names are written with or without the `$` in the wild.
    return frozenset(
        name.removeprefix("$")
        for i in _list(value)
        if isinstance(i, dict) and (name := _text(i.get("name")))
    )


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
