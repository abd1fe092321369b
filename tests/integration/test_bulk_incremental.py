"""Incremental Bulk runs on a real server (issue 14, "Incremental").

The demo population on a server of this module's own (changing it would move the counts other
modules compare on the session's server). A first `sweep --bulk system` at 2026-06-15 is a full
export and fills the facts store. Then the data change: a new hemoglobin for demo-14 (who had
none), demo-36's lung metastasis deleted, and a new patient with a recurrent HCC. A second run at
2026-09-15 exports only what changed (`_since` the first export's transactionTime), sees the
deletion in the Condition history (sekmet lists no `deleted` files), reads only the three changed
patients again, and evaluates everyone: demo-01's labs have aged out with no new data. Its
verdicts are those of a full export (`--full`) of the same data at the same as-of.
"""

from __future__ import annotations

import copy
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import own_server
import pytest

if TYPE_CHECKING:  # conftest is not importable at run time; the names are for the reader
    from conftest import Sweep, SweepRunner

# The module's own server (tests/integration/own_server.py) in place of the session's.
fhir_base_url = own_server.fhir_base_url
fhir = own_server.fhir

pytestmark = pytest.mark.integration

LATER = "2026-09-15"
CHANGED = ("demo-14", "demo-36", "incr-new-01")
Verdicts = dict[str, tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class Runs:
    first: Sweep
    second: Sweep
    full: Sweep
    state: Path
    #: the changed patients' resources on the server after the changes, per type
    changed: dict[str, list[dict[str, Any]]]


def verdicts(results: dict[str, Any]) -> Verdicts:
    return {
        p["patient"]: (p["status"], {cid: c["result"] for cid, c in p["criteria"].items()})
        for p in results["patients"]
    }


def owner(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    return str(resource["subject"]["reference"]).removeprefix("Patient/")


@pytest.fixture(scope="module")
def runs(
    fhir: httpx.Client,
    fhir_base_url: str,
    demo_resources: list[dict[str, Any]],
    load_resources: Callable[[httpx.Client, Iterable[dict[str, Any]]], None],
    run_sweep: SweepRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Runs:
    load_resources(fhir, demo_resources)
    folder = tmp_path_factory.mktemp("bulk-incremental")
    site = folder / "site.yaml"
    # sekmet answers Retry-After: 10 while an export runs, which it finishes in well under 1 s
    site.write_text("source:\n  bulk_max_wait: 1\n")
    state = folder / "state"

    def sweep(name: str, *args: str) -> Sweep:
        common = ("--source", fhir_base_url, "--bulk", "system", "--config", str(site))
        return run_sweep(folder / name, *common, "--state-dir", str(state), *args)

    first = sweep("first")
    lab = copy.deepcopy(next(r for r in demo_resources if r["id"] == "demo-14-plt"))
    lab |= {"id": "demo-14-hgb-new", "effectiveDateTime": "2026-09-10T08:30:00+08:00"}
    lab["code"] = {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}
    lab["valueQuantity"] = {
        "value": 12.4,
        "unit": "g/dL",
        "system": "http://unitsofmeasure.org",
        "code": "g/dL",
    }
    lab.pop("issued", None)
    hcc = copy.deepcopy(next(r for r in demo_resources if r["id"] == "demo-01-hcc"))
    hcc |= {"id": "incr-new-01-hcc", "subject": {"reference": "Patient/incr-new-01"}}
    patient = copy.deepcopy(next(r for r in demo_resources if r["id"] == "demo-01"))
    patient |= {"id": "incr-new-01", "identifier": []}
    load_resources(fhir, [lab, patient, hcc])
    deleted = fhir.delete("Condition/demo-36-lung-mets")
    assert deleted.status_code in (200, 204), deleted.text[:500]

    second = sweep("second", "--as-of", LATER)
    full = sweep("full", "--as-of", LATER, "--full")
    changed: dict[str, list[dict[str, Any]]] = {}
    for resource in [*demo_resources, lab, patient, hcc]:
        if owner(resource) in CHANGED and resource["id"] != "demo-36-lung-mets":
            changed.setdefault(resource["resourceType"], []).append(resource)
    return Runs(first, second, full, state, changed)


def test_the_first_run_is_a_full_export(runs: Runs) -> None:
    bulk = runs.first.report["bulk"]
    assert bulk["mode"] == "full"
    assert bulk["since"] is None
    assert bulk["full_because"] == "no earlier export to build on"
    assert len(runs.first.report["patients"]) == 80


def test_the_second_run_exports_what_changed_since_the_first(runs: Runs) -> None:
    first, second = runs.first.report["bulk"], runs.second.report["bulk"]
    assert second["mode"] == "incremental"
    assert second["since"] == first["transaction_time"]
    assert second["transaction_time"] > first["transaction_time"]
    # the new lab, the new patient and their Condition: nothing else was written since
    assert second["files"] == {"Condition": 1, "Observation": 1, "Patient": 1}
    # sekmet lists no `deleted` files: the deletion is seen in the Condition history
    assert second["deletions"] == "history"
    assert second["deleted"] == 1


def test_the_second_run_reads_only_the_changed_patients_again(runs: Runs) -> None:
    second = runs.second.report["bulk"]
    assert second["changed_patients"] == len(CHANGED)
    fetched = second["resources_fetched"]
    for kind in ("Patient", "Condition", "Procedure"):
        assert fetched[kind] == len(runs.changed.get(kind, [])), kind
    # Observations are searched by the trial's codes, as the REST sweep searches them
    assert 0 < fetched["Observation"] <= len(runs.changed["Observation"])
    # the view the sweep read holds every patient's resources, not only the changed ones
    assert second["view"]["Patient"] == 92
    assert runs.second.report["stats"]["read"]["Patient"] == 81


def test_the_incremental_run_decides_as_a_full_export_of_the_same_data(runs: Runs) -> None:
    assert runs.full.report["bulk"]["mode"] == "full"
    assert runs.full.report["bulk"]["full_because"] == "--full"
    incremental, full = verdicts(runs.second.report), verdicts(runs.full.report)
    assert incremental == full
    assert len(incremental) == 81  # the new patient came into the cohort


def test_the_changes_and_the_passing_time_show_in_the_verdicts(runs: Runs) -> None:
    before, after = verdicts(runs.first.report), verdicts(runs.second.report)
    # a new lab
    assert before["Patient/demo-14"][1]["hemoglobin"] == "unknown"
    assert after["Patient/demo-14"][1]["hemoglobin"] == "met"
    # a deleted Condition
    assert before["Patient/demo-36"][1]["no_extrahepatic_metastasis"] == "not_met"
    assert after["Patient/demo-36"][1]["no_extrahepatic_metastasis"] == "met"
    # a lab ageing out, with no new data: read from the facts store, evaluated again
    assert before["Patient/demo-01"] == ("candidate", before["Patient/demo-01"][1])
    assert after["Patient/demo-01"][1]["platelets"] == "unknown"
    assert after["Patient/demo-01"][0] == "potential-candidate"
    assert "Patient/incr-new-01" not in before
    assert "Patient/incr-new-01" in after


def test_only_the_owner_only_facts_store_stays_in_the_state_folder(runs: Runs) -> None:
    """The job folders are removed after each sweep; the store stays, 0600, for the next run."""
    left = sorted((runs.state / "bulk").iterdir())
    assert [p.name.split(".", 1)[1] for p in left if not p.name.endswith(("-wal", "-shm"))] == [
        "store.sqlite3"
    ]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in left)
