"""Choosing the latest usable value: instants, corrections, and dates that could be either.

Trial-spec, data rules and fine print (v2):
- "Latest" compares instants: timestamps with different offsets are ordered by the moment they
  denote, never by their local calendar day. A date without a time (or a partial date) on a day a
  timed value also falls on could be either: `unknown` when that choice changes the result.
- Corrections: among values with the same effective time, `amended` or `corrected` replaces
  `final`; among equals the later `issued` decides; still equal and disagreeing: `unknown`.
- A value whose partial date crosses the window edge may or may not be in the window.

The chooser is generic over what a criterion reads from a value (`outcome`): two candidates for
"latest" that lead to the same outcome decide together; ones that do not give unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from adapter.facts.dates import FhirDate
from adapter.facts.model import LabValue

Order = Literal["before", "after", "same", "either"]

#: statuses that correct an earlier result of the same effective time (trial-spec, v2)
CORRECTING = frozenset({"amended", "corrected"})


def order(a: FhirDate, b: FhirDate) -> Order:
    """Where `a` stands against `b`: before, after, at the same time, or either way.

    Two timestamps with an offset compare as instants. Otherwise the calendar days decide; on a
    shared day (a date without a time, a time without an offset, a partial date), the two are the
    same time only when written alike, and else could be in either order.
    """
    if a.instant is not None and b.instant is not None:
        if a.instant < b.instant:
            return "before"
        if a.instant > b.instant:
            return "after"
        return "same"
    if a.last_day < b.first_day:
        return "before"
    if a.first_day > b.last_day:
        return "after"
    loose = a.instant is None and b.instant is None
    if loose and a.is_exact_day and b.is_exact_day and a.text.strip() == b.text.strip():
        return "same"
    return "either"


def display_key(when: FhirDate) -> tuple[date, float]:
    """A total order that agrees with `order` where it is decided (to pick what to show)."""
    moment = when.instant or datetime.combine(when.last_day, datetime.max.time(), UTC)
    return (when.last_day, moment.timestamp())


def _dated(lab: LabValue) -> FhirDate:
    assert lab.date is not None  # callers pass dated values only
    return lab.date


def _issued_moment(lab: LabValue) -> float | None:
    return display_key(lab.issued)[1] if lab.issued is not None else None


def same_value(lab: LabValue) -> Hashable:
    """What two values must share to agree: the normalised value, or the coded answers."""
    norm = lab.normalised
    if norm is not None:
        return ("value", norm.value, norm.comparator)
    if lab.value_codes:
        return ("codes", frozenset(lab.value_codes))
    return ("unusable", lab.problem)


@dataclass(frozen=True, slots=True)
class Choice:
    """The deciding value, or why there is none.

    `lab` is set when the latest is known (its value may still be unusable: the caller says so),
    or when several candidates agree (it is the one shown). `problem` says why nothing decides.
    """

    lab: LabValue | None
    problem: str | None = None
    #: nothing at all in (or across the edge of) the window
    absent: bool = False


@dataclass
class _Group:
    """Values of one effective time, after the corrections rule."""

    members: list[LabValue]
    inside: bool
    conflict: bool = False

    @property
    def when(self) -> FhirDate:
        assert self.members[0].date is not None
        return self.members[0].date

    @property
    def shown(self) -> LabValue:
        return self.members[0]


def _corrected(
    values: list[LabValue], agree: Callable[[LabValue], Hashable]
) -> tuple[list[LabValue], bool]:
    """The values that stand after the corrections rule, and whether they still disagree.

    A correction (`amended`, `corrected`) replaces a `final`; among equals the later `issued`
    decides, when every one of them has an `issued` to compare.
    """
    if len(values) > 1:
        if any(v.status in CORRECTING for v in values):
            values = [v for v in values if v.status in CORRECTING]
        issued = [_issued_moment(v) for v in values]
        if len(values) > 1 and all(i is not None for i in issued):
            last = max(i for i in issued if i is not None)
            values = [v for v, i in zip(values, issued, strict=True) if i == last]
    return values, len({agree(v) for v in values}) > 1


def choose_latest(
    inside: Sequence[LabValue],
    straddling: Sequence[LabValue],
    *,
    what: str,
    none: str,
    outcome: Callable[[LabValue], Hashable] = same_value,
    agree: Callable[[LabValue], Hashable] = same_value,
) -> Choice:
    """The latest of dated, status-usable values: `inside` the window, or `straddling` its edge.

    `outcome` maps a value to what the criterion would decide from it; candidates for "latest"
    with one outcome decide together. `agree` says when values of one effective time are the
    same reading. `none` is the reason when there is no value at all.
    """
    if not inside:
        if straddling:
            return Choice(None, f"{none} for certain: a partial date crosses the window edge")
        return Choice(None, none, absent=True)
    # Only the values of the last days can be the latest (a ward's vitals run into thousands).
    # Local days of two timestamps may differ from their order by up to 28 hours of offsets, so
    # a value is set aside only when its last day is more than 2 days before another's first.
    horizon = max(_dated(v).first_day for v in inside) - timedelta(days=2)
    tail = [
        (v, is_inside)
        for vs, is_inside in ((inside, True), (straddling, False))
        for v in vs
        if _dated(v).last_day >= horizon
    ]
    groups: list[_Group] = []
    for lab, is_inside in tail:
        assert lab.date is not None
        for g in groups:
            if order(lab.date, g.when) == "same":
                g.members.append(lab)
                g.inside = g.inside or is_inside
                break
        else:
            groups.append(_Group([lab], is_inside))
    for g in groups:
        g.members, g.conflict = _corrected(g.members, agree)
    # A candidate for "latest": no value of the window is certainly later.
    candidates = [
        g
        for g in groups
        if not any(h.inside and order(h.when, g.when) == "after" for h in groups if h is not g)
    ]
    shown = max(candidates, key=lambda g: (g.inside, display_key(g.when)))
    for g in candidates:
        if g.conflict:
            return Choice(None, f"two {what} values with the same timestamp disagree")
    if len({outcome(g.shown) for g in candidates}) == 1:
        return Choice(shown.shown)
    decided = outcome(shown.shown)
    other = next(g for g in candidates if g is not shown and outcome(g.shown) != decided)
    if not other.inside or not shown.inside:
        edge = other if not other.inside else shown
        return Choice(
            None, f"a partial date ({edge.when.text}) across the window edge could be the latest"
        )
    spans = [w for w in (other.when, shown.when) if not w.is_exact_day]
    loose = spans[0] if spans else (other.when if other.when.instant is None else shown.when)
    kind = "a date without a time" if loose.is_exact_day else "a partial date"
    return Choice(None, f"{kind} ({loose.text}) could be the latest")
