"""lab_threshold_derived: neutrophils >= 1.5 10*9/L, derived from WBC x % / 100 when no ANC."""

from __future__ import annotations

from dataclasses import replace

import pytest
from factories import AS_OF, lab, patient

from adapter.analytes import Analyte
from adapter.criteria.context import Context
from adapter.criteria.derived import LabThresholdDerived, clean
from adapter.criteria.results import Result
from adapter.facts.model import PatientFacts

M, N, U = Result.MET, Result.NOT_MET, Result.UNKNOWN

ANALYTES = {
    "neutrophils": Analyte("neutrophils", "Neutrophils", "10*9/L", None, None, False, {}),
    "leukocytes": Analyte("leukocytes", "Leukocytes", "10*9/L", None, None, False, {}),
    "neutrophils_percent": Analyte(
        "neutrophils_percent", "Neutrophils %", "%", None, None, False, {}
    ),
    "hemoglobin": Analyte("hemoglobin", "Hemoglobin", "g/dL", 16114.5, None, False, {}),
}
PARAMS = {
    "id": "neutrophils",
    "kind": "lab_threshold_derived",
    "analyte": "neutrophils",
    "op": ">=",
    "value": 1.5,
    "unit": "10*9/L",
    "window_days": 30,
    "derive_from": {"total": "leukocytes", "percent": "neutrophils_percent"},
}
ANC = LabThresholdDerived.model_validate(PARAMS)


def anc(value, when="2026-06-10", **kw):
    return lab("neutrophils", value, when, unit="10*9/L", ref="Observation/anc", **kw)


def wbc(value, when="2026-06-10", **kw):
    return lab("leukocytes", value, when, unit="10*9/L", ref=f"Observation/wbc-{when}", **kw)


def pct(value, when="2026-06-10", **kw):
    return lab("neutrophils_percent", value, when, unit="%", ref=f"Observation/pct-{when}", **kw)


def ctx(*labs):
    return Context(PatientFacts(patient(), labs=labs), AS_OF, {}, ANALYTES)


@pytest.mark.parametrize(
    ("value", "comparator", "expected"),
    [(1.5, None, M), (1.49, None, N), (2.0, "<", U), (1.5, ">", M)],
)
def test_an_absolute_neutrophil_count_decides_when_there_is_one(value, comparator, expected):
    """The absolute count is used as lab_threshold does; WBC and % are then ignored."""
    labs = (anc(value, comparator=comparator), wbc(1.0), pct(10))
    result = ANC.evaluate(ctx(*labs))
    assert result.result is expected
    assert [e.reference for e in result.evidence] == ["Observation/anc"]


@pytest.mark.parametrize(
    ("total", "percent", "expected"),
    [
        (3.0, 50, M),  # 1.5
        (2.5, 60, M),  # 1.5
        (2.9, 50, N),  # 1.45
        (5.0, 29.9, N),  # 1.495
        (10.0, 80, M),
    ],
)
def test_anc_is_derived_from_wbc_and_neutrophil_percent_of_the_same_day(total, percent, expected):
    """No absolute count in the window: ANC = WBC x % / 100, marked as derived."""
    result = ANC.evaluate(ctx(wbc(total), pct(percent)))
    assert result.result is expected
    head, *sources = result.evidence
    assert head.normalised_value == clean(total * percent / 100)
    assert (head.normalised_unit, head.date, head.threshold) == (
        "10*9/L",
        "2026-06-10",
        ">= 1.5 10*9/L",
    )
    assert (head.note or "").startswith("derived: Leukocytes")
    assert "Observation/wbc-2026-06-10 and Observation/pct-2026-06-10" in (head.note or "")
    assert [e.reference for e in sources] == [
        "Observation/wbc-2026-06-10",
        "Observation/pct-2026-06-10",
    ]
    assert result.reason.startswith("derived ")


def test_the_latest_calendar_day_with_both_wbc_and_percent_decides():
    """A later WBC without a same-day % does not pair with an older %."""
    labs = (
        wbc(1.0, "2026-06-12"),  # alone on its day
        pct(20, "2026-06-11"),  # alone on its day
        wbc(4.0, "2026-06-01T08:00:00+08:00"),
        pct(50, "2026-06-01T09:30:00+08:00"),
        wbc(1.0, "2026-05-20"),
        pct(10, "2026-05-20"),
    )
    result = ANC.evaluate(ctx(*labs))
    assert result.result is M
    assert (result.evidence[0].normalised_value, result.evidence[0].date) == (2.0, "2026-06-01")


@pytest.mark.parametrize(
    "labs",
    [
        (wbc(3.0, "2026-06-10"), pct(50, "2026-06-09")),
        (wbc(3.0), pct(50, "2026-05-10")),  # % outside the window
        (wbc(3.0), pct(50, "2026-06")),  # partial date: never the same day
        (wbc(3.0), pct(50, status="preliminary")),
        (),
    ],
)
def test_without_a_day_that_has_both_the_derived_count_is_unknown(labs):
    """No absolute count, and no calendar day in the window with both WBC and %."""
    result = ANC.evaluate(ctx(*labs))
    assert result.result is U
    assert result.reason == (
        "no neutrophils in the 30 days before 2026-06-15, and no day in them with both "
        "Leukocytes and Neutrophils % to derive it"
    )


def test_an_unreadable_absolute_count_is_unknown_without_falling_back_to_the_derivation():
    """An absolute count exists but cannot be read: unknown, WBC x % is not used."""
    problem = "unit 'cells' is not convertible to 10*9/L"
    result = ANC.evaluate(ctx(anc(2.0, problem=problem), wbc(3.0), pct(50)))
    assert (result.result, result.reason) == (U, problem)


def test_an_absolute_count_with_a_partial_date_at_the_window_edge_blocks_the_derivation():
    """An absolute count that may be in the window is not 'no absolute count'."""
    result = ANC.evaluate(ctx(anc(2.0, "2026-05"), wbc(3.0), pct(50)))
    assert result.result is U
    assert "partial date crosses the window edge" in result.reason


@pytest.mark.parametrize(
    "absolute",
    [anc(0.5, status="preliminary"), anc(0.5, "2026-05-01"), anc(0.5, "2026-06-16")],
)
def test_an_absolute_count_that_is_not_usable_or_not_in_the_window_is_absent(absolute):
    """Wrong status, too old or after as-of: as if absent, so the derivation decides."""
    result = ANC.evaluate(ctx(absolute, wbc(3.0), pct(50)))
    assert result.result is M
    assert (result.evidence[0].note or "").startswith("derived:")


@pytest.mark.parametrize(
    ("labs", "reason"),
    [
        ((wbc(3.0, comparator=">"), pct(50)), "cannot derive neutrophils: Leukocytes >3 10*9/L"),
        ((wbc(3.0), pct(50, comparator="<")), "has a comparator"),
        ((wbc(3.0), pct(50, problem="no value")), "cannot derive neutrophils: no value"),
    ],
)
def test_a_comparator_or_an_unreadable_input_on_the_deciding_day_is_unknown(labs, reason):
    """Either input with a comparator or without a usable value: unknown, no older day used."""
    older = (wbc(9.0, "2026-06-01"), pct(60, "2026-06-01"))
    result = ANC.evaluate(ctx(*labs, *older))
    assert result.result is U
    assert reason in result.reason
    assert {e.reference for e in result.evidence} == {
        "Observation/wbc-2026-06-10",
        "Observation/pct-2026-06-10",
    }


def test_same_day_values_that_disagree_at_the_same_time_are_unknown():
    """Two WBC values with the same timestamp that disagree: the day cannot decide."""
    when = "2026-06-10T08:00:00Z"
    labs = (wbc(3.0, when), replace(wbc(5.0, when), reference="Observation/w2"), pct(50, when))
    result = ANC.evaluate(ctx(*labs))
    assert result.result is U
    assert "two leukocytes values with the same timestamp disagree" in result.reason


def test_the_derived_kind_reads_all_three_analytes():
    """analytes() lists the count and both inputs, so the fact builder reads them."""
    assert ANC.analytes() == frozenset({"neutrophils", "leukocytes", "neutrophils_percent"})
    assert ANC.check({}, ANALYTES, None) is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"unit": "/uL"}, "unit"),
        (
            {"derive_from": {"total": "hemoglobin", "percent": "neutrophils_percent"}},
            "derive_from.total",
        ),
        ({"derive_from": {"total": "leukocytes", "percent": "leukocytes"}}, "derive_from.percent"),
        ({"analyte": "bands"}, "analyte"),
    ],
)
def test_check_refuses_units_that_would_not_make_the_count(changes, field):
    """Threshold in the analyte's unit, total in the same unit, percent in %."""
    crit = LabThresholdDerived.model_validate({**PARAMS, **changes})
    problem = crit.check({}, ANALYTES, None)
    assert problem is not None
    assert problem[0] == field
