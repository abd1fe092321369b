"""A Bulk job's folder: its key, its saved state, what a resume keeps, what FolderSource reads."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapter.bulk.jobs import (
    STATE_FILE,
    CorruptStateError,
    JobFolder,
    decode_state,
    encode_state,
    file_name,
    job_key,
    section_of,
    stale,
)
from adapter.bulk.model import DownloadedFile, ExportRequest, JobState, Manifest, OutputFile
from adapter.errors import StateDirError
from adapter.sources.base import Query
from adapter.sources.files import FolderSource

BASE = "https://ehr.test/fhir"
KEY = "0123456789abcdef0123456789abcdef"
SECRET = "sig=SECRET-SIGNATURE"
REQUEST = ExportRequest(
    level="group",
    types=("Patient", "Observation"),
    group_id="g1",
    type_filters=("Observation?category=laboratory",),
    since="2026-01-01T00:00:00Z",
)
MANIFEST = Manifest(
    transaction_time="2026-06-01T02:00:00Z",
    requires_access_token=True,
    output=(
        OutputFile("Patient", f"https://ehr.test/out/p.ndjson?{SECRET}", count=2),
        OutputFile("Observation", "https://ehr.test/out/o.ndjson"),
    ),
    error=(OutputFile("OperationOutcome", "https://ehr.test/out/e.ndjson"),),
    deleted=(OutputFile("Bundle", "https://ehr.test/out/d.ndjson"),),
    request="https://ehr.test/fhir/Group/g1/$export",
)
PATIENT = b'{"resourceType":"Patient","id":"p1"}\n'


def downloaded(folder: JobFolder, path: str, data: bytes, kind: str = "Patient") -> DownloadedFile:
    """Write `data` at `path` in the folder and return its record."""
    (folder.path / path).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    return DownloadedFile(f"https://ehr.test/out/{path}", kind, path, len(data), digest)


def new_state(**changes: Any) -> JobState:
    state = JobState(REQUEST, "2026-06-01T01:00:00+00:00", status_url="https://ehr.test/poll/1")
    for key, value in changes.items():
        setattr(state, key, value)
    return state


def names(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# -- the key -----------------------------------------------------------------------------------


def test_an_incremental_export_of_the_same_trial_and_server_is_the_same_job() -> None:
    """`_since` is not part of the key, nor the order of types and filters."""
    again = replace(REQUEST, since="2026-06-01T00:00:00Z", types=("Observation", "Patient"))
    assert job_key(BASE, REQUEST, "T1") == job_key(BASE, again, "T1")
    assert job_key(BASE, REQUEST, "T1") == job_key("https://EHR.test:443/fhir/", REQUEST, "T1")


@pytest.mark.parametrize(
    ("base", "request_", "trial"),
    [
        ("https://other.test/fhir", REQUEST, "T1"),
        (BASE, REQUEST, "T2"),
        (BASE, replace(REQUEST, level="patient", group_id=None), "T1"),
        (BASE, replace(REQUEST, group_id="g2"), "T1"),
        (BASE, replace(REQUEST, types=("Patient",)), "T1"),
        (BASE, replace(REQUEST, type_filters=()), "T1"),
    ],
)
def test_another_server_trial_level_group_types_or_filters_is_another_job(
    base: str, request_: ExportRequest, trial: str
) -> None:
    """Each of them makes another job."""
    key = job_key(BASE, REQUEST, "T1")
    other = job_key(base, request_, trial)
    assert other != key
    assert len(other) == 32
    assert int(other, 16) >= 0


# -- the folder ----------------------------------------------------------------------------------


def test_open_makes_owner_only_folders_under_bulk(tmp_path: Path) -> None:
    """`bulk/<key>/` and its subfolders are 0700."""
    folder = JobFolder.open(tmp_path, KEY)
    assert folder.path == tmp_path / "bulk" / KEY
    for path in (tmp_path / "bulk", folder.path, folder.path / "errors", folder.path / "deleted"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_open_tightens_a_loose_folder_and_refuses_a_link(tmp_path: Path) -> None:
    """A 0755 job folder becomes 0700; a symbolic link in its place is refused."""
    (tmp_path / "bulk" / KEY).mkdir(parents=True, mode=0o755)
    (tmp_path / "bulk" / KEY).chmod(0o755)
    folder = JobFolder.open(tmp_path, KEY)
    assert stat.S_IMODE(folder.path.stat().st_mode) == 0o700
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = "f" * 32
    (tmp_path / "bulk" / other).symlink_to(elsewhere)
    with pytest.raises(StateDirError, match="not a folder"):
        JobFolder.open(tmp_path, other)


@pytest.mark.parametrize("key", ["../etc", "", "ABCDEF0123456789", "0123"])
def test_a_key_that_is_not_a_hash_is_refused(tmp_path: Path, key: str) -> None:
    """The key becomes a folder name: only lower-case hex of hash length."""
    with pytest.raises(ValueError, match="hash"):
        JobFolder.open(tmp_path, key)


def test_files_have_bulk_names_with_errors_and_deleted_in_subfolders(tmp_path: Path) -> None:
    """`<Type>.<nnn>.ndjson` at the top; error and deleted files in their subfolders."""
    folder = JobFolder.open(tmp_path, KEY)
    assert folder.file_path("Observation", 0) == folder.path / "Observation.000.ndjson"
    assert folder.file_path("Observation", 12) == folder.path / "Observation.012.ndjson"
    assert folder.file_path("Observation", 1234).name == "Observation.1234.ndjson"
    error = folder.file_path("OperationOutcome", 0, "error")
    assert error == folder.path / "errors" / "OperationOutcome.000.ndjson"
    assert folder.file_path("Bundle", 1, "deleted") == folder.path / "deleted/Bundle.001.ndjson"


@pytest.mark.parametrize("kind", ["../x", "observation", "Obs.1", "", "A" * 65])
def test_a_type_that_is_no_resource_type_never_becomes_a_name(kind: str) -> None:
    """The manifest's `type` is the server's word: it must look like a FHIR type."""
    with pytest.raises(ValueError, match="resource type"):
        file_name(kind, 0)


def test_section_of_a_record_follows_its_folder() -> None:
    """Output at the top, errors and deleted in theirs."""
    record = DownloadedFile("u", "Patient", "Patient.000.ndjson", 1, "0" * 64)
    assert section_of(record) == "output"
    assert section_of(replace(record, path="errors/OperationOutcome.000.ndjson")) == "error"
    assert section_of(replace(record, path="deleted/Bundle.000.ndjson")) == "deleted"


def test_folder_source_reads_the_outputs_and_nothing_else(tmp_path: Path) -> None:
    """State, downloads in progress and error files are invisible to FolderSource."""
    folder = JobFolder.open(tmp_path, KEY)
    record = downloaded(folder, "Patient.000.ndjson", PATIENT)
    folder.save(new_state(manifest=MANIFEST, downloaded=[record]))
    (folder.path / ".Patient.001.ndjson.part").write_bytes(b'{"resourceType":"Pat')
    (folder.path / "errors" / "OperationOutcome.000.ndjson").write_bytes(b'{"resourceType":1}\n')
    source = FolderSource(folder.source_dir)

    async def read() -> list[dict[str, Any]]:
        return [r async for r in source.fetch(Query("Patient"))]

    assert asyncio.run(read()) == [orjson.loads(PATIENT)]
    assert not source.skipped
    assert not source.unreadable


# -- saving and loading ----------------------------------------------------------------------------


def test_the_state_goes_to_disk_and_back_whole(tmp_path: Path) -> None:
    """Every field survives; the state file is 0600 and hidden."""
    folder = JobFolder.open(tmp_path, KEY)
    records = [
        downloaded(folder, "Patient.000.ndjson", PATIENT),
        downloaded(folder, "errors/OperationOutcome.000.ndjson", b"{}\n", "OperationOutcome"),
    ]
    state = new_state(manifest=MANIFEST, downloaded=records, swept=True)
    folder.save(state)
    saved = folder.path / STATE_FILE
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert orjson.loads(saved.read_bytes())["version"] == 1
    assert folder.load(verify=True) == state
    assert names(folder.path) == {
        STATE_FILE,
        "errors",
        "deleted",
        "Patient.000.ndjson",
        "errors/OperationOutcome.000.ndjson",
    }


def test_a_fresh_job_has_no_state(tmp_path: Path) -> None:
    """Before the first save: None, and the folder is empty (stray files deleted)."""
    folder = JobFolder.open(tmp_path, KEY)
    (folder.path / "Patient.000.ndjson").write_bytes(PATIENT)
    assert folder.load() is None
    assert names(folder.path) == {"errors", "deleted"}


def test_saving_replaces_the_state_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """A second save replaces the first; nothing else is left in the folder."""
    folder = JobFolder.open(tmp_path, KEY)
    folder.save(new_state())
    folder.save(new_state(status_url="https://ehr.test/poll/2"))
    loaded = folder.load()
    assert loaded is not None
    assert loaded.status_url == "https://ehr.test/poll/2"
    assert names(folder.path) == {STATE_FILE, "errors", "deleted"}


def corrupt(body: dict[str, Any], **changes: Any) -> bytes:
    for path, value in changes.items():
        target: Any = body
        *parents, last = path.split("__")
        for parent in parents:
            target = target[parent] if not parent.isdigit() else target[int(parent)]
        target[last] = value
    return orjson.dumps(body)


def valid_body() -> dict[str, Any]:
    record = DownloadedFile(
        f"https://ehr.test/x?{SECRET}", "Patient", "Patient.000.ndjson", 3, "a" * 64
    )
    body: dict[str, Any] = orjson.loads(
        encode_state(new_state(manifest=MANIFEST, downloaded=[record]))
    )
    return body


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"{not json " + SECRET.encode(), id="not JSON"),
        pytest.param(b"[]", id="not an object"),
        pytest.param(corrupt(valid_body(), version=2), id="unknown version"),
        pytest.param(corrupt(valid_body(), version=True), id="version true"),
        pytest.param(corrupt(valid_body(), request__level="world"), id="level"),
        pytest.param(corrupt(valid_body(), kicked_off=None), id="no kick-off"),
        pytest.param(corrupt(valid_body(), swept="yes"), id="swept not bool"),
        pytest.param(corrupt(valid_body(), manifest__output=[{"type": "P"}]), id="file no url"),
        pytest.param(corrupt(valid_body(), downloaded__0__path="../../x.ndjson"), id="escape"),
        pytest.param(corrupt(valid_body(), downloaded__0__path="/etc/passwd"), id="absolute"),
        pytest.param(corrupt(valid_body(), downloaded__0__path=".job.json"), id="hidden"),
        pytest.param(corrupt(valid_body(), downloaded__0__size=True), id="size true"),
        pytest.param(corrupt(valid_body(), downloaded__0__size=-1), id="negative size"),
        pytest.param(corrupt(valid_body(), downloaded__0__sha256="xyz"), id="digest"),
    ],
)
def test_a_corrupt_state_is_no_state_and_empties_the_folder(
    tmp_path: Path, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing in the folder can be trusted: all of it goes; the log quotes none of it."""
    folder = JobFolder.open(tmp_path, KEY)
    (folder.path / "Patient.000.ndjson").write_bytes(b"abc")
    (folder.path / STATE_FILE).write_bytes(data)
    with caplog.at_level(logging.DEBUG):
        assert folder.load() is None
    assert names(folder.path) == {"errors", "deleted"}
    assert "cannot be used" in caplog.text
    assert "SECRET" not in caplog.text
    assert "world" not in caplog.text


def test_decoding_refuses_what_encoding_never_makes() -> None:
    """The JSON round trip is exact, and a foreign document is a CorruptStateError."""
    state = new_state(manifest=MANIFEST)
    assert decode_state(encode_state(state)) == state
    with pytest.raises(CorruptStateError, match="version"):
        decode_state(b'{"resourceType": "Patient"}')


def test_an_unreadable_state_file_is_no_state(tmp_path: Path) -> None:
    """A state file that cannot be read counts as corrupt."""
    folder = JobFolder.open(tmp_path, KEY)
    (folder.path / STATE_FILE).mkdir()  # reading a folder fails with IsADirectoryError
    assert folder.load() is None
    assert names(folder.path) == {"errors", "deleted"}


# -- resuming ------------------------------------------------------------------------------------


def test_a_resume_after_a_kill_keeps_only_whole_recorded_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Recorded and whole: kept. Truncated: dropped. A `.part` or an unrecorded file: deleted."""
    folder = JobFolder.open(tmp_path, KEY)
    whole = downloaded(folder, "Patient.000.ndjson", PATIENT)
    cut = downloaded(folder, "Observation.000.ndjson", b'{"resourceType":"Observation"}\n')
    folder.save(new_state(manifest=MANIFEST, downloaded=[whole, cut]))
    (folder.path / "Observation.000.ndjson").write_bytes(b'{"resourceType":"Obs')
    (folder.path / ".Observation.001.ndjson.part").write_bytes(b"half")
    (folder.path / "Observation.001.ndjson").write_bytes(b"never recorded")
    (folder.path / "errors" / "OperationOutcome.000.ndjson").write_bytes(b"never recorded")
    (folder.path / "stray").mkdir()
    with caplog.at_level(logging.WARNING):
        state = folder.load()
    assert state is not None
    assert state.downloaded == [whole]
    assert names(folder.path) == {STATE_FILE, "errors", "deleted", "Patient.000.ndjson"}
    assert "1 downloaded files are missing or damaged" in caplog.text
    again = folder.load()
    assert again is not None
    assert again.downloaded == [whole]


def test_verify_also_checks_the_sha256(tmp_path: Path) -> None:
    """Same size, other bytes: kept by the cheap check, dropped with `verify`."""
    folder = JobFolder.open(tmp_path, KEY)
    record = downloaded(folder, "Patient.000.ndjson", PATIENT)
    folder.save(new_state(downloaded=[record]))
    (folder.path / "Patient.000.ndjson").write_bytes(PATIENT.replace(b"p1", b"p2"))
    cheap = folder.load()
    assert cheap is not None
    assert cheap.downloaded == [record]
    checked = folder.load(verify=True)
    assert checked is not None
    assert checked.downloaded == []
    assert not (folder.path / "Patient.000.ndjson").exists()


def test_a_recorded_file_replaced_by_a_link_does_not_count(tmp_path: Path) -> None:
    """Only regular files count: a link could point anywhere."""
    folder = JobFolder.open(tmp_path, KEY)
    record = downloaded(folder, "Patient.000.ndjson", PATIENT)
    folder.save(new_state(downloaded=[record]))
    target = tmp_path / "target.ndjson"
    target.write_bytes(PATIENT)
    os.unlink(folder.path / "Patient.000.ndjson")
    (folder.path / "Patient.000.ndjson").symlink_to(target)
    state = folder.load()
    assert state is not None
    assert state.downloaded == []
    assert target.exists()  # the link is deleted, not what it pointed to


def test_clear_deletes_the_job_and_its_folder(tmp_path: Path) -> None:
    """Files, state and folder go; a later save makes the folder again."""
    folder = JobFolder.open(tmp_path, KEY)
    folder.save(new_state(downloaded=[downloaded(folder, "Patient.000.ndjson", PATIENT)]))
    folder.clear()
    assert not folder.path.exists()
    folder.clear()  # twice is fine
    folder.save(new_state())
    assert folder.load() == new_state()


# -- staleness -----------------------------------------------------------------------------------

NOW = datetime(2026, 6, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kicked_off", "expected"),
    [
        ((NOW - timedelta(hours=1)).isoformat(), False),
        ((NOW - timedelta(hours=23, minutes=59)).isoformat(), False),
        ((NOW - timedelta(hours=24, seconds=1)).isoformat(), True),
        ("2026-06-02T13:00:00+02:00", False),  # 11:00 UTC
        ((NOW + timedelta(minutes=1)).isoformat(), False),  # a clock set back a little
        ((NOW + timedelta(hours=2)).isoformat(), True),
        ("2026-06-02T11:00:00", True),  # naive: cannot be compared
        ("yesterday", True),
    ],
)
def test_a_job_older_than_the_limit_is_stale(kicked_off: str, expected: bool) -> None:
    """Kicked off more than max_age_hours ago, or at an unreadable time: not resumed."""
    assert stale(new_state(kicked_off=kicked_off), NOW, 24) is expected
