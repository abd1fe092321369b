"""The restrictive-server harness itself (tests/integration/restrictive.py), spoken to with httpx.

The end-to-end tests of issue 13 (test_restrictive_server.py) prove that a sweep through the
harness matches an unrestricted one; that proves nothing unless the harness really refuses what
Epic refuses, really filters `code` after the search, and really caps `_count`. These tests hold
it to each rule, against three demo patients copied under ids of their own on the local server.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import own_server
import pytest
from restrictive import EPIC, Refusal, RestrictiveProxy, Rules, code_matches, renamed

# The module's own server (tests/integration/own_server.py) in place of the session's.
fhir_base_url = own_server.fhir_base_url
fhir = own_server.fhir

pytestmark = pytest.mark.integration

FHIR_JSON = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
FORM = {"Accept": "application/fhir+json", "Content-Type": "application/x-www-form-urlencoded"}
CAP = 4  # the proxy's `_count` cap here: below every patient's Observation count
PATIENTS = ("demo-01", "demo-02", "demo-86")  # demo-86 has a hemoglobin coded in urn:oid LOINC
MRN = "urn:trial-adapter:demo-mrn"
#: two LOINC tokens and a bare code (any system: also demo-86's urn:oid:2.16.840.1.113883.6.1)
CODES = "http://loinc.org|1751-7,http://loinc.org|777-3,718-7"
CLINICAL = ("Condition", "Observation", "Procedure")


@dataclass(frozen=True)
class Population:
    prefix: str
    group_id: str

    def patient(self, demo_id: str) -> str:
        return self.prefix + demo_id


@pytest.fixture(scope="module")
def population(
    fhir: httpx.Client,
    demo_resources: list[dict[str, Any]],
    load_resources: Callable[[httpx.Client, Iterable[dict[str, Any]]], None],
) -> Population:
    """Three demo patients and everything of theirs under a fresh prefix, and a Group of them."""
    prefix = f"rh{uuid.uuid4().hex[:8]}-"
    wanted = {f"Patient/{p}" for p in PATIENTS}
    mine = [
        r
        for r in demo_resources
        if (r["resourceType"] == "Patient" and f"Patient/{r['id']}" in wanted)
        or r.get("subject", {}).get("reference") in wanted
    ]
    group = {
        "resourceType": "Group",
        "id": "cohort",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{p}"}} for p in PATIENTS],
    }
    load_resources(fhir, renamed([*mine, group], prefix))
    return Population(prefix, prefix + "cohort")


@pytest.fixture
def proxy(fhir_base_url: str) -> Iterator[RestrictiveProxy]:
    with RestrictiveProxy(fhir_base_url, Rules(max_count=CAP)) as running:
        yield running


@pytest.fixture
def client(proxy: RestrictiveProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.base_url + "/", headers=FHIR_JSON, timeout=60) as c:
        yield c


def issue_code(response: httpx.Response) -> str:
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    code: str = outcome["issue"][0]["code"]
    return code


def pages(client: httpx.Client, first: httpx.Response) -> list[dict[str, Any]]:
    """The first page and every page after it, following link[next]."""
    assert first.status_code == 200, first.text[:500]
    found = [first.json()]
    while url := next((x["url"] for x in found[-1].get("link", []) if x["relation"] == "next"), ""):
        assert url.startswith(str(client.base_url)), "a next link left the proxy's base"
        response = client.get(url)
        assert response.status_code == 200, response.text[:500]
        found.append(response.json())
    return found


def ids(bundles: list[dict[str, Any]]) -> list[str]:
    return [e["resource"]["id"] for b in bundles for e in b.get("entry", [])]


# -- one patient per clinical search ---------------------------------------------------------------


@pytest.mark.parametrize("kind", CLINICAL)
def test_a_clinical_search_without_a_patient_is_refused_as_required(
    client: httpx.Client, proxy: RestrictiveProxy, kind: str
) -> None:
    """`GET [type]?code=...` and `POST [type]/_search` without `patient`: 400, `required`."""
    by_get = client.get(kind, params={"code": "http://loinc.org|718-7"})
    by_post = client.post(f"{kind}/_search", content="_count=10", headers=FORM)

    assert (by_get.status_code, by_post.status_code) == (400, 400)
    assert issue_code(by_get) == issue_code(by_post) == "required"
    assert [(s.method, s.refused, s.sent) for s in proxy.seen] == [
        ("GET", "required", None),
        ("POST", "required", None),
    ]


@pytest.mark.parametrize("mode", ["not-supported", "invalid"])
@pytest.mark.parametrize(
    "form",
    [
        pytest.param(lambda a, b: [("patient", f"{a},{b}")], id="comma"),
        pytest.param(lambda a, b: [("patient", a), ("patient", b)], id="repeated"),
        pytest.param(lambda a, b: [("subject", f"Patient/{a},Patient/{b}")], id="subject"),
        pytest.param(lambda a, b: [("patient", a), ("subject", f"Patient/{b}")], id="both"),
    ],
)
@pytest.mark.parametrize("kind", CLINICAL)
def test_a_clinical_search_naming_several_patients_is_refused(
    population: Population,
    fhir_base_url: str,
    kind: str,
    form: Callable[[str, str], list[tuple[str, str]]],
    mode: Refusal,
) -> None:
    """Two patients, however named, by GET or POST: 400 with the mode's issue code, unforwarded."""
    params = tuple(form(population.patient("demo-01"), population.patient("demo-02")))
    with (
        RestrictiveProxy(fhir_base_url, Rules(multi_patient=mode)) as proxy,
        httpx.Client(base_url=proxy.base_url + "/", headers=FHIR_JSON, timeout=60) as client,
    ):
        by_get = client.get(kind, params=params)
        form_body = str(httpx.QueryParams(params))  # a name repeated, as in a query string
        by_post = client.post(f"{kind}/_search", content=form_body, headers=FORM)

        assert (by_get.status_code, by_post.status_code) == (400, 400)
        assert issue_code(by_get) == issue_code(by_post) == mode
        assert all(s.refused == mode and s.sent is None for s in proxy.seen)


@pytest.mark.parametrize(
    ("name", "value"),
    [("patient", "{p}"), ("patient", "Patient/{p}"), ("subject", "Patient/{p}")],
)
def test_a_clinical_search_naming_one_patient_passes(
    client: httpx.Client, proxy: RestrictiveProxy, population: Population, name: str, value: str
) -> None:
    """One patient, as `patient` or `subject`: forwarded, the patient's Conditions answered."""
    patient = population.patient("demo-01")
    response = client.get("Condition", params={name: value.format(p=patient)})

    assert response.status_code == 200, response.text[:500]
    subjects = {e["resource"]["subject"]["reference"] for e in response.json()["entry"]}
    assert subjects == {f"Patient/{patient}"}
    assert [(s.status, s.refused, s.patients) for s in proxy.seen] == [
        (200, None, [value.format(p=patient)])
    ]


# -- code as a post-filter -------------------------------------------------------------------------


@pytest.mark.parametrize("first_by", ["GET", "POST"])
def test_code_is_applied_after_the_search_on_every_page(
    client: httpx.Client,
    proxy: RestrictiveProxy,
    fhir: httpx.Client,
    population: Population,
    first_by: str,
) -> None:
    """The proxy forwards no `code`, filters each page itself (later pages too), and answers no
    `total`; what it finds is what the server's own `code` search finds."""
    patient = population.patient("demo-86")
    params = {"patient": patient, "code": CODES, "_count": "2"}
    if first_by == "GET":
        first = client.get("Observation", params=params)
    else:
        first = client.post("Observation/_search", data=params, headers=FORM)
    bundles = pages(client, first)
    expected = fhir.get("Observation", params={**params, "_count": "100"}).json()

    assert sorted(ids(bundles)) == sorted(e["resource"]["id"] for e in expected["entry"])
    assert len(ids(bundles)) >= 3  # the bare code matched the urn:oid hemoglobin too
    assert all("total" not in b for b in bundles)
    assert any(not b.get("entry") for b in bundles), "some pages are left empty by the filter"
    searches = proxy.searches("Observation")
    assert len(searches) == len(bundles) > 3
    assert all(s.values("code") == [CODES] for s in searches), "every page was asked with code"
    assert all(s.sent is not None and "code" not in dict(s.sent) for s in searches)


def test_a_search_without_code_keeps_its_total(
    client: httpx.Client, population: Population
) -> None:
    """Nothing is filtered, so the server's `total` stands."""
    patient = population.patient("demo-01")
    bundle = client.get("Observation", params={"patient": patient, "_count": "2"}).json()
    assert bundle["total"] == 13


@pytest.mark.parametrize(
    ("codings", "token", "matches"),
    [
        ([("http://loinc.org", "718-7")], "http://loinc.org|718-7", True),
        ([("http://loinc.org", "718-7")], "718-7", True),
        ([("urn:oid:2.16.840.1.113883.6.1", "718-7")], "718-7", True),
        ([("urn:oid:2.16.840.1.113883.6.1", "718-7")], "http://loinc.org|718-7", False),
        ([("http://loinc.org", "718-7")], "|718-7", False),
        ([(None, "718-7")], "|718-7", True),
        (
            [("http://snomed.info/sct", "1"), ("http://loinc.org", "718-7")],
            "http://loinc.org|718-7",
            True,
        ),
        ([("http://loinc.org", "718-7")], "http://loinc.org|777-3,http://loinc.org|718-7", True),
        ([("http://loinc.org", "718-7")], "http://loinc.org|777-3", False),
        ([("urn:local", "a,b")], "urn:local|a\\,b", True),
        ([("urn:local", "a,b")], "urn:local|a", False),
    ],
)
def test_code_tokens_match_as_r4_token_search_does(
    codings: list[tuple[str | None, str]], token: str, matches: bool
) -> None:
    """`system|code`, `|code` (no system), a bare `code` (any system), comma OR, `\\,` escapes."""
    concept = {"coding": [{"code": c} | ({"system": s} if s else {}) for s, c in codings]}
    assert code_matches({"resourceType": "Observation", "code": concept}, [token]) is matches


# -- the _count cap --------------------------------------------------------------------------------


def test_count_above_the_cap_is_lowered_so_the_answer_pages(
    client: httpx.Client, proxy: RestrictiveProxy, population: Population
) -> None:
    """`_count=500` is forwarded as the cap: the page holds the cap and links to the next."""
    patient = population.patient("demo-01")
    bundles = pages(client, client.get("Observation", params={"patient": patient, "_count": 500}))

    assert [len(b.get("entry", [])) for b in bundles] == [CAP, CAP, CAP, 13 - 3 * CAP]
    first = proxy.searches("Observation")[0]
    assert (first.values("_count"), dict(first.sent or ())["_count"]) == (["500"], str(CAP))


def test_count_at_or_below_the_cap_is_forwarded_as_asked(
    client: httpx.Client, proxy: RestrictiveProxy, population: Population
) -> None:
    patient = population.patient("demo-01")
    client.get("Observation", params={"patient": patient, "_count": 3})
    assert dict(proxy.seen[0].sent or ())["_count"] == "3"


# -- what passes -----------------------------------------------------------------------------------


def test_patient_reads_and_identifier_searches_pass(
    client: httpx.Client, proxy: RestrictiveProxy, population: Population
) -> None:
    """`Patient/{id}`, `Patient?identifier=`, `Patient?_id=` with one id: all answered."""
    patient = population.patient("demo-02")
    read = client.get(f"Patient/{patient}")
    by_identifier = client.get(
        "Patient", params={"identifier": f"{MRN}|{population.prefix}DEMO-0002"}
    )
    by_id = client.get("Patient", params={"_id": patient})

    assert read.status_code == 200
    assert read.json()["id"] == patient
    assert [e["resource"]["id"] for e in by_identifier.json()["entry"]] == [patient]
    assert [e["resource"]["id"] for e in by_id.json()["entry"]] == [patient]
    assert proxy.refused == []


@pytest.mark.parametrize("mode", ["not-supported", "invalid"])
def test_a_patient_search_by_several_ids_is_refused(
    fhir_base_url: str, population: Population, mode: Refusal
) -> None:
    """`Patient?_id=a,b` is a multi-patient search on Epic."""
    ids_ = f"{population.patient('demo-01')},{population.patient('demo-02')}"
    with (
        RestrictiveProxy(fhir_base_url, Rules(multi_patient=mode)) as proxy,
        httpx.Client(base_url=proxy.base_url + "/", headers=FHIR_JSON, timeout=60) as client,
    ):
        response = client.get("Patient", params={"_id": ids_})
    assert response.status_code == 400
    assert issue_code(response) == mode


def test_group_reads_and_metadata_pass(
    client: httpx.Client, proxy: RestrictiveProxy, population: Population
) -> None:
    """The Group comes back whole, its member references in the proxy's terms (relative)."""
    group = client.get(f"Group/{population.group_id}")
    metadata = client.get("metadata")

    assert group.status_code == 200
    members = [m["entity"]["reference"] for m in group.json()["member"]]
    assert members == [f"Patient/{population.patient(p)}" for p in PATIENTS]
    assert metadata.status_code == 200
    assert metadata.json()["resourceType"] == "CapabilityStatement"
    assert [s.refused for s in proxy.seen] == [None, None]


def test_writes_pass_unchanged(
    client: httpx.Client, fhir: httpx.Client, population: Population
) -> None:
    """A PUT through the proxy lands on the server as sent (the sink's writes must)."""
    study = {
        "resourceType": "ResearchStudy",
        "id": population.prefix + "study",
        "status": "active",
        "title": "restrictive harness",
    }
    response = client.put(f"ResearchStudy/{study['id']}", json=study)

    assert response.status_code in (200, 201), response.text[:500]
    stored = fhir.get(f"ResearchStudy/{study['id']}").json()
    assert (stored["status"], stored["title"]) == ("active", "restrictive harness")


# -- the record and the links ----------------------------------------------------------------------


def test_every_request_is_recorded_with_its_parameters(
    client: httpx.Client, proxy: RestrictiveProxy, population: Population
) -> None:
    patient = population.patient("demo-01")
    client.get(f"Patient/{patient}")
    client.post("Procedure/_search", data={"patient": patient}, headers=FORM)
    client.get("Condition")

    assert [(s.method, s.path, s.params, s.status) for s in proxy.seen] == [
        ("GET", f"Patient/{patient}", (), 200),
        ("POST", "Procedure/_search", (("patient", patient),), 200),
        ("GET", "Condition", (), 400),
    ]
    assert [s.is_search for s in proxy.seen] == [False, True, True]


def test_next_links_stay_under_the_proxy(
    client: httpx.Client, proxy: RestrictiveProxy, population: Population
) -> None:
    """The server's absolute links are rewritten to the proxy's base (the adapter refuses
    foreign next links), with `code` kept on them."""
    patient = population.patient("demo-01")
    bundle = client.get("Observation", params={"patient": patient, "code": "1751-7"}).json()
    links = {x["relation"]: x["url"] for x in bundle["link"]}
    assert all(url.startswith(proxy.base_url + "/Observation?") for url in links.values())
    assert all(httpx.URL(url).params.get("code") == "1751-7" for url in links.values())


def test_epic_rules_are_the_defaults() -> None:
    assert Rules() == EPIC
    assert (EPIC.max_count, EPIC.multi_patient, EPIC.single_patient_id) == (
        50,
        "not-supported",
        True,
    )
    assert EPIC.one_patient == EPIC.code_post_filter == frozenset(CLINICAL)
