"""The facts store of incremental Bulk runs: rebuilt from a full export's files, changed patient by
patient, its meta, owner-only, and a store that cannot be read makes the run a full one."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapter.bulk.incremental import choose_mode, write_view
from adapter.bulk.model import ExportRequest
from adapter.bulk.store import (
    FactStore,
    StoreCorruptError,
    StoreMeta,
    open_store,
    request_hash,
    store_path,
)
from adapter.errors import StateDirError

REQUEST = ExportRequest("system", ("Patient", "Condition"), type_filters=("Observation?code=x",))
NOW = datetime(2026, 6, 15, 2, 0, tzinfo=UTC)
T1 = "2026-06-14T02:00:00Z"


def line(resource: dict[str, Any]) -> bytes:
    return orjson.dumps(resource)


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid}


def condition(cid: str, pid: str, code: str = "C22.0") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"code": code}]},
    }


def ndjson(path: Path, *resources: dict[str, Any], extra: bytes = b"") -> Path:
    path.write_bytes(b"".join(line(r) + b"\n" for r in resources) + extra)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FactStore]:
    with FactStore.open(tmp_path / "s.store.sqlite3") as opened:
        yield opened


def rebuilt(store: FactStore, tmp_path: Path, extra: bytes = b"") -> Any:
    patients = ndjson(tmp_path / "Patient.000.ndjson", patient("p1"), patient("p2"))
    conditions = ndjson(
        tmp_path / "Condition.000.ndjson",
        condition("c1", "p1"),
        condition("c2", "p2"),
        # another server's patient: kept, with no patient, as the folder source would meet it
        {**condition("c3", "x"), "subject": {"reference": "https://other.example/Patient/x"}},
        patient("p9"),  # a line of another type than its file: skipped, as FolderSource does
        extra=extra,
    )
    return store.rebuild(
        [("Patient", patients), ("Condition", conditions)],
        transaction_time=T1,
        full_at="2026-06-14T02:00:00+00:00",
        request=request_hash(REQUEST),
    )


def test_a_rebuild_keeps_each_resource_with_its_patient(store: FactStore, tmp_path: Path) -> None:
    done = rebuilt(store, tmp_path, extra=b"\n   \n")
    assert (done.rows, done.skipped, done.unreadable, done.unkeyed) == (5, 1, 0, 0)
    assert done.ready
    assert store.count() == 5
    assert store.count("Condition") == 3
    assert store.patients() == {"p1", "p2"}
    assert store.patients_of([("Condition", "c2"), ("Condition", "c3"), ("Patient", "p1")]) == {
        ("Condition", "c2"): "p2",
        ("Patient", "p1"): "p1",
    }
    # the raw line is kept as it came, ordered by id
    assert list(store.rows("Patient")) == [line(patient("p1")), line(patient("p2"))]


def test_a_rebuild_replaces_everything_before(store: FactStore, tmp_path: Path) -> None:
    rebuilt(store, tmp_path)
    only = ndjson(tmp_path / "Patient.001.ndjson", patient("p7"))
    store.rebuild([("Patient", only)], transaction_time=T1, full_at="x", request="h")
    assert store.patients() == {"p7"}
    assert store.count() == 1


def test_a_rebuild_records_the_export_in_the_meta(store: FactStore, tmp_path: Path) -> None:
    assert store.meta() == StoreMeta()
    rebuilt(store, tmp_path)
    assert store.meta() == StoreMeta(T1, "2026-06-14T02:00:00+00:00", request_hash(REQUEST))
    store.set_since("2026-06-15T02:00:00Z")
    assert store.meta().transaction_time == "2026-06-15T02:00:00Z"
    assert store.meta().last_full == "2026-06-14T02:00:00+00:00"  # an incremental run's
    store.clear_since()
    assert store.meta().transaction_time is None
    assert store.count() == 5  # the rows stay until the next full export rebuilds them


def test_an_unreadable_line_leaves_the_store_unfit_for_an_incremental_run(
    store: FactStore, tmp_path: Path
) -> None:
    done = rebuilt(store, tmp_path, extra=b'{"resourceType":"Condition","id":"c9"\n')
    assert done.unreadable == 1
    assert not done.ready
    assert store.meta().transaction_time is None
    plan = choose_mode(store.meta(), REQUEST, forced=False, full_every_days=7, now=NOW)
    assert plan.mode == "full"


def test_a_resource_without_an_id_leaves_the_store_unfit(store: FactStore, tmp_path: Path) -> None:
    done = rebuilt(store, tmp_path, extra=b'{"resourceType":"Condition"}\n')
    assert done.unkeyed == 1
    assert store.meta().transaction_time is None


def test_changed_patients_rows_are_replaced_whole(store: FactStore, tmp_path: Path) -> None:
    rebuilt(store, tmp_path)
    with store.update() as update:
        assert update.delete_patients({"p1"}) == 2
        assert update.put(patient("p1"))
        assert update.put(condition("c4", "p1", "C22.9"))
    assert sorted(store.patients_of([("Condition", "c1"), ("Condition", "c4")]).items()) == [
        (("Condition", "c4"), "p1")
    ]
    assert store.count() == 5
    # the other patient's rows are as they were
    assert store.patients_of([("Condition", "c2")]) == {("Condition", "c2"): "p2"}


def test_a_put_replaces_the_resource_of_its_key(store: FactStore, tmp_path: Path) -> None:
    rebuilt(store, tmp_path)
    moved = condition("c2", "p1")  # the same Condition, now of another patient
    with store.update() as update:
        assert update.put(moved, line(moved))
        assert not update.put({"resourceType": "Condition"})  # no id: nothing stored
    assert store.patients_of([("Condition", "c2")]) == {("Condition", "c2"): "p1"}
    assert store.count("Condition") == 3


def test_deleted_resources_go(store: FactStore, tmp_path: Path) -> None:
    rebuilt(store, tmp_path)
    with store.update() as update:
        assert update.delete_keys([("Condition", "c1"), ("Condition", "gone")]) == 1
    assert store.count("Condition") == 2
    assert store.patients_of([("Condition", "c1")]) == {}


def test_an_update_that_fails_changes_nothing(store: FactStore, tmp_path: Path) -> None:
    rebuilt(store, tmp_path)

    def broken_update() -> None:
        with store.update() as update:
            update.delete_patients({"p1", "p2"})
            raise RuntimeError("the server went away")

    with pytest.raises(RuntimeError):
        broken_update()
    assert store.count() == 5


def test_lookups_go_in_chunks(store: FactStore, tmp_path: Path) -> None:
    resources = [condition(f"c{n}", f"p{n % 7}") for n in range(1200)]
    path = ndjson(tmp_path / "Condition.000.ndjson", *resources)
    store.rebuild([("Condition", path)], transaction_time=T1, full_at="x", request="h")
    keys = [("Condition", f"c{n}") for n in range(1200)]
    assert len(store.patients_of(keys)) == 1200
    with store.update() as update:
        assert update.delete_keys(keys[:1100]) == 1100
    assert store.count() == 100


def test_the_store_is_owner_only_and_in_wal_mode(tmp_path: Path) -> None:
    path = store_path(tmp_path, "ab" * 16)
    path.parent.mkdir(mode=0o700)
    umask = os.umask(0o022)  # SQLite's own files would be 0644 under it
    try:
        with FactStore.open(path) as opened:
            with opened.update() as update:
                update.put(patient("p1"))
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    finally:
        os.umask(umask)
    assert modes[path.name] == 0o600
    assert all(mode == 0o600 for mode in modes.values()), modes
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert path.name == f"{'ab' * 16}.store.sqlite3"


def test_a_looser_store_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "s.store.sqlite3"
    FactStore.open(path).close()
    path.chmod(0o644)
    FactStore.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    path = tmp_path / "s.store.sqlite3"
    path.symlink_to(target)
    with pytest.raises(StateDirError):
        FactStore.open(path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"not a database at all, " * 100, id="garbage"),
        pytest.param(None, id="another-schema"),
        pytest.param(b"", id="other-tables"),
    ],
)
def test_a_store_that_cannot_be_read_is_made_anew_and_the_run_is_full(
    tmp_path: Path, content: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.store.sqlite3"
    if content is None:
        with FactStore.open(path) as opened:
            opened.set_since(T1)
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA user_version = 9")
    elif content:
        path.write_bytes(content)
    else:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreCorruptError):
        FactStore.open(path)
    with caplog.at_level(logging.WARNING), open_store(path) as fresh:
        assert fresh.meta() == StoreMeta()
        plan = choose_mode(fresh.meta(), REQUEST, forced=False, full_every_days=7, now=NOW)
    assert plan.mode == "full"
    assert "cannot be used" in caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_request_hash_leaves_since_and_order_out() -> None:
    shuffled = ExportRequest(
        "system", ("Condition", "Patient"), type_filters=("Observation?code=x",), since=T1
    )
    assert request_hash(shuffled) == request_hash(REQUEST)
    assert request_hash(ExportRequest("patient", REQUEST.types)) != request_hash(REQUEST)
    wider = ExportRequest("system", REQUEST.types, type_filters=("Observation?code=x,y",))
    assert request_hash(wider) != request_hash(REQUEST)


def test_the_view_is_the_store_as_bulk_files(store: FactStore, tmp_path: Path) -> None:
    rebuilt(store, tmp_path)
    view = tmp_path / "job" / "view"
    view.parent.mkdir()
    view.mkdir()
    (view / "stale.ndjson").write_bytes(b"left by a killed run\n")
    written = write_view(
        store, view, ("Patient", "Condition", "Procedure"), {"Condition": [b"{broken"]}
    )
    assert written == {"Patient": 2, "Condition": 4, "Procedure": 0}
    assert sorted(p.name for p in view.iterdir()) == ["Condition.ndjson", "Patient.ndjson"]
    assert stat.S_IMODE(view.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in view.iterdir())
    lines = (view / "Condition.ndjson").read_bytes().splitlines()
    assert lines[-1] == b"{broken"  # carried as it came, last
    assert [orjson.loads(x)["id"] for x in lines[:-1]] == ["c1", "c2", "c3"]
