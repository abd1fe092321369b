"""results.json is written in pieces, one per patient (issue 15), with the very bytes that one
`orjson.dumps` of the whole document gives: tools that read it see no difference."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from adapter.report.files import write_private
from adapter.report.results import json_pieces

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


def _whole(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


@given(st.dictionaries(st.text(max_size=6), _VALUES, max_size=6))
def test_the_pieces_are_the_whole_document_byte_for_byte(doc: dict[str, Any]) -> None:
    assert b"".join(json_pieces(doc)) == _whole(doc)


def test_each_patient_is_a_piece_of_its_own() -> None:
    doc = {"trial": "t", "patients": [{"patient": f"Patient/{i}"} for i in range(3)], "n": 1}
    pieces = list(json_pieces(doc))
    assert sum(b"Patient/" in piece for piece in pieces) == 3
    assert max(piece.count(b"Patient/") for piece in pieces) == 1
    assert b"".join(pieces) == _whole(doc)


def test_written_in_pieces_the_file_is_whole_and_owner_only(tmp_path: Any) -> None:
    doc = {"patients": [{"patient": "Patient/1"}], "text": "line\nbreak"}
    write_private(tmp_path / "results.json", json_pieces(doc))
    assert (tmp_path / "results.json").read_bytes() == _whole(doc)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o600


def test_report_html_written_in_pieces_is_the_page_rendered_whole(tmp_path: Any) -> None:
    from adapter.report.html import render_report, report_pieces, write_report_html

    doc = {
        "trial": "t",
        "as_of": "2026-06-15",
        "patients": [
            {"patient": "Patient/1", "status": "candidate", "criteria": {}},
            {"patient": "Patient/2", "status": "ineligible", "criteria": {}},
        ],
    }
    write_report_html(tmp_path, report_pieces(doc))
    assert (tmp_path / "report.html").read_text() == render_report(doc)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o600
