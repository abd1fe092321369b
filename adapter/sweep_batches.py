"""A server's cohort a batch at a time: each batch evaluated while the next ones are read.

A folder is read whole and then evaluated (`sweep_stages`). From a server, the evaluation of
the whole cohort after its last answer is work that nothing hides: at 2,000 patients, a sixth
of a second of facts and verdicts after the server has done its part. Read a batch of
patients at a time instead (the source's own search batch, so the requests are the same),
with up to `concurrency` batches on their way, and evaluate each as soon as it is read, in id
order. A batch's facts are built as its resources come (`GatheredFacts`), so only the last
batch's verdicts, and the facts of its last answer, are left after the last answer; and only the
batches on their way are held, in memory (issue 15).
"""

from __future__ import annotations

import asyncio
from collections import deque

from adapter.facts.model import ConditionFact
from adapter.gathered_facts import GatheredFacts
from adapter.progress import NoProgress
from adapter.progress import Progress as Tracker
from adapter.sources.base import Source, UnreadableItem
from adapter.sweep_result import SweepResult
from adapter.sweep_stages import (
    Kept,
    Progress,
    building,
    evaluate_cohort,
    hold_unreadable,
    read_cohort,
)
from adapter.turns import pass_turn

#: patients a batch when the source does not say (its `batch_size`)
DEFAULT_BATCH = 100


def batches_of(source: Source, ids: list[str]) -> list[list[str]]:
    """`ids` (sorted) cut into the source's search batches."""
    size = max(1, int(getattr(source, "batch_size", DEFAULT_BATCH)))
    return [ids[i : i + size] for i in range(0, len(ids), size)]


async def read_and_evaluate(
    result: SweepResult,
    source: Source,
    ids: list[str],
    kept: dict[str, list[Kept]],
    held: dict[str, UnreadableItem],
    read_already: dict[str, list[ConditionFact]] | None,
    *,
    only: frozenset[str] | None,
    mrn_system: str | None,
    track: Tracker,
    say: Progress,
) -> None:
    """Read and evaluate `ids` (sorted) a batch at a time; verdicts come in id order, as from
    `read_cohort` then `evaluate_cohort`. The first failure of a read is raised as itself, and
    the reads on their way are cancelled."""
    trial = result.trial
    ahead = max(1, int(getattr(source, "concurrency", 1)))
    track.stage("evaluation", sum(1 for pid in ids if pid not in held))
    quiet = NoProgress()
    waiting = iter(batches_of(source, ids))
    reading: deque[tuple[list[str], GatheredFacts, asyncio.Future[int]]] = deque()
    facts_for = building(result, mrn_system)

    def start() -> None:
        batch = next(waiting, None)
        if batch is None:
            return
        facts = GatheredFacts(facts_for)
        mine = {pid: kept[pid] for pid in batch if pid in kept}
        read = read_cohort(
            trial,
            source,
            frozenset(batch),
            mine,
            read_already is None,
            facts,
            result.stats,
            quiet,
            lambda _message: None,
        )
        reading.append((batch, facts, asyncio.ensure_future(read)))

    found = 0
    try:
        for _ in range(ahead):
            start()
        while reading:
            batch, facts, task = reading[0]
            found += await task
            reading.popleft()
            with facts:
                start()
                await pass_turn()  # the next batch's first requests leave before the work here
                hold_unreadable(held, source.unreadable, frozenset(batch))
                evaluate_cohort(
                    result,
                    facts.by_patient(),
                    batch,
                    held,
                    read_already,
                    only=only,
                    track=track,
                    staged=False,
                )
    finally:
        for _batch, _facts, task in reading:
            task.cancel()
        await asyncio.gather(*(task for _, _, task in reading), return_exceptions=True)
        for _batch, facts, _task in reading:
            facts.close()
    say(f"patients read: {found}")
    say(f"observations read: {result.stats['Observation']}")
