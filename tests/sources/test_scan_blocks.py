"""Scanning a part in blocks (issue 15) hands back exactly what scanning it line by line did.

`line_by_line` is `adapter.sources.scan.scan` as it was before blocks, kept here as the oracle.
The files are built from every kind of line the rules tell apart (whole lines of wanted and
other patients, truncated ones, `\\/` and `\\u` escapes, absolute references, no `Patient/`,
other types, CRLF, blank lines, trailing spaces, a BOM), read whole, gzipped and in byte ranges,
in blocks down to one byte, so that blocks end mid-file, mid-line and on every kind of line.
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from pathlib import Path

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapter.sources.prechecks import (
    block_is_plain,
    may_be_wanted_patient,
    may_belong,
    may_belong_plain,
    may_hold_code,
)
from adapter.sources.scan import (
    BOM,
    Part,
    Plan,
    Scanned,
    blocks,
    is_of_type,
    open_part,
    scan,
    split,
)

# The profiles of tests/properties: "ci" small and repeatable under CI=true, "dev" wider.
if os.environ.get("CI", "").lower() == "true":
    PROFILE = settings(
        max_examples=50,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
else:
    PROFILE = settings(max_examples=200, deadline=None)

WANTED = frozenset({b"p1", b"p-2.x"})
NEEDLES = (b'"4548-4"', b'"a/b"')
BLOCK_SIZES = (1, 7, 64, 300, 1 << 20)


def line_by_line(plan: Plan, part: Part) -> Scanned:
    """`scan` before issue 15's blocks (read errors left out: the files here have none)."""
    found: list[tuple[int, bytes, bool]] = []
    count = dropped = code_skipped = 0
    belongs = may_be_wanted_patient if plan.resource_type == "Patient" else may_belong
    confirmed = False
    with open_part(part) as stream:
        for count, line in enumerate(stream, 1):
            if count == 1 and part.start == 0 and line.startswith(BOM):
                line = line[len(BOM) :]
            if not line or line.isspace():
                continue
            if confirmed:
                if plan.wanted is not None and not belongs(line, plan.wanted):
                    dropped += 1
                elif plan.needles is not None and not may_hold_code(line, plan.needles):
                    code_skipped += 1
                else:
                    found.append((count, line, True))
                continue
            found.append((count, line, False))
            confirmed = is_of_type(line, plan.resource_type)
    return Scanned(found, count, dropped, code_skipped)


def observation(patient: str, code: str = "4548-4") -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "code": {"coding": [{"code": code}]},
            "subject": {"reference": patient},
        }
    )


BODIES = st.sampled_from(
    [
        observation("Patient/p1"),
        observation("Patient/p-2.x/_history/3", "a/b"),
        observation("Patient/other"),
        observation("Patient/other", "8302-2"),
        observation("Patient/p1", "8302-2"),
        observation("Patient/other")[:-9],  # truncated
        observation("Patient/p1")[:-9],
        observation("Patient/other").replace(b"/", b"\\/"),
        observation("Patient/other").replace(b"Patient", b"\\u0050atient"),
        observation("Patient/other")[:-1] + b',"note":"a\\\\b"}',
        observation("urn:uuid:1234"),
        observation("http://x/fhir/Patient/other"),
        observation("Patient/other")[:-1] + b',"x":{"reference" : "urn:1"}}',
        observation("Patient/other")[:-1] + b',"x":{"preference":"a:b"}}',
        observation("Patient/other")[:-1] + b',"text":"Patient/p1"}',
        observation("Patient/other")[:-1] + b',"text":"xPatient/p1"}',
        observation("Group/g1"),
        observation("Patient/other").replace(b"Patient", b"Pat\xffent"),
        b'{"resourceType":"Condition","subject":{"reference":"Patient/p1"}}',
        b'{"resourceType":"Patient","id":"p1"}',
        b'{"resourceType":"Patient","id":"other"}',
        b'{"resourceType":"Patient","id" : "p-2.x"}',
        b"{broken",
        b"",
        b"   ",
    ]
)
ENDS = st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b"  \n", b"\n\n"])


@st.composite
def files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.tuples(BODIES, ENDS), max_size=40))
    data = b"".join(body + end for body, end in lines)
    if draw(st.booleans()) and data:
        data = data.rstrip(b"\n")  # no newline at the end
    if draw(st.integers(0, 9)) == 0:
        data = BOM + data
    return data


def scanned_both_ways(data: bytes, plan: Plan, gzipped: bool = False) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("Observation.ndjson.gz" if gzipped else "Observation.ndjson")
        path.write_bytes(gzip.compress(data) if gzipped else data)
        parts = split(str(path), len(data), 0 if gzipped else 97)
        for part in [Part(str(path)), *parts]:
            expected = line_by_line(plan, part)
            for size in BLOCK_SIZES:
                assert scan(plan, part, size) == expected, (part, size)


PLANS = [
    Plan("Observation", WANTED, None),
    Plan("Observation", WANTED, NEEDLES),
    Plan("Observation", None, NEEDLES),
    Plan("Patient", WANTED, None),
]


@PROFILE
@given(files(), st.sampled_from(PLANS))
@example(b"", PLANS[0])
@example(observation("Patient/other") + b"\n" + observation("Patient/p1"), PLANS[1])
@example(
    observation("Patient/other")
    + b"\n"
    + observation("Patient/other")[:-1]
    + b',"x":{"reference" : "urn:1"}}\n',
    PLANS[0],
)
def test_blocks_give_what_lines_gave(data: bytes, plan: Plan) -> None:
    scanned_both_ways(data, plan)


@PROFILE
@given(files())
def test_a_gzipped_file_in_blocks_gives_what_its_lines_gave(data: bytes) -> None:
    scanned_both_ways(data, PLANS[1], gzipped=True)


def test_many_blocks_of_other_patients_are_dropped_and_counted(tmp_path: Path) -> None:
    """The common file: thousands of lines, few of them wanted, read in many blocks."""
    lines = [
        observation(f"Patient/p{n // 50}", ("4548-4", "8302-2")[n % 2]) + b"\n" for n in range(5000)
    ]
    # One block is not plain: another patient's line, let through for its absolute reference.
    lines[3000] = observation("Patient/p9")[:-1] + b',"x":{"reference":"urn:uuid:1"}}\n'
    path = tmp_path / "Observation.ndjson"
    path.write_bytes(b"".join(lines))
    plan = Plan("Observation", frozenset({b"p1", b"p77"}), NEEDLES)
    expected = line_by_line(plan, Part(str(path)))
    for size in (4096, 65536, 1 << 20):
        assert scan(plan, Part(str(path)), size) == expected
    assert expected.lines_read == 5000
    assert len(expected.lines) == 1 + 25 + 25 + 1  # the first, p1's and p77's codes, the urn
    assert expected.code_skipped == 50


@PROFILE
@given(st.binary(max_size=200), st.integers(1, 64))
@example(b"a\nb", 1)
@example(b"\n\n", 1)
def test_blocks_are_the_bytes_cut_after_newlines(data: bytes, size: int) -> None:
    got = list(blocks(io.BufferedReader(io.BytesIO(data), 64), size))
    assert b"".join(got) == data
    assert all(block for block in got)
    assert all(block.endswith(b"\n") for block in got[:-1])
    assert all(block.count(b"\n") <= 1 or size > 1 for block in got)


@PROFILE
@given(st.lists(BODIES, max_size=3), ENDS)
def test_in_a_plain_block_the_short_patient_check_decides_as_the_whole_one(
    bodies: list[bytes], end: bytes
) -> None:
    line = b"{" + b",".join(bodies) + b"}" + end
    if block_is_plain(line):
        assert may_belong_plain(line, WANTED) == may_belong(line, WANTED)
    for body in bodies:
        if block_is_plain(body + end):
            assert may_belong_plain(body + end, WANTED) == may_belong(body + end, WANTED)
