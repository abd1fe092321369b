"""Reading what a FHIR server answered to the server sink: JSON bodies, ids and versions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from adapter.errors import InvalidResponseError

if TYPE_CHECKING:
    import httpx

    from adapter.sinks.resources import JsonDict


def json_object(response: httpx.Response, url: str) -> JsonDict:
    """The body as a JSON object; InvalidResponseError otherwise."""
    try:
        body: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise InvalidResponseError("the answer is not JSON", url=url) from None
    if not isinstance(body, dict):
        raise InvalidResponseError("the answer is not a JSON object", url=url)
    return body


def read_resource(response: httpx.Response, kind: str, resource_id: str, url: str) -> JsonDict:
    """The response body, checked to be the resource that was read."""
    body = json_object(response, url)
    if body.get("resourceType") != kind:
        raise InvalidResponseError(f"the {kind} read is not a {kind}", url=url)
    if body.get("id") not in (None, resource_id):
        raise InvalidResponseError(f"the {kind} read has another id", url=url)
    return body


def returned_resource(response: httpx.Response, kind: str) -> JsonDict | None:
    """The `kind` a write answered with; None without one (`Prefer: return=minimal`)."""
    if not response.content:
        return None
    try:
        body: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) and body.get("resourceType") == kind else None


def written(
    response: httpx.Response, kind: str, resource_id: str | None = None
) -> tuple[str, str | None]:
    """The id and version of what a create or update wrote.

    From the body when the server returned it, else from the Location
    (`.../ResearchSubject/x/_history/1`); the version from meta.versionId, the ETag or Location.
    """
    body = returned_resource(response, kind) or {}
    located_id, located_version = location(response.headers.get("Location", ""), kind)
    written_id = body.get("id") if isinstance(body.get("id"), str) else None
    written_id = written_id or located_id or resource_id
    if not written_id:
        raise InvalidResponseError(
            f"the server's answer to the {kind} write names no id", url=str(response.request.url)
        )
    version = meta_version(body) or etag_version(response) or located_version
    return written_id, version


def location(location: str, kind: str) -> tuple[str | None, str | None]:
    """Id and version from a Location `[base]/kind/id/_history/vid` (absolute or relative)."""
    parts = [p for p in location.split("?", 1)[0].split("/") if p]
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == kind:
            rest = parts[index + 1 :]
            version = rest[2] if len(rest) >= 3 and rest[1] == "_history" else None
            return rest[0], version
    return None, None


def meta_version(resource: JsonDict) -> str | None:
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return version if isinstance(version, str) and version else None


def etag_version(response: httpx.Response) -> str | None:
    """The ETag's version: `W/"3"` -> `3`."""
    etag = response.headers.get("ETag", "").strip().removeprefix("W/").strip('"')
    return etag or None


def version_of(resource: JsonDict, response: httpx.Response) -> str | None:
    """meta.versionId, else the ETag, else None."""
    return meta_version(resource) or etag_version(response)


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def targets(resource: JsonDict) -> set[str]:
    """The literal references of a Provenance's `target`."""
    return {
        t["reference"]
        for t in as_list(resource.get("target"))
        if isinstance(t, dict) and isinstance(t.get("reference"), str)
    }


def search_matches(bundle: JsonDict, url: str) -> list[JsonDict]:
    """The resources of a searchset Bundle's match entries (not includes or outcomes)."""
    if bundle.get("resourceType") != "Bundle":
        raise InvalidResponseError("the search did not answer a Bundle", url=url)
    found = []
    for entry in as_list(bundle.get("entry")):
        search = entry.get("search") if isinstance(entry, dict) else None
        mode = search.get("mode") if isinstance(search, dict) else None
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if mode in (None, "match") and isinstance(resource, dict):
            found.append(resource)  # not includes, nor the OperationOutcome of warnings
    return found
