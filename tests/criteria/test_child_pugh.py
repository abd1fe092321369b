"""child_pugh: score range from bilirubin, albumin, INR (or PT), ascites and encephalopathy."""

from __future__ import annotations

import pytest
from factories import AS_OF, codeset, condition, lab, patient
from pydantic import ValidationError

from adapter.analytes import Analyte
from adapter.criteria.child_pugh import Band, ChildPugh, LabBands
from adapter.criteria.context import Context
from adapter.criteria.results import Result
from adapter.facts.model import Normalised, PatientFacts

M, N, U = Result.MET, Result.NOT_MET, Result.UNKNOWN

ANALYTES = {
    "bilirubin_total": Analyte("bilirubin_total", "Bilirubin", "mg/dL", 584.66, None, False, {}),
    "albumin": Analyte("albumin", "Albumin", "g/L", None, None, False, {}),
    "inr": Analyte("inr", "INR", "{INR}", None, None, False, {}),
    "prothrombin_time": Analyte("prothrombin_time", "Prothrombin time", "s", None, None, False, {}),
    "prothrombin_ratio": Analyte("prothrombin_ratio", "PT ratio", "{ratio}", None, None, False, {}),
}
CODESETS = {
    "ascites": codeset("ascites", "R18"),
    "hepatic_encephalopathy": codeset("hepatic_encephalopathy", "K72.9", "K76.82"),
}
# The trial's parameters, as the YAML gives them (band edges in each analyte's canonical unit).
PARAMS = {
    "id": "child_pugh",
    "kind": "child_pugh",
    "window_days": 30,
    "max_score": 9,
    "bilirubin": {
        "analyte": "bilirubin_total",
        "unit": "mg/dL",
        "bands": [{"lt": 2, "points": 1}, {"ge": 2, "le": 3, "points": 2}, {"gt": 3, "points": 3}],
    },
    "albumin": {
        "analyte": "albumin",
        "unit": "g/L",
        "bands": [
            {"gt": 35, "points": 1},
            {"ge": 28, "le": 35, "points": 2},
            {"lt": 28, "points": 3},
        ],
    },
    "inr": {
        "analyte": "inr",
        "unit": "{INR}",
        "bands": [
            {"lt": 1.7, "points": 1},
            {"ge": 1.7, "le": 2.3, "points": 2},
            {"gt": 2.3, "points": 3},
        ],
    },
    "pt_prolongation": {
        "analyte": "prothrombin_time",
        "ratio_analyte": "prothrombin_ratio",
        "default_control": 12.0,
        "unit": "s",
        "bands": [{"lt": 4, "points": 1}, {"ge": 4, "le": 6, "points": 2}, {"gt": 6, "points": 3}],
    },
    "conditions": [
        {"codeset": "ascites", "absent": 1, "present": [2, 3]},
        {"codeset": "hepatic_encephalopathy", "absent": 1, "present": [2, 3]},
    ],
    "grades": [{"grade": "A", "up_to": 6}, {"grade": "B", "up_to": 9}, {"grade": "C", "up_to": 15}],
}
CP = ChildPugh.model_validate(PARAMS)
UNITS = {"bilirubin_total": "mg/dL", "albumin": "g/L", "inr": "{INR}", "prothrombin_time": "s"}
NORMAL = {"bilirubin_total": 1.0, "albumin": 40.0, "inr": 1.0}


def one(analyte, value, comparator=None, problem=None, when="2026-06-10"):
    return lab(
        analyte,
        value,
        when,
        unit=UNITS[analyte],
        comparator=comparator,
        problem=problem,
        ref=f"Observation/{analyte}",
    )


def labs(**values):
    """Normal labs, with some replaced (a value, a (value, comparator) pair) or left out (None)."""
    out = []
    for analyte, value in {**NORMAL, **values}.items():
        if value is None:
            continue
        value, comparator = value if isinstance(value, tuple) else (value, None)
        out.append(one(analyte, value, comparator))
    return tuple(out)


def ctx(labs=(), conditions=()):
    facts = PatientFacts(patient(), labs=labs, conditions=conditions)
    return Context(facts, AS_OF, CODESETS, ANALYTES)


ASCITES, HE = condition("R18.8"), condition("K72.90")


def score(result):
    """'5', '6-7': the score range of the reason."""
    return result.reason.split()[1]


def test_child_pugh_with_normal_labs_and_no_conditions_is_5_a():
    """Every item at 1 point: Child-Pugh 5 (A), met."""
    result = CP.evaluate(ctx(labs()))
    assert result.result is M
    assert result.reason == (
        "Child-Pugh 5 (A): bilirubin 1 mg/dL: 1 point, albumin 40 g/L: 1 point, "
        "INR 1 {INR}: 1 point, ascites absent: 1 point, hepatic encephalopathy absent: 1 point"
    )


@pytest.mark.parametrize(
    ("analyte", "value", "expected"),
    [
        ("bilirubin_total", 1.99, "5"),
        ("bilirubin_total", 2.0, "6"),  # 2-3 mg/dL includes 2
        ("bilirubin_total", 3.0, "6"),  # and 3
        ("bilirubin_total", 3.01, "7"),
        ("albumin", 35.1, "5"),  # > 3.5 g/dL
        ("albumin", 35.0, "6"),  # 2.8-3.5 g/dL includes 3.5
        ("albumin", 28.0, "6"),  # and 2.8
        ("albumin", 27.9, "7"),
        ("inr", 1.69, "5"),
        ("inr", 1.7, "6"),
        ("inr", 2.3, "6"),
        ("inr", 2.31, "7"),
    ],
)
def test_child_pugh_band_edges_are_inclusive_as_written(analyte, value, expected):
    """<2 / 2-3 / >3 mg/dL; >3.5 / 2.8-3.5 / <2.8 g/dL (35, 28 g/L); <1.7 / 1.7-2.3 / >2.3."""
    assert score(CP.evaluate(ctx(labs(**{analyte: value})))) == expected


@pytest.mark.parametrize(
    ("bilirubin", "expected"),
    [
        ((2.0, "<"), "5"),  # every value below 2: one band
        ((2.0, "<="), "5-6"),  # may be 2
        ((3.0, "<"), "5-6"),
        ((3.0, ">"), "7"),
        ((2.0, ">="), "6-7"),
        ((1.0, ">"), "5-7"),
    ],
)
def test_a_value_with_a_comparator_contributes_every_band_its_interval_overlaps(
    bilirubin, expected
):
    """Fine print: '<2' is 1 point, '<=2' is 1-2 points, '>=2' is 2-3 points."""
    assert score(CP.evaluate(ctx(labs(bilirubin_total=bilirubin)))) == expected


def test_child_pugh_with_ascites_is_a_range():
    """An active ascites Condition is 2 to 3 points (the grade is rarely coded)."""
    result = CP.evaluate(ctx(labs(), (ASCITES,)))
    assert result.result is M
    assert result.reason.startswith("Child-Pugh 6-7 (A or B): ")
    assert "ascites active: 2-3 points" in result.reason
    ascites = next(e for e in result.evidence if e.reference == ASCITES.reference)
    assert ascites.recorded_code == "http://hl7.org/fhir/sid/icd-10-cm|R18.8"
    assert (ascites.note or "").startswith("active ascites (clinicalStatus active): 2-3 points")


def test_a_resolved_ascites_condition_is_1_point():
    """Only an active Condition counts."""
    result = CP.evaluate(ctx(labs(), (condition("R18.8", clinical="resolved"),)))
    assert score(result) == "5"


def test_a_missing_lab_contributes_1_to_3_points():
    """No albumin in the window: 1-3 points, and the reason says why."""
    result = CP.evaluate(ctx(labs(albumin=None)))
    assert result.result is M
    assert result.reason.startswith("Child-Pugh 5-7 (A or B): ")
    assert "albumin: 1-3 points (no albumin in the 30 days before 2026-06-15)" in result.reason


@pytest.mark.parametrize(
    ("values", "conditions", "expected", "summary"),
    [
        ({}, (), M, "Child-Pugh 5 (A)"),
        ({"bilirubin_total": 3.5, "albumin": 30, "inr": 2.0}, (), M, "Child-Pugh 9 (B)"),
        ({"bilirubin_total": 3.5, "albumin": 25, "inr": 2.0}, (), N, "Child-Pugh 10 (C)"),
        ({"bilirubin_total": 3.5, "albumin": 30}, (ASCITES,), U, "Child-Pugh 9-10 (B or C)"),
        ({"bilirubin_total": 3.5, "albumin": None, "inr": 2.0}, (), U, "Child-Pugh 8-10 (B or C)"),
        ({"inr": None}, (ASCITES,), M, "Child-Pugh 6-9 (A or B)"),
        ({"bilirubin_total": 3.5, "albumin": 25, "inr": None}, (ASCITES, HE), N, "11-15 (C)"),
        ({"bilirubin_total": None, "albumin": None, "inr": None}, (), U, "Child-Pugh 5-11"),
        ({"bilirubin_total": 3.5, "albumin": 25, "inr": 2.5}, (ASCITES, HE), N, "13-15 (C)"),
    ],
)
def test_child_pugh_is_met_when_the_highest_score_is_at_most_9_and_not_met_from_10(
    values, conditions, expected, summary
):
    """Highest possible <= 9: met; lowest possible >= 10: not_met; else unknown."""
    result = CP.evaluate(ctx(labs(**values), conditions))
    assert result.result is expected
    assert summary in result.evidence[0].note
    assert result.evidence[0].threshold == "score <= 9"
    if expected is U:
        assert ", on both sides of 9/10: " in result.reason


def test_lab_evidence_names_the_band_applied():
    """Each lab used is in the evidence, with the band(s) it fell in as the threshold."""
    result = CP.evaluate(ctx(labs(bilirubin_total=2.0)))
    bili = next(e for e in result.evidence if e.reference == "Observation/bilirubin_total")
    assert bili.threshold == ">= 2 and <= 3 mg/dL: 2 points"
    assert bili.normalised_value == 2.0
    notes = [e.note for e in result.evidence if e.reference is None]
    assert notes[1:] == [
        "no active ascites Condition: 1 point",
        "no active hepatic encephalopathy Condition: 1 point",
    ]


@pytest.mark.parametrize(
    ("pt", "expected"),
    [(15.9, "5"), (16.0, "6"), (18.0, "6"), (18.1, "7")],
)
def test_pt_prolongation_scores_when_there_is_no_inr_in_the_window(pt, expected):
    """<4 / 4-6 / >6 s of prolongation (default control 12 s here) when no INR."""
    result = CP.evaluate(ctx((*labs(inr=None), one("prothrombin_time", pt))))
    assert score(result) == expected
    head = next(e for e in result.evidence if e.reference == "Observation/prothrombin_time")
    assert (head.note or "").startswith("no INR in the 30 days; derived: PT prolongation")
    assert (head.threshold or "").startswith("PT prolongation ")


def test_an_inr_that_cannot_be_read_is_1_to_3_points_without_falling_back_to_pt():
    """'No INR' means none in the window; one that exists but is unreadable is a missing lab."""
    unreadable = one("inr", 1.0, problem="no value")
    result = CP.evaluate(ctx((*labs(inr=None), unreadable, one("prothrombin_time", 13.0))))
    assert score(result) == "5-7"
    assert "INR: 1-3 points (no value)" in result.reason
    assert "Observation/prothrombin_time" not in {e.reference for e in result.evidence}


def test_no_inr_and_no_pt_is_1_to_3_points():
    """Neither INR nor PT in the window."""
    result = CP.evaluate(ctx(labs(inr=None)))
    assert score(result) == "5-7"
    assert (
        "INR/PT: 1-3 points (no INR in the 30 days; "
        "no prothrombin time in the 30 days before 2026-06-15)"
    ) in result.reason


def test_without_a_pt_item_a_missing_inr_is_1_to_3_points():
    """pt_prolongation is optional."""
    crit = ChildPugh.model_validate({**PARAMS, "pt_prolongation": None})
    result = crit.evaluate(ctx((*labs(inr=None), one("prothrombin_time", 13.0))))
    assert "INR: 1-3 points (no inr in the 30 days before 2026-06-15)" in result.reason
    assert crit.analytes() == frozenset({"bilirubin_total", "albumin", "inr"})


def test_without_grades_the_score_has_no_class_label():
    """grades are labels only; max_score decides."""
    crit = ChildPugh.model_validate({**PARAMS, "grades": []})
    assert crit.evaluate(ctx(labs())).reason.startswith("Child-Pugh 5: ")


def test_child_pugh_reads_its_analytes_and_code_sets():
    """analytes() and codesets() list what the fact builder and the loader need."""
    assert CP.analytes() == frozenset(
        {"bilirubin_total", "albumin", "inr", "prothrombin_time", "prothrombin_ratio"}
    )
    assert CP.codesets() == frozenset({"ascites", "hepatic_encephalopathy"})
    assert CP.check(CODESETS, ANALYTES, None) is None


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"albumin": {**PARAMS["albumin"], "unit": "g/dL"}},
            ("albumin.unit", "band unit 'g/dL' is not the analyte's canonical unit 'g/L'"),
        ),
        (
            {"pt_prolongation": {**PARAMS["pt_prolongation"], "unit": "min"}},
            ("pt_prolongation.unit", "band unit 'min' is not the analyte's canonical unit 's'"),
        ),
        (
            {"conditions": [{"codeset": "varices", "absent": 1, "present": [2, 3]}]},
            ("codeset", "unknown code set 'varices'"),
        ),
        ({"inr": {**PARAMS["inr"], "analyte": "pt_inr"}}, ("analyte", "unknown analyte 'pt_inr'")),
    ],
)
def test_check_refuses_bands_not_in_the_analytes_unit_and_unknown_names(changes, problem):
    """Band edges are in the analyte's canonical unit: Python converts nothing."""
    assert (
        ChildPugh.model_validate({**PARAMS, **changes}).check(CODESETS, ANALYTES, None) == problem
    )


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        ([{"lt": 2, "points": 1}, {"gt": 2, "points": 3}], "must meet at one edge"),  # 2 in none
        ([{"le": 2, "points": 1}, {"ge": 2, "points": 3}], "must meet at one edge"),  # 2 in both
        ([{"lt": 2, "points": 1}, {"ge": 3, "points": 3}], "must meet at one edge"),
        ([{"ge": 0, "lt": 2, "points": 1}, {"ge": 2, "points": 3}], "values below 0"),
        ([{"lt": 2, "points": 1}, {"ge": 2, "le": 3, "points": 3}], "values above 3"),
        ([{"gt": 1, "ge": 1, "points": 1}], "one lower edge"),
        ([{"lt": 1, "le": 1, "points": 1}], "one upper edge"),
        ([{"ge": 3, "le": 2, "points": 1}], "band '>= 3 and <= 2' is empty"),
        ([], "at least 1 item"),
    ],
)
def test_bands_must_cover_every_value_exactly_once(bands, message):
    """A gap or an overlap between bands fails when the trial loads."""
    with pytest.raises(ValidationError) as info:
        LabBands.model_validate({"analyte": "inr", "unit": "{INR}", "bands": bands})
    assert message in str(info.value)


def test_condition_points_are_lowest_then_highest():
    """present: [lowest, highest]."""
    bad = {**PARAMS, "conditions": [{"codeset": "ascites", "absent": 1, "present": [3, 2]}]}
    with pytest.raises(ValidationError, match=r"\[lowest, highest\]"):
        ChildPugh.model_validate(bad)


@pytest.mark.parametrize(
    ("band", "text"),
    [
        ({"points": 1}, "any value"),
        ({"gt": 3, "points": 3}, "> 3 mg/dL"),
        ({"lt": 2, "points": 1}, "< 2 mg/dL"),
        ({"gt": 2, "lt": 3, "points": 2}, "> 2 and < 3 mg/dL"),
    ],
)
def test_bands_read_as_written(band, text):
    """Band text in the evidence."""
    assert Band.model_validate(band).text("mg/dL") == text


@pytest.mark.parametrize(
    ("value", "comparator", "overlaps"),
    [(2.0, None, True), (3.0, None, True), (2.0, "<", False), (3.0, ">", False), (1.0, ">", True)],
)
def test_a_closed_band_overlaps_values_at_its_edges(value, comparator, overlaps):
    """2-3 includes 2 and 3; '<2' and '>3' do not reach it."""
    band = Band(points=2, ge=2, le=3)
    assert band.overlaps(Normalised(value, "mg/dL", comparator)) is overlaps
