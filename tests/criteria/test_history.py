"""early_recurrence and no_organ_transplant as the spec writes them, on hand-made facts."""

from __future__ import annotations

from datetime import date

import pytest
from factories import AS_OF, ICD10CM, codeset, condition, fdate, patient

from adapter.codes import CodePattern, CodeSet
from adapter.criteria.context import Context
from adapter.criteria.history import (
    ConditionOrProcedureAbsent,
    EarlyRecurrence,
    add_years,
)
from adapter.criteria.results import Result
from adapter.facts.model import Coding, ConditionFact, PatientFacts, ProcedureFact

M, N, U = Result.MET, Result.NOT_MET, Result.UNKNOWN
CPT = "http://www.ama-assn.org/go/cpt"
SNOMED = "http://snomed.info/sct"

CODESETS = {
    "hcc": codeset("hcc", "C22.0"),
    "radical_liver_treatment": CodeSet(
        "radical_liver_treatment",
        tuple(CodePattern(CPT, c, "exact") for c in ("47120", "47382")),
    ),
    "organ_transplant": codeset("organ_transplant", "Z94", "T86"),
    "organ_transplant_procedure": CodeSet(
        "organ_transplant_procedure", (CodePattern(SNOMED, "77465005", "exact"),)
    ),
}

EARLY = EarlyRecurrence(
    id="early_recurrence",
    kind="early_recurrence",
    procedure_codeset="radical_liver_treatment",
    condition_codeset="hcc",
    min_days=60,
    max_years=3,
)
TRANSPLANT = ConditionOrProcedureAbsent(
    id="no_organ_transplant",
    kind="condition_or_procedure_absent",
    condition_codeset="organ_transplant",
    procedure_codeset="organ_transplant_procedure",
    active_only=False,
)


def proc(
    performed: str | None,
    code: str = "47382",
    status: str | None = "completed",
    ref: str = "Procedure/rfa",
    system: str = CPT,
) -> ProcedureFact:
    return ProcedureFact(ref, (Coding(system, code),), status, fdate(performed))


def hcc(
    onset: str | None,
    clinical: str | None = "recurrence",
    ref: str = "Condition/hcc",
    recorded: str | None = None,
    verification: str | None = None,
) -> ConditionFact:
    return ConditionFact(
        ref,
        (Coding(ICD10CM, "C22.0"),),
        clinical,
        verification,
        onset=fdate(onset),
        recorded_date=fdate(recorded),
    )


def make_ctx(
    procedures: tuple[ProcedureFact, ...] = (),
    conditions: tuple[ConditionFact, ...] = (),
    as_of: date = AS_OF,
) -> Context:
    facts = PatientFacts(patient(), conditions=conditions, procedures=procedures)
    return Context(facts, as_of, CODESETS, {})


def early(procedures, conditions, as_of=AS_OF):  # type: ignore[no-untyped-def]
    return EARLY.evaluate(make_ctx(tuple(procedures), tuple(conditions), as_of))


# -- early_recurrence -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("onset", "expected"),
    [
        ("2025-07-19", N),  # P + 59 days
        ("2025-07-20", M),  # P + 60 days
        ("2025-07-20T09:00:00+08:00", M),
        ("2026-04-21", M),  # the demo's R, P + 335 days
    ],
)
def test_recurrence_exactly_60_days_after_ablation_is_early(onset, expected):
    """P + 60 days <= R: the 60th day after the ablation counts, the 59th does not."""
    result = early([proc("2025-05-21T10:00:00+08:00")], [hcc(onset)])
    assert result.result is expected
    refs = [e.reference for e in result.evidence]
    assert refs == ["Procedure/rfa", "Condition/hcc"]
    assert result.evidence[1].threshold == "2025-07-20 <= R <= 2028-05-21"
    assert result.evidence[1].date == onset
    assert result.evidence[0].date == "2025-05-21T10:00:00+08:00"
    assert "after the treatment on 2025-05-21:" in result.reason


@pytest.mark.parametrize(
    ("onset", "expected"),
    [("2026-03-10", M), ("2026-03-11", N)],
)
def test_recurrence_exactly_3_years_after_resection_is_early_and_a_day_later_is_not(
    onset, expected
):
    """R <= P + 3 years, by calendar date."""
    result = early([proc("2023-03-10", code="47120")], [hcc(onset)])
    assert result.result is expected
    if expected is N:
        assert "later than 3 years" in result.reason


def test_recurrence_40_days_after_ablation_is_not_met_with_the_gap_in_the_reason():
    """demo-40: recurrence 40 days after ablation (before P + 60 days)."""
    result = early([proc("2026-02-01")], [hcc("2026-03-13")])
    assert result.result is N
    assert result.reason == (
        "recurrence 2026-03-13, 40 days after the treatment on 2026-02-01: sooner than 60 days"
    )


@pytest.mark.parametrize(
    ("clinical", "verification", "expected"),
    [
        ("recurrence", None, M),
        ("relapse", None, M),
        ("active", None, M),  # active with onset after P
        (None, None, M),  # no clinicalStatus counts as active
        ("resolved", None, U),
        ("remission", None, U),
        ("recurrence", "refuted", U),
        ("recurrence", "entered-in-error", U),
        ("recurrence", "unconfirmed", M),
    ],
)
def test_only_counting_active_hcc_conditions_give_r(clinical, verification, expected):
    """R comes from counting hcc Conditions that are recurrence, relapse or active."""
    conditions = [hcc("2026-04-21", clinical=clinical, verification=verification)]
    assert early([proc("2025-05-21")], conditions).result is expected


def test_the_initial_hcc_before_p_is_not_r():
    """An active Condition with onset before P is the treated tumour, not a recurrence."""
    result = early([proc("2025-05-21")], [hcc("2025-04-26", clinical="active")])
    assert result.result is U
    assert result.reason.startswith("no active hcc Condition with onset after the treatment")


def test_onset_on_the_day_of_the_treatment_is_not_after_it():
    """'After P' is strictly after P's calendar day."""
    assert early([proc("2025-05-21T10:00:00+08:00")], [hcc("2025-05-21")]).result is U


def test_recurrence_before_a_re_ablation_leaves_no_r():
    """demo-26: re-ablated after a recurrence: no hcc onset after the latest P."""
    procedures = [
        proc("2025-03-10", ref="Procedure/rfa-1"),
        proc("2026-03-02", ref="Procedure/rfa-2"),
    ]
    conditions = [
        hcc("2025-02-20", clinical="resolved", ref="Condition/initial"),
        hcc("2026-01-20", ref="Condition/recurrence"),
    ]
    result = early(procedures, conditions)
    assert result.result is U
    assert [e.reference for e in result.evidence] == ["Procedure/rfa-2"]


def test_the_latest_completed_procedure_is_p():
    """An older ablation does not decide: the latest one is P."""
    procedures = [proc("2024-01-01", ref="Procedure/old"), proc("2026-03-02", ref="Procedure/new")]
    result = early(procedures, [hcc("2026-04-01")])
    assert result.result is N
    assert result.evidence[0].reference == "Procedure/new"


@pytest.mark.parametrize("status", ["in-progress", "not-done", "stopped", "entered-in-error", None])
def test_only_completed_procedures_are_p(status):
    """P is a Procedure with status completed."""
    assert early([proc("2025-05-21", status=status)], [hcc("2026-04-21")]).result is U


def test_no_radical_treatment_is_unknown():
    """demo-25: TACE only (not in the set): no P."""
    result = early([proc("2025-12-07", code="37243")], [hcc("2025-11-07", clinical="active")])
    assert result.result is U
    assert result.reason == "no completed radical_liver_treatment Procedure on or before 2026-06-15"
    assert result.evidence[0].reference == "Patient/p1"


def test_a_procedure_after_as_of_is_not_p():
    """P is performed on or before as-of."""
    result = early(
        [proc("2025-05-21"), proc("2026-06-16", ref="Procedure/later")], [hcc("2026-04-21")]
    )
    assert result.result is M
    assert result.evidence[0].reference == "Procedure/rfa"


def test_r_is_the_earliest_onset_after_p():
    """Two Conditions after P: the earlier one is R."""
    conditions = [hcc("2025-06-10", ref="Condition/early"), hcc("2026-04-21", ref="Condition/late")]
    result = early([proc("2025-05-21")], conditions)
    assert result.result is N
    assert [e.reference for e in result.evidence] == ["Procedure/rfa", "Condition/early"]


def test_recorded_date_stands_in_for_a_missing_onset():
    """R = onset, else recordedDate."""
    result = early([proc("2025-05-21")], [hcc(None, recorded="2026-04-23")])
    assert result.result is M
    assert result.evidence[1].date == "2026-04-23"


def test_an_undated_hcc_condition_gives_no_r():
    """A Condition with neither onset nor recordedDate cannot be placed after P."""
    assert early([proc("2025-05-21")], [hcc(None)]).result is U


@pytest.mark.parametrize(
    ("performed", "onset", "expected"),
    [
        ("2025-05-21", "2025-07", U),  # July straddles P + 60 days (2025-07-20)
        ("2025-05-21", "2025-09", M),
        ("2025-05-21", "2025-06", N),  # every day of June is before P + 60 days
        ("2025-05-21", "2025-05", U),  # may be before or after P
        ("2025-05", "2025-07-25", U),  # P may be 2025-05-31: P + 60 = 2025-07-30
        ("2025-05", "2025-08-15", M),
        ("2023-03", "2026-03-15", U),  # within 3 years of March 2023 only if P is late
        ("2023-03", "2026-04-15", N),  # later than 3 years whatever the day of P
        ("2025", "2025-12-31", U),  # a partial year P holds the onset
    ],
)
def test_partial_dates_that_straddle_a_boundary_are_unknown(performed, onset, expected):
    """A span that may fall on either side of a boundary gives unknown."""
    assert early([proc(performed)], [hcc(onset)]).result is expected


def test_an_undated_completed_treatment_could_be_the_latest():
    """A completed radical treatment with no performed date makes P unknown."""
    result = early([proc("2025-05-21"), proc(None, ref="Procedure/undated")], [hcc("2026-04-21")])
    assert result.result is U
    assert result.evidence[0].reference == "Procedure/undated"


def test_a_treatment_whose_partial_date_may_be_after_as_of_is_not_a_certain_p():
    """'2026-06' may be after the as-of day 2026-06-15."""
    result = early([proc("2026-06")], [hcc("2026-06-01")])
    assert result.result is U
    assert "may be after 2026-06-15" in result.reason


def test_a_partial_treatment_date_across_as_of_widens_p():
    """A certain P and one that may be the latest (before as-of) both bound P."""
    procedures = [proc("2025-05-21"), proc("2026-06", ref="Procedure/maybe")]
    result = early(procedures, [hcc("2026-04-21")])
    assert result.result is U
    assert "may be before or after the treatment on 2025-05-21 or 2026-06" in result.reason
    refs = {e.reference for e in result.evidence}
    assert refs == {"Procedure/rfa", "Procedure/maybe", "Condition/hcc"}


def test_two_treatments_on_the_same_day_are_one_p():
    """Hepatectomy and ablation the same day: P is that day."""
    procedures = [proc("2025-05-21", code="47120", ref="Procedure/a"), proc("2025-05-21")]
    result = early(procedures, [hcc("2026-04-21")])
    assert result.result is M
    assert [e.reference for e in result.evidence] == [
        "Procedure/a",
        "Procedure/rfa",
        "Condition/hcc",
    ]
    assert result.evidence[2].threshold == "2025-07-20 <= R <= 2028-05-21"


def test_a_partial_treatment_date_states_the_rule_without_dates():
    """With P a span, the threshold is the rule and the reason shows both dates."""
    result = early([proc("2025-05")], [hcc("2025-08-15")])
    assert result.result is M
    assert result.evidence[1].threshold == "P + 60 days <= R <= P + 3 years"
    assert result.reason == (
        "recurrence 2025-08-15 after the treatment on 2025-05: within 60 days to 3 years"
    )


def test_add_years_on_29_february_takes_the_shorter_span():
    """P on 2024-02-29 + 3 years is 2027-02-28."""
    assert add_years(date(2024, 2, 29), 3) == date(2027, 2, 28)
    assert add_years(date(2024, 3, 1), 3) == date(2027, 3, 1)


def test_early_recurrence_check_refuses_min_days_beyond_max_years_and_unknown_sets():
    """The load-time check names the field."""
    bad = EarlyRecurrence(
        id="e",
        kind="early_recurrence",
        procedure_codeset="radical_liver_treatment",
        condition_codeset="hcc",
        min_days=1100,
        max_years=3,
    )
    assert bad.check(CODESETS, {}, None) == ("min_days", "min_days is not below max_years")  # type: ignore[arg-type]
    assert EARLY.check(CODESETS, {}, None) is None  # type: ignore[arg-type]
    assert EARLY.check({}, {}, None)[0] == "codeset"  # type: ignore[arg-type,index]
    assert EARLY.codesets() == {"hcc", "radical_liver_treatment"}


# -- no_organ_transplant --------------------------------------------------------------------------
def transplant_proc(
    status: str | None = "completed", performed: str | None = "2019-04-02"
) -> ProcedureFact:
    return proc(performed, code="77465005", status=status, ref="Procedure/tx", system=SNOMED)


@pytest.mark.parametrize(
    ("conditions", "procedures", "expected"),
    [
        ((), (), M),
        ((condition("Z94.4", clinical="resolved"),), (), N),  # any clinicalStatus
        ((condition("Z94.4"),), (), N),
        ((condition("T86.40"),), (), N),
        ((condition("Z94.4", verification="refuted"),), (), M),
        ((condition("Z95.1"),), (), M),
        ((), (transplant_proc(),), N),
        ((), (transplant_proc("in-progress"),), N),
        ((), (transplant_proc(None),), N),
        ((), (transplant_proc(performed=None),), N),  # history of: an undated one counts
        ((), (transplant_proc("not-done"),), M),
        ((), (transplant_proc("entered-in-error"),), M),
        ((), (transplant_proc("preparation"),), M),
        ((), (transplant_proc(performed="2026-06-20"),), M),  # after as-of
        ((), (transplant_proc(performed="2026-06"),), U),  # may be after as-of
        ((), (proc("2019-04-02"),), M),  # an ablation is not a transplant
    ],
)
def test_organ_transplant_condition_or_procedure_is_not_met(conditions, procedures, expected):
    """no_organ_transplant: Z94 / T86 any status, or a transplantation Procedure."""
    result = TRANSPLANT.evaluate(make_ctx(procedures, conditions))
    assert result.result is expected
    assert result.evidence


def test_liver_transplant_status_evidence_names_the_condition_and_its_code():
    """demo-47: Z94.4 liver transplant status."""
    result = TRANSPLANT.evaluate(make_ctx((transplant_proc(),), (condition("Z94.4"),)))
    assert result.reason == "organ_transplant Condition and organ_transplant_procedure Procedure"
    assert [e.reference for e in result.evidence] == ["Condition/Z94.4", "Procedure/tx"]
    assert result.evidence[0].recorded_code == f"{ICD10CM}|Z94.4"
    assert result.evidence[1].recorded_code == f"{SNOMED}|77465005"
    assert result.evidence[1].note == "status completed"


def test_active_only_ignores_resolved_conditions():
    """With active_only, a resolved Condition does not count."""
    crit = TRANSPLANT.model_copy(update={"active_only": True})
    result = crit.evaluate(make_ctx((), (condition("Z94.4", clinical="resolved"),)))
    assert result.result is M
    assert result.reason == (
        "no active organ_transplant Condition and no organ_transplant_procedure Procedure"
    )
    assert TRANSPLANT.codesets() == {"organ_transplant", "organ_transplant_procedure"}
