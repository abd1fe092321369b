"""What the REST source does to each page of a search: one copy of each resource, whether a
next page follows, and references below the server's base made relative (`Patient/1`), as the
folder source makes a Bundle's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapter.fhir.client import JsonObject
    from adapter.fhir.paging import ResourceKey
    from adapter.fhir.urls import ServerBase
    from adapter.sources.base import Resource


def first_time(resource: Resource, seen: set[ResourceKey]) -> bool:
    """Whether the resource's (type, id) is new to `seen` (then added); True without an id."""
    kind, rid = resource.get("resourceType"), resource.get("id")
    if not (isinstance(kind, str) and isinstance(rid, str) and rid):
        return True
    if (kind, rid) in seen:
        return False
    seen.add((kind, rid))
    return True


def has_next(page: JsonObject) -> bool:
    links = page.get("link")
    return isinstance(links, list) and any(
        isinstance(link, dict) and link.get("relation") == "next" for link in links
    )


def make_references_relative(node: Any, base: ServerBase) -> None:
    """Rewrite absolute references below `base` (`http://x/fhir/Patient/1`) as `Patient/1`."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and "://" in ref:
            relative = base.relative(ref)
            if relative:
                node["reference"] = relative
        for value in node.values():
            if isinstance(value, dict | list):
                make_references_relative(value, base)
    elif isinstance(node, list):
        for item in node:
            make_references_relative(item, base)
