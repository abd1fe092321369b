"""The patient pre-check, rewritten for speed (issue 15), decides every line as it did before.

`reference_may_belong` is the check as it was written before issue 15, kept here as the oracle:
the lines are built from the pieces its rules turn on (braces, newlines and trailing spaces,
backslash escapes, `Patient/` quoted or not, ids wanted or not, `/_history/`, absolute
references with and without spaces), in any order, so that every rule is met alone and together.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from adapter.sources.prechecks import (
    code_needles,
    has_absolute_reference,
    may_be_wanted_patient,
    may_belong,
    may_hold_code,
)

WANTED = frozenset({b"p1", b"p-2.x"})
_ABSOLUTE_REFERENCE = re.compile(rb'"reference"\s*:\s*"[A-Za-z][A-Za-z0-9+.\-]*:')


def reference_may_belong(line: bytes, wanted: frozenset[bytes]) -> bool:
    """`may_belong` before issue 15."""
    if not line.startswith(b"{") or not line.rstrip().endswith(b"}"):
        return True
    if b"\\" in line and (b"\\/" in line or b"\\u" in line):
        return True
    start = line.find(b"Patient/")
    if start == -1:
        return True
    while start != -1:
        if start and line[start - 1] != ord('"'):
            return True
        start += len(b"Patient/")
        end = line.find(b'"', start)
        if line[start:end].split(b"/", 1)[0] in wanted:
            return True
        start = line.find(b"Patient/", start)
    return _ABSOLUTE_REFERENCE.search(line) is not None


PIECES = st.sampled_from(
    [
        b'"subject":{"reference":"Patient/p1"}',
        b'"subject":{"reference":"Patient/p-2.x/_history/3"}',
        b'"subject":{"reference":"Patient/other"}',
        b'"subject":{"reference":"Patient/other/_history/1"}',
        b'"patient":{"reference":"Patient/p1x"}',
        b'"subject":{"reference":"urn:uuid:1234"}',
        b'"subject" : { "reference" : "http://x/fhir/Subject/1"}',
        b'"subject":{"reference":"http://x/fhir/Patient/other"}',
        b'"encounter":{"reference":"Encounter/e1"}',
        b'"text":"Patient/',
        b'"text":"a\\/b"',
        b'"text":"\\u0050atient/p1"',
        b'"text":"a\\\\b"',
        b'"Patient/p1',
        b"Patient/",
        b'"',
        b"/",
        b",",
        b":",
        b"\\",
        b'"id":"1"',
        b"\xff",
    ]
)
ENDS = st.sampled_from([b"", b"\n", b"\r\n", b"  \n", b" ", b"}", b"}\n"])


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    head = draw(st.sampled_from([b"{", b"", b" {", b"[", b"{{"]))
    body = b",".join(draw(st.lists(PIECES, max_size=5)))
    tail = draw(st.sampled_from([b"}", b"", b"]", b"}}"]))
    return head + body + tail + draw(ENDS)


@given(lines())
@example(b"")
@example(b"\n")
@example(b"}\n")
@example(b'{"subject":{"reference":"Patient/other"}}\n')
@example(b'{"subject":{"reference":"Patient/p1"}}\n')
@example(b'{"subject":{"reference":"Patient/other"},"x":{"reference":"urn:uuid:1"}}\n')
def test_the_patient_precheck_decides_every_line_as_before(line: bytes) -> None:
    assert may_belong(line, WANTED) == reference_may_belong(line, WANTED)


@given(st.binary(max_size=80))
def test_any_bytes_are_decided_as_before(line: bytes) -> None:
    assert may_belong(line, WANTED) == reference_may_belong(line, WANTED)


# --- the Patient and code pre-checks (issue 15) ----------------------------------------------


def whole_and_plain_by_hand(line: bytes) -> bool:
    return (
        line.startswith(b"{")
        and line.rstrip().endswith(b"}")
        and b"\\/" not in line
        and b"\\u" not in line
    )


def strings_in(value: object) -> Iterator[str]:
    """Every string of a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def parsed(line: bytes) -> object:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


PATIENT_PIECES = st.sampled_from(
    [
        b'"id":"p1"',
        b'"id":"p-2.x"',
        b'"id":"other"',
        b'"id" : "p1"',
        b'"id":"p1x"',
        b'"code":"id"',
        b'"extension":[{"id":"e1","url":"u"}]',
        b'"link":[{"other":{"reference":"Patient/p1"}}]',
        b'"text":"\\u0070\\u0031"',
        b'"text":"a\\"id\\":\\"p1\\""',
        b'"resourceType":"Patient"',
        b'"id":',
        b'"',
        b",",
        b"\xff",
    ]
)


@st.composite
def patient_lines(draw: st.DrawFn) -> bytes:
    head = draw(st.sampled_from([b"{", b"", b" {"]))
    body = b",".join(draw(st.lists(PATIENT_PIECES, max_size=5)))
    tail = draw(st.sampled_from([b"}", b"", b"}}"]))
    return head + body + tail + draw(ENDS)


@given(patient_lines())
@example(b'{"resourceType":"Patient","id":"p1"}\n')
@example(b'{"resourceType":"Patient","id":"other"}\n')
def test_a_wanted_patients_line_is_never_dropped(line: bytes) -> None:
    """Dropped only when whole, plain, and naming its id as none of the wanted."""
    value = parsed(line)
    wanted_id = isinstance(value, dict) and value.get("id") in {"p1", "p-2.x"}
    if wanted_id or not whole_and_plain_by_hand(line):
        assert may_be_wanted_patient(line, WANTED)
    if line == b'{"resourceType":"Patient","id":"other"}\n':
        assert not may_be_wanted_patient(line, WANTED)


CODES = frozenset({"4548-4", "a/b", 'q"x', "é", "\\"})
NEEDLES = code_needles(CODES)
SCALARS = st.sampled_from([*sorted(CODES), "x", "4548"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-99, 99) | SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["code", "x", "4548-4"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from(["code", "coding", "y"]), json_values, max_size=3))
def test_a_line_holding_a_code_is_never_dropped(value: dict[str, object]) -> None:
    """Written by orjson (compact, UTF-8) or by json (spaces, `\\u` escapes): a line holding a
    code as any string is kept, and a line holding none is dropped only when written plainly."""
    assert NEEDLES is not None
    holds = any(text in CODES for text in strings_in(value))
    for line in (orjson.dumps(value) + b"\n", json.dumps(value).encode() + b"\n"):
        if holds:
            assert may_hold_code(line, NEEDLES)
    if not holds and "\\" not in orjson.dumps(value).decode():
        assert not may_hold_code(orjson.dumps(value) + b"\n", NEEDLES)


def test_no_codes_means_no_code_test() -> None:
    assert code_needles(None) is None
    assert code_needles(frozenset({"\ud800"})) is None
    assert code_needles(frozenset()) == ()


@given(lines())
def test_the_absolute_reference_test_is_the_regular_expression(line: bytes) -> None:
    assert has_absolute_reference(line) == (_ABSOLUTE_REFERENCE.search(line) is not None)
