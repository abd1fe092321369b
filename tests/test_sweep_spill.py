"""The sweep reads the cohort's resources into an on-disk spill and evaluates patient by patient
(issue 15): the verdicts, the counts and the facts are those of reading everything into memory,
and the cohort's Conditions are not taken twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest

from adapter.errors import IncompleteInputError
from adapter.sources.base import Query, ReadNotes, Resource
from adapter.sources.files import FolderSource
from adapter.spill import Kind, ResourceSpill
from adapter.sweep import run_sweep
from adapter.trials import load_trial

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo"
HCC = "hcc-ablation-lenvatinib-pd1"
AS_OF = date(2026, 6, 15)


def test_the_spill_gives_each_patient_their_resources_in_the_order_added() -> None:
    with ResourceSpill() as spill:
        spill.add("b", Kind.OBSERVATION, {"id": "o1"})
        spill.add("a", Kind.PATIENT, {"id": "a"})
        spill.add("b", Kind.PATIENT, {"id": "b"})
        spill.add("a", Kind.CONDITION, {"id": "c1", "note": "é"})
        spill.add("b", Kind.OBSERVATION, {"id": "o2"})
        got = [(pid, [(k, r["id"]) for k, r in rows]) for pid, rows in spill.by_patient()]
    assert got == [
        ("a", [(Kind.PATIENT, "a"), (Kind.CONDITION, "c1")]),
        ("b", [(Kind.OBSERVATION, "o1"), (Kind.PATIENT, "b"), (Kind.OBSERVATION, "o2")]),
    ]


def test_the_spill_orders_patients_as_python_sorts_their_ids() -> None:
    ids = ["Z", "a", "é", "ä", "10", "9", "a-b", "a.b", "\u4e2d"]
    with ResourceSpill() as spill:
        for pid in ids:
            spill.add(pid, Kind.PATIENT, {"id": pid})
        assert [pid for pid, _ in spill.by_patient()] == sorted(ids)


def test_the_spill_holds_more_than_one_batch() -> None:
    with ResourceSpill() as spill:
        for i in range(5000):
            spill.add(f"p{i % 7}", Kind.OBSERVATION, {"n": i, "text": "x" * 600})
        groups = dict(spill.by_patient())
    assert sum(len(rows) for rows in groups.values()) == 5000
    assert [r["n"] for _, r in groups["p3"]] == list(range(3, 5000, 7))


class Recording:
    """A folder source that records each query and may honour `exclude_codes` as a server with
    `code:not` would."""

    def __init__(self, *, honour_exclude: bool) -> None:
        self.inner = FolderSource(DEMO)
        self.honour_exclude = honour_exclude
        self.queries: list[Query] = []
        self.foreign = self.inner.foreign
        self.unreadable = self.inner.unreadable
        self.reads = self.inner.reads
        self.code_skipped: Counter[str] = self.inner.code_skipped
        self.conditions_given: Counter[str] = Counter()

    async def fetch(self, query: Query) -> AsyncIterator[Resource]:
        self.queries.append(query)
        async for res in self.inner.fetch(query):
            if query.resource_type == "Condition" and query.patients is not None:
                codes = {
                    (c.get("system"), c.get("code"))
                    for c in (res.get("code") or {}).get("coding") or []
                }
                excluded = {(c.system, c.code) for c in query.exclude_codes or ()}
                if self.honour_exclude and codes & excluded:
                    continue
                self.conditions_given[str(res.get("id"))] += 1
            yield res

    async def group(self, group_id: str) -> Resource | None:
        return await self.inner.group(group_id)

    def patients_by_identifier(self, tokens):  # type: ignore[no-untyped-def]
        return self.inner.patients_by_identifier(tokens)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _sweep(source: object):  # type: ignore[no-untyped-def]
    return asyncio.run(run_sweep(load_trial(HCC), source, AS_OF))  # type: ignore[arg-type]


def _statuses(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {v.patient: v.status.value for v in result.verdicts}


def test_a_server_that_leaves_out_the_cohorts_conditions_gives_the_same_verdicts() -> None:
    plain = Recording(honour_exclude=False)
    excluding = Recording(honour_exclude=True)
    excluding.reads = ReadNotes(mode="batch")  # a server's search honours `code:not`
    a, b = _sweep(plain), _sweep(excluding)
    assert _statuses(a) == _statuses(b)
    assert [v.criteria for v in a.verdicts] == [v.criteria for v in b.verdicts]
    (second,) = [q for q in excluding.queries if q.resource_type == "Condition" and q.patients]
    assert second.exclude_codes == load_trial(HCC).cohort_tokens()
    # The cohort's own Conditions came once, from the cohort search.
    assert sum(excluding.conditions_given.values()) < sum(plain.conditions_given.values())


def test_a_folder_keeps_nothing_of_the_cohort_search_and_reads_every_condition_again() -> None:
    """A folder's read of the cohort's Conditions gives every line of its patients: keeping the
    cohort search's Conditions would only hold memory that grows with the cohort."""
    folder = Recording(honour_exclude=False)
    result = _sweep(folder)
    (second,) = [q for q in folder.queries if q.resource_type == "Condition" and q.patients]
    assert second.exclude_codes is None
    assert list(result.verdicts) == list(_sweep(FolderSource(DEMO)).verdicts)


def test_the_observation_query_names_every_code_a_lab_value_can_come_from() -> None:
    source = Recording(honour_exclude=False)
    _sweep(source)
    (query,) = [q for q in source.queries if q.resource_type == "Observation"]
    trial = load_trial(HCC)
    assert query.line_codes is not None
    for name in trial.needed_analytes():
        analyte = trial.analytes[name]
        assert {c.code for c in analyte.codes} <= query.line_codes
        assert {c.code for c in analyte.value_codes} <= query.line_codes


def test_counts_are_those_of_reading_everything() -> None:
    """Observations skipped unparsed for their code count as read and skipped for it."""
    result = _sweep(FolderSource(DEMO))
    stats = result.stats
    assert stats["Observation"] == (
        stats["observations_used"]
        + stats["observations_unusable"]
        + stats["observations_skipped_code_not_needed"]
        + stats["observations_other_patients"]
    )
    assert sum(result.unusable.values()) == stats["observations_unusable"]


def test_the_cohort_search_keeps_what_a_code_not_search_may_leave_out() -> None:
    """As written or in the mappings' spelling, and a token without a system in any system."""
    from adapter.facts.model import Coding
    from adapter.sweep import _excluded_by

    tokens = frozenset({Coding("http://hl7.org/fhir/sid/icd-10-cm", "C22.0"), Coding("", "X1")})

    def res(*codings: dict[str, str]) -> Resource:
        return {"code": {"coding": list(codings)}}

    icd = {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C22.0"}
    assert _excluded_by(tokens, res(icd), ())
    assert _excluded_by(tokens, res({"system": "urn:other", "code": "X1"}), ())
    assert _excluded_by(tokens, res({"code": "X1"}), ())
    assert not _excluded_by(tokens, res({"system": "urn:other", "code": "C22.0"}), ())
    assert not _excluded_by(tokens, {"code": "C22.0"}, ())
    aliased = (Coding("http://hl7.org/fhir/sid/icd-10-cm", "C22.0"),)
    assert _excluded_by(
        tokens, res({"system": "urn:oid:2.16.840.1.113883.6.90", "code": "C22.0"}), aliased
    )


class ServerLike(Recording):
    """The demo folder read as a server reads (`reads.mode` batch): the Observation search holds
    its first resource back until the Patient search has started, as a slow server would."""

    def __init__(self) -> None:
        super().__init__(honour_exclude=False)
        self.reads = ReadNotes(mode="batch")
        self.observations_started = asyncio.Event()
        self.patients_started = asyncio.Event()
        self.asked: list[str] = []

    async def fetch(self, query: Query) -> AsyncIterator[Resource]:
        self.asked.append(query.resource_type)
        if query.resource_type == "Observation":
            self.observations_started.set()
            await self.patients_started.wait()
        elif query.resource_type == "Patient" and query.patients is not None:
            self.patients_started.set()
        async for res in super().fetch(query):
            yield res


def test_a_servers_searches_run_at_once_and_give_the_verdicts_of_one_after_another() -> None:
    """One after another, the Observation search would wait for the Patient search for ever."""

    async def concurrent():  # type: ignore[no-untyped-def]
        return await asyncio.wait_for(run_sweep(load_trial(HCC), ServerLike(), AS_OF), 30)

    at_once = asyncio.run(concurrent())
    in_turn = _sweep(Recording(honour_exclude=False))
    assert _statuses(at_once) == _statuses(in_turn)
    assert list(at_once.verdicts) == list(in_turn.verdicts)
    assert at_once.stats == in_turn.stats


def test_a_servers_longest_search_is_asked_first_its_shortest_last() -> None:
    """The Observation search is the long one on a server: its pages are handled here while the
    server answers the others; the Patient search, one resource a patient, is left for last.
    A folder keeps its order of stages."""
    server, folder = ServerLike(), Recording(honour_exclude=False)
    asyncio.run(run_sweep(load_trial(HCC), server, AS_OF))
    _sweep(folder)
    cohort = 1  # the cohort's Condition search comes before the reads
    assert server.asked[cohort:] == ["Observation", "Condition", "Procedure", "Patient"]
    assert [q.resource_type for q in folder.queries[cohort:]] == [
        "Patient",
        "Condition",
        "Procedure",
        "Observation",
    ]


class FailingServer(ServerLike):
    """A server whose Observation search fails with the adapter's own error."""

    async def fetch(self, query: Query) -> AsyncIterator[Resource]:
        if query.resource_type == "Observation":
            self.observations_started.set()
            raise IncompleteInputError("the Observation search failed")
        async for res in super().fetch(query):
            yield res


def test_a_failed_search_among_those_at_once_is_raised_as_itself() -> None:
    """Not wrapped in an exception group: the command's exit code and error line depend on it."""
    with pytest.raises(IncompleteInputError, match="Observation search failed"):
        asyncio.run(run_sweep(load_trial(HCC), FailingServer(), AS_OF))
