"""Server profiles: what a family of FHIR servers requires of a search, as data (issue 13).

Each `mappings/servers/<name>.yaml` describes one family (`generic`, `hapi`, `epic`,
`oracle-health`, `medplum`); a site folder's `servers/` may add its own or replace one. A profile
never guesses: every field it states that differs from the generic value cites a public source
(`sources`), and a field no source could be found for keeps the generic value and is listed under
`uncited`. The loader refuses a profile that breaks this rule (a MappingError: exit 2).

The REST source reads a profile through `ServerProfile`; the YAML shape is `ProfileModel`
(loader: `load_profiles`, `profile_named`). `scopes_for` turns SMART v2 scopes into v1 for servers
that want them, and `describe` says what the profile and the CapabilityStatement say together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from adapter import mapfiles
from adapter.errors import ConfigError, MappingError
from adapter.fhir.capability import ElementsSupport, ServerCapabilities
from adapter.mapschema import Strict

ReadMode = Literal["batch", "per-patient"]
READ_MODES: tuple[ReadMode, ...] = ("batch", "per-patient")
#: the profile used when a site names none
DEFAULT_PROFILE = "generic"


@dataclass(frozen=True, slots=True)
class TypeRules:
    """What the server requires of a search of one resource type.

    `required`: parameters a search of the type must carry (a search without one is refused).
    `single_valued`: parameters that take one value only (no comma-separated list).
    `post_filters`: parameters applied after the server has paged its results: the answer is
    right, but page sizes and `Bundle.total` count the results before filtering.
    `unsupported`: parameters the server ignores or refuses for this type.
    `categories`: category tokens to search with when `category` is required and the adapter
    has no categories of its own for the type (Condition's `problem-list-item` ...).
    `not_modifier`: the server honours the token modifier `:not` on `code`, with the R4 meaning
    "holds no matching coding", so codes an earlier search of the run already fetched are sent
    as `code:not` (one parameter each; repeated parameters are ANDed) and left out (issue 15).
    Off by default: R4 does not oblige a server to support a modifier.
    """

    required: frozenset[str] = frozenset()
    single_valued: frozenset[str] = frozenset()
    post_filters: frozenset[str] = frozenset()
    unsupported: frozenset[str] = frozenset()
    categories: tuple[str, ...] = ()
    not_modifier: bool = False

    def honours(self, param: str) -> bool:
        """Whether the server filters by `param` itself, before paging."""
        return param not in self.post_filters and param not in self.unsupported


@dataclass(frozen=True, slots=True)
class TokenQuirks:
    """How the server's SMART Backend Services token endpoint differs from the specification.

    `scope_version`: `v2` takes `system/Observation.rs`; `v1` servers want
    `system/Observation.read`.
    `assertion_lifetime`: the most seconds between a client assertion's issue and its `exp`.
    `algorithms`: the signing algorithms the server accepts for a client assertion.
    """

    scope_version: Literal["v1", "v2"] = "v2"
    assertion_lifetime: int = 300
    algorithms: tuple[str, ...] = ("RS384", "ES384")


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """One server family (see the module docstring); the generic values are its defaults."""

    name: str = DEFAULT_PROFILE
    title: str = "Any conformant FHIR R4 server"
    #: how searches are made unless the site or `--read` says otherwise
    read: ReadMode = "batch"
    #: resource type -> its search rules; a type not listed has none
    searches: Mapping[str, TypeRules] = field(default_factory=dict)
    #: the largest `_count` the server honours; None: no stated limit
    max_count: int | None = None
    #: whether `_elements` may be sent (still only where the probe saw it honoured)
    elements: bool = True
    #: where the server offers `$export`: `system`, `patient`, `group`
    export: tuple[str, ...] = ()
    #: headers sent with every request to the server (never secrets: those are `auth`'s)
    headers: Mapping[str, str] = field(default_factory=dict)
    token: TokenQuirks = TokenQuirks()
    #: field path (`searches.Observation.required`, `max_count` ...) -> its public source
    sources: Mapping[str, str] = field(default_factory=dict)
    #: fields kept at the generic value because no public source could be found
    uncited: tuple[str, ...] = ()

    def rules(self, resource_type: str) -> TypeRules:
        """The search rules of `resource_type` (none when the profile lists none)."""
        return self.searches.get(resource_type, _NO_RULES)

    def needs_one_patient(self, resource_type: str) -> bool:
        """Whether each search of the type must name exactly one patient."""
        rules = self.rules(resource_type)
        return "patient" in rules.required or "patient" in rules.single_valued

    def page_size(self, wanted: int) -> int:
        """`_count` to send: `wanted`, lowered to the server's largest."""
        return wanted if self.max_count is None else min(wanted, self.max_count)


_NO_RULES = TypeRules()
GENERIC = ServerProfile()


# --- the YAML shape ------------------------------------------------------------------------------

#: the resource types a profile may give rules for: those the sweep and the cohorts search
SearchType = Literal["Patient", "Condition", "Observation", "Procedure", "Group"]
SEARCH_TYPES: tuple[str, ...] = get_args(SearchType)
RULES = ("required", "single_valued", "post_filters", "unsupported", "categories", "not_modifier")
ExportLevel = Literal["system", "patient", "group"]
Algorithm = Literal["RS384", "ES384"]
#: every field a profile can state, as `sources` and `uncited` name it
FIELD_PATHS: tuple[str, ...] = (
    "read",
    *(f"searches.{kind}.{rule}" for kind in SEARCH_TYPES for rule in RULES),
    "max_count",
    "elements",
    "export",
    "headers",
    "token.scope_version",
    "token.assertion_lifetime",
    "token.algorithms",
)
_NAME = r"^[a-z0-9][a-z0-9\-]{0,63}$"  # as ServerConfig.profile
_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.:]{0,63}$")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")  # an RFC 9110 token
#: headers a profile may not set: secrets are `auth`'s, the others belong to the HTTP layer
_FORBIDDEN_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "host", "content-length"}
)


class TypeRulesModel(Strict):
    required: list[str] = Field(default_factory=list)
    single_valued: list[str] = Field(default_factory=list)
    post_filters: list[str] = Field(default_factory=list)
    unsupported: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    not_modifier: bool = False

    @field_validator("required", "single_valued", "post_filters", "unsupported")
    @classmethod
    def _params(cls, value: list[str]) -> list[str]:
        for param in value:
            if not _PARAM.match(param):
                raise ValueError(f"{param!r} is not a search parameter name")
        return value


class TokenModel(Strict):
    scope_version: Literal["v1", "v2"] = "v2"
    assertion_lifetime: int = Field(default=300, ge=10, le=3600)
    algorithms: tuple[Algorithm, ...] = Field(default=("RS384", "ES384"), min_length=1)


class ProfileModel(Strict):
    """One `servers/<name>.yaml`; the fields of ServerProfile, plus where each fact comes from."""

    name: str = Field(pattern=_NAME)
    title: str = Field(min_length=1)
    read: ReadMode = "batch"
    searches: dict[SearchType, TypeRulesModel] = Field(default_factory=dict)
    max_count: int | None = Field(default=None, ge=1)
    elements: bool = True
    export: list[ExportLevel] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    token: TokenModel = Field(default_factory=TokenModel)
    #: field path (FIELD_PATHS) -> its public source: the URL first, then a few words
    sources: dict[str, str] = Field(default_factory=dict)
    uncited: list[str] = Field(default_factory=list)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER.match(name) or name.lower() in _FORBIDDEN_HEADERS:
                raise ValueError(f"header {name!r} may not be set by a profile")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name!r} has a line break in its value")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: dict[str, str]) -> dict[str, str]:
        for path, text in value.items():
            if path not in FIELD_PATHS:
                raise ValueError(f"{path!r} is not a profile field ({', '.join(FIELD_PATHS)})")
            url = text.split(maxsplit=1)[0] if text.strip() else ""
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"the source of {path} must start with its http(s) URL")
        return value

    @field_validator("uncited")
    @classmethod
    def _uncited(cls, value: list[str]) -> list[str]:
        for path in value:
            if path not in FIELD_PATHS:
                raise ValueError(f"{path!r} is not a profile field")
        return value


# --- loading -------------------------------------------------------------------------------------


def load_profiles(mappings_dir: Path, site_dir: Path | None = None) -> dict[str, ServerProfile]:
    """`<mappings_dir>/servers/*.yaml`, then the site folder's `servers/*.yaml` over them.

    A site file replaces the bundled profile of its name whole (nothing is merged: a profile is
    one family's facts, cited together); a new name adds a profile. Without a `generic.yaml`,
    `generic` is the built-in defaults. Every file is read and checked on each call.
    """
    profiles: dict[str, ServerProfile] = {DEFAULT_PROFILE: GENERIC}
    folders = [mappings_dir / "servers"]
    if site_dir is not None:
        folders.append(site_dir / "servers")
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            profiles[path.stem] = load_profile(path)
    return profiles


def profile_named(name: str, profiles: Mapping[str, ServerProfile]) -> ServerProfile:
    """The profile called `name`; a ConfigError (exit 2) naming the known ones otherwise."""
    try:
        return profiles[name]
    except KeyError:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"unknown server profile '{name}'; known: {known}") from None


def load_profile(path: Path) -> ServerProfile:
    """One profile file, validated, its name checked against the file's, its facts cited."""
    data, lines = mapfiles.read_yaml(path)
    if not isinstance(data, dict):
        raise MappingError(str(path), "a server profile is a mapping (name, title, read ...)")
    model = mapfiles.validate(ProfileModel, data, path, lines)
    if model.name != path.stem:
        raise MappingError(
            str(path),
            f"name '{model.name}' is not the file's ('{path.stem}'): a profile is found by its "
            "file name",
            line=mapfiles.line_of(lines, ("name",)),
            field="name",
        )
    profile = _to_profile(model)
    _check_citations(profile, path, lines)
    return profile


def _to_profile(model: ProfileModel) -> ServerProfile:
    searches: dict[str, TypeRules] = {
        kind: TypeRules(
            required=frozenset(rules.required),
            single_valued=frozenset(rules.single_valued),
            post_filters=frozenset(rules.post_filters),
            unsupported=frozenset(rules.unsupported),
            categories=tuple(rules.categories),
            not_modifier=rules.not_modifier,
        )
        for kind, rules in model.searches.items()
    }
    return ServerProfile(
        name=model.name,
        title=model.title,
        read=model.read,
        searches=MappingProxyType(searches),
        max_count=model.max_count,
        elements=model.elements,
        export=tuple(model.export),
        headers=MappingProxyType(dict(model.headers)),
        token=TokenQuirks(
            scope_version=model.token.scope_version,
            assertion_lifetime=model.token.assertion_lifetime,
            algorithms=tuple(model.token.algorithms),
        ),
        sources=MappingProxyType(dict(model.sources)),
        uncited=tuple(model.uncited),
    )


def field_values(profile: ServerProfile) -> dict[str, object]:
    """Every field path (`FIELD_PATHS`) and the profile's value, in a comparable form."""
    values: dict[str, object] = {
        "read": profile.read,
        "max_count": profile.max_count,
        "elements": profile.elements,
        "export": frozenset(profile.export),
        "headers": dict(profile.headers),
        "token.scope_version": profile.token.scope_version,
        "token.assertion_lifetime": profile.token.assertion_lifetime,
        "token.algorithms": frozenset(profile.token.algorithms),
    }
    for kind in SEARCH_TYPES:
        rules = profile.rules(kind)
        for rule in RULES:
            value = getattr(rules, rule)
            values[f"searches.{kind}.{rule}"] = (
                value if isinstance(value, bool) else frozenset(value)
            )
    return values


def non_generic_fields(profile: ServerProfile) -> list[str]:
    """The field paths where `profile` says something other than the generic defaults."""
    mine, generic = field_values(profile), field_values(GENERIC)
    return [path for path in FIELD_PATHS if mine[path] != generic[path]]


def _check_citations(profile: ServerProfile, path: Path, lines: dict[mapfiles.Loc, int]) -> None:
    """Every non-generic field has a source; `uncited` names only fields at the generic value."""

    def fail(field_path: str, reason: str, loc: tuple[str, ...] | None = None) -> MappingError:
        at = mapfiles.line_of(lines, loc or tuple(field_path.split(".")))
        return MappingError(str(path), reason, line=at, field=field_path)

    for field_path in non_generic_fields(profile):
        if field_path in profile.uncited:
            raise fail(field_path, "listed under `uncited` but differs from the generic value")
        if field_path not in profile.sources:
            raise fail(
                field_path,
                "differs from the generic profile but cites no source: add it to `sources` "
                "(URL and a few words), or keep the generic value and list it under `uncited`",
            )
    for field_path in profile.uncited:
        if field_path in profile.sources:
            raise fail(field_path, "both cited (`sources`) and `uncited`", ("uncited",))


# --- token scopes --------------------------------------------------------------------------------

_V2_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Za-z]+)\.([cruds]+)(\?\S*)?$")


def scopes_for(profile: ServerProfile, scopes: Sequence[str]) -> list[str]:
    """`scopes` as the profile's token endpoint wants them.

    A v1 server gets `system/Observation.read` for `.rs` (any of r, s) and `.write` for any of
    c, u, d; v1 scopes and other scopes pass through, duplicates dropped. A v2 query
    (`?category=...`) has no v1 form: dropping it would ask for more than was meant, so it is a
    ConfigError. A v2 profile gets `scopes` unchanged.
    """
    if profile.token.scope_version == "v2":
        return list(scopes)
    out: list[str] = []
    for scope in scopes:
        match = _V2_SCOPE.match(scope)
        if match is None:
            converted = [scope]
        else:
            context, kind, perms, query = match.groups()
            if query:
                raise ConfigError(
                    f"scope {scope} has a query, which the {profile.name} profile's SMART v1 "
                    "scopes cannot express"
                )
            converted = [f"{context}/{kind}.read"] if set(perms) & set("rs") else []
            if set(perms) & set("cud"):
                converted.append(f"{context}/{kind}.write")
        out.extend(s for s in converted if s not in out)
    return out


# --- what `trial-adapter check` says -------------------------------------------------------------


def describe(profile: ServerProfile, caps: ServerCapabilities | None, read: ReadMode) -> list[str]:
    """Short lines saying what the profile and the CapabilityStatement (if read) say together.

    `read` is the mode the run uses (`--read`, the site's `read`, else the profile's). Lines that
    start `warning:` are disagreements: a search parameter the profile requires that the
    CapabilityStatement does not list, an `$export` level the profile claims and the server does
    not offer. No patient data: the lines hold only the profile's and the server's declarations.
    """
    mode = "per patient" if read == "per-patient" else "in batches (many patients a search)"
    head = f"profile {profile.name} ({profile.title}): reads {mode}"
    if read != profile.read:
        head += f"; the profile's default is {profile.read}"
    lines = [head]
    warnings: list[str] = []
    for kind in SEARCH_TYPES:
        if kind not in profile.searches:
            continue
        rules = profile.rules(kind)
        if said := _rules_line(kind, rules):
            lines.append(f"{kind}: {said}")
        for param in sorted(rules.required):
            if caps is not None and not param.startswith("_") and not caps.searches(kind, param):
                warnings.append(
                    f"warning: {kind}: the profile requires '{param}', but the "
                    "CapabilityStatement lists no such search parameter"
                )
    lines.append(
        f"_count at most {profile.max_count}"
        if profile.max_count is not None
        else "_count: the profile states no limit"
    )
    lines.append(_elements_line(profile, caps, warnings))
    lines.append(_export_line(profile, caps, warnings))
    if profile.headers:
        lines.append(f"headers sent with every request: {', '.join(sorted(profile.headers))}")
    if profile.token.scope_version == "v1":
        lines.append("token: SMART v1 scopes (system/<Type>.read) are asked for")
    if profile.uncited:
        lines.append(f"uncited (generic values kept): {', '.join(profile.uncited)}")
    return lines + warnings


def _rules_line(kind: str, rules: TypeRules) -> str:
    parts = []
    for param in sorted(rules.required | rules.single_valued):
        traits = [
            trait
            for trait, present in (
                ("required", param in rules.required),
                ("single-valued", param in rules.single_valued),
            )
            if present
        ]
        parts.append(f"{param} {', '.join(traits)}")
    if rules.post_filters:
        names = ", ".join(sorted(rules.post_filters))
        verb = "is a post-filter" if len(rules.post_filters) == 1 else "are post-filters"
        by_category = kind == "Observation" and not rules.honours("code")
        parts.append(f"{names} {verb}" + (" (searched by category)" if by_category else ""))
    if rules.unsupported:
        parts.append(f"not supported: {', '.join(sorted(rules.unsupported))}")
    if rules.categories:
        parts.append(f"categories searched: {', '.join(rules.categories)}")
    if rules.not_modifier:
        parts.append("code:not honoured (codes fetched already are left out)")
    return "; ".join(parts)


def _elements_line(
    profile: ServerProfile, caps: ServerCapabilities | None, warnings: list[str]
) -> str:
    if not profile.elements:
        if caps is not None and caps.supports_elements:
            warnings.append(
                "warning: _elements: the profile says not honoured, but the probe saw it "
                "honoured; it is not sent"
            )
        return "_elements: profile says not honoured; whole resources are read"
    if caps is None:
        return "_elements: profile allows it; sent only where the probe sees it honoured"
    found = {
        ElementsSupport.HONOURED: "honoured (SUBSETTED tag seen); sent",
        ElementsSupport.IGNORED: "not honoured by the probe; whole resources are read",
        ElementsSupport.UNKNOWN: "the probe could not tell; whole resources are read",
    }[caps.elements]
    return f"_elements: profile allows it; {found}"


def _export_line(
    profile: ServerProfile, caps: ServerCapabilities | None, warnings: list[str]
) -> str:
    line = f"$export: profile {', '.join(profile.export) or 'none'}"
    if caps is None:
        return line
    offered = caps.export_levels
    for level in profile.export:
        if level not in {o.lower() for o in offered}:
            warnings.append(
                f"warning: $export: the profile claims {level}-level export, but the "
                "CapabilityStatement lists none there"
            )
    return f"{line}; CapabilityStatement: {', '.join(offered) or 'none'}"
