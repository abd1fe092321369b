"""The folder sink: ResearchStudy.ndjson and ResearchSubject.ndjson, private and atomic."""

from __future__ import annotations

import os
import stat
from datetime import date
from typing import TYPE_CHECKING

import orjson
import pytest

from adapter.criteria.results import Status
from adapter.sinks import resources
from adapter.sinks.folder import FolderSink
from adapter.sinks.resources import StudyInfo

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

STUDY = StudyInfo("hcc-ablation-lenvatinib-pd1", "https://clinicaltrials.gov", "NCT05803928", "T")
AS_OF = date(2026, 6, 15)
FILES = ["ResearchStudy.ndjson", "ResearchSubject.ndjson"]


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """A common umask, so mode assertions do not depend on the shell running the tests."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def subjects() -> list[dict[str, object]]:
    return [
        resources.research_subject(STUDY, f"pat-{n}", Status.CANDIDATE, AS_OF) for n in range(5)
    ]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_one_study_line_and_one_subject_line_each_sorted_by_id(tmp_path: Path) -> None:
    """The study is one line; subjects are one line each, in id order."""
    out = tmp_path / "out"
    FolderSink(out).write(resources.research_study(STUDY), reversed(subjects()))
    study_lines = (out / "ResearchStudy.ndjson").read_bytes().splitlines()
    assert [orjson.loads(line) for line in study_lines] == [resources.research_study(STUDY)]
    written = [
        orjson.loads(line) for line in (out / "ResearchSubject.ndjson").read_bytes().splitlines()
    ]
    assert written == sorted(subjects(), key=lambda s: str(s["id"]))
    assert sorted(p.name for p in out.iterdir()) == [
        "ResearchStudy.ndjson",
        "ResearchSubject.ndjson",
    ]


def test_lines_are_compact_json(tmp_path: Path) -> None:
    """Each line is orjson's compact form, ending in a newline."""
    study = resources.research_study(STUDY)
    FolderSink(tmp_path).write(study, [])
    assert (tmp_path / "ResearchStudy.ndjson").read_bytes() == orjson.dumps(study) + b"\n"
    assert (tmp_path / "ResearchSubject.ndjson").read_bytes() == b""


def test_created_folder_and_files_are_private(tmp_path: Path) -> None:
    """A created folder is 0o700 and the files 0o600: they hold patient references."""
    out = tmp_path / "a" / "b"
    FolderSink(out).write(resources.research_study(STUDY), subjects())
    assert mode(out) == 0o700
    assert mode(out / "ResearchStudy.ndjson") == 0o600
    assert mode(out / "ResearchSubject.ndjson") == 0o600


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    """The sink does not change the mode of a folder it did not create."""
    tmp_path.chmod(0o750)
    FolderSink(tmp_path).write(resources.research_study(STUDY), subjects())
    assert mode(tmp_path) == 0o750


def test_rerun_overwrites_with_identical_bytes(tmp_path: Path) -> None:
    """A second write of the same resources, in another order, gives the same files."""
    sink = FolderSink(tmp_path)
    sink.write(resources.research_study(STUDY), subjects())
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    sink.write(resources.research_study(STUDY), list(reversed(subjects())))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first


def test_rerun_replaces_older_content(tmp_path: Path) -> None:
    """A later write replaces the files, including a pre-existing looser mode."""
    sink = FolderSink(tmp_path)
    sink.write(resources.research_study(STUDY), subjects())
    (tmp_path / "ResearchSubject.ndjson").chmod(0o644)
    sink.write(resources.research_study(STUDY), subjects()[:1])
    assert len((tmp_path / "ResearchSubject.ndjson").read_bytes().splitlines()) == 1
    assert mode(tmp_path / "ResearchSubject.ndjson") == 0o600


def test_a_patient_this_run_could_not_evaluate_keeps_the_earlier_line(tmp_path: Path) -> None:
    """Nothing is written for a patient under `errors` (issue 11): not even the removal of the
    line an earlier run wrote. Everyone else's lines are this run's."""
    sink = FolderSink(tmp_path)
    sink.write(resources.research_study(STUDY), subjects())
    earlier = subjects()
    sink.write(resources.research_study(STUDY), earlier[:2], keep=frozenset({"Patient/pat-3"}))
    lines = (tmp_path / "ResearchSubject.ndjson").read_bytes().splitlines()
    written = {orjson.loads(line)["individual"]["reference"] for line in lines}
    assert written == {"Patient/pat-0", "Patient/pat-1", "Patient/pat-3"}


def test_a_kept_patient_flagged_again_is_not_doubled(tmp_path: Path) -> None:
    sink = FolderSink(tmp_path)
    sink.write(resources.research_study(STUDY), subjects())
    sink.write(resources.research_study(STUDY), subjects(), keep=frozenset({"Patient/pat-3"}))
    assert len((tmp_path / "ResearchSubject.ndjson").read_bytes().splitlines()) == 5


def test_a_resource_that_cannot_be_serialised_leaves_the_old_files(tmp_path: Path) -> None:
    """Nothing is replaced (and no temp file is left) when one resource cannot be written."""
    sink = FolderSink(tmp_path)
    sink.write(resources.research_study(STUDY), subjects())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bad = {"resourceType": "ResearchSubject", "id": "ta-bad", "status": {1, 2}}
    with pytest.raises(TypeError):
        sink.write(resources.research_study(STUDY), [*subjects(), bad])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
