"""A restrictive FHIR server for the integration tests (issue 13, "Tests against real behaviour").

Epic and Oracle Health document Condition, Observation and Procedure search as per patient:
`patient` is required and single-valued, `code` is applied after the search as a post-filter, and
`_count` is capped. sekmet does none of that, so a sweep that only works on an open server would
pass every other test. `RestrictiveProxy(upstream, rules)` plays such a server in front of the
local one:

```python
with RestrictiveProxy("http://127.0.0.1:8765/fhir", EPIC) as proxy:
    ...  # the adapter talks to proxy.base_url
    proxy.searches("Observation")  # what it asked: method, path, params, status, refusal
```

- A search of a `Rules.one_patient` type without `patient` (or `subject`) is answered 400 with an
  OperationOutcome `required`; one naming several patients (a comma in the value, or the
  parameter repeated) 400 with `not-supported`, or `invalid` (`Rules.multi_patient`).
  `Patient?_id=a,b` is refused the same way; `Patient/{id}`, `Patient?identifier=` and
  `Patient?_id=a` pass.
- `code` is a post-filter: it is removed from the forwarded search, the answer's entries are
  filtered here (`system|code`, `|code` or a bare `code` matching any system; a resource matches
  when any coding of its `code` does), `total` is dropped (a post-filtering server cannot know
  it), and `code` is put back on the answer's links so that later pages are filtered too.
- `_count` above `Rules.max_count` is lowered before forwarding, so paging really happens.
- Everything else (metadata, reads, Group, the sink's writes) is forwarded unchanged.

`Rules.profile(name)` states the same rules as a server profile for a site folder's `servers/`,
and `renamed(resources, prefix)` copies test data under ids of its own for the shared server.

It is FaultProxy (tests/integration/proxy.py) with its `_forward` step wrapped: listening, URL
rewriting between the two bases and fault injection are FaultProxy's (so this leans on its
private `_forward`, `_relative` and `_lock`), and faults can still be injected on top of the
rules.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from proxy import FaultProxy, _outcome_body, _Request

__all__ = [
    "CLINICAL",
    "EPIC",
    "Refusal",
    "RestrictiveProxy",
    "Rules",
    "Seen",
    "code_matches",
    "renamed",
]

Refusal = Literal["not-supported", "invalid"]
Params = tuple[tuple[str, str], ...]

CLINICAL = frozenset({"Condition", "Observation", "Procedure"})
_PATIENT_PARAMS = frozenset({"patient", "subject"})
_FORM = "application/x-www-form-urlencoded"
_JSON = ("Content-Type", "application/fhir+json")
_LINKS = frozenset({"self", "first", "previous", "prev", "next", "last"})


@dataclass(frozen=True)
class Rules:
    """What the proxy enforces; the defaults are Epic's (EPIC)."""

    #: types whose searches must name exactly one patient (`patient` or `subject`)
    one_patient: frozenset[str] = CLINICAL
    #: types whose `code` is a post-filter, applied here to the answer
    code_post_filter: frozenset[str] = CLINICAL
    #: the largest `_count` forwarded; None: no cap
    max_count: int | None = 50
    #: the OperationOutcome issue code of the 400 answered to a multi-patient search
    multi_patient: Refusal = "not-supported"
    #: whether `Patient?_id=a,b` (several ids) is refused as a multi-patient search
    single_patient_id: bool = True

    def profile(self, name: str) -> dict[str, Any]:
        """These rules as a server profile (a site folder's `servers/<name>.yaml`), so the adapter
        can be told what the proxy enforces; each stated fact cites the harness. The `_count` cap
        is left out, as servers that lower `_count` do so without saying."""
        searches: dict[str, dict[str, list[str]]] = {}
        for kind in sorted(self.one_patient | self.code_post_filter):
            rules = searches.setdefault(kind, {})
            if kind in self.one_patient:
                rules["required"], rules["single_valued"] = ["patient"], ["patient"]
            if kind in self.code_post_filter:
                rules["post_filters"] = ["code"]
        sources = {
            f"searches.{kind}.{rule}": f"{_CITED} enforces it"
            for kind, rules in searches.items()
            for rule in rules
        }
        sources["read"] = f"{_CITED} needs a patient"
        return {
            "name": name,
            "title": "The restrictive test harness",
            "read": "per-patient",
            "searches": searches,
            "sources": sources,
        }


EPIC = Rules()
#: what a profile made by `Rules.profile` cites: this harness (a profile's sources are URLs)
_CITED = "http://localhost/tests/integration/restrictive.py the restrictive harness"


@dataclass(frozen=True)
class Seen:
    """One request as the proxy received it, and what it did with it.

    `params`: the query and form parameters as sent by the client; `sent`: those forwarded (None
    when refused); `status`: the answer's status; `refused`: the issue code of a refusal.
    """

    method: str
    path: str
    params: Params
    status: int
    refused: str | None = None
    sent: Params | None = None

    @property
    def resource_type(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def is_search(self) -> bool:
        return _search_type(self.method, self.path) is not None

    def values(self, *names: str) -> list[str]:
        """The values of the parameters called `names` (modifiers and chains ignored)."""
        return [v for k, v in self.params if _base_name(k) in names]

    @property
    def patients(self) -> list[str]:
        """Every patient the search names, one per comma-separated value."""
        return [p for v in self.values(*_PATIENT_PARAMS) for p in _split_unescaped(v, ",")]


class RestrictiveProxy(FaultProxy):
    """FaultProxy enforcing `rules` (see the module docstring); control it from the test."""

    def __init__(self, upstream: str, rules: Rules = EPIC) -> None:
        super().__init__(upstream)
        self.rules = rules
        self._seen: list[Seen] = []

    def __enter__(self) -> RestrictiveProxy:
        self.start()
        return self

    @property
    def seen(self) -> list[Seen]:
        """Every request so far, in the order answered."""
        with self._lock:
            return list(self._seen)

    def searches(self, *types: str) -> list[Seen]:
        """The searches of `types` (every type when none is named)."""
        return [s for s in self.seen if s.is_search and (not types or s.resource_type in types)]

    @property
    def refused(self) -> list[Seen]:
        """The requests the rules refused (answered 400 without forwarding)."""
        return [s for s in self.seen if s.refused is not None]

    def forget(self) -> None:
        """Start the record afresh."""
        with self._lock:
            self._seen.clear()

    # the event loop's side: FaultProxy calls _forward for every request it does not break

    async def _forward(self, request: _Request) -> tuple[int, list[tuple[str, str]], bytes]:
        path = self._relative(request.target)
        query, form = _query(request.target), _form(request, path)
        params = (*query, *form)
        kind = _search_type(request.method, path)
        refusal = _refusal(self.rules, kind, params) if kind is not None else None
        if refusal is not None:
            code, text = refusal
            self._record(Seen(request.method, path, params, 400, refused=code))
            return 400, [_JSON], _outcome_body(text, code)
        codes: list[str] = []
        if kind is not None:
            if kind in self.rules.code_post_filter:
                codes = [v for k, v in params if k == "code"]
            query, form = self._sent(query, codes), self._sent(form, codes)
            request = _rebuilt(request, query, form)
        status, headers, body = await super()._forward(request)
        if codes and status == 200:
            body = _post_filtered(body, codes)
        self._record(Seen(request.method, path, params, status, sent=(*query, *form)))
        return status, headers, body

    def _sent(self, params: Params, codes: list[str]) -> Params:
        """`params` without the post-filtered `code`, `_count` lowered to the cap."""
        cap = self.rules.max_count
        out = []
        for name, value in params:
            if codes and name == "code":
                continue
            if name == "_count" and cap is not None and value.isdigit() and int(value) > cap:
                value = str(cap)
            out.append((name, value))
        return tuple(out)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)


# -- the rules, pure -------------------------------------------------------------------------------


def _search_type(method: str, path: str) -> str | None:
    """The resource type a request searches (`GET [type]`, `GET|POST [type]/_search`), else None."""
    kind, _, rest = path.partition("/")
    if not kind[:1].isupper():
        return None  # metadata, the system base, operations
    if (rest == "" and method == "GET") or (rest == "_search" and method in ("GET", "POST")):
        return kind
    return None


def _refusal(rules: Rules, kind: str, params: Params) -> tuple[str, str] | None:
    """(issue code, diagnostics) of the 400 the rules answer to this search, or None."""
    if kind in rules.one_patient:
        named = [v for k, v in params if _base_name(k) in _PATIENT_PARAMS]
        if not named:
            return "required", f"a {kind} search requires the patient parameter"
        if _several(named):
            return rules.multi_patient, f"a {kind} search takes exactly one patient"
    if kind == "Patient" and rules.single_patient_id:
        ids = [v for k, v in params if _base_name(k) == "_id"]
        if _several(ids):
            return rules.multi_patient, "a Patient search takes one _id"
    return None


def _several(values: list[str]) -> bool:
    return len(values) > 1 or any(len(_split_unescaped(v, ",")) > 1 for v in values)


def _base_name(name: str) -> str:
    """`subject:Patient` -> `subject`; `patient.identifier` -> `patient`."""
    return name.split(":", 1)[0].split(".", 1)[0]


def _split_unescaped(value: str, separator: str) -> list[str]:
    """FHIR search escaping (`\\,` `\\|` `\\$` `\\\\`): split on unescaped separators, unescape."""
    parts = re.split(rf"(?<!\\){re.escape(separator)}", value)
    return [re.sub(r"\\([,|$\\])", r"\1", part) for part in parts]


def _token_matches(token: str, codings: list[dict[str, Any]]) -> bool:
    """Whether a coding matches `system|code`, `|code` (no system) or `code` (any system)."""
    pieces = _split_unescaped(token, "|")
    system, code = (None, pieces[0]) if len(pieces) == 1 else (pieces[0], pieces[1])
    return any(
        c.get("code") == code and (system is None or (c.get("system") or "") == system)
        for c in codings
        if isinstance(c, dict)
    )


def code_matches(resource: dict[str, Any], code_params: list[str]) -> bool:
    """Whether `resource.code` matches every `code` parameter (each a comma-separated OR)."""
    concept = resource.get("code")
    codings = concept.get("coding", []) if isinstance(concept, dict) else []
    return all(
        any(_token_matches(token, codings) for token in _split_unescaped(value, ","))
        for value in code_params
    )


# -- requests and answers --------------------------------------------------------------------------


def _query(target: str) -> Params:
    _, _, query = target.partition("?")
    return tuple(parse_qsl(query, keep_blank_values=True))


def _form(request: _Request, path: str) -> Params:
    content_type = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
    if request.method != "POST" or not path.endswith("_search") or content_type != _FORM:
        return ()
    return tuple(parse_qsl(request.body.decode("latin-1"), keep_blank_values=True))


def _rebuilt(request: _Request, query: Params, form: Params) -> _Request:
    """The request with `query` as its query string and, for a form POST, `form` as its body."""
    path = request.target.split("?", 1)[0]
    target = f"{path}?{urlencode(query)}" if query else path
    body = urlencode(form).encode() if form else request.body
    return _Request(request.method, target, request.headers, body)


def _post_filtered(body: bytes, codes: list[str]) -> bytes:
    """The searchset with only the matches of `codes` (includes and outcomes kept), no `total`,
    and `code` back on its links, so the next page the client asks for is filtered too."""
    bundle = json.loads(body)
    if bundle.get("resourceType") != "Bundle":
        return body
    kept = []
    for entry in bundle.get("entry", []):
        mode = entry.get("search", {}).get("mode", "match")
        if mode != "match" or code_matches(entry.get("resource", {}), codes):
            kept.append(entry)
    if kept:
        bundle["entry"] = kept
    else:
        bundle.pop("entry", None)
    bundle.pop("total", None)
    suffix = urlencode([("code", c) for c in codes])
    for link in bundle.get("link", []):
        if link.get("relation") in _LINKS and isinstance(link.get("url"), str):
            link["url"] += ("&" if "?" in link["url"] else "?") + suffix
    return json.dumps(bundle).encode()


# -- test data -------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"([A-Z][A-Za-z]+)/([^/]+)(/_history/.*)?")


def renamed(resources: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Copies of `resources` under ids of their own on the shared server: every id and relative
    reference prefixed, and each Patient identifier value too (so `Patient?identifier=` finds
    only these)."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: walk(value) for key, value in node.items()}
        reference = out.get("reference")
        match = _RELATIVE.fullmatch(reference) if isinstance(reference, str) else None
        if match:
            out["reference"] = f"{match[1]}/{prefix}{match[2]}{match[3] or ''}"
        return out

    copies = []
    for resource in resources:
        copy = walk(resource)
        copy["id"] = prefix + resource["id"]
        if copy["resourceType"] == "Patient":
            for identifier in copy.get("identifier", []):
                identifier["value"] = prefix + identifier["value"]
        copies.append(copy)
    return copies
