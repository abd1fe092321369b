"""The survey on servers that answer one patient at a time (issue 13): a sample of a Group's
members (or a file's patients) read whole, each search naming one patient."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from adapter.cli import main
from adapter.survey.per_patient import spread

BASE = "https://ehr.example.org/api/FHIR/R4"
CAPABILITIES = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": []}
LOINC = "http://loinc.org"


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def group(*ids: str) -> dict[str, Any]:
    return {
        "resourceType": "Group",
        "id": "registry",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in ids],
    }


def albumin(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"alb-{pid}",
        "status": "final",
        "subject": {"reference": f"Patient/{pid}"},
        "category": [{"coding": [{"code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": "1751-7", "display": "Albumin"}]},
        "valueQuantity": {"value": 3.9, "unit": "g/dL"},
    }


class OnePatientServer:
    """Refuses every clinical search without exactly one `patient`, as Epic does."""

    def __init__(self, members: list[str]) -> None:
        self.members = members
        self.searches: list[httpx.URL] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        path = url.path.removeprefix("/api/FHIR/R4/")
        if path == "metadata":
            return httpx.Response(200, json=CAPABILITIES)
        if path == "Group/registry":
            return httpx.Response(200, json=group(*self.members))
        self.searches.append(url)
        patient = url.params.get("patient")
        if not patient or "," in patient:
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": []})
        if path == "Observation":
            if "category" not in url.params and "code" not in url.params:
                return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": []})
            return httpx.Response(200, json=bundle([albumin(patient)]))
        return httpx.Response(200, json=bundle([]))


def survey(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> tuple[int, str, str]:
    code = main(
        [
            "survey",
            "--source",
            BASE,
            "--trial",
            "hcc-ablation-lenvatinib-pd1",
            "--out",
            str(out),
            *extra,
        ]
    )
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


def test_an_epic_server_is_surveyed_one_member_at_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = OnePatientServer([f"p{i}" for i in range(10)])
    with respx.mock(assert_all_called=False) as router:
        router.route(host="ehr.example.org").mock(side_effect=server)
        code, _out, stderr = survey(
            capsys,
            tmp_path / "out",
            "--profile",
            "epic",
            "--cohort",
            "group:registry",
            "--patients",
            "4",
        )
    assert code == 0, stderr
    patients = {url.params["patient"] for url in server.searches}
    assert len(patients) == 4
    observation_searches = [u for u in server.searches if u.path.endswith("/Observation")]
    assert all("category" in u.params for u in observation_searches)
    doc = json.loads((tmp_path / "out" / "survey.json").read_text(encoding="utf-8"))
    assert "1751-7" in json.dumps(doc, default=list)


def test_without_a_cohort_the_survey_says_how_to_name_the_patients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = OnePatientServer([])
    with respx.mock(assert_all_called=False) as router:
        router.route(host="ehr.example.org").mock(side_effect=server)
        code, _out, stderr = survey(capsys, tmp_path / "out", "--profile", "epic")
    assert code == 2
    assert "--cohort group:ID" in stderr
    assert not server.searches


def test_the_sample_is_spread_over_the_sorted_members() -> None:
    ids = [f"p{i:03d}" for i in range(100)]
    chosen = spread(list(reversed(ids)), 4)
    assert chosen == ["p000", "p025", "p050", "p075"]
    assert spread(["b", "a"], 5) == ["a", "b"]
