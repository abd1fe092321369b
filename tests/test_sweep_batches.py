"""From a server, the sweep reads and evaluates the cohort a batch at a time (issue 15): each
batch is evaluated while the next ones are read, and the verdicts, counts and errors are those
of reading the whole cohort first, as from a folder."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from adapter import sweep_batches, sweep_stages
from adapter.errors import IncompleteInputError
from adapter.facts.extract import FactBuilder
from adapter.facts.model import LabValue
from adapter.facts.ucum import UcumEngine, engine
from adapter.gathered_facts import Building, GatheredFacts
from adapter.sources.base import Query, ReadNotes, Resource
from adapter.sources.files import FolderSource
from adapter.spill import Kind
from adapter.sweep import SweepResult, run_sweep
from adapter.trials import load_trial

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo"
HCC = "hcc-ablation-lenvatinib-pd1"
AS_OF = date(2026, 6, 15)


class BatchedServer:
    """The demo folder read as a server reads it, `batch_size` patients a search, with a log of
    what happened when: each search's end (with its patients), and each batch evaluated."""

    def __init__(self, batch_size: int, concurrency: int = 1) -> None:
        self.inner = FolderSource(DEMO)
        self.reads = ReadNotes(mode="batch")
        self.batch_size, self.concurrency = batch_size, concurrency
        self.foreign = self.inner.foreign
        self.unreadable = self.inner.unreadable
        self.log: list[tuple[str, frozenset[str]]] = []

    async def fetch(self, query: Query) -> AsyncIterator[Resource]:
        async for res in self.inner.fetch(query):
            await asyncio.sleep(0)  # an answer arrives over time
            yield res
        if query.patients is not None:
            self.log.append((f"read {query.resource_type}", query.patients))

    async def group(self, group_id: str) -> Resource | None:
        return await self.inner.group(group_id)

    def patients_by_identifier(self, tokens):  # type: ignore[no-untyped-def]
        return self.inner.patients_by_identifier(tokens)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _sweep(source: Any) -> SweepResult:
    return asyncio.run(run_sweep(load_trial(HCC), source, AS_OF))


def _same(a: SweepResult, b: SweepResult) -> None:
    assert list(a.verdicts) == list(b.verdicts)
    assert a.stats == b.stats
    assert a.errors == b.errors
    assert a.unusable == b.unusable
    assert a.identities == b.identities
    assert a.versions == b.versions


@pytest.mark.parametrize(("batch_size", "concurrency"), [(1, 1), (3, 1), (4, 3), (100, 4)])
def test_batches_give_what_one_read_of_the_whole_cohort_gives(
    batch_size: int, concurrency: int
) -> None:
    whole = _sweep(BatchedServer(batch_size=10_000))
    batched = _sweep(BatchedServer(batch_size, concurrency))
    assert len(whole.verdicts) > 10
    _same(batched, whole)
    # and the verdicts of the folder itself
    assert list(batched.verdicts) == list(_sweep(FolderSource(DEMO)).verdicts)


def test_a_batch_is_evaluated_before_the_next_one_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = BatchedServer(batch_size=5)
    evaluate = sweep_batches.evaluate_cohort

    def logged(
        result: SweepResult, facts: Iterator[Any], ids: list[str], *a: Any, **k: Any
    ) -> None:
        source.log.append(("evaluated", frozenset(ids)))
        evaluate(result, facts, ids, *a, **k)

    monkeypatch.setattr(sweep_batches, "evaluate_cohort", logged)
    _sweep(source)
    events = [(what, who) for what, who in source.log if what == "evaluated" or "Obs" in what]
    batches = [who for what, who in events if what == "evaluated"]
    assert len(batches) >= 3
    first = events.index(("evaluated", batches[0]))
    # The second batch's Observations were asked for before the first batch's evaluation, and
    # came after it: the evaluation happened while the server worked.
    assert ("read Observation", batches[1]) in events[first + 1 :]


@pytest.mark.parametrize("budget", [0, 1, 7, 40])
def test_a_batch_past_its_budget_of_facts_in_memory_gives_the_same_verdicts(
    budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the budget, a batch's resources wait on disk and are built at evaluation, after the
    facts built already: some patients have facts of both."""
    whole = _sweep(BatchedServer(batch_size=10_000))
    spilled: list[int] = []

    class Budgeted(GatheredFacts):
        def __init__(self, building: Building) -> None:
            super().__init__(building, budget)

        def close(self) -> None:
            spilled.append(max(0, self.added - budget))
            super().close()

    monkeypatch.setattr(sweep_batches, "GatheredFacts", Budgeted)
    _same(_sweep(BatchedServer(batch_size=4, concurrency=2)), whole)
    assert sum(spilled) > 0


def test_at_most_the_batches_on_their_way_are_held(monkeypatch: pytest.MonkeyPatch) -> None:
    open_now, most = 0, 0

    class Counted(GatheredFacts):
        def __init__(self, building: Building) -> None:
            nonlocal open_now, most
            super().__init__(building)
            open_now += 1
            most = max(most, open_now)

        def close(self) -> None:
            nonlocal open_now
            open_now -= 1
            super().close()

    monkeypatch.setattr(sweep_batches, "GatheredFacts", Counted)
    _sweep(BatchedServer(batch_size=2, concurrency=2))
    assert most <= 3  # the one evaluated, and two on their way
    assert open_now == 0


class FailingLater(BatchedServer):
    """The third batch's Observation search fails."""

    async def fetch(self, query: Query) -> AsyncIterator[Resource]:
        if query.resource_type == "Observation" and query.patients is not None:
            self.asked = getattr(self, "asked", 0) + 1
            if self.asked == 3:
                raise IncompleteInputError("the Observation search failed")
        async for res in super().fetch(query):
            yield res


def test_a_later_batchs_failure_is_raised_as_itself() -> None:
    with pytest.raises(IncompleteInputError, match="Observation search failed"):
        _sweep(FailingLater(batch_size=3, concurrency=2))


class PatientsAfterALabValue(BatchedServer):
    """The Patient search answers only once one of its batch's lab values has been built."""

    def __init__(self, batch_size: int) -> None:
        super().__init__(batch_size)
        self.built = asyncio.Event()

    async def fetch(self, query: Query) -> AsyncIterator[Resource]:
        if query.resource_type == "Patient" and query.patients is not None:
            await self.built.wait()
            self.built.clear()
        async for res in super().fetch(query):
            yield res


def test_a_batchs_lab_values_are_built_while_its_other_searches_are_on_their_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Built as read, not after the batch's last answer: that work hides behind the server's."""
    source = PatientsAfterALabValue(batch_size=4)
    build = FactBuilder.observation

    def told(self: FactBuilder, res: Resource) -> list[LabValue]:
        values = build(self, res)
        source.built.set()
        return values

    monkeypatch.setattr(FactBuilder, "observation", told)

    async def bounded() -> SweepResult:
        return await asyncio.wait_for(run_sweep(load_trial(HCC), source, AS_OF), 30)

    _same(asyncio.run(bounded()), _sweep(BatchedServer(batch_size=4)))


def test_lab_values_wait_for_the_unit_engine_without_holding_the_other_searches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ready = threading.Event()
    source = BatchedServer(batch_size=10_000)
    built_when: list[tuple[bool, int]] = []  # (engine ready, searches ended so far)

    def slow_engine() -> UcumEngine:
        time.sleep(0.3)
        ready.set()
        return engine()

    class Told(GatheredFacts):
        def add(self, patient: str, kind: Kind, resource: Resource) -> None:
            if kind is Kind.OBSERVATION:
                built_when.append((ready.is_set(), len(source.log)))
            super().add(patient, kind, resource)

    monkeypatch.setattr(sweep_stages, "engine", slow_engine)
    monkeypatch.setattr(sweep_batches, "GatheredFacts", Told)
    _sweep(source)
    assert built_when
    assert all(is_ready for is_ready, _ in built_when)
    # While the Observations waited, the other searches of the batch went on to their end.
    assert built_when[0][1] >= 3
