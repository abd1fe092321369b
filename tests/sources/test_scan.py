"""The folder source with worker processes (issue 15) reads exactly what it reads in one process.

Workers scan the NDJSON files of a query naming patients (`adapter.sources.scan`): plain files in
byte ranges, gzipped ones whole; the main process parses the lines they hand back. The folder
here mixes what each rule turns on (damaged lines, foreign references, other types, escapes,
blank lines, gzip, a type confirmed only mid-file); tiny parts make every file several ranges.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import os
import signal
import sys
import types
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from adapter.errors import IncompleteInputError
from adapter.sources.base import Query, Resource
from adapter.sources.files import FolderSource
from adapter.sources.scan import Part, Plan, loaded_modules, scan, split

if TYPE_CHECKING:
    from pathlib import Path

WANTED = frozenset({"p1", "p3", "p5"})
CODES = frozenset({"4548-4", "a/b"})


def observation(number: int, patient: str, code: str) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": f"o{number}",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": patient},
        }
    )


def mixed_lines(seed: int) -> list[bytes]:
    """Every kind of line the rules tell apart, in a fixed pseudo-random order."""
    lines = []
    for number in range(seed, seed + 120):
        patient = f"Patient/p{number % 7}"
        code = ("4548-4", "8302-2", "a/b")[number % 3]
        kind = number % 11
        if kind == 0:
            lines.append(observation(number, patient, code)[:-9])  # truncated
        elif kind == 1:
            lines.append(observation(number, f"http://other.example/fhir/{patient}", code))
        elif kind == 2:
            lines.append(observation(number, "urn:uuid:1234", code))
        elif kind == 3:
            lines.append(b'{"resourceType":"Condition","id":"c%d"}' % number)
        elif kind == 4:
            lines.append(observation(number, patient, code).replace(b"/", b"\\/"))
        elif kind == 5:
            lines.append(observation(number, patient, code).replace(b"Patient", b"Pat\xffent"))
        elif kind == 6:
            lines.append(b"")
        else:
            lines.append(observation(number, patient, code))
    return [line + (b"\r\n" if i % 13 == 0 else b"\n") for i, line in enumerate(lines)]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "Observation.000.ndjson").write_bytes(b"".join(mixed_lines(0)))
    (tmp_path / "Observation.001.ndjson.gz").write_bytes(gzip.compress(b"".join(mixed_lines(7))))
    # Only other types and damage at first: the type is confirmed in a later part.
    head = [b'{"resourceType":"Condition","id":"c"}\n'] * 30 + [b"{broken\n"] * 10
    (tmp_path / "Observation.002.ndjson").write_bytes(b"".join(head + mixed_lines(3)))
    (tmp_path / "Patient.ndjson").write_bytes(
        b"".join(
            orjson.dumps({"resourceType": "Patient", "id": f"p{n}", "name": [{"text": "x"}]})
            + b"\n"
            for n in range(40)
        )
        + b'{"resourceType":"Patient","id":"p1\n{"resourceType":"Patient","id" : "p3"}\n'
    )
    return tmp_path


def read(source: FolderSource, query: Query) -> dict[str, Any]:
    """Everything a fetch gives and counts, the error it ends with included."""

    async def main() -> tuple[list[Resource], str | None]:
        got: list[Resource] = []
        try:
            async for resource in source.fetch(query):
                got.append(resource)
        except IncompleteInputError as exc:
            return got, str(exc)
        finally:
            await source.aclose()
        return got, None

    resources, error = asyncio.run(main())
    return {
        "resources": resources,
        "error": error,
        "other_patients": source.other_patients,
        "code_skipped": source.code_skipped,
        "foreign": source.foreign,
        "skipped": source.skipped,
        "unreadable": source.unreadable,
    }


def pooled(path: Path, part_bytes: int = 600) -> FolderSource:
    return FolderSource(path, workers=2, pool_bytes=0, part_bytes=part_bytes)


@pytest.mark.parametrize(
    ("kind", "codes"), [("Observation", None), ("Observation", CODES), ("Patient", None)]
)
def test_workers_give_exactly_what_one_process_gives(
    folder: Path, kind: str, codes: frozenset[str] | None
) -> None:
    query = Query(kind, patients=WANTED, line_codes=codes)
    alone = read(FolderSource(folder, workers=1), query)
    assert alone["resources"]
    assert alone["unreadable"]
    assert read(pooled(folder), query) == alone


@pytest.mark.parametrize("workers", [1, 2])
def test_lines_without_a_code_are_counted_apart_and_not_given(tmp_path: Path, workers: int) -> None:
    """After the first line of the type, a wanted patient's line holding none of the codes is
    left out unparsed, and counted in `code_skipped`, not with the other patients' lines."""
    codes = ("4548-4", "8302-2")
    lines = [observation(n, f"Patient/p{n % 2}", codes[n % 3 == 2]) for n in range(9)]
    lines.append(observation(9, "Patient/p1", "8302-2").replace(b"/", b"\\/"))  # parsed
    (tmp_path / "Observation.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    source = FolderSource(tmp_path, workers=workers, pool_bytes=0, part_bytes=300)
    query = Query("Observation", patients=frozenset({"p1"}), line_codes=frozenset({"4548-4"}))
    result = read(source, query)
    assert [r["id"] for r in result["resources"]] == ["o1", "o3", "o7", "o9"]
    assert result["code_skipped"] == {"Observation": 1}  # o5
    assert result["other_patients"] == {"Observation": 5}


def test_a_file_read_in_parts_numbers_its_lines_from_its_start(folder: Path) -> None:
    """An unreadable line is recorded by its line in the file, whichever part held it."""
    for part_bytes in (1, 97, 600, 10**9):
        result = read(pooled(folder, part_bytes), Query("Observation", patients=WANTED))
        alone = read(FolderSource(folder, workers=1), Query("Observation", patients=WANTED))
        assert result["unreadable"] == alone["unreadable"], part_bytes


def test_parts_start_on_lines_and_cover_the_file(tmp_path: Path) -> None:
    path = tmp_path / "Observation.ndjson"
    data = b"".join(mixed_lines(0))
    path.write_bytes(data)
    for part_bytes in (1, 50, 333, len(data) - 1, len(data)):
        parts = split(str(path), len(data), part_bytes)
        assert parts[0].start == 0
        assert parts[-1].end is None
        for before, after in itertools.pairwise(parts):
            assert before.end == after.start
            assert data[after.start - 1 : after.start] == b"\n"
        plan = Plan("Observation", None, None)
        counted = sum(scan(plan, part).lines_read for part in parts)
        assert counted == data.count(b"\n")


def test_a_gzip_error_fails_the_same_way_after_the_same_resources(folder: Path) -> None:
    whole = (folder / "Observation.001.ndjson.gz").read_bytes()
    (folder / "Observation.001.ndjson.gz").write_bytes(whole[: len(whole) // 2])
    query = Query("Observation", patients=WANTED)
    alone = read(FolderSource(folder, workers=1), query)
    assert alone["error"] is not None
    assert "corrupt or truncated gzip" in alone["error"]
    assert read(pooled(folder), query) == alone


def test_a_small_folder_or_a_query_for_everyone_starts_no_worker(folder: Path) -> None:
    source = FolderSource(folder, workers=2)
    read(source, Query("Observation", patients=WANTED))
    source = FolderSource(folder, workers=2, pool_bytes=0)
    read(source, Query("Observation"))
    assert source._pool.pids() == []


def test_a_worker_imports_only_what_scanning_needs(folder: Path) -> None:
    source = pooled(folder)
    try:
        modules = source._pool.submit(loaded_modules).result(timeout=60)
    finally:
        asyncio.run(source.aclose())
    heavy = {"pydantic", "jinja2", "pint", "httpx", "fhir", "adapter.cli", "adapter.sweep"}
    assert heavy.isdisjoint(modules)
    assert "adapter.sources.scan" in modules


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: its parent has not reaped it yet.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def test_stopping_a_fetch_early_and_closing_leaves_no_worker(folder: Path) -> None:
    source = pooled(folder, part_bytes=100)

    async def main() -> list[int]:
        fetch = source.fetch(Query("Observation", patients=WANTED))
        await anext(fetch)
        pids = source._pool.pids()
        await fetch.aclose()  # type: ignore[attr-defined]
        await source.aclose()
        return pids

    pids = asyncio.run(main())
    assert pids
    assert not any(_alive(pid) for pid in pids)


def test_a_killed_worker_fails_the_fetch_without_hanging(folder: Path) -> None:
    source = pooled(folder)
    query = Query("Observation", patients=WANTED)
    asyncio.run(_drain(source, query))
    for pid in source._pool.pids():
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(IncompleteInputError, match=r"worker process .* ended unexpectedly") as err:
        asyncio.run(_drain(source, query))
    assert "p1" not in str(err.value)
    asyncio.run(source.aclose())
    # The next query starts a new pool.
    assert len(read(source, query)["resources"]) > 0


async def _drain(source: FolderSource, query: Query) -> None:
    async for _ in source.fetch(query):
        pass


def test_a_scan_plan_reaches_a_worker_whole(folder: Path) -> None:
    """What crosses to a worker is plain data: the wanted ids, the codes as bytes."""
    plan = Plan("Observation", frozenset({b"p1"}), (b'"4548-4"',))
    part = Part(str(folder / "Observation.000.ndjson"))
    source = pooled(folder)
    try:
        remote = source._pool.submit(scan, plan, part).result(timeout=60)
    finally:
        asyncio.run(source.aclose())
    assert remote == scan(plan, part)


def test_a_worker_does_not_run_the_parents_main_script(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run as `trial-adapter`, the parent's `__main__` is a script importing the whole adapter:
    a spawned worker would run it again unless the pool hides it."""
    marker = tmp_path / "ran"
    script = tmp_path / "entry.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    source = pooled(folder)
    try:
        source._pool.submit(loaded_modules).result(timeout=60)
    finally:
        asyncio.run(source.aclose())
    assert not marker.exists()
