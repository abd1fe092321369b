"""Unreadable input lines: why a line is unreadable, and whose it is when its bytes say for certain.

Issue 11, item 8: one corrupt line in a 100,000-line export stopped the whole sweep. A line that
cannot be parsed is now skipped and recorded (`UnreadableItem`); the sweep holds back only its
patient when the raw bytes name that patient beyond doubt, and every write when they do not.
Neither the reason nor anything else recorded holds the line's content.
"""

from __future__ import annotations

import re

import orjson

from adapter.sources.base import Resource, UnreadableItem

#: `unreadable_reason` of a value that parses but is not one object (`[...]`, `"text"`, `1`).
NOT_AN_OBJECT = "not a JSON object"

# The FHIR R4 `id` datatype.
_FHIR_ID = re.compile(rb"[A-Za-z0-9\-.]{1,64}")
# `"reference":"Patient/<text>"`, the closing quote included: without it the id may be cut short.
_REFERENCE = re.compile(rb'"reference"\s*:\s*"Patient/([^"\\]*)"')
# The same reference as the value of `subject` or `patient`, where `patient_id_of` reads it.
_SUBJECT = re.compile(rb'"(?:subject|patient)"\s*:\s*\{\s*"reference"\s*:\s*"Patient/([^"\\]*)"')


def parse_line(line: bytes) -> Resource | str:
    """The line's JSON object, or why it is unreadable: a fixed text, never the content.

    orjson's messages are fixed texts too ("unexpected end of data"); the exception itself is
    dropped, since its `doc` holds the whole line. Invalid UTF-8 anywhere fails the parse.
    """
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return unreadable_reason(exc)
    if not isinstance(value, dict):
        return NOT_AN_OBJECT
    return value


def unreadable_reason(exc: orjson.JSONDecodeError) -> str:
    """`not valid UTF-8`, or `not valid JSON (<orjson's message>, column <n>)`."""
    if "UTF-8" in exc.msg:
        return "not valid UTF-8"
    return f"not valid JSON ({exc.msg}, column {exc.colno})"


def patient_named_by(line: bytes) -> str | None:
    """The Patient id an unreadable line of a non-Patient type surely belongs to, else None.

    Sure means: the line's subject (or patient) is `{"reference":"Patient/<id>"}` with a FHIR id,
    and every other `Patient/` in it is a reference to that same id. Anything that could hide
    another patient's reference makes it None: JSON escapes (`Patient\\/2`, `\\u0050atient/2`),
    an absolute reference (`http://x/fhir/Patient/2`, perhaps the real subject), a `Patient/` in
    text, an id cut short by the corruption. None holds back every write, so doubt costs a night's
    writes, never a patient evaluated on partial data.
    """
    if b"\\/" in line or b"\\u" in line:
        return None
    subject = _SUBJECT.search(line)
    if subject is None:
        return None
    references = _REFERENCE.findall(line)
    if len(references) != line.count(b"Patient/"):
        return None
    ids = {_patient_id(text) for text in references}
    if len(ids) != 1 or None in ids or _patient_id(subject.group(1)) not in ids:
        return None
    (found,) = ids
    return found


def _patient_id(text: bytes) -> str | None:
    """`<id>` or `<id>/_history/<version>` -> the id; anything else (`a/b`, ``) -> None."""
    head, _, history = text.partition(b"/")
    if not _FHIR_ID.fullmatch(head):
        return None
    if history and not (
        history.startswith(b"_history/") and _FHIR_ID.fullmatch(history[len(b"_history/") :])
    ):
        return None
    return head.decode("ascii")


def record(items: list[UnreadableItem], seen: set[tuple[str, int]], item: UnreadableItem) -> None:
    """Add `item` once per file and line, however many fetches meet it (a Condition file is read
    for the cohort and again for the cohort's patients)."""
    key = (item.file, item.line)
    if key not in seen:
        seen.add(key)
        items.append(item)
