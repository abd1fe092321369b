"""Properties of the folder source on hostile NDJSON (issue 11, item 8).

Lines are built from resources with missing fields and wrong types, NaN and Infinity tokens, huge
and negative numbers, odd Unicode, unknown systems and units, then some are damaged: cut short,
given invalid UTF-8 or stray bytes. Whatever the file holds, a fetch either fails with the one
documented error for a file with nothing readable of its type, or accounts for every line: handed
out, skipped (another type), another patient's, another server's, or recorded as unreadable.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from adapter.errors import IncompleteInputError
from adapter.sources.base import Query, patient_id_of
from adapter.sources.files import FolderSource
from adapter.sources.unreadable import patient_named_by

if TYPE_CHECKING:
    from pathlib import Path

    from adapter.sources.base import Resource

PATIENTS = ("p1", "p2", "p-3.x")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Reasons are fixed texts (orjson's message, a column), never a piece of the line: at least no
# double quote, backslash or non-ASCII, which a piece of a JSON string would carry.
_REASON = re.compile(
    r"not a JSON object|not valid UTF-8|not valid JSON \([ -!#-\[\]-~]{1,80}, column \d+\)"
)

odd_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\n"), max_size=12
) | st.sampled_from(
    ["", "\u202e", "\ufeff", "\U0001d518\U0001d52b\U0001d526", "é\u0301", "Patient/p1", "\\", '"']
)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**63, -(2**63) - 1, 10**400]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)

references = st.one_of(
    st.sampled_from([f"Patient/{p}" for p in PATIENTS]),
    st.sampled_from(
        [
            "Patient/p1/_history/2",
            "http://other.example/fhir/Patient/p1",
            "urn:uuid:5e1c2f0a-9b7d-4c1e-8f3a-2d6b9e0c4a17",
            "Group/p1",
            "Patient/",
            "Patient/weird id",
        ]
    ),
    odd_text,
)
local = st.fixed_dictionaries({"reference": st.sampled_from([f"Patient/{p}" for p in PATIENTS])})
subjects = st.one_of(
    local,
    local,
    st.fixed_dictionaries({"reference": references}),
    st.fixed_dictionaries({"reference": scalars}),
    scalars,
    st.lists(scalars, max_size=2),
)
quantities = st.fixed_dictionaries(
    {},
    optional={
        "value": scalars,
        "unit": odd_text,
        "system": st.sampled_from(["http://unitsofmeasure.org", "urn:unknown:units"]) | odd_text,
        "code": odd_text,
    },
)
codings = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "system": st.sampled_from(["http://loinc.org", "urn:oid:1.2.3.999"]) | odd_text,
            "code": odd_text | numbers,
        },
    ),
    max_size=2,
)
resources = st.fixed_dictionaries(
    {
        # Mostly what the file is named for, so that most examples get past the empty-file check.
        "resourceType": st.sampled_from(
            ["Observation"] * 7 + ["Condition", "Patient", "observation"]
        ),
        "subject": subjects,
    },
    optional={
        "id": odd_text | numbers,
        "status": st.sampled_from(["final", "amended", "entered-in-error"]) | scalars,
        "patient": subjects,
        "code": st.fixed_dictionaries({"coding": codings}) | scalars,
        "valueQuantity": quantities | scalars,
        "effectiveDateTime": st.sampled_from(["2026-06-10", "2026-13-45", "", "-0001"]) | scalars,
    },
)


def _dumps(value: Any, *, ascii_only: bool = False) -> bytes:
    """Compact JSON by the standard library: unlike orjson it writes integers past 64 bits, and
    NaN and Infinity as the bare tokens some exporters write."""
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":")).encode()


def _no_newline(data: bytes) -> bytes:
    return data.replace(b"\n", b" ")


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """One NDJSON line (without its newline), maybe damaged."""
    resource = draw(resources)
    for key in ("resourceType", "subject"):
        change = draw(st.integers(0, 19))
        if change == 0:
            del resource[key]
        elif change == 1:
            resource[key] = draw(scalars)
    data = _dumps(resource, ascii_only=draw(st.booleans()))
    damage = draw(st.sampled_from(["none", "none", "cut", "bytes", "nan", "array", "comma", "raw"]))
    if damage == "cut":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + _no_newline(draw(st.binary(min_size=1, max_size=4))) + data[at:]
    elif damage == "nan" and data.endswith(b"}"):
        token = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"]))
        data = data[:-1] + (b"," if len(data) > 2 else b"") + b'"valueInteger":' + token + b"}"
    elif damage == "array":
        data = b"[" + data + b"]"
    elif damage == "comma" and data.endswith(b"}"):
        data = data[:-1] + b",}"
    elif damage == "raw":
        data = _no_newline(draw(st.binary(max_size=40)))
    return data


def _unique_ids(raw: list[bytes]) -> list[bytes]:
    """Lines whose parsed `id` is a string get an index in it: `foreign` counts once per id."""
    out = []
    for i, line in enumerate(raw):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.append(line)
            continue
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            value["id"] = f"{i}:{value['id']}"
            line = _dumps(value)
        out.append(line)
    return out


def fetch(folder: Path, patients: frozenset[str] | None) -> tuple[FolderSource, list[Resource]]:
    source = FolderSource(folder)

    async def main() -> list[Resource]:
        return [r async for r in source.fetch(Query("Observation", patients=patients))]

    return source, asyncio.run(main())


def _is_observation(line: bytes) -> bool:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get("resourceType") == "Observation"


ANCHOR = b'{"resourceType":"Observation","id":"anchor","subject":{"reference":"Patient/p1"}}'


@given(
    raw=st.lists(lines(), max_size=25),
    # Where a well-formed Observation goes, mostly: without one most files fail as empty.
    anchor=st.one_of(st.none(), st.integers(0, 25), st.integers(0, 25)),
    patients=st.none() | st.frozensets(st.sampled_from(PATIENTS)),
    gzipped=st.booleans(),
    bom=st.booleans(),
)
def test_every_line_is_handed_out_counted_or_recorded_as_unreadable(
    tmp_path_factory: Any,
    raw: list[bytes],
    anchor: int | None,
    patients: frozenset[str] | None,
    gzipped: bool,
    bom: bool,
) -> None:
    """No crash but the documented one; otherwise every non-blank line is accounted for once."""
    folder = tmp_path_factory.mktemp("src")
    if anchor is not None:
        raw = [*raw[:anchor], ANCHOR, *raw[anchor:]]
    body = _unique_ids(raw)
    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(line + b"\n" for line in body)
    name = "Observation.ndjson.gz" if gzipped else "Observation.ndjson"
    (folder / name).write_bytes(gzip.compress(data) if gzipped else data)
    # As the source reads them: one byte order mark is dropped from the first line of the file.
    seen = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    counted = [line for line in seen if line.strip()]
    if not any(_is_observation(line) for line in counted):
        # The one failure a readable file can give: not one of its lines is an Observation.
        with pytest.raises(IncompleteInputError, match="no readable Observation resources in"):
            fetch(folder, patients)
        event("incomplete input")
        return
    source, found = fetch(folder, patients)
    event(f"unreadable: {min(len(source.unreadable), 3)}")
    event(f"handed out: {min(len(found), 3)}")
    if any(item.patient for item in source.unreadable):
        event("an unreadable line named its patient")
    accounted = [
        source.yielded["Observation"],
        sum(source.skipped.values()),
        source.other_patients["Observation"],
        source.foreign["Observation"],
        len(source.unreadable),
    ]
    assert sum(accounted) == len(counted)
    assert source.yielded["Observation"] == len(found)
    for resource in found:
        assert resource["resourceType"] == "Observation"
        if patients is not None:
            assert patient_id_of(resource) in patients
    lines_seen = [item.line for item in source.unreadable]
    assert len(set(lines_seen)) == len(lines_seen)
    for item in source.unreadable:
        assert item.file == str(folder / name)
        assert _REASON.fullmatch(item.reason), item.reason
        assert item.patient is None or _FHIR_ID.fullmatch(item.patient)


@given(line=lines())
def test_a_patient_named_by_the_bytes_is_the_only_patient_they_reference(line: bytes) -> None:
    """Attribution never picks one of two patients: each `Patient/` in the line is that one."""
    named = patient_named_by(line)
    if named is None:
        return
    event("named")
    assert _FHIR_ID.fullmatch(named)
    assert b"\\/" not in line
    assert b"\\u" not in line
    mentioned = re.findall(rb"Patient/([^\"/]*)", line)
    assert {m.decode() for m in mentioned} == {named}


@given(resource=resources, cut=st.integers(0, 10_000))
def test_a_line_cut_after_its_subject_names_that_subject(resource: Resource, cut: int) -> None:
    """An Observation cut short after `"subject":{"reference":"Patient/p1"}` names p1, unless
    the rest of what is left mentions another Patient reference."""
    resource = {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}} | {
        k: v for k, v in resource.items() if k not in ("subject", "resourceType")
    }
    data = _dumps(resource)
    end = data.index(b'"Patient/p1"') + len(b'"Patient/p1"')
    line = data[: end + cut % max(1, len(data) - end)]
    others = line.count(b"Patient/") > 1 or b"\\u" in line or b"\\/" in line
    if not others:
        assert patient_named_by(line) == "p1"
