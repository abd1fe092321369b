"""candidates.csv and candidates-detail.csv: the coordinator's worklist, read from results.json.

Both are functions of the results.json document alone (`doc`), so that report.html can be drawn
from the same document and say the same (issue 12). They list the patients to look at: the
candidates, then the potential candidates, each by reference; never an ineligible patient, nor one
whose ResearchSubject people have already set (`people_status`: withdrawn, on-study...): they are
handled.

- candidates.csv: one row per patient, whom to call and how each automated criterion came out.
- candidates-detail.csv: one row per automated criterion of each of those patients, with the value
  behind it. The manual criteria are left out of both: they are the same questions for every
  patient (a fifth of the old file's rows); results.json lists them under every patient.

Every cell goes through `csv_cell` (OWASP "CSV Injection"), and every cell is quoted.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from adapter.report.values import normalised_text, recorded_text

#: candidates.csv's columns before the automated criteria's ids (in the trial's order)
WORKLIST_COLUMNS = ("patient", "name", "mrn", "birth_date", "age", "sex", "status", "new")
DETAIL_COLUMNS = (
    "patient",
    "name",
    "mrn",
    "status",
    "criterion",
    "result",
    "recorded_value",
    "recorded_unit",
    "value",
    "unit",
    "date",
    "threshold",
    "reason",
    "reference",
)
_IDENTITY = ("name", "mrn", "birth_date", "age", "sex")
#: listed statuses, in the order listed
_LISTED = ("candidate", "potential-candidate")
MANUAL = "manual"

# OWASP, "CSV Injection": a cell starting with one of these is read by spreadsheets as a formula
# (`=HYPERLINK(...)`, `@SUM(...)`, `-2+3+cmd|...`); tab and CR are on the list as well.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A plain number, which a spreadsheet reads as a number and never as a formula: `-1.5`, `-2e-05`.
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def csv_cell(text: str, *, number: bool = False) -> str:
    """`text` made inert for spreadsheets: a leading `'` when it could start a formula (issue 11,
    item 7: a unit text `=HYPERLINK(...)` reached candidates.csv as a live formula).

    With `number` (the value columns only), a plain number such as `-1.5` is kept as it is, so
    that it still sorts and sums as a number; `-inf` or anything else is escaped. Text columns
    are escaped by the first character alone, as OWASP advises: `-2` as a reason or unit is text.
    """
    if not text.startswith(_FORMULA_START):
        return text
    if number and _PLAIN_NUMBER.fullmatch(text):
        return text
    return "'" + text


def automated_criteria(doc: Mapping[str, Any]) -> list[str]:
    """The trial's automated criterion ids in its order: `automated_criteria` of results.json;
    in a document written before it was, the first patient's non-manual criteria."""
    listed = doc.get("automated_criteria")
    if isinstance(listed, list):
        return [str(c) for c in listed]
    for entry in doc.get("patients", []):
        return [cid for cid, r in entry["criteria"].items() if r["result"] != MANUAL]
    return []


def listed_patients(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The patients the worklist lists, in its order: candidates, then potential candidates,
    each by reference; none that is ineligible or whose `people_status` is set."""
    order = {status: i for i, status in enumerate(_LISTED)}
    listed = [
        p
        for p in doc.get("patients", [])
        if p.get("status") in order and p.get("people_status") is None
    ]
    return sorted(listed, key=lambda p: (order[p["status"]], p["patient"]))


def candidates_csv(doc: Mapping[str, Any]) -> str:
    """candidates.csv: `patient,name,mrn,birth_date,age,sex,status,new,<criterion ids>`, one row
    per listed patient; a criterion cell is its result (met, not_met, unknown). `new` is yes or
    no from the patient's `new` key, blank without one."""
    automated = automated_criteria(doc)
    rows = []
    for entry in listed_patients(doc):
        who = _identity(entry)
        criteria = entry.get("criteria", {})
        new = _yes_no(entry.get("new"))
        results = [criteria[c]["result"] if c in criteria else "" for c in automated]
        rows.append([*(who[c] for c in ("patient", *_IDENTITY)), entry["status"], new, *results])
    # A criterion id may be an identity column's name too (the HCC trial's `age`): the header is
    # the issue's, and the criterion columns are told apart by their place after `new`.
    age = WORKLIST_COLUMNS.index("age")
    return _write([*WORKLIST_COLUMNS, *automated], rows, numbers={age})


def candidates_detail_csv(doc: Mapping[str, Any]) -> str:
    """candidates-detail.csv: one row per automated criterion of each listed patient, with the
    first piece of evidence behind it (results.json holds the rest).

    `recorded_value` and `recorded_unit` are as the source wrote them (comparator kept, unit
    text); `value` and `unit` are what the criterion compared with its threshold, rounded to the
    recorded precision (adapter.report.values), blank when the recorded value could not be used.
    `date` is the evidence's calendar day as recorded.
    """
    automated = automated_criteria(doc)
    rows = []
    for entry in listed_patients(doc):
        who = _identity(entry)
        criteria = entry.get("criteria", {})
        for cid in automated:
            if cid not in criteria:
                continue
            r = criteria[cid]
            ev = r["evidence"][0] if r.get("evidence") else {}
            recorded, normalised = ev.get("recorded"), ev.get("normalised")
            rows.append(
                [
                    *(who[c] for c in ("patient", "name", "mrn")),
                    entry["status"],
                    cid,
                    r["result"],
                    *recorded_text(recorded),
                    *normalised_text(recorded, normalised),
                    (ev.get("date") or "")[:10],
                    ev.get("threshold") or "",
                    r.get("reason") or "",
                    ev.get("reference") or "",
                ]
            )
    numbers = {DETAIL_COLUMNS.index(c) for c in ("recorded_value", "value")}
    return _write(DETAIL_COLUMNS, rows, numbers=numbers)


def _identity(entry: Mapping[str, Any]) -> dict[str, str]:
    """The patient's reference and identity as cells; blank where unknown."""
    identity = entry.get("identity") or {}
    cells = {k: "" if identity.get(k) is None else str(identity[k]) for k in _IDENTITY}
    return cells | {"patient": entry["patient"]}


def _yes_no(value: object) -> str:
    """`new` as a cell: yes, no, or blank when results.json has no boolean `new` (a run without
    a ledger)."""
    if value is True:
        return "yes"
    return "no" if value is False else ""


def _write(header: Sequence[str], rows: Iterable[Sequence[str]], *, numbers: set[int]) -> str:
    """The CSV text; the cells of the columns at `numbers` keep a plain number (`csv_cell`), so
    that they still sort and sum as numbers."""
    buf = io.StringIO()
    # Every cell quoted, as OWASP advises beside the `'`: with QUOTE_MINIMAL a CR inside a cell
    # went out bare (only the line terminator's characters force quotes) and split the row.
    writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow([csv_cell(h) for h in header])
    for row in rows:
        writer.writerow([csv_cell(cell, number=i in numbers) for i, cell in enumerate(row)])
    return buf.getvalue()
