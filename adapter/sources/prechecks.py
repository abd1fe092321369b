"""Tests on raw NDJSON lines that let the folder source skip a line without parsing it.

Each answers False only when the line surely cannot be wanted; every line let through is parsed
and checked again, so a test may let through more than it must, never less.

Every line of a file goes through these, so they are written for the interpreter's costs (issue
15): each bytes method call costs about as much as scanning the line once, so the common line
(`{...}` and a newline, no backslash, one `"Patient/<id>"`) takes a handful of calls, regular
expressions run only on rare shapes, and `bytes.find` stands for `in` (which tries the needle as
an int first, and fails).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson

from adapter.sources.base import Query, Resource, identifier_pairs

_QUOTE = ord('"')
_BRACE = ord("{")
_CLOSE = ord("}")
_NEWLINE = ord("\n")
# The FHIR R4 `id` datatype; the bytes pre-checks below are exact only for ids of this form.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# An absolute reference: a `reference` whose value starts with an RFC 3986 scheme (`urn:`).
_ABSOLUTE_REFERENCE = re.compile(rb'"reference"\s*:\s*"[A-Za-z][A-Za-z0-9+.\-]*:')
# The same without the key's opening quote (`block_is_plain`).
_REFERENCE_TAIL = re.compile(rb'reference"\s*:\s*"[A-Za-z][A-Za-z0-9+.\-]*:')
#: past this many identifier values, one `in` search per value per line costs more than parsing
VALUES_PRECHECKED = 32

#: a test on a raw NDJSON line: False only when the line cannot be wanted
Precheck = Callable[[bytes], bool]


def prefilter(query: Query) -> frozenset[bytes] | None:
    """The wanted Patient ids as bytes, when a line can be dropped before it is parsed.

    For a Patient query they are the ids `may_be_wanted_patient` looks for, for any other type
    the ids `may_belong` looks for in references.
    """
    if query.patients is None:
        return None
    if not all(_FHIR_ID.fullmatch(pid) for pid in query.patients):
        return None
    return frozenset(pid.encode() for pid in query.patients)


def code_needles(codes: frozenset[str] | None) -> tuple[bytes, ...] | None:
    """Each code as `may_hold_code` looks for it: in quotes, JSON-escaped as orjson writes it.

    None (no code test) when there are no codes to test, or one has no UTF-8 spelling.
    """
    if codes is None:
        return None
    try:
        return tuple(sorted({orjson.dumps(code) for code in codes}))
    except orjson.JSONEncodeError:  # a lone surrogate
        return None


def whole_and_plain(line: bytes) -> bool:
    """Whether the line is shaped as one whole object and spells every string in its own bytes.

    Not so (False): a truncated line, which only a parse records as unreadable, or one with a
    `\\/` or `\\u` escape, which may spell a reference or a code in other bytes.
    """
    if not line or line[0] != _BRACE:
        return False
    if not (line[-1] == _NEWLINE and len(line) > 1 and line[-2] == _CLOSE) and not (
        line.rstrip().endswith(b"}")
    ):
        return False
    # memchr first: most lines hold no backslash, and the two-byte searches cost more.
    return line.find(b"\\") == -1 or (line.find(b"\\/") == -1 and line.find(b"\\u") == -1)


def may_belong(line: bytes, wanted: frozenset[bytes]) -> bool:
    """False only when the line cannot be of a wanted Patient: then it need not be parsed.

    A reference that `patient_id_of` reads as a wanted id appears in the raw line as
    `Patient/<id>` followed by `"` or `/`, unless JSON escapes spell it (`\\/`, `\\u0050`): those
    lines go on to the parse, and so does anything not shaped like one whole object, so that a
    truncated line is still recorded as unreadable, and so does an absolute reference
    (`.../Patient/<id>`, `urn:uuid:...`), so that it is counted in `foreign`, and so does a line
    naming no Patient at all: its subject may be a wanted patient's reference garbled by the same
    damage that makes the line unreadable (a byte of `Patient/` changed), which only a parse
    records. Parsing confirms every line let through.
    """
    # The same answer as `may_belong_plain`, or an escape, or an absolute reference.
    if may_belong_plain(line, wanted):
        return True
    if line.find(b"\\") != -1 and (line.find(b"\\/") != -1 or line.find(b"\\u") != -1):
        return True
    # Another patient's line, but for an absolute reference without `Patient/` (`urn:uuid:...`)
    # beside it, which may be the subject: parsed, so that it is counted too.
    return _ABSOLUTE_REFERENCE.search(line) is not None


def may_belong_plain(line: bytes, wanted: frozenset[bytes]) -> bool:
    """`may_belong` for a line of a block that `block_is_plain` passed: the same answer with
    two of its steps left out, the escapes and the absolute references, which the block was
    searched for once (issue 15: the regular expression alone cost 0.8 us a line)."""
    if not line or line[0] != _BRACE:
        return True
    if not (line[-1] == _NEWLINE and len(line) > 1 and line[-2] == _CLOSE) and not (
        line.rstrip().endswith(b"}")
    ):
        return True
    start = line.find(b"Patient/")
    if start == -1:
        return True
    while start != -1:
        if start and line[start - 1] != _QUOTE:
            # `http://other.example/fhir/Patient/1`: parsed, so it is counted as foreign.
            return True
        start += 8  # len(b"Patient/")
        end = line.find(b'"', start)
        if line[start:end].partition(b"/")[0] in wanted:
            return True
        start = line.find(b"Patient/", start)
    return False


def block_is_plain(block: bytes) -> bool:
    """Whether no line of the block holds a `\\/` or `\\u` escape or an absolute reference: then
    `may_belong_plain` decides each of its lines as `may_belong` does.

    One search of each kind over the whole block: a line's match is a match in the block. The
    reference is looked for without its opening quote, which finds it sooner (a quote starts
    every JSON string), and at worst finds a key that merely ends in `reference`: then the block
    is not plain, and its lines get the whole `may_belong`.
    """
    if block.find(b"\\") != -1 and (block.find(b"\\/") != -1 or block.find(b"\\u") != -1):
        return False
    return _REFERENCE_TAIL.search(block) is None


def passes_over(line: bytes, pattern: re.Pattern[bytes], resource_type: str) -> bool:
    """Whether a line of an everyone-query (the cohort's Condition search) can be passed over:
    it is one whole object of the type (parsed, so a damaged line is still recorded), spells its
    strings in their own bytes, names no absolute reference (counted as foreign when parsed),
    and does not match `Query.line_pattern`, so it holds none of the codes the caller uses."""
    if not whole_and_plain(line) or has_absolute_reference(line) or pattern.search(line):
        return False
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get("resourceType") == resource_type


def line_regex(text: str | None) -> re.Pattern[bytes] | None:
    """`Query.line_pattern` compiled for raw lines (the `re` module keeps it compiled)."""
    return None if text is None else re.compile(text.encode())


def has_absolute_reference(line: bytes) -> bool:
    """Whether a `reference` of the line has an absolute value (`urn:uuid:1`, `http://x/P/1`).

    One regular expression search: measured on generated Observation lines (issue 15), it costs
    less than finding each `"reference"` and looking at its value with bytes methods.
    """
    return _ABSOLUTE_REFERENCE.search(line) is not None


def may_be_wanted_patient(line: bytes, wanted: frozenset[bytes]) -> bool:
    """False only when a Patient line surely is none of the wanted Patients: then it need not be
    parsed.

    A wanted Patient's line holds its id as `"id":"<id>"` (the resource's own id; other `id`
    keys, of extensions or contained resources, are looked at too). A line with any `"id"` not
    written so (spaces, `"id"` as a value), with a `\\/` or `\\u` escape, not shaped like one
    whole object, or without any `"id":"` (its id may be what the damage hit) is parsed.
    """
    if not whole_and_plain(line):
        return True
    at = line.find(b'"id"')
    if at == -1:
        return True
    while at != -1:
        if line[at + 4 : at + 6] != b':"':
            return True
        value = at + 6
        end = line.find(b'"', value)
        if line[value:end] in wanted:
            return True
        at = line.find(b'"id"', value if end == -1 else end)
    return False


def may_hold_code(line: bytes, needles: tuple[bytes, ...]) -> bool:
    """False only when the line surely holds none of the codes (`code_needles`) as a string.

    A string equal to one of them appears in a whole, plain line (`whole_and_plain`) as its
    needle; any other line is parsed.
    """
    if not whole_and_plain(line):
        return True
    return any(line.find(needle) != -1 for needle in needles)


def identifier_precheck(pairs: frozenset[tuple[str, str]]) -> Precheck | None:
    """A line test for `patients_by_identifier`, or None when every line is to be parsed.

    Without a backslash, every JSON string in a line is spelt out in its UTF-8 bytes, so a line
    that holds none of the values' bytes carries none of the identifiers. A line with one (any
    escape, `\\u00c9`, `\\/`) is parsed, and so is one not shaped like one whole object, so that
    a truncated line is still recorded as unreadable. A damaged line without the values is left
    unrecorded here: if the damage hit a wanted value, its cohort line is reported unresolved, and
    a Patient fetch parses (and records) every line. Past `VALUES_PRECHECKED` values,
    parsing is cheaper.
    """
    if len({value for _, value in pairs}) > VALUES_PRECHECKED:
        return None
    try:
        # orjson writes what must be escaped with a backslash: such a value needs the parse.
        needles = tuple({orjson.dumps(value)[1:-1] for _, value in pairs})
    except orjson.JSONEncodeError:  # a lone surrogate: no UTF-8 spelling to look for
        return None

    def may_carry(line: bytes) -> bool:
        if not line.startswith(b"{") or not line.rstrip().endswith(b"}") or b"\\" in line:
            return True
        return any(needle in line for needle in needles)

    return may_carry


def carries(patient: Resource, pairs: frozenset[tuple[str, str]]) -> bool:
    """Whether one of the Patient's identifiers is exactly a pair (`""`: no system)."""
    return any(pair in pairs for pair in identifier_pairs(patient))
