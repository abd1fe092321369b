"""coagulation: INR < 1.7 OR PT prolongation < 3 s (Kleene OR); pt_prolongation; any_of, all_of."""

from __future__ import annotations

from dataclasses import replace

import pytest
from factories import AS_OF, codeset, condition, lab, patient
from pydantic import ValidationError

from adapter.analytes import Analyte
from adapter.criteria import child_pugh, coagulation, derived, uln
from adapter.criteria.coagulation import AllOf, AnyOf, PtProlongation
from adapter.criteria.context import Context
from adapter.criteria.kinds import criterion_models
from adapter.criteria.results import Result
from adapter.facts.model import Normalised, PatientFacts, ReferenceRange

M, N, U = Result.MET, Result.NOT_MET, Result.UNKNOWN

ANALYTES = {
    "inr": Analyte("inr", "INR", "{INR}", None, None, False, {}),
    "prothrombin_time": Analyte("prothrombin_time", "Prothrombin time", "s", None, None, False, {}),
    "prothrombin_ratio": Analyte("prothrombin_ratio", "PT ratio", "{ratio}", None, None, False, {}),
}
CODESETS = {"ascites": codeset("ascites", "R18")}
PT_PARAMS = {
    "kind": "pt_prolongation",
    "analyte": "prothrombin_time",
    "ratio_analyte": "prothrombin_ratio",
    "default_control": 12.0,
    "op": "<",
    "value": 3,
    "unit": "s",
    "window_days": 30,
}
INR_PARAMS = {
    "kind": "lab_threshold",
    "description": "INR",
    "analyte": "inr",
    "op": "<",
    "value": 1.7,
    "unit": "{INR}",
    "window_days": 30,
}
PT = PtProlongation.model_validate({"id": "pt", **PT_PARAMS})


@pytest.fixture
def registry(monkeypatch):
    """The kinds sub-criteria may use: kinds.py's, plus these modules' (registered by the lead)."""
    models = dict(criterion_models())
    for module in (uln, derived, coagulation, child_pugh):
        for cls in module.KINDS:
            (name,) = cls.model_fields["kind"].annotation.__args__
            models[name] = cls
    monkeypatch.setattr(coagulation, "known_kinds", lambda: models)
    return models


def coagulation_criterion():
    return AnyOf.model_validate(
        {"id": "coagulation", "kind": "any_of", "of": [INR_PARAMS, PT_PARAMS]}
    )


def pt(value, *ranges, when="2026-06-10", comparator=None, problem=None):
    one = lab(
        "prothrombin_time",
        value,
        when,
        unit="s",
        comparator=comparator,
        problem=problem,
        ref="Observation/pt",
    )
    return replace(one, reference_ranges=ranges)


def ratio(value, when="2026-06-10", **kw):
    return lab("prothrombin_ratio", value, when, unit="{ratio}", ref="Observation/ratio", **kw)


def inr(value, when="2026-06-10", **kw):
    return lab("inr", value, when, unit="{INR}", ref="Observation/inr", **kw)


def rr(low, high):
    return ReferenceRange(
        low=None if low is None else Normalised(low, "s"),
        high=None if high is None else Normalised(high, "s"),
    )


def ctx(*labs, conditions=()):
    facts = PatientFacts(patient(), labs=labs, conditions=conditions)
    return Context(facts, AS_OF, CODESETS, ANALYTES)


@pytest.mark.parametrize(
    ("labs", "expected", "control"),
    [
        ((pt(14.4), ratio(1.2)), M, "control PT 12 s = PT 14.4 s / ratio 1.2 of Observation/ratio"),
        ((pt(15.6), ratio(1.2)), M, "control PT 13 s = PT 15.6 s / ratio 1.2"),  # 2.6 s
        ((pt(18.0), ratio(1.5)), N, "control PT 12 s = PT 18 s / ratio 1.5"),  # 6 s
        ((pt(14.4, rr(11, 13)), ratio(1.2)), M, "/ ratio 1.2"),  # the ratio comes first
        ((pt(14.4, rr(11, 13)), ratio(1.2, "2026-06-09")), M, "midpoint of referenceRange 11-13 s"),
        ((pt(14.4, rr(11, 13)), ratio(1.2, status="cancelled")), M, "midpoint"),
        ((pt(15.0, rr(11, 13)),), N, "control PT 12 s = midpoint of referenceRange 11-13 s"),
        ((pt(14.99, rr(11, 13)),), M, "midpoint"),
        ((pt(15.1, rr(11.1, 13.1)),), N, "midpoint"),  # 15.1 - 12.1 is 3, not 2.9999999999999982
        ((pt(15.0),), N, "control PT 12 s: the default (no same-day ratio, no referenceRange)"),
        ((pt(14.9),), M, "the default"),
        ((pt(15.0, rr(None, 13.5)),), N, "the default (no same-day ratio; the referenceRange has"),
        ((pt(14.0, rr(11, None)),), M, "the referenceRange has only one readable bound"),
    ],
)
def test_pt_control_is_the_same_day_ratio_then_the_range_midpoint_then_the_default(
    labs, expected, control
):
    """PT prolongation = PT - control; the evidence says which control was used."""
    result = PT.evaluate(ctx(*labs, ratio(9.9, "2026-05-20")))
    assert result.result is expected
    assert control in (result.evidence[0].note or "")
    assert (result.evidence[0].note or "").startswith("derived: PT prolongation = PT")


def test_pt_control_with_only_one_bound_of_the_reference_range_is_the_default():
    """Fine print: a referenceRange with one bound gives the default 12.0 s."""
    result = PT.evaluate(ctx(pt(15.5, rr(None, 14.0))))
    assert result.result is N
    head = result.evidence[0]
    assert (head.normalised_value, head.normalised_unit, head.threshold) == (
        3.5,
        "s",
        "PT prolongation < 3 s",
    )
    assert result.reason == "PT prolongation 3.5 s (PT 15.5 s - control 12 s) fails < 3 s"


@pytest.mark.parametrize(
    ("value", "comparator", "expected"),
    [(15.0, "<", M), (15.0, "<=", U), (16.0, "<", U), (14.0, ">", U), (15.0, ">=", N)],
)
def test_a_pt_comparator_carries_over_to_the_prolongation(value, comparator, expected):
    """PT <15 s with a fixed control is prolongation <3 s: decided only if wholly on a side."""
    result = PT.evaluate(ctx(pt(value, comparator=comparator)))
    assert result.result is expected


@pytest.mark.parametrize(
    ("labs", "reason"),
    [
        ((pt(14.4), ratio(1.2, comparator=">")), "/ ratio >1.2 {ratio} cannot be computed"),
        ((pt(14.4, comparator="<"), ratio(1.2)), "PT <14.4 s / ratio 1.2 {ratio} cannot be"),
        ((pt(14.4), ratio(0.0)), "cannot be computed"),
        (
            (pt(14.4), ratio(1.2, problem="no value")),
            "control PT from the same-day ratio: no value",
        ),
        (
            (pt(14.4), ratio(1.2, "2026-06")),
            "from the same-day ratio: a PT ratio with a partial date may be of 2026-06-10",
        ),
    ],
)
def test_a_same_day_ratio_that_cannot_be_used_is_unknown_without_falling_back(labs, reason):
    """A ratio exists that day but is unusable (comparator, no value): unknown, not the range."""
    result = PT.evaluate(ctx(*labs))
    assert result.result is U
    assert reason in result.reason


def test_two_same_day_ratios_that_disagree_at_the_same_time_are_unknown():
    """Same-day ratios are chosen as any lab: the latest decides, disagreement is unknown."""
    when = "2026-06-10T08:00:00Z"
    labs = (pt(14.4, when=when), ratio(1.2, when), replace(ratio(1.3, when), reference="O/r2"))
    result = PT.evaluate(ctx(*labs))
    assert result.result is U
    assert "two pt ratio values with the same timestamp disagree" in result.reason
    assert [e.reference for e in result.evidence] == ["Observation/pt"]


@pytest.mark.parametrize(
    ("labs", "reason"),
    [
        ((), "no PT prolongation: no prothrombin time in the 30 days before 2026-06-15"),
        ((pt(14.0, problem="unit 'sec' is not convertible to s"),), "unit 'sec' is not"),
    ],
)
def test_no_usable_pt_is_unknown(labs, reason):
    """No PT in the window, or one that cannot be read."""
    result = PT.evaluate(ctx(*labs))
    assert result.result is U
    assert reason in result.reason


def test_without_a_ratio_analyte_the_range_midpoint_is_the_control():
    """ratio_analyte is optional."""
    crit = PtProlongation.model_validate({"id": "pt", **PT_PARAMS, "ratio_analyte": None})
    result = crit.evaluate(ctx(pt(14.0, rr(10, 12)), ratio(2.0)))
    assert result.result is N  # 14 - 11 = 3
    assert crit.analytes() == frozenset({"prothrombin_time"})


def test_pt_prolongation_check_refuses_a_unit_that_is_not_the_pts():
    """The threshold and the default control are in the PT analyte's unit."""
    assert PT.check({}, ANALYTES, None) is None
    crit = PtProlongation.model_validate({"id": "pt", **PT_PARAMS, "unit": "min"})
    assert crit.check({}, ANALYTES, None) == ("unit", "unit 'min' is not the analyte's unit 's'")
    crit = PtProlongation.model_validate({"id": "pt", **PT_PARAMS, "ratio_analyte": "x"})
    assert crit.check({}, ANALYTES, None) == ("analyte", "unknown analyte 'x'")


@pytest.mark.parametrize(
    ("labs", "expected"),
    [
        ((inr(1.69),), M),
        ((inr(1.7),), U),  # INR >= 1.7 with no PT in the window
        ((inr(2.5), pt(14.0, when="2026-05-01")), U),  # the PT is outside the window
        ((inr(1.8), pt(14.1)), M),
        ((inr(1.8), pt(15.0)), N),
        ((pt(14.0),), M),  # no INR: the PT decides met
        ((pt(16.0),), U),  # INR unknown, PT not met
        ((inr(1.2), pt(20.0)), M),
        ((), U),
    ],
)
def test_coagulation_is_inr_below_1_7_or_pt_prolongation_below_3_s(registry, labs, expected):
    """Kleene OR: met if either is met, not_met only if both are not_met, else unknown."""
    assert coagulation_criterion().evaluate(ctx(*labs)).result is expected


def test_inr_at_or_above_1_7_with_no_pt_is_unknown(registry):
    """Fine print: INR >= 1.7 and no PT in the window."""
    result = coagulation_criterion().evaluate(ctx(inr(1.9)))
    assert result.result is U
    assert result.reason == (
        "INR: 1.9 {INR} fails < 1.7 {INR}; "
        "no PT prolongation: no prothrombin time in the 30 days before 2026-06-15"
    )


def test_coagulation_reason_and_evidence_combine_both_parts(registry):
    """'INR 1.8 fails < 1.7; PT prolongation 2.1 s satisfies < 3 s', with both references."""
    result = coagulation_criterion().evaluate(ctx(inr(1.8), pt(14.1)))
    assert result.result is M
    assert result.reason == (
        "INR: 1.8 {INR} fails < 1.7 {INR}; "
        "PT prolongation 2.1 s (PT 14.1 s - control 12 s) satisfies < 3 s"
    )
    assert [e.reference for e in result.evidence] == [
        "Observation/inr",
        "Observation/pt",
        "Observation/pt",
    ]


@pytest.mark.parametrize(
    ("labs", "conditions", "expected"),
    [
        ((inr(1.2),), (), M),
        ((inr(1.9),), (), N),
        ((inr(1.2),), (condition("R18.8"),), N),
        ((), (), U),
    ],
)
def test_all_of_is_kleene_and(registry, labs, conditions, expected):
    """all_of: not_met if any part is not_met, met only if every part is met."""
    crit = AllOf.model_validate(
        {
            "id": "both",
            "kind": "all_of",
            "of": [
                INR_PARAMS,
                {"kind": "condition_absent", "codeset": "ascites", "active_only": True},
            ],
        }
    )
    assert crit.evaluate(ctx(*labs, conditions=conditions)).result is expected
    assert crit.analytes() == frozenset({"inr"})
    assert crit.codesets() == frozenset({"ascites"})


def test_sub_criteria_get_ids_from_their_parent_unless_they_name_one(registry):
    """Sub-criteria ids: <parent id>_<n>, or their own `id`."""
    crit = AnyOf.model_validate(
        {"id": "coagulation", "kind": "any_of", "of": [INR_PARAMS, {"id": "pt", **PT_PARAMS}]}
    )
    assert [p.id for p in crit.of] == ["coagulation_1", "pt"]
    assert [type(p) for p in crit.of] == [criterion_models()["lab_threshold"], PtProlongation]
    assert crit.analytes() == frozenset({"inr", "prothrombin_time", "prothrombin_ratio"})


def test_combinators_nest(registry):
    """An any_of may hold an all_of (each resolved against the known kinds)."""
    crit = AnyOf.model_validate(
        {
            "id": "x",
            "kind": "any_of",
            "of": [{"kind": "all_of", "of": [INR_PARAMS, PT_PARAMS]}, {"kind": "alive"}],
        }
    )
    assert [p.id for p in crit.of[0].of] == ["x_1_1", "x_1_2"]
    assert crit.evaluate(ctx()).result is M  # alive


@pytest.mark.parametrize(
    ("of", "message"),
    [
        ([{"kind": "nope"}], "of.0.kind: unknown criterion kind 'nope' (known: age, alive"),
        ([INR_PARAMS, {"analyte": "inr"}], "of.1.kind: unknown criterion kind None"),
        ([{**INR_PARAMS, "op": "!="}], "of.0.op: Input should be"),
        ([{**INR_PARAMS, "extra": 1}], "of.0.extra: Extra inputs are not permitted"),
        ([], "at least 1 item"),
        ([3], "valid dictionary or instance of Criterion"),
        ("inr", "valid tuple"),
    ],
)
def test_a_bad_sub_criterion_fails_at_load_naming_where(registry, of, message):
    """Sub-criteria are validated against the known kinds when the trial loads."""
    with pytest.raises(ValidationError) as info:
        AnyOf.model_validate({"id": "coagulation", "kind": "any_of", "of": of})
    assert message in str(info.value)


def test_a_parent_id_that_is_not_valid_still_names_its_parts(registry):
    """Parts of a parent with a bad id are named part_<n>; the parent's id is what fails."""
    with pytest.raises(ValidationError) as info:
        AnyOf.model_validate({"id": "Coag", "kind": "any_of", "of": [INR_PARAMS]})
    assert [e["loc"] for e in info.value.errors()] == [("id",)]


def test_check_of_a_combination_names_the_part(registry):
    """A load-time problem of a part is reported under of.<n>."""
    crit = AnyOf.model_validate(
        {"id": "c", "kind": "any_of", "of": [INR_PARAMS, {**PT_PARAMS, "unit": "min"}]}
    )
    assert crit.check({}, ANALYTES, None) == (
        "of.1.unit",
        "unit 'min' is not the analyte's unit 's'",
    )
    assert coagulation_criterion().check({}, ANALYTES, None) is None


def test_known_kinds_are_the_registered_criterion_models():
    """Sub-criteria resolve through kinds.criterion_models (imported lazily)."""
    assert coagulation.known_kinds() == criterion_models()
