"""Refreshing the value-set expansions of `mappings/valuesets/` from a terminology server.

`trial-adapter codesets refresh` is the only part of the adapter that talks to a terminology
server: a sweep reads the stored expansions and fetches nothing. For every expansion file with a
`refresh`, it asks `GET [tx]/ValueSet/$expand?url=...` for either the named value set
(`refresh.url`) or the implicit is-a value set of the file's code system (`refresh.isa`: for
SNOMED CT `http://snomed.info/sct?fhir_vs=isa/<code>`, FHIR R4 terminology-service 4.8.3 and
SNOMED's "Using SNOMED CT with FHIR"), follows `offset`/`count` paging until `expansion.total`,
flattens nested `contains`, and writes the result as a new file of the same format.

The HTTP client is injected (an `httpx.AsyncClient`, wrapped in a `FhirClient` for URL trust,
retries and error classification); the caller builds it (`tx_client`) and closes it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import yaml

from adapter import mapfiles
from adapter.errors import (
    HttpStatusError,
    InvalidResponseError,
    MappingError,
    UsageError,
    redact_url,
)
from adapter.fhir.client import FhirClient, JsonObject
from adapter.fhir.transport import http_client
from adapter.trials import SystemsFile
from adapter.valuesets import ValueSetFile, ValueSetModel, load_valueset

Say = Callable[[str], None]

#: `count` asked for on the pages after the first (the first page is the server's default size)
PAGE_SIZE = 1000
#: An expansion larger than this is refused: an is-a set of a whole hierarchy is a mistake.
MAX_CODES = 100_000
#: The start of the note line each refresh writes; earlier such lines are replaced, not stacked.
REFRESH_MARK = "Refreshed by `trial-adapter codesets refresh`"
#: `expansion.parameter` names that carry the code system version, in order of preference.
#: `used-codesystem` (`system|version`) is what Snowstorm and Ontoserver send.
_VERSION_PARAMETERS = ("version", "system-version", "used-codesystem")


def tx_client(
    timeout: float, *, proxy: str | None = None, ca_bundle: Path | None = None
) -> httpx.AsyncClient:
    """The HTTP client for a terminology server: TLS verified, no auth, redirects by FhirClient,
    and nothing taken from the environment (no HTTPS_PROXY, no SSL_CERT_FILE: fhir.transport);
    a proxy and a CA bundle only from the site file's `terminology:` section.

    The CLI builds its client here, so tests replace this function with one on a MockTransport.
    """
    return http_client(timeout=timeout, proxy=proxy, ca_bundle=ca_bundle)


def installed_package_dir() -> Path:
    """The directory of the `adapter` package (site-packages/adapter when installed)."""
    return Path(str(resources.files("adapter"))).resolve()


def implicit_isa_url(system_url: str, code: str) -> str:
    """The implicit value set of `code` and its descendants (`http://snomed.info/sct?fhir_vs=isa/X`)."""
    return f"{system_url}?fhir_vs=isa/{code}"


def expansion_url(model: ValueSetModel, system_url: str) -> str:
    """The value-set URL that `$expand` is asked for: `refresh.url`, or the implicit is-a set."""
    if model.refresh is None:
        raise ValueError(f"{model.name} has no `refresh`")
    if model.refresh.url is not None:
        return model.refresh.url
    assert model.refresh.isa is not None  # Refresh holds exactly one of the two
    return implicit_isa_url(system_url, model.refresh.isa)


@dataclass(frozen=True, slots=True)
class Expansion:
    """What the terminology server returned for one value set, already filtered."""

    url: str
    name: str
    version: str | None
    timestamp: str | None
    #: code -> display ('' when the server gave none), codes of the file's system only
    codes: Mapping[str, str]
    #: entries of other code systems, left out
    other_systems: int = 0


@dataclass(frozen=True, slots=True)
class Refreshed:
    """One refreshed file: where it was written, and its codes before and after."""

    name: str
    path: Path
    before: frozenset[str]
    after: frozenset[str]
    other_systems: int = 0

    def summary(self) -> str:
        added = len(self.after - self.before)
        removed = len(self.before - self.after)
        line = (
            f"{self.name}: {len(self.before)} -> {len(self.after)} codes, "
            f"{added} added, {removed} removed"
        )
        if self.other_systems:
            line += f", {self.other_systems} of other code systems left out"
        return line


def _walk(contains: object, url: str) -> Iterator[JsonObject]:
    """Every entry of `expansion.contains`, depth first, nested `contains` included."""
    if contains is None:
        return
    if not isinstance(contains, list):
        raise InvalidResponseError("expansion.contains is not a list", url=url)
    for entry in contains:
        if not isinstance(entry, dict):
            raise InvalidResponseError("an expansion.contains entry is not an object", url=url)
        yield entry
        yield from _walk(entry.get("contains"), url)


def _expansion_of(body: JsonObject, url: str) -> JsonObject:
    kind = body.get("resourceType")
    if kind == "OperationOutcome":
        # The server's own text is not repeated: it is not ours to show (and may echo input).
        raise InvalidResponseError(
            "the terminology server answered with an OperationOutcome", url=url
        )
    if kind != "ValueSet":
        raise InvalidResponseError("the $expand answer is not a ValueSet", url=url)
    expansion = body.get("expansion")
    if not isinstance(expansion, dict):
        raise InvalidResponseError("the ValueSet has no expansion", url=url)
    return expansion


def _version(
    valueset: JsonObject, expansion: JsonObject, system_urls: frozenset[str]
) -> str | None:
    """ValueSet.version, else the code system version among `expansion.parameter`."""
    version = valueset.get("version")
    if isinstance(version, str) and version:
        return version
    parameters = expansion.get("parameter")
    found: dict[str, str] = {}
    for p in parameters if isinstance(parameters, list) else []:
        if not isinstance(p, dict) or p.get("name") not in _VERSION_PARAMETERS:
            continue
        value = p.get("valueUri") or p.get("valueCanonical") or p.get("valueString")
        if not isinstance(value, str) or not value:
            continue
        system, bar, rest = value.partition("|")
        if bar and system not in system_urls:
            continue  # the version of another code system used by the expansion
        found.setdefault(str(p["name"]), rest if bar else value)
    return next((found[n] for n in _VERSION_PARAMETERS if n in found), None)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def expand(
    client: FhirClient, url: str, system_urls: frozenset[str], *, page_size: int = PAGE_SIZE
) -> Expansion:
    """`ValueSet/$expand?url=...`, every page of it, as the codes of `system_urls`.

    Paging: while `expansion.total` is larger than what came back, the next page is asked for
    with `offset` (the entries received so far, nested ones counted) and `count`. Entries the
    server marks `abstract` or `inactive` are left out; entries without those flags are kept (an
    `isa` expansion of SNOMED CT holds active concepts only unless asked otherwise).
    """
    endpoint = "ValueSet/$expand"
    where = client.url(endpoint)
    params: list[tuple[str, str]] = [("url", url)]
    codes: dict[str, str] = {}
    other = 0
    first: tuple[str, str | None, str | None] | None = None
    received = 0
    while True:
        try:
            body = await client.get_json(endpoint, params)
        except HttpStatusError as exc:
            # Without the OperationOutcome text: the server's free text is not repeated.
            raise type(exc)(exc.status, url=exc.url) from None
        expansion = _expansion_of(body, where)
        if first is None:
            name = body.get("name") or body.get("title") or url
            stamp = expansion.get("timestamp")
            first = (
                str(name),
                _version(body, expansion, system_urls),
                stamp if isinstance(stamp, str) else None,
            )
        entries = list(_walk(expansion.get("contains"), where))
        for entry in entries:
            code = entry.get("code")
            if not isinstance(code, str) or not code:
                continue  # a grouping entry: its children were walked
            if entry.get("abstract") is True or entry.get("inactive") is True:
                continue
            if entry.get("system") not in system_urls:
                other += 1
                continue
            display = entry.get("display")
            codes.setdefault(code, display if isinstance(display, str) else "")
        reached = (_int(expansion.get("offset")) or received) + len(entries)
        total = _int(expansion.get("total"))
        if total is not None and total > MAX_CODES:
            raise InvalidResponseError(
                f"the expansion has {total} codes, more than {MAX_CODES}: is it the set meant?",
                url=where,
            )
        if total is None or reached >= total:
            break
        if reached <= received:
            # An empty page, or one that ignored the offset: going on would loop for ever.
            raise InvalidResponseError(
                f"expansion paging stopped at {reached} of {total} codes", url=where
            )
        received = reached
        params = [("url", url), ("offset", str(received)), ("count", str(page_size))]
    name, version, timestamp = first
    return Expansion(url, name, version, timestamp, codes, other)


def refreshed_model(old: ValueSetModel, exp: Expansion, where: str) -> ValueSetModel:
    """`old` with the expansion's codes and source; title, system and refresh kept, note extended.

    A code without a display from the server keeps the one the file had.
    """
    if not exp.codes:
        raise InvalidResponseError(
            f"{old.name}: the expansion holds no {old.system} codes", url=where
        )
    source = {
        "name": exp.name,
        "url": exp.url,
        "version": exp.version,
        "date": exp.timestamp,
        "where": where,
    }
    lines = [line for line in old.note.splitlines() if not line.startswith(REFRESH_MARK)]
    lines.append(
        f"{REFRESH_MARK} from {where} (expansion of {exp.timestamp or 'an unstated date'}"
        + (f", version {exp.version})." if exp.version else ").")
    )
    data = {
        "name": old.name,
        "title": old.title,
        "system": old.system,
        "refresh": old.refresh.model_dump(exclude_none=True) if old.refresh else None,
        "sources": [{k: v for k, v in source.items() if v is not None}],
        "note": "\n".join(lines),
        "codes": {
            code: display or (old.display(code) if code in old.codes else "")
            for code, display in sorted(exp.codes.items())
        },
    }
    return ValueSetModel.model_validate(data)


class _Code(str):
    """A code, always written quoted: YAML would read 73211009 as a number."""


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_code(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"')


def _represent_text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # A multi-line note as a literal block, so a diff shows the line that changed.
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(_Code, _represent_code)
_Dumper.add_representer(str, _represent_text)


def dump_valueset(model: ValueSetModel) -> str:
    """The file's text: keys in schema order, codes sorted and quoted, one code a line."""
    body: dict[str, Any] = {"name": model.name, "title": model.title, "system": model.system}
    if model.refresh is not None:
        body["refresh"] = {
            k: _Code(v) for k, v in model.refresh.model_dump(exclude_none=True).items()
        }
    body["sources"] = [s.model_dump(exclude_none=True) for s in model.sources]
    if model.note:
        body["note"] = model.note
    body["codes"] = {
        _Code(code): entry if isinstance(entry, str) else entry.model_dump(exclude_none=True)
        for code, entry in sorted(model.codes.items())
    }
    text = yaml.dump(
        {"valueset": body},
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=1_000_000,  # never fold a display across lines
    )
    # The text must read back as the model it was made from.
    if ValueSetFile.model_validate(yaml.safe_load(text)) != ValueSetFile(valueset=model):
        raise AssertionError(f"{model.name}: the written YAML does not read back as the model")
    return text


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a mapping file is not a secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def target_dir(mappings_dir: Path, site_mappings: Path | None) -> Path:
    """Where refreshed files go: `<site>/valuesets/`, else the mappings folder's `valuesets/`.

    Never inside the installed `adapter` package: an upgrade would overwrite the files, and
    site-packages is not the site's to edit.
    """
    if site_mappings is not None:
        if not site_mappings.is_dir():
            raise UsageError(f"--site-mappings is not a folder: {site_mappings}")
        target = site_mappings / "valuesets"
    else:
        target = mappings_dir / "valuesets"
    if target.resolve().is_relative_to(installed_package_dir()):
        raise UsageError(
            f"{target} is inside the installed adapter package: "
            "write the refreshed sets to a site folder with --site-mappings DIR"
        )
    return target


def _system_urls(mappings_dir: Path) -> dict[str, list[str]]:
    systems = mapfiles.load(SystemsFile, mappings_dir / "systems.yaml")
    return {alias: s.urls for alias, s in systems.systems.items()}


def _selected(mappings_dir: Path, only: Sequence[str]) -> list[tuple[Path, ValueSetModel]]:
    folder = mappings_dir / "valuesets"
    if not folder.is_dir():
        raise UsageError(f"no value-set folder: {folder}")
    paths = {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    unknown = sorted(set(only) - set(paths))
    if unknown:
        raise UsageError(f"no value set named {', '.join(unknown)} in {folder}")
    chosen = [paths[n] for n in sorted(set(only))] if only else list(paths.values())
    models = [(p, load_valueset(p)) for p in chosen]
    missing = [m.name for _, m in models if m.refresh is None]
    if only and missing:
        raise UsageError(f"value set {', '.join(missing)} has no `refresh`: nothing to ask for")
    return [(p, m) for p, m in models if m.refresh is not None]


async def refresh(
    http: httpx.AsyncClient,
    tx: str,
    *,
    mappings_dir: Path,
    site_mappings: Path | None = None,
    only: Sequence[str] = (),
    say: Say = lambda _m: None,
) -> list[Refreshed]:
    """Re-expand the selected value sets from `tx` and write them; `say` gets one line per set.

    Everything is read and checked first, then every set is fetched, and only then are files
    written: a server error leaves every file as it was.
    """
    client = FhirClient(http, tx)
    where = redact_url(tx)
    target = target_dir(mappings_dir, site_mappings)
    systems = _system_urls(mappings_dir)
    sets = _selected(mappings_dir, only)
    for path, model in sets:
        if model.system not in systems:
            raise MappingError(
                str(path), f"unknown code system '{model.system}' (see systems.yaml)"
            )
    fetched: list[tuple[ValueSetModel, ValueSetModel, Expansion]] = []
    for _, model in sets:
        urls = systems[model.system]
        exp = await expand(client, expansion_url(model, urls[0]), frozenset(urls))
        fetched.append((model, refreshed_model(model, exp, where), exp))
    results: list[Refreshed] = []
    if fetched:
        target.mkdir(parents=True, exist_ok=True)
    for model, new, exp in fetched:
        path = target / f"{model.name}.yaml"
        before = load_valueset(path) if path.exists() else model
        write_atomically(path, dump_valueset(new))
        done = Refreshed(
            model.name, path, frozenset(before.codes), frozenset(new.codes), exp.other_systems
        )
        say(done.summary())
        results.append(done)
    if not sets:
        say("no value set has a `refresh`: nothing to do")
    return results
