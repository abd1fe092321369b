"""Three-valued (Kleene) logic and patient statuses (trial-spec, 'Results and statuses')."""

import pytest

from adapter.criteria.results import (
    CriterionResult,
    Result,
    Status,
    all_of,
    any_of,
    implies,
    status_of,
)

M, N, U = Result.MET, Result.NOT_MET, Result.UNKNOWN


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [(M, M, M), (M, N, M), (M, U, M), (N, N, N), (N, U, U), (U, U, U)],
)
def test_or_is_met_if_any_side_is_met_and_not_met_only_if_every_side_is(left, right, expected):
    """Kleene OR."""
    assert any_of([left, right]) is expected
    assert any_of([right, left]) is expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [(M, M, M), (M, N, N), (M, U, U), (N, N, N), (N, U, N), (U, U, U)],
)
def test_and_is_the_dual_of_or(left, right, expected):
    """Kleene AND."""
    assert all_of([left, right]) is expected
    assert all_of([right, left]) is expected


@pytest.mark.parametrize(
    ("condition", "consequence", "expected"),
    [(N, U, M), (N, N, M), (M, M, M), (M, N, N), (M, U, U), (U, M, M), (U, N, U)],
)
def test_if_x_then_y_is_not_x_or_y(condition, consequence, expected):
    """Kleene implication."""
    assert implies(condition, consequence) is expected


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([M, M, M], Status.CANDIDATE),
        ([M, U, M], Status.POTENTIAL_CANDIDATE),
        ([M, U, N], Status.INELIGIBLE),
        ([N], Status.INELIGIBLE),
    ],
)
def test_status_comes_from_the_automated_criteria(results, expected):
    """ineligible on any not_met, candidate when all met, else potential-candidate."""
    assert status_of([CriterionResult(r, "") for r in results]) is expected
