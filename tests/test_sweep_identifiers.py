"""The identifier a sink on another server names a patient by: the MRN, else the first that is
no personal document number, never an SSN.

Some sources list a social security number first; a logical reference built from
`identifier[0]` would carry it to another server (issue 12).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import date
from pathlib import Path

from adapter.sources.files import FolderSource
from adapter.sweep import run_sweep
from adapter.trials import load_trial

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo"
SSN = {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"}
MR = {
    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
    "system": "urn:hospital:mrn",
    "value": "MRN-0001",
}


def sweep(tmp_path: Path, identifiers: list[dict[str, object]], mrn_system: str | None = None):
    folder = tmp_path / "src"
    shutil.copytree(DEMO, folder)
    path = folder / "Patient.ndjson"
    lines = []
    for line in path.read_text().splitlines():
        patient = json.loads(line)
        if patient["id"] == "demo-01":
            patient["identifier"] = identifiers
        lines.append(json.dumps(patient))
    path.write_text("\n".join(lines) + "\n")
    trial = load_trial("hcc-ablation-lenvatinib-pd1", None, site_mappings=None)

    async def main():
        source = FolderSource(folder)
        try:
            return await run_sweep(trial, source, date(2026, 6, 15), mrn_system=mrn_system)
        finally:
            await source.aclose()

    return asyncio.run(main())


def test_the_mrn_of_type_mr_is_taken_not_the_ssn_listed_first(tmp_path):
    result = sweep(tmp_path, [SSN, MR])
    assert result.identifiers["Patient/demo-01"] == ("urn:hospital:mrn", "MRN-0001")
    assert result.identities["Patient/demo-01"].mrn == "MRN-0001"


def test_a_social_security_number_is_never_taken(tmp_path):
    """Neither by its system nor, under another system, by its type SS."""
    typed = {
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]
        },
        "system": "urn:state:ssn",
        "value": "999-12-3456",
    }
    result = sweep(tmp_path, [SSN, typed])
    assert "Patient/demo-01" not in result.identifiers
    assert result.identities["Patient/demo-01"].mrn is None


def test_without_an_mrn_the_first_identifier_that_is_no_personal_number_is_taken(tmp_path):
    other = {"system": "urn:hospital:patient-id", "value": "P-77"}
    result = sweep(tmp_path, [SSN, other])
    assert result.identifiers["Patient/demo-01"] == ("urn:hospital:patient-id", "P-77")
    # not an MRN: the worklist's MRN column stays blank
    assert result.identities["Patient/demo-01"].mrn is None


def test_the_site_mrn_system_wins(tmp_path):
    site = {"system": "urn:site:mrn", "value": "S-9"}
    result = sweep(tmp_path, [SSN, MR, site], mrn_system="urn:site:mrn")
    assert result.identifiers["Patient/demo-01"] == ("urn:site:mrn", "S-9")
