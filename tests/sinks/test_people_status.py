"""Statuses people set on ResearchSubjects (issue 12): read from the sink, reported, never written.

The sink stage (adapter.deliver) fills `SweepResult.people_status` for every cohort patient whose
subject of the trial carries a status other than the adapter's own, and writes none of them:
a folder sink from its ResearchSubject.ndjson, a server sink from one paged search by `study`
(or, where the server cannot search so, from the per-patient reads it makes anyway).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import respx

from adapter.config import ServerConfig
from adapter.criteria.results import PatientVerdict, Status
from adapter.deliver import deliver
from adapter.errors import InvalidResponseError
from adapter.sinks import resources
from adapter.sinks.people import PEOPLE_STATUSES, statuses_by_patient, subject_patient
from adapter.sinks.resources import StudyInfo
from adapter.sources.base import UnreadableItem
from adapter.sweep import PatientFailure, SweepResult
from adapter.trials import load_trial

if TYPE_CHECKING:
    from pathlib import Path

TRIAL = load_trial("hcc-ablation-lenvatinib-pd1")
STUDY = StudyInfo(TRIAL.id, TRIAL.study_system, TRIAL.study_value, TRIAL.title)
STUDY_REF = f"ResearchStudy/{STUDY.resource_id}"
AS_OF = date(2026, 6, 15)
EARLIER = date(2026, 6, 1)
SINK = "https://sink.example.org/fhir/"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
C, P, INELIGIBLE = Status.CANDIDATE, Status.POTENTIAL_CANDIDATE, Status.INELIGIBLE

#: every R4 research-subject-status code (hl7.org/fhir/R4/valueset-research-subject-status.html)
R4_CODES = PEOPLE_STATUSES | {"candidate", "potential-candidate"}


def subject(patient_id: str, status: str, **changes: Any) -> dict[str, Any]:
    """The subject the adapter wrote for the patient on an earlier run, with `status` now."""
    built = resources.research_subject(STUDY, patient_id, C, EARLIER)
    return built | {"status": status} | changes


def sweep(*verdicts: tuple[str, Status], errors: tuple[str, ...] = ()) -> SweepResult:
    """A sweep's result: (patient id, status) verdicts, and patients under errors."""
    return SweepResult(
        TRIAL,
        AS_OF,
        verdicts=[PatientVerdict(f"Patient/{pid}", status) for pid, status in verdicts],
        errors=[PatientFailure(f"Patient/{pid}", "unreadable line") for pid in errors],
    )


def run_deliver(
    sink: str, result: SweepResult, *, source: str = SINK, dry_run: bool = False
) -> dict[str, str]:
    """The sink stage; what it did per patient (`writes`)."""
    writes: dict[str, str] = {}
    asyncio.run(
        deliver(
            sink,
            source=source,
            server_config=ServerConfig(page_size=2),
            env={},
            dry_run=dry_run,
            trial=TRIAL,
            result=result,
            as_of=AS_OF,
            say=lambda _: None,
            writes=writes,
        )
    )
    return writes


# -- which patient, which status -------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(R4_CODES))
def test_every_r4_status_but_the_adapters_own_is_set_by_people(code: str) -> None:
    """The eleven codes people set are read as theirs; candidate and potential-candidate are not."""
    found = statuses_by_patient([subject("pat-1", code)], TRIAL.id)
    expected = {} if code in ("candidate", "potential-candidate") else {"Patient/pat-1": code}
    assert found == expected
    assert len(PEOPLE_STATUSES) == 11


@pytest.mark.parametrize(
    ("changes", "by_identifier", "patient"),
    [
        ({}, None, "Patient/pat-1"),
        ({"individual": {"reference": "Patient/pat-2"}}, None, "Patient/pat-2"),
        # A subject people made by hand: no adapter identifier, the individual says who.
        ({"identifier": [], "individual": {"reference": "Patient/pat-2"}}, None, "Patient/pat-2"),
        ({"individual": {"reference": "Group/g1"}}, None, "Patient/pat-1"),
        ({"identifier": [], "individual": {"reference": "Group/g1"}}, None, None),
        (
            {"individual": {"type": "Patient", "identifier": {"system": "urn:mrn", "value": "9"}}},
            {("urn:mrn", "9"): "Patient/h09"},
            "Patient/h09",
        ),
        # The sink is another server: a literal reference names one of its patients, not ours.
        ({"identifier": [], "individual": {"reference": "Patient/x"}}, {}, None),
        # Another trial's identifier names no patient of this one.
        (
            {
                "identifier": [{"system": resources.SUBJECT_SYSTEM, "value": "other/pat-1"}],
                "individual": {"reference": "Group/g1"},
            },
            None,
            None,
        ),
    ],
)
def test_the_patient_of_a_subject(
    changes: dict[str, Any],
    by_identifier: dict[tuple[str, str], str] | None,
    patient: str | None,
) -> None:
    """By the individual (a relative reference, or an identifier when the sink is another
    server), else by the adapter's own identifier of this trial."""
    changed = subject("pat-1", "withdrawn") | changes
    assert subject_patient(changed, TRIAL.id, by_identifier) == patient


def test_several_subjects_of_one_patient_give_the_first_in_id_order() -> None:
    """Reruns report the same status whatever order the sink lists them in."""
    first = subject("pat-1", "on-study", id="a-1")
    second = subject("pat-1", "withdrawn", id="b-2")
    assert statuses_by_patient([second, first], TRIAL.id) == {"Patient/pat-1": "on-study"}


# -- the folder sink -------------------------------------------------------------------------------


def write_lines(folder: Path, *lines: dict[str, Any] | bytes) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "ResearchSubject.ndjson"
    path.write_bytes(
        b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)
    )
    return path


def lines_of(path: Path) -> dict[str, dict[str, Any]]:
    """Patient reference -> its subject line."""
    subjects = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return {s["individual"]["reference"]: s for s in subjects}


def test_folder_a_withdrawn_candidate_is_kept_as_people_set_it_and_reported(
    tmp_path: Path,
) -> None:
    """A coordinator withdrew pat-1 in the file: the rerun leaves the line as it is, reports
    the status, and writes only the new candidate."""
    withdrawn = subject("pat-1", "withdrawn")
    path = write_lines(tmp_path / "sink", withdrawn)
    result = sweep(("pat-1", C), ("pat-2", C))

    writes = run_deliver(str(tmp_path / "sink"), result)

    assert result.people_status == {"Patient/pat-1": "withdrawn"}
    assert writes == {"Patient/pat-1": "kept_human_status", "Patient/pat-2": "written"}
    after = lines_of(path)
    assert after["Patient/pat-1"] == withdrawn
    assert after["Patient/pat-2"]["status"] == "candidate"


def test_folder_an_ineligible_patient_put_on_study_is_reported_and_kept(tmp_path: Path) -> None:
    """Ineligible by the criteria, but people put them on-study: handled, and their line stays
    (the snapshot would otherwise drop it)."""
    on_study = subject("pat-3", "on-study")
    path = write_lines(tmp_path / "sink", on_study)
    result = sweep(("pat-3", INELIGIBLE))

    writes = run_deliver(str(tmp_path / "sink"), result)

    assert result.people_status == {"Patient/pat-3": "on-study"}
    assert writes == {"Patient/pat-3": "kept_human_status"}
    assert lines_of(path) == {"Patient/pat-3": on_study}


def test_folder_a_bad_line_is_ignored_with_a_warning_that_names_no_patient(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Half a line left by an editor: skipped (and not written back); the other lines count."""
    path = write_lines(
        tmp_path / "sink",
        subject("pat-1", "withdrawn"),
        b'{"resourceType": "ResearchSubject", "individual": {"reference": "Patient/pat-9"',
        b"[1, 2]",
        subject("pat-2", "candidate"),
    )
    result = sweep(("pat-1", C), ("pat-2", C))

    with caplog.at_level(logging.WARNING):
        writes = run_deliver(str(tmp_path / "sink"), result)

    assert result.people_status == {"Patient/pat-1": "withdrawn"}
    assert writes == {"Patient/pat-1": "kept_human_status", "Patient/pat-2": "written"}
    assert sorted(lines_of(path)) == ["Patient/pat-1", "Patient/pat-2"]
    warned = "2 unreadable line(s) of ResearchSubject.ndjson ignored (line numbers 2, 3)"
    assert warned in caplog.text
    assert "pat-" not in caplog.text


def test_folder_a_status_that_is_no_r4_code_is_still_never_overwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo (`Withdrawn`) is the coordinator's word too: kept, reported, and warned about."""
    typo = subject("pat-1", "Withdrawn")
    path = write_lines(tmp_path / "sink", typo)
    result = sweep(("pat-1", C))

    with caplog.at_level(logging.WARNING):
        run_deliver(str(tmp_path / "sink"), result)

    assert result.people_status == {"Patient/pat-1": "Withdrawn"}
    assert lines_of(path) == {"Patient/pat-1": typo}
    assert "1 ResearchSubjects carry a status that is no R4 code" in caplog.text


def test_folder_a_handled_patient_outside_the_cohort_keeps_the_line_unreported(
    tmp_path: Path,
) -> None:
    """people_status covers the cohort; the line of anyone people set stays all the same."""
    elsewhere = subject("pat-7", "off-study")
    path = write_lines(tmp_path / "sink", elsewhere, subject("pat-8", "candidate"))
    result = sweep(("pat-1", C))

    run_deliver(str(tmp_path / "sink"), result)

    assert result.people_status == {}
    assert sorted(lines_of(path)) == ["Patient/pat-1", "Patient/pat-7"]
    assert lines_of(path)["Patient/pat-7"] == elsewhere


def test_folder_the_line_people_set_is_kept_by_its_id_and_an_adapter_duplicate_goes(
    tmp_path: Path,
) -> None:
    """The individual edited to a display-only reference still leaves the adapter's identifier
    naming pat-1: that line stays; an older candidate line of pat-1 is the adapter's own."""
    edited = subject("pat-1", "screening", individual={"display": "see chart"}, id="z-hand")
    path = write_lines(tmp_path / "sink", edited, subject("pat-1", "candidate", id="a-old"))
    result = sweep(("pat-1", C))

    writes = run_deliver(str(tmp_path / "sink"), result)

    assert result.people_status == {"Patient/pat-1": "screening"}
    assert writes == {"Patient/pat-1": "kept_human_status"}
    assert [orjson.loads(line) for line in path.read_bytes().splitlines()] == [edited]


def test_folder_a_patient_under_errors_is_reported_too(tmp_path: Path) -> None:
    """Not evaluated this run, but in the cohort: handled is handled."""
    write_lines(tmp_path / "sink", subject("pat-5", "follow-up"))
    result = sweep(("pat-1", C), errors=("pat-5",))

    run_deliver(str(tmp_path / "sink"), result)

    assert result.people_status == {"Patient/pat-5": "follow-up"}


def test_folder_a_subject_of_another_study_is_not_this_trials(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "sink", subject("pat-1", "withdrawn", study={"reference": "ResearchStudy/x"})
    )
    result = sweep(("pat-1", C))

    writes = run_deliver(str(tmp_path / "sink"), result)

    assert result.people_status == {}
    assert writes == {"Patient/pat-1": "written"}


def test_folder_dry_run_reads_the_statuses_and_writes_nothing(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "sink", subject("pat-1", "withdrawn"))
    before = path.read_bytes()
    result = sweep(("pat-1", C), ("pat-2", P))

    writes = run_deliver(str(tmp_path / "sink"), result, dry_run=True)

    assert result.people_status == {"Patient/pat-1": "withdrawn"}
    assert writes == {"Patient/pat-1": "kept_human_status", "Patient/pat-2": "would_write"}
    assert [w["patient"] for w in result.planned_writes] == ["Patient/pat-2"]
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["ResearchSubject.ndjson"]


def test_folder_without_a_file_yet_has_no_statuses(tmp_path: Path) -> None:
    result = sweep(("pat-1", C))
    assert run_deliver(str(tmp_path / "new"), result) == {"Patient/pat-1": "written"}
    assert result.people_status == {}


def test_without_a_sink_there_is_no_status_to_read() -> None:
    """No sink, no place where people record statuses: people_status stays empty."""
    result = sweep(("pat-1", C))
    writes: dict[str, str] = {}
    asyncio.run(
        deliver(
            None,
            source=SINK,
            server_config=ServerConfig(),
            env={},
            dry_run=False,
            trial=TRIAL,
            result=result,
            as_of=AS_OF,
            say=lambda _: None,
            writes=writes,
        )
    )
    assert result.people_status == {}
    assert writes == {}


def test_withheld_writes_read_no_status_either(tmp_path: Path) -> None:
    """A sweep that withholds writes does not open the sink at all (issue 11)."""
    write_lines(tmp_path / "sink", subject("pat-1", "withdrawn"))
    result = sweep(("pat-1", C))
    result.unreadable.append(UnreadableItem("Observation.ndjson", 3, "not JSON", None))

    assert run_deliver(str(tmp_path / "sink"), result) == {}
    assert result.people_status == {}


# -- the server sink -------------------------------------------------------------------------------


@dataclass
class StudyServer:
    """A FHIR server for the sink: metadata, reads and PUTs by id, and the ResearchSubject search
    by `study`, paged by `_count` with next links; `study_search` says whether it is listed,
    `refuse_search` makes it answer 400 all the same, `other_study` mixes in a stranger."""

    study_search: bool = True
    refuse_search: bool = False
    other_study: bool = False
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.put(resources.research_study(STUDY))
        self.put(resources.device())

    def put(self, resource: dict[str, Any]) -> None:
        body = copy.deepcopy(resource)
        body.setdefault("meta", {})["versionId"] = "1"
        self.stored[f"{resource['resourceType']}/{resource['id']}"] = body

    def put_subject(self, patient_id: str, status: str) -> dict[str, Any]:
        made = subject(patient_id, status)
        self.put(made)
        return self.stored[f"ResearchSubject/{made['id']}"]

    def writes(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests if r.method != "GET"]

    def searches(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == "/fhir/ResearchSubject"]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/fhir/")
        if path == "metadata":
            return self._json(200, self._capabilities())
        if request.method == "GET" and path == "ResearchSubject":
            return self._search(request)
        if request.method == "GET":
            if path in self.stored:
                return self._json(200, self.stored[path])
            return self._outcome(404, f"{path} is not known")
        if request.method == "PUT":
            self.put(orjson.loads(request.content))
            return self._json(201, self.stored[path])
        return self._outcome(405, "not supported")

    def _capabilities(self) -> dict[str, Any]:
        params = [{"name": "study", "type": "reference"}] if self.study_search else []
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": "ResearchSubject",
                            "interaction": [{"code": "read"}, {"code": "search-type"}],
                            "searchParam": params,
                        }
                    ],
                }
            ],
        }

    def _search(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if self.refuse_search or not self.study_search:
            return self._outcome(400, "Unknown search parameter 'study'")
        subjects = [
            body
            for p, body in sorted(self.stored.items())
            if p.startswith("ResearchSubject/") and body["study"]["reference"] == params["study"]
        ]
        if self.other_study:
            subjects.append(subject("pat-9", "withdrawn", study={"reference": "ResearchStudy/x"}))
        count, offset = int(params["_count"]), int(params.get("_offset", "0"))
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(subjects),
            "entry": [
                {"resource": s, "search": {"mode": "match"}}
                for s in subjects[offset : offset + count]
            ],
        }
        if offset + count < len(subjects):
            url = request.url.copy_set_param("_offset", str(offset + count))
            bundle["link"] = [{"relation": "next", "url": str(url)}]
        return self._json(200, bundle)

    def _json(self, status: int, body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(status, json=body, headers=FHIR_JSON)

    def _outcome(self, status: int, text: str) -> httpx.Response:
        body = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "not-supported", "diagnostics": text}],
        }
        return self._json(status, body)


def run_server(
    server: StudyServer, result: SweepResult, *, source: str = SINK, dry_run: bool = False
) -> dict[str, str]:
    with respx.mock(assert_all_called=False) as router:
        router.route(host="sink.example.org").mock(side_effect=server.handle)
        return run_deliver(SINK, result, source=source, dry_run=dry_run)


def handled_population(server: StudyServer) -> SweepResult:
    """pat-1 (candidate) withdrawn, pat-2 (ineligible) on-study, pat-3 the adapter's candidate,
    pat-4 screening but outside the cohort, pat-5 follow-up but under errors."""
    for pid, status in [
        ("pat-1", "withdrawn"),
        ("pat-2", "on-study"),
        ("pat-3", "candidate"),
        ("pat-4", "screening"),
        ("pat-5", "follow-up"),
    ]:
        server.put_subject(pid, status)
    return sweep(("pat-1", C), ("pat-2", INELIGIBLE), ("pat-3", C), ("pat-6", C), errors=("pat-5",))


def subject_path(patient_id: str) -> str:
    return f"/fhir/ResearchSubject/{resources.subject_id(TRIAL.id, patient_id)}"


HANDLED = {
    "Patient/pat-1": "withdrawn",
    "Patient/pat-2": "on-study",
    "Patient/pat-5": "follow-up",
}


def test_server_the_studys_subjects_are_searched_once_and_paged() -> None:
    """One search by study (strict), its next links followed: 5 subjects, 2 a page, 3 pages."""
    server = StudyServer()
    result = handled_population(server)

    run_server(server, result)

    pages = server.searches()
    assert [dict(r.url.params) for r in pages] == [
        {"study": STUDY_REF, "_count": "2"},
        {"study": STUDY_REF, "_count": "2", "_offset": "2"},
        {"study": STUDY_REF, "_count": "2", "_offset": "4"},
    ]
    assert pages[0].headers["Prefer"] == "handling=strict"


def test_server_statuses_are_mapped_to_cohort_patients_and_never_written() -> None:
    """Handled patients are neither read one by one nor written; the others as before."""
    server = StudyServer()
    result = handled_population(server)
    before = copy.deepcopy(server.stored)

    writes = run_server(server, result)

    assert result.people_status == HANDLED
    assert writes == {
        "Patient/pat-1": "kept_human_status",
        "Patient/pat-2": "kept_human_status",
        "Patient/pat-3": "unchanged",
        "Patient/pat-6": "created",
    }
    read = {r.url.path for r in server.requests if r.method == "GET"}
    assert subject_path("pat-1") not in read
    assert subject_path("pat-2") not in read
    for pid in ("pat-1", "pat-2", "pat-4", "pat-5"):
        path = subject_path(pid).removeprefix("/fhir/")
        assert server.stored[path] == before[path]
    assert f"PUT {subject_path('pat-6')}" in server.writes()
    assert not any(
        subject_path(p) in w for p in ("pat-1", "pat-2", "pat-3") for w in server.writes()
    )


def test_server_a_dry_run_reads_the_statuses_and_sends_no_write() -> None:
    server = StudyServer()
    result = handled_population(server)

    writes = run_server(server, result, dry_run=True)

    assert result.people_status == HANDLED
    assert server.writes() == []
    assert writes["Patient/pat-1"] == writes["Patient/pat-2"] == "kept_human_status"
    planned = {w["patient"] for w in result.planned_writes}
    assert planned.isdisjoint(HANDLED)
    assert "Patient/pat-6" in planned


def test_server_without_the_study_search_takes_what_the_per_patient_reads_find() -> None:
    """Nothing searched: every evaluated patient's subject is read anyway, and that is where the
    statuses come from. A patient under errors is not read, so not reported."""
    server = StudyServer(study_search=False)
    result = handled_population(server)

    writes = run_server(server, result)

    assert server.searches() == []
    assert result.people_status == {"Patient/pat-1": "withdrawn", "Patient/pat-2": "on-study"}
    assert writes["Patient/pat-1"] == writes["Patient/pat-2"] == "kept_human_status"
    assert not any(subject_path(p) in w for p in ("pat-1", "pat-2") for w in server.writes())


def test_server_a_refused_search_falls_back_to_the_reads_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = StudyServer(refuse_search=True)
    result = handled_population(server)

    with caplog.at_level(logging.WARNING):
        run_server(server, result)

    assert len(server.searches()) == 1
    assert result.people_status == {"Patient/pat-1": "withdrawn", "Patient/pat-2": "on-study"}
    assert "the ResearchSubject search by study was refused (HTTP 400" in caplog.text
    assert "pat-" not in caplog.text


def test_server_a_search_answered_with_another_studys_subject_is_refused() -> None:
    """A server that ignored `study` would hand out every trial's subjects: never taken."""
    server = StudyServer(other_study=True)
    result = handled_population(server)

    with pytest.raises(InvalidResponseError, match="subjects of another study"):
        run_server(server, result)
    assert server.writes() == []


def test_server_another_servers_patients_are_found_by_identifier() -> None:
    """Source and sink differ: individuals are logical references, matched by identifier."""
    server = StudyServer()
    individual = {"type": "Patient", "identifier": {"system": "urn:mrn", "value": "0001"}}
    by_hand = subject("pat-1", "on-study", identifier=[], individual=individual, id="by-hand")
    server.put(by_hand)
    result = sweep(("pat-1", C))
    result.identifiers["Patient/pat-1"] = ("urn:mrn", "0001")

    writes = run_server(server, result, source="/data/extract")

    assert result.people_status == {"Patient/pat-1": "on-study"}
    assert writes == {"Patient/pat-1": "kept_human_status"}
    assert server.writes() == []
