"""`codesets refresh`: value-set expansions re-read from a terminology server's `$expand`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from adapter import terminology
from adapter.cli import main
from adapter.errors import (
    HttpStatusError,
    InvalidResponseError,
    TemporaryHttpError,
    TransportError,
    UsageError,
)
from adapter.valuesets import load_valueset

TX = "https://tx.test/fhir"
EXPAND = f"{TX}/ValueSet/$expand"
SCT = "http://snomed.info/sct"

SYSTEMS = """\
systems:
  loinc: {urls: ["http://loinc.org"], match: exact}
  snomed: {urls: ["http://snomed.info/sct"], match: exact}
"""

DIABETES = """\
valueset:
  name: snomed-diabetes
  title: Diabetes mellitus (73211009) and its descendants
  system: snomed
  refresh: {isa: "73211009"}
  sources:
    - {name: hand-built, date: "2025-05-08"}
  note: Built by hand from the browser.
  codes:
    "73211009": Diabetes mellitus (disorder)
    "46635009": Diabetes mellitus type 1 (disorder)
"""

NAMED = """\
valueset:
  name: snomed-named
  title: A published value set
  system: snomed
  refresh: {url: "http://example.org/fhir/ValueSet/named"}
  sources:
    - {name: hand-built}
  codes:
    "1": One
"""

STATIC = """\
valueset:
  name: snomed-static
  title: Not refreshable
  system: snomed
  sources:
    - {name: hand-built}
  codes:
    "2": Two
"""

Handler = Callable[[httpx.Request], httpx.Response]


def mappings(tmp_path: Path, *files: str) -> Path:
    """A mappings folder with systems.yaml and the given valueset files."""
    root = tmp_path / "mappings"
    (root / "valuesets").mkdir(parents=True)
    (root / "systems.yaml").write_text(SYSTEMS)
    for text in files:
        name = yaml.safe_load(text)["valueset"]["name"]
        (root / "valuesets" / f"{name}.yaml").write_text(text)
    return root


def concept(code: str, display: str, system: str = SCT, **extra: Any) -> dict[str, Any]:
    return {"system": system, "code": code, "display": display, **extra}


def valueset(contains: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    expansion: dict[str, Any] = {"timestamp": "2026-01-02T03:04:05Z", "contains": contains}
    expansion |= extra.pop("expansion", {})
    return {"resourceType": "ValueSet", "status": "active", "expansion": expansion, **extra}


DIABETES_EXPANSION = valueset(
    [
        concept("73211009", "Diabetes mellitus"),
        concept("44054006", "Diabetes mellitus type 2"),
        concept("E11", "Type 2 diabetes mellitus", system="http://hl7.org/fhir/sid/icd-10"),
    ],
    name="SNOMED CT is-a 73211009",
    version="http://snomed.info/sct/900000000000207008/version/20250801",
)


class Server:
    """A MockTransport terminology server that records what it was asked."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self.handler = handler

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))

    @property
    def asked(self) -> list[dict[str, str]]:
        return [dict(r.url.params) for r in self.requests]


def answering(body: dict[str, Any]) -> Server:
    return Server(lambda _r: httpx.Response(200, json=body))


def refresh(server: Server, mdir: Path, **kwargs: Any) -> list[terminology.Refreshed]:
    async def go() -> list[terminology.Refreshed]:
        async with server.client() as http:
            return await terminology.refresh(http, TX, mappings_dir=mdir, **kwargs)

    return asyncio.run(go())


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["codesets", "refresh", "--tx", TX, *args])
    return code, capsys.readouterr().err


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[[Server], Server]:
    """Make the CLI's terminology client talk to `server`."""

    def use(server: Server) -> Server:
        monkeypatch.setattr(terminology, "tx_client", lambda _timeout, **_trust: server.client())
        return server

    return use


def test_an_isa_refresh_asks_for_the_implicit_snomed_value_set(tmp_path):
    """`refresh: {isa: X}` expands `http://snomed.info/sct?fhir_vs=isa/X` (FHIR implicit sets)."""
    server = answering(DIABETES_EXPANSION)
    refresh(server, mappings(tmp_path, DIABETES))
    (request,) = server.requests
    assert request.method == "GET"
    assert str(request.url).split("?")[0] == EXPAND
    assert server.asked == [{"url": "http://snomed.info/sct?fhir_vs=isa/73211009"}]


def test_a_named_refresh_asks_for_its_canonical_url(tmp_path):
    """`refresh: {url: U}` expands U as written."""
    server = answering(valueset([concept("1", "One")]))
    refresh(server, mappings(tmp_path, NAMED))
    assert server.asked == [{"url": "http://example.org/fhir/ValueSet/named"}]


def test_paging_asks_with_offset_and_count_until_the_total(tmp_path):
    """A total larger than what came back is read page by page; every page's codes are kept."""
    codes = [concept(str(n), f"Concept {n}") for n in range(100, 105)]

    def pages(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", "0"))
        part = codes[offset : offset + 2]
        return httpx.Response(200, json=valueset(part, expansion={"total": 5, "offset": offset}))

    server = Server(pages)
    (done,) = refresh(server, mappings(tmp_path, NAMED))
    assert [(q.get("offset"), q.get("count")) for q in server.asked] == [
        (None, None),
        ("2", str(terminology.PAGE_SIZE)),
        ("4", str(terminology.PAGE_SIZE)),
    ]
    assert all(q["url"] == "http://example.org/fhir/ValueSet/named" for q in server.asked)
    assert done.after == {"100", "101", "102", "103", "104"}


def test_paging_that_stops_short_of_the_total_is_an_error(tmp_path):
    """An empty page before the total is reached fails instead of looping or losing codes."""
    server = Server(
        lambda r: httpx.Response(
            200,
            json=valueset(
                [] if "offset" in r.url.params else [concept("1", "One")], expansion={"total": 3}
            ),
        )
    )
    with pytest.raises(InvalidResponseError, match="paging stopped at 1 of 3"):
        refresh(server, mappings(tmp_path, NAMED))


def test_nested_contains_are_flattened_and_marked_entries_left_out(tmp_path):
    """Nested `contains` are walked; only entries marked abstract or inactive are left out."""
    tree = [
        {
            "abstract": True,
            "display": "a grouping entry without a code",
            "contains": [
                concept("10", "Ten", contains=[concept("11", "Eleven")]),
                concept("12", "Twelve", inactive=True),
            ],
        },
        concept("13", "Thirteen", abstract=True),
        concept("14", "Fourteen", inactive=False),
    ]
    (done,) = refresh(answering(valueset(tree)), mappings(tmp_path, NAMED))
    assert done.after == {"10", "11", "14"}


def test_codes_of_other_systems_are_left_out(tmp_path):
    """Only the file's system is kept (systems.yaml urls); the rest is counted in the summary."""
    mdir = mappings(tmp_path, DIABETES)
    (done,) = refresh(answering(DIABETES_EXPANSION), mdir)
    assert done.after == {"73211009", "44054006"}
    assert done.other_systems == 1
    assert "1 of other code systems left out" in done.summary()


def test_the_written_file_loads_and_keeps_what_the_old_one_said(tmp_path):
    """Title, system, refresh kept; the note gets a refresh line; the source is the expansion."""
    mdir = mappings(tmp_path, DIABETES)
    (done,) = refresh(answering(DIABETES_EXPANSION), mdir)
    path = mdir / "valuesets" / "snomed-diabetes.yaml"
    assert done.path == path
    model = load_valueset(path)
    assert model.title == "Diabetes mellitus (73211009) and its descendants"
    assert model.system == "snomed"
    assert model.refresh is not None
    assert model.refresh.isa == "73211009"
    (source,) = model.sources
    assert source.model_dump() == {
        "name": "SNOMED CT is-a 73211009",
        "url": "http://snomed.info/sct?fhir_vs=isa/73211009",
        "version": "http://snomed.info/sct/900000000000207008/version/20250801",
        "date": "2026-01-02T03:04:05Z",
        "where": TX,
    }
    first, refreshed = model.note.splitlines()
    assert first == "Built by hand from the browser."
    assert refreshed.startswith(terminology.REFRESH_MARK)
    assert model.codes == {"44054006": "Diabetes mellitus type 2", "73211009": "Diabetes mellitus"}
    assert list(model.codes) == sorted(model.codes)


def test_the_written_file_is_deterministic_with_quoted_codes(tmp_path):
    """Refreshing twice from the same answer writes the same bytes; codes stay quoted strings."""
    mdir = mappings(tmp_path, DIABETES)
    path = mdir / "valuesets" / "snomed-diabetes.yaml"
    refresh(answering(DIABETES_EXPANSION), mdir)
    once = path.read_text()
    refresh(answering(DIABETES_EXPANSION), mdir)
    assert path.read_text() == once
    assert '    "44054006": Diabetes mellitus type 2\n' in once
    assert 'isa: "73211009"' in once
    assert once.count(terminology.REFRESH_MARK) == 1  # replaced, not stacked
    assert not list(path.parent.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("extra", "version"),
    [
        ({"version": "20250801"}, "20250801"),
        (
            {
                "expansion": {
                    "parameter": [
                        {"name": "used-codesystem", "valueUri": "http://loinc.org|2.77"},
                        {
                            "name": "used-codesystem",
                            "valueUri": f"{SCT}|{SCT}/900000000000207008/version/20250801",
                        },
                    ]
                }
            },
            f"{SCT}/900000000000207008/version/20250801",
        ),
        ({"expansion": {"parameter": [{"name": "version", "valueString": "v9"}]}}, "v9"),
        (
            {"expansion": {"parameter": [{"name": "system-version", "valueUri": f"{SCT}|v7"}]}},
            "v7",
        ),
        ({}, None),
    ],
)
def test_the_source_version_is_the_valuesets_or_the_code_systems(tmp_path, extra, version):
    """ValueSet.version first, else the SNOMED version among the expansion parameters."""
    mdir = mappings(tmp_path, NAMED)
    refresh(answering(valueset([concept("1", "One")], **extra)), mdir)
    (source,) = load_valueset(mdir / "valuesets" / "snomed-named.yaml").sources
    assert source.version == version
    assert source.name == "http://example.org/fhir/ValueSet/named"  # no name or title given


def test_site_mappings_receive_the_file_and_the_mappings_stay_as_they_were(tmp_path):
    """With --site-mappings DIR the refreshed file goes to DIR/valuesets/."""
    mdir = mappings(tmp_path, DIABETES)
    site = tmp_path / "site"
    site.mkdir()
    (done,) = refresh(answering(DIABETES_EXPANSION), mdir, site_mappings=site)
    assert done.path == site / "valuesets" / "snomed-diabetes.yaml"
    assert load_valueset(done.path).codes.keys() == {"73211009", "44054006"}
    assert (mdir / "valuesets" / "snomed-diabetes.yaml").read_text() == DIABETES


def test_a_target_inside_the_installed_package_is_refused(tmp_path, monkeypatch):
    """Writing into site-packages/adapter/mappings is refused before any request, naming the fix."""
    package = tmp_path / "site-packages" / "adapter"
    mdir = mappings(package, DIABETES)  # site-packages/adapter/mappings
    monkeypatch.setattr(terminology, "installed_package_dir", lambda: package.resolve())
    server = answering(DIABETES_EXPANSION)
    with pytest.raises(UsageError, match="--site-mappings"):
        refresh(server, mdir)
    assert server.requests == []
    site = tmp_path / "site"
    site.mkdir()
    refresh(server, mdir, site_mappings=site)
    assert (site / "valuesets" / "snomed-diabetes.yaml").exists()


def test_only_restricts_the_sets_and_sets_without_refresh_are_skipped(tmp_path):
    """`only` names the sets; without it every set with a `refresh` is asked for."""
    mdir = mappings(tmp_path, DIABETES, NAMED, STATIC)
    server = answering(
        DIABETES_EXPANSION | {"expansion": valueset([concept("1", "One")])["expansion"]}
    )
    assert [d.name for d in refresh(server, mdir)] == ["snomed-diabetes", "snomed-named"]
    assert [d.name for d in refresh(server, mdir, only=["snomed-named"])] == ["snomed-named"]
    with pytest.raises(UsageError, match="snomed-missing"):
        refresh(server, mdir, only=["snomed-missing"])
    with pytest.raises(UsageError, match="no `refresh`"):
        refresh(server, mdir, only=["snomed-static"])


def test_an_expansion_without_codes_of_the_system_writes_nothing(tmp_path):
    """An empty expansion (or one of other systems only) is an error; the file is left as it was."""
    mdir = mappings(tmp_path, DIABETES)
    server = answering(valueset([concept("E11", "T2DM", system="http://hl7.org/fhir/sid/icd-10")]))
    with pytest.raises(InvalidResponseError, match="holds no snomed codes"):
        refresh(server, mdir)
    assert (mdir / "valuesets" / "snomed-diabetes.yaml").read_text() == DIABETES


def test_a_failure_on_one_set_leaves_every_file_as_it_was(tmp_path):
    """Every set is fetched before any file is written."""
    mdir = mappings(tmp_path, DIABETES, NAMED)

    def handler(request: httpx.Request) -> httpx.Response:
        if "named" in request.url.params["url"]:
            return httpx.Response(404)
        return httpx.Response(200, json=DIABETES_EXPANSION)

    with pytest.raises(HttpStatusError):
        refresh(Server(handler), mdir)
    assert (mdir / "valuesets" / "snomed-diabetes.yaml").read_text() == DIABETES


SECRET = "internal detail from the server"


def _outcome(status: int) -> Handler:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "diagnostics": SECRET}],
    }
    return lambda _r: httpx.Response(status, json=body)


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("handler", "error", "fragment"),
    [
        (_outcome(404), HttpStatusError, "HTTP 404"),
        (_outcome(503), TemporaryHttpError, "HTTP 503"),
        (_outcome(200), InvalidResponseError, "OperationOutcome"),
        (_refused, TransportError, "no answer"),
        (lambda _r: httpx.Response(200, text=SECRET), InvalidResponseError, "not JSON"),
        (
            lambda _r: httpx.Response(200, json={"resourceType": "Bundle"}),
            InvalidResponseError,
            "not a ValueSet",
        ),
    ],
)
def test_a_server_error_exits_1_with_the_url_and_without_the_servers_text(
    tmp_path, capsys, serve, handler, error, fragment
):
    """Status, transport, bad JSON, OperationOutcome: exit 1, one line, no query, no server text."""
    mdir = mappings(tmp_path, DIABETES)
    with pytest.raises(error):
        refresh(Server(handler), mdir)
    serve(Server(handler))
    code, err = cli(capsys, "--mappings", str(mdir))
    assert code == 1
    # One error line; temporary failures are also retried, each retry a warning line.
    (line,) = [line for line in err.strip().splitlines() if " ERROR " in line]
    assert "error:" in line
    assert "?" not in err
    assert SECRET not in err
    assert fragment in line
    assert EXPAND in line
    assert "?" not in line
    assert "fhir_vs" not in line
    assert SECRET not in line
    assert (mdir / "valuesets" / "snomed-diabetes.yaml").read_text() == DIABETES


def test_the_cli_refreshes_and_prints_one_summary_line_per_set(tmp_path, capsys, serve):
    """`codesets refresh --tx URL --mappings DIR --only NAME` exits 0 with one line per set."""
    mdir = mappings(tmp_path, DIABETES, NAMED)
    server = serve(answering(DIABETES_EXPANSION))
    code, err = cli(capsys, "--mappings", str(mdir), "--only", "snomed-diabetes")
    assert code == 0
    # Log lines: `<time> INFO [<run id>] <message>`.
    assert [line.split("] ", 1)[1] for line in err.strip().splitlines()] == [
        "snomed-diabetes: 2 -> 2 codes, 1 added, 1 removed, 1 of other code systems left out"
    ]
    assert len(server.requests) == 1
    written = yaml.safe_load((mdir / "valuesets" / "snomed-diabetes.yaml").read_text())
    assert json.dumps(written["valueset"]["codes"], sort_keys=True) == json.dumps(
        {"44054006": "Diabetes mellitus type 2", "73211009": "Diabetes mellitus"}
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--only", "nope"], "no value set named nope"),
        (["--timeout", "0"], "argument --timeout: must be above 0"),
    ],
)
def test_bad_cli_arguments_exit_2(tmp_path, capsys, serve, args, fragment):
    """Unknown names and bad options are usage errors, before any request."""
    server = serve(answering(DIABETES_EXPANSION))
    code, err = cli(capsys, "--mappings", str(mappings(tmp_path, DIABETES)), *args)
    assert code == 2
    assert fragment in err
    assert server.requests == []


def test_a_tx_that_is_not_a_url_exits_2(capsys):
    """--tx must be an http(s) base URL."""
    code = main(["codesets", "refresh", "--tx", "tx.test"])
    assert code == 2
    assert "--tx must be an http(s) URL" in capsys.readouterr().err


def test_paging_that_does_not_move_forward_is_an_error(tmp_path):
    """A server that answers every page from the same offset fails instead of looping."""
    server = answering(valueset([concept("1", "One")], expansion={"total": 3, "offset": 1}))
    with pytest.raises(InvalidResponseError, match="paging stopped at 2 of 3"):
        refresh(server, mappings(tmp_path, NAMED))
    assert len(server.requests) == 2


def test_the_terminology_section_of_the_site_file_gives_proxy_ca_bundle_and_timeout(
    tmp_path, capsys, monkeypatch
):
    """Never the environment (issue 11): the proxy and CA bundle come from `terminology:` in the
    site file, a relative bundle read from the file's folder; --timeout overrides its timeout."""
    server = answering(DIABETES_EXPANSION)
    seen: list[tuple[float, dict[str, object]]] = []

    def client(timeout: float, **trust: object) -> object:
        seen.append((timeout, trust))
        return server.client()

    monkeypatch.setattr(terminology, "tx_client", client)
    site = tmp_path / "site" / "site.yaml"
    site.parent.mkdir()
    site.write_text(
        "terminology:\n  proxy: http://proxy.hospital.test:3128\n  ca_bundle: ca.pem\n"
        "  timeout: 15\n"
    )
    folder = mappings(tmp_path, DIABETES)
    assert cli(capsys, "--mappings", str(folder), "--config", str(site))[0] == 0
    assert cli(capsys, "--mappings", str(folder), "--config", str(site), "--timeout", "5")[0] == 0
    trust = {"proxy": "http://proxy.hospital.test:3128", "ca_bundle": site.parent / "ca.pem"}
    assert seen == [(15.0, trust), (5.0, trust)]
