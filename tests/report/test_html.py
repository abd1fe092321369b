"""report.html for the research coordinator (issue 12), checked without a browser.

The page is rendered from the demo sweep's results.json, with the keys that results.json is
about to gain (`identity`, `new`, `people_status`, `source`, the run's times,
`no_longer_qualifies`) added here as a later run would write them. tests/report/
test_html_browser.py renders the same document in Chromium.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import stat
from datetime import date, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from spec_ids import AUTOMATED, MANUAL

from adapter.report.html import (
    Bar,
    attrition,
    layout_of,
    normalised_text,
    recorded_text,
    render_report,
    stale_labs,
    write_report_html,
)
from adapter.report.results import sweep_json
from adapter.sources.files import FolderSource
from adapter.sweep import run_sweep
from adapter.trials import load_trial

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo"
EXPECTED = json.loads((DEMO / "expected.json").read_text())
TRIAL = "hcc-ablation-lenvatinib-pd1"
AS_OF = date(2026, 6, 15)
TITLE = f"Pre-screening report: {TRIAL}, as of {AS_OF}"


@functools.cache
def _demo_results() -> str:
    trial = load_trial(TRIAL, None, site_mappings=None)
    sweep = asyncio.run(run_sweep(trial, FolderSource(DEMO), AS_OF))
    return json.dumps(sweep_json(sweep, sink=None, writes={}), default=list)


@functools.cache
def layout() -> Any:
    return layout_of(load_trial(TRIAL, None, site_mappings=None))


def demo_document(*, soon: bool = True) -> dict[str, Any]:
    """results.json of the demo sweep (a fresh copy); with `soon`, the keys still to come."""
    doc: dict[str, Any] = json.loads(_demo_results())
    if not soon:
        return doc
    for n, p in enumerate(doc["patients"], start=1):
        p["identity"] = {
            "name": f"Example Person {n:02d}",
            "mrn": f"MRN-{n:04d}",
            "birth_date": "1961-03-04",
            "age": 65,
            "sex": "female" if n % 2 else "male",
        }
        p["new"] = n % 3 == 0
        p["people_status"] = None
    doc |= {
        "source": "fixtures/demo (folder)",
        "started": "2026-06-15T09:00:00+02:00",
        "finished": "2026-06-15T09:00:03.5+02:00",
        "run_id": "run-0001",
        "adapter_version": "0.1.0",
        "no_longer_qualifies": [],
    }
    return doc


def patient(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    return next(p for p in doc["patients"] if p["patient"] == ref)


class Page(HTMLParser):
    """The tags, attributes and text of a rendered page, for asserting on its structure."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self._in_title = False
        self.title = ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_title = tag == "title" and not self.title

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_title:
            self.title += data

    def having_class(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.tags if name in a.get("class", "").split()]

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if "id" in a}


def render(doc: dict[str, Any]) -> str:
    return render_report(doc, **layout())


@pytest.fixture(scope="module")
def demo_html() -> str:
    return render(demo_document())


# --- attrition ------------------------------------------------------------------------------


def _expected_attrition() -> list[tuple[str, int, int | None]]:
    """The attrition of the verdicts reasoned from the spec (fixtures/demo/expected.json)."""
    verdicts = [p["criteria"] for p in EXPECTED["patients"].values()]
    steps: list[tuple[str, int, int | None]] = [("cohort", len(verdicts), None)]
    out: set[int] = set()
    for cid in AUTOMATED:
        out |= {i for i, v in enumerate(verdicts) if v[cid] == "not_met"}
        unknown = sum(v[cid] == "unknown" for v in verdicts)
        steps.append((cid, len(verdicts) - len(out), unknown))
    return steps


def test_attrition_on_the_demo_matches_the_verdicts_reasoned_from_the_spec():
    """Cohort bar, then remaining and unknowns after each criterion, in the trial's order."""
    bars = attrition(demo_document(), AUTOMATED)
    assert [(b.label, b.remaining, b.unknown) for b in bars] == _expected_attrition()


def test_attrition_ends_with_the_candidates_and_potential_candidates():
    """Whoever remains after the last criterion has no not_met: exactly the flagged patients."""
    doc = demo_document()
    bars = attrition(doc, AUTOMATED)
    assert bars[0] == Bar("cohort", len(doc["patients"]))
    assert bars[-1].remaining == doc["counts"]["candidate"] + doc["counts"]["potential-candidate"]


def _tiny(*rows: dict[str, str]) -> dict[str, Any]:
    return {"patients": [{"criteria": {c: {"result": r} for c, r in row.items()}} for row in rows]}


def test_a_patient_remains_until_a_criterion_is_not_met_and_unknowns_count_the_whole_cohort():
    """Unknown keeps a patient in; the unknowns of a criterion include patients already out."""
    doc = _tiny(
        {"a": "met", "b": "not_met", "c": "unknown"},
        {"a": "not_met", "b": "unknown", "c": "met"},
        {"a": "unknown", "b": "met", "c": "not_met"},
        {"a": "met", "b": "met", "c": "met"},
    )
    assert attrition(doc, ["a", "b", "c"]) == [
        Bar("cohort", 4),
        Bar("a", 3, 1),
        Bar("b", 2, 1),
        Bar("c", 1, 1),
    ]


def test_a_criterion_missing_from_a_patient_does_not_take_the_patient_out():
    doc = _tiny({"a": "met"}, {"a": "not_met"})
    assert attrition(doc, ["a", "b"]) == [Bar("cohort", 2), Bar("a", 1, 0), Bar("b", 1, 0)]


def test_the_chart_has_a_bar_for_the_cohort_and_two_per_criterion(demo_html):
    """One bar for the cohort, then a remaining and an unknown bar per automated criterion."""
    page = Page(demo_html)
    assert len(page.having_class("bar-cohort")) == 1
    assert len(page.having_class("bar-remaining")) - 1 == len(AUTOMATED)  # and the legend's
    assert len(page.having_class("bar-unknown")) - 1 == len(AUTOMATED)
    assert ("title", {"id": "attrition-title"}) in page.tags
    assert ("desc", {"id": "attrition-desc"}) in page.tags


# --- sections -------------------------------------------------------------------------------


def test_the_page_has_its_sections(demo_html):
    page = Page(demo_html)
    assert {"summary", "attrition", "candidates", "patients"} <= page.ids()


def test_the_summary_shows_the_run_and_the_counts_per_status(demo_html):
    text = " ".join(Page(demo_html).text)
    for shown in (TRIAL, str(AS_OF), "fixtures/demo (folder)", "run-0001", "(3.5 s)"):
        assert shown in text
    assert "candidate 24" in " ".join(text.split())


def test_the_title_names_the_trial_and_as_of_and_no_patient(demo_html):
    """Tab titles reach browser history: no patient data there."""
    page = Page(demo_html)
    assert page.title == TITLE
    assert "Example Person" not in page.title
    assert "MRN" not in page.title


def test_the_table_lists_each_candidate_and_potential_candidate_once(demo_html):
    doc = demo_document()
    flagged = doc["counts"]["candidate"] + doc["counts"]["potential-candidate"]
    rows = Page(demo_html).having_class("patient-row")
    assert len(rows) == flagged


def test_each_listed_patient_has_a_section_with_every_criterion_and_the_manual_checklist():
    """Automated criteria in the evidence table; the manual ones as boxes drawn in CSS."""
    page = Page(render(demo_document()))
    sections = page.having_class("patient")
    assert len(sections) == len(page.having_class("patient-row"))
    assert len(page.having_class("box")) == len(sections) * len(MANUAL)
    assert len(page.having_class("crit")) == len(sections) * len(AUTOMATED)
    assert not [t for t, _ in page.tags if t in ("input", "script")]


def test_unknown_criteria_are_listed_in_the_table():
    doc = demo_document()
    unknown = [c for c, r in patient(doc, "Patient/demo-16")["criteria"].items()
               if r["result"] == "unknown"]  # fmt: skip
    html = render(doc)
    row = html.split("Patient/demo-16", 1)[1].split("</tr>", 1)[0]
    assert unknown
    assert all(c.replace("_", "_<wbr>") in row for c in unknown)


def test_a_document_without_the_new_keys_renders_with_dashes():
    """An older results.json: no identity, no run times, no no-longer-qualifies section."""
    page = Page(render(demo_document(soon=False)))
    assert not {"no-longer-qualifies", "handled"} & page.ids()
    assert "—" in "".join(page.text)


# --- values ---------------------------------------------------------------------------------


def _ev(value: float | None, unit: str | None, norm: float | None, norm_unit: str | None,
        comparator: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "reference": "Observation/o1",
        "recorded": {"value": value, "unit": unit, "code": unit, "comparator": comparator},
        "normalised": {"value": norm, "unit": norm_unit},
    }


@pytest.mark.parametrize(
    ("evidence", "recorded", "normalised"),
    [
        (_ev(122.0, "mg/dL", 6.77175843694, "mmol/L"), "122 mg/dL", "6.77 mmol/L"),
        (_ev(3.9, "g/dL", 39.000000001, "g/L"), "3.9 g/dL", "39 g/L"),
        (_ev(2.0, "IU/L", 2.0, "[IU]/L", "<"), "<2 IU/L", "<2 IU/L"),
        (_ev(400.0, "U/L", 400.0, "U/L", ">"), ">400 U/L", ">400 U/L"),
        (_ev(0.75, "mg/dL", 0.75, "mg/dL"), "0.75 mg/dL", "0.75 mg/dL"),
        (_ev(138.0, "10^3/uL", 138.0, "10*9/L"), "138 10^3/uL", "138 10^9/L"),
        (_ev(None, None, 3.016, "10*9/L"), "—", "3.016 10^9/L"),
        (_ev(None, None, None, None), "—", "—"),
    ],
)
def test_values_are_shown_as_recorded_and_normalised_to_the_recorded_precision(
    evidence, recorded, normalised
):
    assert (recorded_text(evidence), normalised_text(evidence)) == (recorded, normalised)


def test_a_coded_value_is_shown_by_its_code():
    ev = {
        "reference": "Observation/e",
        "recorded": {"value": None, "code": "http://loinc.org|LA9622-7"},
    }
    assert recorded_text(ev) == "LA9622-7"


def test_the_demo_glucose_is_shown_recorded_and_normalised(demo_html):
    assert "122 mg/dL" in demo_html
    assert "6.77 mmol/L" in demo_html


# --- escaping and self-containment ----------------------------------------------------------

HOSTILE = "<script>alert(1)</script>"


def test_a_unit_text_with_markup_is_escaped():
    """Units, reasons and names come from the source; the page shows them as text."""
    doc = demo_document()
    p = patient(doc, "Patient/demo-01")
    p["criteria"]["hemoglobin"]["evidence"][0]["recorded"]["unit"] = HOSTILE
    p["criteria"]["hemoglobin"]["reason"] = HOSTILE
    p["identity"]["name"] = HOSTILE
    html = render(doc)
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert HOSTILE in "".join(Page(html).text)


def test_the_page_loads_nothing_from_anywhere(demo_html):
    """Hospital PCs are often offline: no link, script, image, frame, @import or url()."""
    page = Page(demo_html)
    assert not {t for t, _ in page.tags} & {"link", "script", "img", "iframe", "object", "embed"}
    assert not [a for _, a in page.tags if "src" in a]
    assert all(a["href"].startswith("#") for _, a in page.tags if "href" in a)
    assert "@import" not in demo_html
    assert "url(" not in demo_html
    csp = [a for t, a in page.tags if a.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp[0]["content"]


# --- labs to redraw -------------------------------------------------------------------------


def _with_lab_dated(days_before: int, *, time: str = "") -> dict[str, Any]:
    doc = demo_document()
    day = (AS_OF - timedelta(days=days_before)).isoformat() + time
    evidence = patient(doc, "Patient/demo-01")["criteria"]["hemoglobin"]["evidence"]
    evidence[0]["date"] = day
    return doc


@pytest.mark.parametrize("time", ["", "T23:30:00-05:00", "T00:10:00+09:00"])
@pytest.mark.parametrize(("days", "redraw"), [(6, False), (7, False), (8, True), (30, True)])
def test_a_lab_older_than_7_days_is_marked_redraw_at_screening(days, redraw, time):
    """More than 7 days before as-of, by the calendar date in the timestamp's own offset;
    exactly 7 days is not older."""
    doc = _with_lab_dated(days, time=time)
    found = stale_labs(patient(doc, "Patient/demo-01"), AS_OF, layout()["labs"])
    assert ("hemoglobin" in [s.criterion for s in found]) is redraw
    row = render(doc).split("Patient/demo-01", 1)[1].split("</tr>", 1)[0]
    assert ("redraw at screening" in row) is redraw


def test_only_labs_are_redrawn_not_ecog_imaging_or_blood_pressure():
    """A months-old ECOG or tumour size is not a blood draw; the trial's lab criteria are."""
    labs = layout()["labs"]
    assert {"hemoglobin", "neutrophils", "coagulation", "child_pugh", "not_pregnant"} <= labs
    assert not {"ecog", "milan", "blood_pressure_controlled", "cardiac_function", "age"} & labs


def test_a_partial_date_that_may_be_older_than_7_days_is_redrawn():
    doc = demo_document()
    p = patient(doc, "Patient/demo-01")
    p["criteria"]["hemoglobin"]["evidence"][0]["date"] = "2026-06"
    assert [s.criterion for s in stale_labs(p, AS_OF, {"hemoglobin"})] == ["hemoglobin"]


# --- already handled and no longer qualifies ------------------------------------------------


def section_text(html: str, section_id: str) -> str:
    """The text of the <section> with this id (the page nests none inside the listed ones)."""
    part = html.split(f'<section id="{section_id}"', 1)[1].split("</section>", 1)[0]
    return " ".join(" ".join(Page(part).text).split())


def test_a_patient_with_a_status_set_by_people_is_listed_apart_and_never_as_a_candidate():
    doc = demo_document()
    patient(doc, "Patient/demo-01")["people_status"] = "on-study"
    html = render(doc)
    assert "already handled (on-study)" in section_text(html, "handled")
    assert "Patient/demo-01" in section_text(html, "handled")
    assert "Patient/demo-01" not in section_text(html, "candidates")
    flagged = doc["counts"]["candidate"] + doc["counts"]["potential-candidate"]
    assert len(Page(html).having_class("patient-row")) == flagged - 1


def test_a_patient_who_no_longer_qualifies_is_listed_with_the_criterion_that_changed():
    """Before and now, and the changed criterion with this run's result and reason."""
    doc = demo_document()
    doc["no_longer_qualifies"] = [
        {"patient": "Patient/demo-31", "previous_status": "candidate", "changed": ["platelets"]}
    ]
    text = section_text(render(doc), "no-longer-qualifies")
    assert "Example Person 31 Patient/demo-31 MRN-0031 candidate ineligible" in text
    assert "platelets : not_met , 40 10*9/L fails >= 50 10*9/L" in text


def test_a_patient_who_no_longer_qualifies_and_left_the_cohort_is_still_listed():
    doc = demo_document()
    doc["no_longer_qualifies"] = [
        {"patient": "Patient/gone", "identity": {"name": "Left Cohort", "mrn": "M-9"},
         "previous_status": "potential-candidate", "changed": ["hcc_diagnosis"]}
    ]  # fmt: skip
    text = " ".join(Page(render(doc)).text)
    for shown in ("Left Cohort", "not in this run", "hcc_diagnosis"):
        assert shown in text


def test_a_new_patient_is_marked_new_since_the_last_sweep():
    doc = demo_document()
    for p in doc["patients"]:
        p["new"] = p["patient"] == "Patient/demo-01"
    page = Page(render(doc))
    assert len(page.having_class("new")) == 2  # the table's cell and the section's heading


# --- the file -------------------------------------------------------------------------------


def test_report_html_is_written_for_the_owner_only(tmp_path, demo_html):
    write_report_html(tmp_path / "out", demo_html)
    written = tmp_path / "out" / "report.html"
    assert written.read_text(encoding="utf-8") == demo_html
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_the_default_criterion_order_is_the_first_patients_without_the_manual_ones():
    doc = demo_document()
    by_default = Page(render_report(copy.deepcopy(doc)))
    assert len(by_default.having_class("bar-remaining")) - 1 == len(AUTOMATED)


def test_the_summary_says_where_the_cohort_came_from_and_how_the_server_was_read():
    """Issue 13: a Group's members read one patient at a time, and what that cannot reach."""
    doc = demo_document()
    doc["cohort"] = {"form": "group:registry", "members": 91, "inactive": 3, "ended": 3}
    doc["source_reads"] = {
        "mode": "per-patient",
        "profile": "epic",
        "switched_to_per_patient": False,
        "unreached": ["Observations without one of the searched categories are not reached"],
    }
    html = render(doc)
    assert "members of group:registry (91 members, 3 inactive, 3 ended)" in html
    assert "one patient at a time, profile epic" in html
    assert "Observations without one of the searched categories are not reached" in html


def test_a_folder_sweep_by_diagnosis_says_so_and_no_server_read(demo_html):
    assert "the diagnosis search" in demo_html
    assert "Server read" not in demo_html
