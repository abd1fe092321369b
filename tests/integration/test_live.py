"""The adapter against a live, shared FHIR server: `FHIR_BASE_URL=<base> make test-live`.

tools/test-live.sh checks that the server answers and runs this module with FHIR_LIVE_BASE_URL set
(`pytest -m live`). Without it, or without a network, every test here skips, on CI too: a public
server is no prerequisite of `make test`.

A shared server holds other people's data, so everything this module writes is marked as this
run's: the demo population is copied with every id prefixed `tr-<12 hex>-`, every reference
rewritten to match, a tag `urn:trial-adapter:test-run|<run uuid>` and an identifier in the system
`urn:trial-adapter:test-run:<run uuid>` on every resource. The copy is PUT on the server, swept
with `--source <server>` (never `--sink`: that would write ResearchSubjects for other people's
patients), and only this run's patients are compared with a sweep of the same copy on disk. A
finalizer DELETEs every resource written, referrers first, and then searches by the run's tag to
make sure none is left.

The adapter cannot restrict its cohort to a tag, so the sweep reads every patient on the server
with a diagnosis in the trial's code sets (on the public HAPI server: other people's test data
too); results for them are ignored.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:  # conftest is not importable at run time; the names are for the reader
    from conftest import Sweep, SweepRunner

# usefixtures: the check comes first, so nothing else is set up when the tests are to skip.
pytestmark = [pytest.mark.integration, pytest.mark.live, pytest.mark.usefixtures("live_base_url")]

RUN_TAG_SYSTEM = "urn:trial-adapter:test-run"
DELETE_ORDER = ("Observation", "Procedure", "Condition", "Patient")  # referrers first
DELETE_BATCH = 100  # DELETE entries per batch Bundle
GONE = ("200", "202", "204", "404", "410")  # deleted, or never there
FHIR_JSON = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
SWEEP_TIMEOUT = 900  # seconds: a public server's cohort may be large and slow to read


@pytest.fixture(scope="session")
def live_base_url() -> str:
    """FHIR_LIVE_BASE_URL, when set and answering; otherwise the live tests skip (CI included)."""
    url = os.environ.get("FHIR_LIVE_BASE_URL", "").strip().rstrip("/")
    if not url:
        pytest.skip("FHIR_LIVE_BASE_URL is not set: run `FHIR_BASE_URL=<FHIR base> make test-live`")
    try:
        response = httpx.get(f"{url}/metadata", headers=FHIR_JSON, timeout=10)
    except httpx.HTTPError as exc:
        pytest.skip(f"{url} does not answer ({type(exc).__name__}): no network?")
    if response.status_code >= 500:
        pytest.skip(f"{url}/metadata answered HTTP {response.status_code}: the server is down")
    assert response.status_code == 200, f"{url}/metadata answered HTTP {response.status_code}"
    assert response.json().get("resourceType") == "CapabilityStatement"
    return url


@dataclass(frozen=True)
class LiveRun:
    """This run's copy of the demo population: how it is marked, and its files on disk."""

    run_id: str
    prefix: str
    resources: list[dict[str, Any]]
    folder: Path

    @property
    def tag(self) -> str:
        """The run's tag as a search token."""
        return f"{RUN_TAG_SYSTEM}|{self.run_id}"

    @property
    def identifier_system(self) -> str:
        return f"{RUN_TAG_SYSTEM}:{self.run_id}"

    def ours(self, patient_reference: str) -> bool:
        return patient_reference.startswith(f"Patient/{self.prefix}")

    def written(self) -> list[tuple[str, str]]:
        return [(r["resourceType"], r["id"]) for r in self.resources]


def rebrand(resources: list[dict[str, Any]], run_id: str) -> tuple[str, list[dict[str, Any]]]:
    """A copy of `resources` marked as the run's: new ids, references, tag and identifier."""
    prefix = f"tr-{run_id[:12]}-"
    known = {(r["resourceType"], r["id"]) for r in resources}

    def rewrite(node: Any) -> None:
        if isinstance(node, dict):
            reference = node.get("reference")
            if isinstance(reference, str) and reference.count("/") == 1:
                rtype, rid = reference.split("/")
                if (rtype, rid) in known:
                    node["reference"] = f"{rtype}/{prefix}{rid}"
            for value in node.values():
                rewrite(value)
        elif isinstance(node, list):
            for value in node:
                rewrite(value)

    copies = []
    for original in resources:
        resource = copy.deepcopy(original)
        rewrite(resource)
        resource["id"] = f"{prefix}{original['id']}"
        meta = resource.setdefault("meta", {})
        meta["tag"] = [*meta.get("tag", []), {"system": RUN_TAG_SYSTEM, "code": run_id}]
        identifier = {"system": f"{RUN_TAG_SYSTEM}:{run_id}", "value": original["id"]}
        resource["identifier"] = [*resource.get("identifier", []), identifier]
        copies.append(resource)
    return prefix, copies


def write_folder(folder: Path, resources: list[dict[str, Any]]) -> None:
    """The resources as Bulk Data NDJSON files, one per type."""
    folder.mkdir(parents=True)
    by_type: dict[str, list[str]] = {}
    for resource in resources:
        by_type.setdefault(resource["resourceType"], []).append(json.dumps(resource))
    for rtype, lines in by_type.items():
        (folder / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n")


def delete_batch(client: httpx.Client, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """DELETE `keys` in one batch Bundle; the keys whose DELETE did not succeed."""
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "DELETE", "url": f"{t}/{i}"}} for t, i in keys],
    }
    try:
        response = client.post("", json=bundle)
        entries = response.json().get("entry", []) if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        entries = []
    if len(entries) != len(keys):
        return keys
    return [
        key
        for key, entry in zip(keys, entries, strict=True)
        if not entry.get("response", {}).get("status", "").startswith(GONE)
    ]


def delete_run(client: httpx.Client, run: LiveRun) -> list[str]:
    """DELETE everything the run wrote; what is still found by its tag afterwards."""
    keys = run.written()
    for rtype in DELETE_ORDER:
        of_type = [k for k in keys if k[0] == rtype]
        for start in range(0, len(of_type), DELETE_BATCH):
            for rtype_, rid in delete_batch(client, of_type[start : start + DELETE_BATCH]):
                with contextlib.suppress(httpx.HTTPError):  # one by one what the batch did not
                    client.delete(f"{rtype_}/{rid}")
    leftovers = []
    for rtype in DELETE_ORDER:
        try:
            found = client.get(rtype, params={"_tag": run.tag, "_elements": "id", "_count": 500})
            for entry in found.json().get("entry", []):
                rid = entry["resource"]["id"]
                if not client.delete(f"{rtype}/{rid}").is_success:
                    leftovers.append(f"{rtype}/{rid}")
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            leftovers.append(f"{rtype}?_tag={run.tag} ({type(exc).__name__})")
    return leftovers


@pytest.fixture(scope="module")
def live_run(
    live_base_url: str,
    demo_resources: list[dict[str, Any]],
    load_resources: Callable[..., None],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveRun]:
    """This run's copy of the demo, on disk and PUT on the live server; deleted at the end."""
    run_id = uuid.uuid4().hex
    prefix, resources = rebrand(demo_resources, run_id)
    run = LiveRun(run_id, prefix, resources, tmp_path_factory.mktemp("live") / "resources")
    write_folder(run.folder, resources)
    with httpx.Client(base_url=live_base_url + "/", headers=FHIR_JSON, timeout=120) as client:
        try:
            load_resources(client, resources)
            yield run
        finally:
            leftovers = delete_run(client, run)
            assert not leftovers, f"left on {live_base_url}: {leftovers[:10]}"


@pytest.fixture(scope="module")
def live_sweep(
    live_run: LiveRun,
    live_base_url: str,
    run_sweep: SweepRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Sweep:
    """The live server swept over its search API (read only: no --sink)."""
    out = tmp_path_factory.mktemp("live-rest")
    return run_sweep(out, "--source", live_base_url, timeout=SWEEP_TIMEOUT)


@pytest.fixture(scope="module")
def run_folder_sweep(
    live_run: LiveRun, run_sweep: SweepRunner, tmp_path_factory: pytest.TempPathFactory
) -> Sweep:
    """The run's copy swept from disk: what the live server must agree with."""
    out = tmp_path_factory.mktemp("live-folder")
    return run_sweep(out, "--source", str(live_run.folder))


def test_everything_written_carries_the_run_tag(live_run: LiveRun, live_base_url: str) -> None:
    """Per type, the server finds by the run's tag exactly what the run wrote."""
    written: dict[str, int] = {}
    for rtype, _ in live_run.written():
        written[rtype] = written.get(rtype, 0) + 1
    with httpx.Client(base_url=live_base_url + "/", headers=FHIR_JSON, timeout=60) as client:
        for rtype, count in written.items():
            found = client.get(rtype, params={"_tag": live_run.tag, "_summary": "count"})
            assert found.status_code == 200, found.text[:500]
            assert found.json().get("total") == count, rtype


def test_the_copy_decides_as_the_demo(
    live_run: LiveRun,
    run_folder_sweep: Sweep,
    demo_folder_sweep: Sweep,
    verdicts_of: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """New ids, tags and identifiers change no verdict (the copy is a fair stand-in)."""
    copied = {
        p.replace(live_run.prefix, "", 1): v
        for p, v in verdicts_of(run_folder_sweep.report).items()
    }
    assert copied == verdicts_of(demo_folder_sweep.report)


def test_live_sweep_completes_for_the_run_patients(live_run: LiveRun, live_sweep: Sweep) -> None:
    """Exit 0, or 3 for other people's patients only: none of ours failed."""
    assert live_sweep.code in (0, 3), live_sweep.stderr[-2000:]
    ours = [e for e in live_sweep.report["errors"] if live_run.prefix in str(e.get("patient"))]
    assert not ours, ours[:5]


def test_every_run_patient_is_in_the_live_cohort(
    live_run: LiveRun, live_sweep: Sweep, run_folder_sweep: Sweep
) -> None:
    """The server's cohort holds exactly the run's patients that the files' cohort holds.

    On HAPI, a search repeated within a minute may be answered from its cache of an earlier,
    identical search (before this run's resources existed): rerun a minute later if this fails.
    """
    live = {p["patient"] for p in live_sweep.report["patients"] if live_run.ours(p["patient"])}
    files = {p["patient"] for p in run_folder_sweep.report["patients"]}
    assert live == files, f"missing {sorted(files - live)[:5]}, extra {sorted(live - files)[:5]}"


def test_live_and_folder_verdicts_agree_for_the_run_patients(
    live_run: LiveRun,
    live_sweep: Sweep,
    run_folder_sweep: Sweep,
    verdicts_of: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Same status and same result for every criterion, patient by patient."""
    live = {p: v for p, v in verdicts_of(live_sweep.report).items() if live_run.ours(p)}
    files = verdicts_of(run_folder_sweep.report)
    differing = sorted(p for p in files if live.get(p) != files[p])
    assert not differing, f"the live server and the files disagree on {differing[:5]}"
