"""The local server's Bulk Data export, done by hand, is a whole copy of what it holds.

This checks the server, not the adapter: `sweep --bulk` (tests/integration/test_bulk_sweep.py)
is compared with the REST sweep of the same server, and that comparison means something only if
the server's `$export` leaves nothing out. The test exports itself (Bulk Data Access IG, system
level, no `_typeFilter`): kick-off `GET [base]/$export?_type=...` with `Prefer: respond-async`,
poll the Content-Location until 200, download every output file of the manifest (each checked to
be on the server's own origin and under its base) as `<Type>.ndjson` (`<Type>.<n>.ndjson` when a
type has several files), and checks every demo resource is in them.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

TYPES = ("Patient", "Condition", "Observation", "Procedure")
EXPORT_TIMEOUT = 60.0  # seconds from kick-off to a complete manifest
MAX_POLL_WAIT = 2.0  # seconds between polls at most, whatever Retry-After says


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def on_server(url: str, base_url: str) -> bool:
    """Whether `url` is on the FHIR server's origin and under its base path."""
    candidate, base = httpx.URL(url), httpx.URL(base_url + "/")
    return origin(candidate) == origin(base) and candidate.path.startswith(base.path)


@dataclass(frozen=True)
class Export:
    folder: Path
    manifest: dict[str, Any]
    kickoff_status: int
    polls: int


def bulk_export(fhir: httpx.Client, base_url: str, folder: Path) -> Export:
    """Run a system-level $export of TYPES and download its files into `folder`."""
    kickoff = fhir.get(
        "$export",
        params={"_type": ",".join(TYPES), "_outputFormat": "application/fhir+ndjson"},
        headers={"Prefer": "respond-async"},
    )
    assert kickoff.status_code == 202, kickoff.text[:2000]
    status_url = kickoff.headers["Content-Location"]
    assert on_server(status_url, base_url), f"status URL off the server: {status_url}"

    polls = 0
    deadline = time.monotonic() + EXPORT_TIMEOUT
    while True:
        status = fhir.get(status_url, headers={"Accept": "application/json"})
        polls += 1
        if status.status_code == 200:
            break
        assert status.status_code == 202, status.text[:2000]
        assert time.monotonic() < deadline, f"export not complete after {EXPORT_TIMEOUT} s"
        time.sleep(min(float(status.headers.get("Retry-After", "1")), MAX_POLL_WAIT))
    manifest = status.json()

    folder.mkdir(parents=True, exist_ok=True)
    outputs = manifest["output"]
    files_of = Counter(item["type"] for item in outputs)
    seen: Counter[str] = Counter()
    for item in outputs:
        url, rtype = item["url"], item["type"]
        # The manifest could name any host; only the server's own origin gets our requests.
        assert on_server(url, base_url), f"output file off the server: {url}"
        n = seen[rtype]
        seen[rtype] += 1
        name = f"{rtype}.ndjson" if files_of[rtype] == 1 else f"{rtype}.{n:03d}.ndjson"
        with fhir.stream("GET", url, headers={"Accept": "application/fhir+ndjson"}) as download:
            assert download.status_code == 200, f"{url}: HTTP {download.status_code}"
            with (folder / name).open("wb") as out:
                for chunk in download.iter_bytes():
                    out.write(chunk)
    # The server keeps the files until told: the export is deleted once downloaded.
    assert fhir.delete(status_url).status_code in (200, 202, 204)
    return Export(folder, manifest, kickoff.status_code, polls)


@pytest.fixture(scope="module")
def demo_loaded(
    fhir: httpx.Client,
    fhir_base_url: str,
    load_resources: Callable[..., None],
    demo_resources: list[dict[str, Any]],
) -> str:
    """The demo population PUT on the server (again: PUT by id is idempotent)."""
    load_resources(fhir, demo_resources)
    return fhir_base_url


@pytest.fixture(scope="module")
def export(
    demo_loaded: str, fhir: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> Export:
    return bulk_export(fhir, demo_loaded, tmp_path_factory.mktemp("bulk") / "export")


def test_export_manifest_lists_the_requested_types_on_the_server(
    export: Export, fhir_base_url: str, demo_resources: list[dict[str, Any]]
) -> None:
    """One NDJSON file per requested type, every line a resource of that type, none missing."""
    assert export.kickoff_status == 202
    manifest = export.manifest
    assert manifest["error"] == []
    assert {item["type"] for item in manifest["output"]} == set(TYPES)
    assert all(on_server(item["url"], fhir_base_url) for item in manifest["output"])
    demo_ids = {(r["resourceType"], r["id"]) for r in demo_resources}
    exported: set[tuple[str, str]] = set()
    for path in sorted(export.folder.glob("*.ndjson")):
        rtype = path.name.split(".")[0]
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        assert lines, f"{path.name} is empty"
        counts = [i["count"] for i in manifest["output"] if i["type"] == rtype and "count" in i]
        if len(counts) == 1:  # `count` is optional in a manifest; when given, it must be right
            assert counts[0] == len(lines), path.name
        resources = [json.loads(line) for line in lines]
        assert {r["resourceType"] for r in resources} == {rtype}
        exported |= {(r["resourceType"], r["id"]) for r in resources}
    assert demo_ids <= exported, f"{len(demo_ids - exported)} demo resources not exported"
