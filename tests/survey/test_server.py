"""The survey on a FHIR server: a bounded sample in `_count` pages, paging checks, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from adapter.cli import main

BASE = "https://fhir.example.org/r4"
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
CAPABILITIES = {
    "resourceType": "CapabilityStatement",
    "fhirVersion": "4.0.1",
    "rest": [{"mode": "server"}],
}


def obs(n: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"o{n}",
        "meta": {"tag": [SUBSETTED]},
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]
        },
        "valueQuantity": {"value": 10 + n, "unit": "g/dL"},
    }


def bundle(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if next_url:
        doc["link"] = [{"relation": "next", "url": next_url}]
    return doc


def serve_basics(router: respx.MockRouter) -> None:
    router.get(f"{BASE}/metadata").respond(200, json=CAPABILITIES)
    patient = {"resourceType": "Patient", "id": "p1", "meta": {"tag": [SUBSETTED]}}
    router.get(f"{BASE}/Patient").respond(200, json=bundle([patient]))


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


def page_router(
    router: respx.MockRouter, pages: dict[str, dict[str, Any]]
) -> dict[str, respx.Route]:
    """Observation pages by their `page` parameter (the first has none)."""
    routes = {}
    for key, body in pages.items():
        params = {"page": key} if key else {"_count": "3"}
        routes[key] = router.get(f"{BASE}/Observation", params=params).respond(200, json=body)
    return routes


def test_a_server_sample_stops_at_the_bound_following_next_links(tmp_path, capsys):
    """--sample 3: `_count=3` with `_elements`, next links followed, no page read past the bound."""
    with respx.mock(assert_all_called=False) as router:
        serve_basics(router)
        routes = page_router(
            router,
            {
                "": bundle([obs(1), obs(2)], f"{BASE}/Observation?page=2"),
                "2": bundle([obs(3), obs(4)], f"{BASE}/Observation?page=3"),
                "3": bundle([obs(5)]),
            },
        )
        for kind in ("Condition", "Procedure"):
            router.get(f"{BASE}/{kind}").respond(200, json=bundle([]))
        code, _stdout, stderr = survey(capsys, tmp_path / "out", "--sample", "3")
    assert code == 0, stderr
    first = routes[""].calls[0].request.url
    assert first.params["_count"] == "3"
    assert "valueQuantity" in first.params["_elements"]
    assert routes["2"].called
    assert not routes["3"].called
    doc = json.loads((tmp_path / "out" / "survey.json").read_text())
    assert doc["sample"]["Observation"] == {"read": 3, "limit": 3, "complete": False}
    assert doc["sample"]["Condition"] == {"read": 0, "limit": 3, "complete": True}
    (row,) = doc["observations"]
    assert (row["code"], row["count"], row["analyte"]) == ("718-7", 3, "hemoglobin")
    assert doc["source"] == BASE


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(
            400,
            json={
                "resourceType": "OperationOutcome",
                "issue": [
                    {"severity": "error", "code": "required", "diagnostics": "patient is required"}
                ],
            },
        ),
        httpx.Response(403),
        httpx.Response(
            200,
            json={
                "resourceType": "OperationOutcome",
                "issue": [
                    {"severity": "error", "code": "required", "diagnostics": "patient is required"}
                ],
            },
        ),
        httpx.Response(
            200,
            json={
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "OperationOutcome",
                            "issue": [{"severity": "fatal", "code": "required"}],
                        },
                        "search": {"mode": "outcome"},
                    }
                ],
            },
        ),
    ],
    ids=["400-outcome", "403", "200-outcome", "bundle-with-outcome-only"],
)
def test_a_server_that_refuses_type_wide_searches_exits_1_in_one_line(tmp_path, capsys, answer):
    with respx.mock(assert_all_called=False) as router:
        serve_basics(router)
        router.get(f"{BASE}/Observation").mock(return_value=answer)
        code, _stdout, stderr = survey(capsys, tmp_path / "out")
    assert code == 1
    lines = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1
    assert "--read per-patient" in lines[0]
    assert "--cohort group:ID" in lines[0]
    assert not (tmp_path / "out" / "survey.json").exists()


def test_a_next_link_off_the_server_is_refused(tmp_path, capsys):
    with respx.mock(assert_all_called=False) as router:
        serve_basics(router)
        router.get(f"{BASE}/Observation").respond(
            200, json=bundle([obs(1)], "https://elsewhere.example/r4/Observation?page=2")
        )
        code, _, stderr = survey(capsys, tmp_path / "out")
    assert code == 1
    assert "outside the configured FHIR server" in stderr
