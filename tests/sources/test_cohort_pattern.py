"""The cohort's Condition search over a folder passes over the lines that hold none of the
cohort's codes (issue 15), after parsing them whole in a worker: the pattern never misses a line
whose code the cohort's code sets match, damaged lines are recorded as before, and workers and
one process give the same resources and counts."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.codes import CodePattern, CodeSet, line_pattern
from adapter.facts.model import Coding
from adapter.sources.base import Query, Resource
from adapter.sources.files import FolderSource

if TYPE_CHECKING:
    from pathlib import Path

ICD = "http://hl7.org/fhir/sid/icd-10-cm"


def read(source: FolderSource, query: Query) -> dict[str, Any]:
    """What a fetch gives and counts."""

    async def main() -> list[Resource]:
        try:
            return [resource async for resource in source.fetch(query)]
        finally:
            await source.aclose()

    resources = asyncio.run(main())
    return {
        "resources": resources,
        "code_skipped": source.code_skipped,
        "foreign": source.foreign,
        "skipped": source.skipped,
        "unreadable": source.unreadable,
    }


COHORT = CodeSet(
    "cohort",
    (
        CodePattern(ICD, "C22.0", "icd"),
        CodePattern(ICD, "K72", "icd"),
        CodePattern(ICD, "E10-E11", "icd"),
        CodePattern("http://snomed.info/sct", "109841003", "exact"),
    ),
)
TOKENS = frozenset({Coding("urn:other", "X-1")})
PATTERN = re.compile(line_pattern([COHORT], TOKENS).encode())


def condition(code: str, patient: str = "Patient/p1", n: int = 1) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Condition",
            "id": f"c{n}",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"coding": [{"system": ICD, "code": code}]},
            "subject": {"reference": patient},
        }
    )


# Spellings `icd_matches` accepts: any case, dots anywhere, whitespace `strip()` removes, a `*`.
_SPACE = st.sampled_from(["", " ", "\u00a0", "\u2003", "\t"])


@st.composite
def spelled(draw: st.DrawFn, base: str) -> str:
    chars = [c.lower() if draw(st.booleans()) else c for c in base.replace(".", "")]
    text = "".join(c + ("." if draw(st.booleans()) else "") for c in chars)
    tail = draw(st.sampled_from(["", "1", "9X", "*", "00x1"]))
    return draw(_SPACE) + text + tail + draw(_SPACE)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["C22.0", "K72", "E10", "E11", "E10.9"]).flatmap(spelled))
def test_every_code_the_cohort_matches_matches_the_pattern(code: str) -> None:
    assert COHORT.matches(Coding(ICD, code)) is not None
    assert PATTERN.search(condition(code))


def test_exact_codes_and_tokens_match_whole_only() -> None:
    assert PATTERN.search(condition("109841003"))
    assert PATTERN.search(condition("X-1"))
    assert not PATTERN.search(condition("1098410031"))
    assert not PATTERN.search(condition("X-10"))
    assert not PATTERN.search(condition("I10"))
    assert not PATTERN.search(condition("44054006"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    lines = []
    for n in range(200):
        code = ("I10", "C22.0", "E11.9", "44054006", "k72.90")[n % 5]
        line = condition(code, f"Patient/p{n % 9}", n)
        if n % 17 == 0:
            line = line[:-5]  # damaged, whatever its code
        elif n % 23 == 0:
            line = line.replace(b"p", b"\\u0070", 1)  # escaped: always parsed
        elif n % 29 == 0:
            line = line.replace(b'"Patient/', b'"urn:uuid:')  # another server's: counted
        lines.append(line)
    (tmp_path / "Condition.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    return tmp_path


@pytest.mark.parametrize("workers", [1, 2])
def test_lines_without_a_cohort_code_are_passed_over_and_counted(
    folder: Path, workers: int
) -> None:
    query = Query("Condition", line_pattern=PATTERN.pattern.decode())
    plain = read(FolderSource(folder, workers=1), Query("Condition"))
    source = FolderSource(folder, workers=workers, pool_bytes=0, part_bytes=700)
    passed = read(source, query)
    # Every damaged line is recorded, as when every line is given.
    assert passed["unreadable"] == plain["unreadable"]
    assert passed["foreign"] == plain["foreign"]
    given = {r["id"] for r in passed["resources"]}
    wanted = {
        r["id"]
        for r in plain["resources"]
        if COHORT.matches_any([Coding(ICD, c["code"]) for c in r["code"]["coding"]])
    }
    assert wanted <= given
    assert any(r["code"]["coding"][0]["code"] == "I10" for r in plain["resources"])
    assert len(given) + passed["code_skipped"]["Condition"] == len(plain["resources"])


def test_workers_and_one_process_agree(folder: Path) -> None:
    query = Query("Condition", line_pattern=PATTERN.pattern.decode())
    alone = read(FolderSource(folder, workers=1), query)
    assert read(FolderSource(folder, workers=2, pool_bytes=0, part_bytes=500), query) == alone
