"""Incomplete input is an error, never a success (issue 10, item 2): exit 1, and no sink written.

A folder without Observation.ndjson once exited 0 and flagged 14 ineligible patients, whom the sink
never takes back. Whatever the source lacks, the run now stops before its first sink write.

One unreadable line is not a missing file: it is skipped and judged by the sweep (issue 11, exit 3;
tests/cli/test_unreadable_lines.py). A file of the type without one readable line still is.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import httpx
import pytest
import respx
from fake_fhir import FakeFhir, no_requests, outcome, read_ndjson

from adapter.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
TRIAL = "hcc-ablation-lenvatinib-pd1"
SINK = "https://sink.test/fhir/"
SOURCE = "https://ehr.test/fhir/"
TYPES = ("Patient", "Condition", "Observation", "Procedure")


def sweep(capsys: pytest.CaptureFixture[str], source: str | Path, *extra: str) -> tuple[int, str]:
    args = ["sweep", "--trial", TRIAL, "--source", str(source), "--as-of", "2026-06-15", "-q"]
    args += extra
    code = main(args)
    return code, capsys.readouterr().err


def demo_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(DEMO, src)
    return src


def without_observations(src: Path) -> None:
    (src / "Observation.ndjson").unlink()


def empty_observations(src: Path) -> None:
    (src / "Observation.ndjson").write_bytes(b"")


def corrupt_gzip(src: Path) -> None:
    data = gzip.compress((src / "Observation.ndjson").read_bytes())
    (src / "Observation.ndjson").unlink()
    (src / "Observation.ndjson.gz").write_bytes(data[: len(data) // 2])


def folder_in_place_of_the_file(src: Path) -> None:
    # Tests run as root, where chmod 000 does not stop a read: a folder cannot be read as a file.
    (src / "Observation.ndjson").unlink()
    (src / "Observation.ndjson").mkdir()


def every_line_unreadable(src: Path) -> None:
    """A file of the type, but none of it JSON: a wrong file, not an export with a bad line."""
    lines = (src / "Observation.ndjson").read_bytes().splitlines(keepends=True)
    (src / "Observation.ndjson").write_bytes(b"".join(line[:30] + b"\n" for line in lines))


def emptied_folder(src: Path) -> None:
    for path in src.iterdir():
        path.unlink()


def bundles_without_procedures(src: Path) -> None:
    """One collection Bundle per patient, as a Synthea-style folder, with no Procedure anywhere."""
    by_patient: dict[str, list[dict[str, object]]] = {}
    for resource in read_ndjson(src, "Patient", "Condition", "Observation"):
        ref = resource.get("subject", {"reference": f"Patient/{resource['id']}"})
        by_patient.setdefault(ref["reference"].split("/")[1], []).append(resource)
    for path in list(src.iterdir()):
        path.unlink()
    for pid, resources in by_patient.items():
        entries = [{"resource": r} for r in resources]
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
        (src / f"{pid}.json").write_text(json.dumps(bundle))


CASES = [
    pytest.param(without_observations, "no Observation resources", id="no-observation-file"),
    pytest.param(empty_observations, "Observation.ndjson: empty", id="empty-file"),
    pytest.param(corrupt_gzip, "Observation.ndjson.gz: not gzip, or corrupt", id="corrupt-gzip"),
    pytest.param(
        every_line_unreadable, "Observation.ndjson: 1106 unreadable lines", id="nothing-readable"
    ),
    pytest.param(folder_in_place_of_the_file, "no Observation resources", id="unreadable-file"),
    pytest.param(emptied_folder, "no FHIR files", id="empty-folder"),
    pytest.param(bundles_without_procedures, "no Procedure resources", id="bundles-lack-a-type"),
]


@pytest.mark.parametrize(("damage", "message"), CASES)
def test_an_incomplete_folder_exits_1_naming_what_is_missing_and_leaves_the_folder_sink_alone(
    tmp_path, capsys, damage, message
):
    """Exit 1 with one line naming the type or file; the sink folder's files are not touched."""
    src = demo_copy(tmp_path)
    damage(src)
    sink = tmp_path / "sink"
    sink.mkdir()
    (sink / "ResearchSubject.ndjson").write_text("yesterday's\n")
    code, err = sweep(capsys, src, "--sink", str(sink), "--out", str(tmp_path / "out"))
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in sink.iterdir()) == ["ResearchSubject.ndjson"]
    assert (sink / "ResearchSubject.ndjson").read_text() == "yesterday's\n"


@pytest.mark.parametrize(("damage", "message"), CASES[:2])
def test_an_incomplete_folder_sends_nothing_to_a_server_sink(tmp_path, capsys, damage, message):
    """Not one request reaches the sink server, not even its CapabilityStatement."""
    src = demo_copy(tmp_path)
    damage(src)
    sink = FakeFhir(SINK, hook=no_requests)
    with respx.mock(assert_all_called=False) as router:
        router.route(host="sink.test").mock(side_effect=sink.handle)
        code, err = sweep(capsys, src, "--sink", SINK, "--out", str(tmp_path / "out"))
    assert code == 1
    assert message in err
    assert sink.requests == []


# --- a FHIR server as the source ------------------------------------------------------------------


def failing(kind: str, answer: httpx.Response) -> FakeFhir:
    """The demo population on a server whose searches of `kind` answer `answer`."""

    def hook(request: httpx.Request) -> httpx.Response | None:
        path = request.url.path.removeprefix("/fhir/")
        return (
            answer if path.split("/")[0] == kind and "_elements" not in str(request.url) else None
        )

    return FakeFhir(SOURCE, read_ndjson(DEMO, *TYPES), hook=hook)


@pytest.mark.parametrize(
    ("kind", "answer", "message"),
    [
        ("Observation", outcome(500, "database down"), "HTTP 500"),
        ("Observation", outcome(400, "Unknown search parameter 'patient'"), "HTTP 400"),
        ("Procedure", outcome(403, "not allowed"), "HTTP 403"),
        ("Condition", outcome(503, "maintenance"), "HTTP 503"),
    ],
    ids=["500-after-retries", "400-outcome", "403", "cohort-503"],
)
def test_a_failed_search_exits_1_and_writes_nothing(tmp_path, capsys, kind, answer, message):
    """A refused or failed search is never an empty answer: exit 1, not one sink request."""
    source = failing(kind, answer)
    sink = FakeFhir(SINK, hook=no_requests)
    with respx.mock(assert_all_called=False) as router:
        router.route(host="ehr.test").mock(side_effect=source.handle)
        router.route(host="sink.test").mock(side_effect=sink.handle)
        code, err = sweep(capsys, SOURCE, "--sink", SINK, "--out", str(tmp_path / "out"))
    assert code == 1
    assert message in err
    assert sink.requests == []
    if answer.status_code == 500:
        tries = [r for r in source.requests if f"/{kind}" in r.url.path]
        assert len(tries) > 1, "a 500 is retried before it is fatal"


def test_a_search_with_zero_results_is_a_valid_answer(tmp_path, capsys):
    """A server where nobody has a Procedure: the searches answer empty Bundles, exit 0."""
    source = FakeFhir(SOURCE, read_ndjson(DEMO, "Patient", "Condition", "Observation"))
    with respx.mock(assert_all_called=False) as router:
        router.route(host="ehr.test").mock(side_effect=source.handle)
        code, err = sweep(capsys, SOURCE, "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert any(r.url.path.endswith("/Procedure") for r in source.requests)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["patients"]
