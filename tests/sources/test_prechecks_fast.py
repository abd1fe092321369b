"""The patient pre-check, rewritten for speed (issue 15), decides every line as it did before.

`reference_may_belong` is the check as it was written before issue 15, kept here as the oracle:
the lines are built from the pieces its rules turn on (braces, newlines and trailing spaces,
backslash escapes, `Patient/` quoted or not, ids wanted or not, `/_history/`, absolute
references with and without spaces), in any order, so that every rule is met alone and together.
"""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from adapter.sources.prechecks import may_belong

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
