"""Logs hold no patient data, at any level and in either format (issue 11).

A copy of the demo population whose every identifying string is easy to find is swept at
`--log-level debug`, in text and in JSON:
- from its files, with a folder sink;
- over REST, through the fault-injecting proxy in front of a server of this module's own, with
  the same server as sink, and with faults that make the adapter log retries and read-backs.

No patient name, birth date, identifier value, resource id (the population's, and the
ResearchSubject and Provenance ids the sink wrote) or lab value may appear on stderr. Lab values
are shifted by a tail of digits (`3.9` becomes `3.900713`), so that a value in a log line is found
and a count or a wait is not mistaken for one. The same strings are asserted to be in the
owner-only results.json, so that the test could fail: they are real, and only the logs lack them.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml
from proxy import FaultProxy, LostResponse, Status

if TYPE_CHECKING:
    from conftest import Sweep, SweepRunner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TRIAL = "hcc-ablation-lenvatinib-pd1"
TRIAL_FILE = ROOT / "mappings" / "trials" / f"{TRIAL}.yaml"
TAIL = 0.000713  # added to every lab value: 3.9 -> 3.900713
PREFIX = "logt-"  # every resource id, so no id of this population is shared with the demo's
SITE = {
    side: {"timeout": 10, "retry_attempts": 4, "retry_max_wait": 0.5} for side in ("source", "sink")
}
FORMATS = ("text", "json")


def shifted(value: Any) -> Any:
    return round(value + TAIL, 6) if isinstance(value, int | float) else value


def population(demo: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The demo with ids prefixed, references rewritten and lab values shifted."""
    out = []
    for original in demo:
        resource = copy.deepcopy(original)
        resource["id"] = PREFIX + resource["id"]
        for key in ("subject", "patient"):
            ref = resource.get(key)
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                kind, rid = ref["reference"].split("/", 1)
                ref["reference"] = f"{kind}/{PREFIX}{rid}"
        quantities = [resource.get("valueQuantity")]
        quantities += [c.get("valueQuantity") for c in resource.get("component", [])]
        for quantity in quantities:
            if isinstance(quantity, dict) and "value" in quantity:
                quantity["value"] = shifted(quantity["value"])
        out.append(resource)
    return out


def identifying_strings(resources: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """What must never be logged, by kind."""
    found: dict[str, set[str]] = {
        "name": set(),
        "birth date": set(),
        "identifier": set(),
        "id": set(),
        "value": set(),
    }
    for r in resources:
        found["id"].add(r["id"])
        for ident in r.get("identifier", []):
            found["identifier"].add(ident["value"])
        if r["resourceType"] == "Patient":
            found["birth date"].add(r["birthDate"])
            for name in r.get("name", []):
                found["name"].update(name.get("given", []))
                found["name"].add(name["family"])
        quantities = [r.get("valueQuantity")]
        quantities += [c.get("valueQuantity") for c in r.get("component", [])]
        for quantity in quantities:
            if isinstance(quantity, dict) and isinstance(quantity.get("value"), float):
                found["value"].add(repr(quantity["value"]))
    return found


def leaks(stderr: str, forbidden: dict[str, set[str]]) -> list[str]:
    """`kind: string` for every forbidden string found on stderr (as a whole token)."""
    found = []
    for kind, strings in forbidden.items():
        for text in strings:
            if re.search(rf"(?<![\w.-]){re.escape(text)}(?![\w-]|\.\d)", stderr):
                found.append(f"{kind}: {text}")
    return sorted(found)


def trial_copy(folder: Path) -> Path:
    definition = yaml.safe_load(TRIAL_FILE.read_text())
    trial_id = f"logs-{uuid.uuid4().hex[:12]}"
    definition["id"] = trial_id
    definition["study"] = {"system": "urn:trial-adapter:log-test", "value": trial_id}
    path = folder / f"{trial_id}.yaml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def resources(demo_resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return population(demo_resources)


@pytest.fixture(scope="module")
def folder(resources: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The population as NDJSON files, one per type."""
    path = tmp_path_factory.mktemp("population")
    by_type: dict[str, list[str]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(json.dumps(r))
    for kind, lines in by_type.items():
        (path / f"{kind}.ndjson").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def server(
    private_server: str,
    resources: list[dict[str, Any]],
    load_resources: Callable[[httpx.Client, Iterable[dict[str, Any]]], None],
) -> str:
    headers = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
    with httpx.Client(base_url=private_server + "/", headers=headers, timeout=60) as client:
        load_resources(client, resources)
    return private_server


@pytest.fixture(scope="module")
def site_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("site") / "site.yaml"
    path.write_text(yaml.safe_dump(SITE))
    return path


@pytest.fixture
def proxy(server: str) -> Iterator[FaultProxy]:
    with FaultProxy(server) as running:
        yield running


def written_ids(client: httpx.Client, study_value: str) -> set[str]:
    """The ids of the ResearchSubjects (and their Provenance) the sink wrote for the study."""
    ids: set[str] = set()
    url: str | None = "ResearchSubject?_count=500"
    while url:
        page = client.get(url).json()
        for entry in page.get("entry", []):
            subject = entry["resource"]
            if study_value in json.dumps(subject.get("identifier", [])):
                ids.add(subject["id"])
        links = page.get("link", [])
        url = next((link["url"] for link in links if link["relation"] == "next"), None)
    provenance = client.get("Provenance?_count=1000").json()
    for entry in provenance.get("entry", []):
        targets = json.dumps(entry["resource"].get("target", []))
        if any(i in targets for i in ids):
            ids.add(entry["resource"]["id"])
    return ids


def assert_no_leaks(done: Sweep, forbidden: dict[str, set[str]]) -> None:
    assert done.code == 0, done.stderr[-2000:]
    leaked = leaks(done.stderr, forbidden)
    assert not leaked, f"{len(leaked)} patient strings on stderr, e.g. {leaked[:5]}"
    # The strings are real: the owner-only results hold the patients' ids and values.
    results = json.dumps(done.report)
    assert any(pid in results for pid in forbidden["id"])
    assert any(v in results for v in forbidden["value"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_folder_sweep_at_debug_logs_no_patient_data(
    fmt: str,
    folder: Path,
    resources: list[dict[str, Any]],
    run_sweep: SweepRunner,
    tmp_path: Path,
) -> None:
    trial = trial_copy(tmp_path)
    sink = tmp_path / "sink"
    done = run_sweep(
        tmp_path / "out",
        "--source", str(folder), "--sink", str(sink),
        "--log-level", "debug", "--log-format", fmt,
        trial=trial,
    )  # fmt: skip
    forbidden = identifying_strings(resources)
    for line in (sink / "ResearchSubject.ndjson").read_text().splitlines():
        forbidden["id"].add(json.loads(line)["id"])
    assert len(done.stderr.splitlines()) >= 3
    assert_no_leaks(done, forbidden)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_rest_sweep_with_retries_at_debug_logs_no_patient_data(
    fmt: str,
    proxy: FaultProxy,
    server: str,
    resources: list[dict[str, Any]],
    site_file: Path,
    run_sweep: SweepRunner,
    tmp_path: Path,
) -> None:
    trial = trial_copy(tmp_path)
    proxy.inject(Status(503, retry_after="0"), "GET", r"Observation.*", nth=1)
    proxy.inject(Status(503, retry_after="0"), "POST", r"Observation/_search", nth=1)
    proxy.inject(LostResponse(), "PUT", r"ResearchSubject/.*", nth=2)
    proxy.inject(Status(429, retry_after="0"), "PUT", r"Provenance/.*", nth=3)
    done = run_sweep(
        tmp_path / "out",
        "--source", proxy.base_url, "--sink", proxy.base_url, "--config", str(site_file),
        "--log-level", "debug", "--log-format", fmt, "--page-size", "50",
        trial=trial,
    )  # fmt: skip
    forbidden = identifying_strings(resources)
    with httpx.Client(
        base_url=server + "/", headers={"Accept": "application/fhir+json"}, timeout=60
    ) as client:
        forbidden["id"] |= written_ids(client, trial.stem)
    assert len(forbidden["id"]) > len(resources), "the sink wrote nothing"
    assert re.search(r"retrying in", done.stderr), done.stderr[-2000:]
    assert_no_leaks(done, forbidden)
