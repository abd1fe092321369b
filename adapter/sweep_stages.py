"""The sweep's two stages after the cohort: read what the criteria need, then evaluate.

A folder's read puts every resource of the cohort's patients into a `ResourceSpill` (on disk,
issue 15); evaluating takes them back one patient at a time, builds that patient's facts and
verdict, and lets them go, so a sweep's memory does not grow with its cohort's data. A server's
cohort is read a batch at a time (`sweep_batches`), its facts built as read (`GatheredFacts`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from adapter.criteria.evaluate import evaluate_patient, in_cohort
from adapter.criteria.results import PatientVerdict
from adapter.facts.extract import FactBuilder, reference_of
from adapter.facts.identity import identity_of
from adapter.facts.model import ConditionFact, PatientFacts
from adapter.facts.ucum import UcumEngine, engine
from adapter.gathered_facts import Building, GatheredFacts, PatientGather
from adapter.progress import Progress as Tracker
from adapter.sources.base import Query, Resource, Source, UnreadableItem, patient_id_of
from adapter.spill import Kind, ResourceSpill
from adapter.sweep_result import NOT_FOUND, PatientFailure, SweepResult
from adapter.trials import Trial

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
#: a Condition the cohort search returned: its reference, and its JSON
Kept = tuple[str, bytes]
#: where a read puts the resources: a folder's on disk, a server batch's as facts at once
Store = ResourceSpill | GatheredFacts


async def fetch_if(needed: bool, source: Source, query: Query) -> AsyncIterator[Resource]:
    """Fetch only what some criterion reads (trial-spec: fetch only what the criteria need)."""
    if needed:
        async for res in source.fetch(query):
            yield res


async def read_cohort(
    trial: Trial,
    source: Source,
    wanted: frozenset[str],
    kept: dict[str, list[Kept]],
    read_conditions: bool,
    spill: Store,
    stats: Counter[str],
    track: Tracker,
    say: Progress,
) -> int:
    """Every resource the criteria need of the `wanted` patients, into `spill`: their Patient,
    and their Conditions, Procedures and Observations where a criterion reads them. Returns how
    many of them have a Patient.

    `kept` are Conditions the cohort search returned: the Condition read asks the source to
    leave them out (`exclude_codes`), and takes each once whether it does or not.

    From a server the four searches run at once (issue 15), within the client's
    `max_concurrent`: the server always has the next request while the last page is handled
    here, so this side's work hides behind the server's. A folder is read one type after the
    other: the reading is this machine's own work, spread over its cores already.
    """
    reads = trial.reads()
    # The unit engine takes 0.4 s to build on a run's first lab value: built in a thread while
    # the reads wait on the server or the workers, not after the last of them.
    warm = asyncio.ensure_future(asyncio.to_thread(engine)) if trial.needed_analytes() else None
    reader = _Reader(source, wanted, spill, stats, track, say, warm)
    # Made when run: a reader never started (an earlier one failed) leaves no coroutine behind.
    patients = reader.patients
    observations = lambda: reader.observations(trial, reads)  # noqa: E731
    readers: list[Callable[[], Awaitable[None]]] = []
    if read_conditions and "Condition" in reads:
        readers.append(lambda: reader.conditions(trial, kept))
    # Their stages and counts even when no criterion reads them (fetch only what is needed).
    readers.append(lambda: reader.procedures(reads))
    if source.reads.mode == "files":
        readers = [patients, *readers, observations]
    else:
        # A server's longest search first, its shortest last: the Observation pages are
        # handled here while the server answers the others, and what is left after its last
        # answer is a page of Patients (on a server that answers one request at a time).
        readers = [observations, *readers, patients]
    try:
        await _read_all(readers, source, track)
    except BaseException:
        if warm is not None:  # its own failure, if any, is the evaluation's to meet again
            warm.add_done_callback(lambda done: done.cancelled() or done.exception())
        raise
    if warm is not None:
        await warm
    return reader.found


async def _read_all(
    readers: list[Callable[[], Awaitable[None]]], source: Source, track: Tracker
) -> None:
    if source.reads.mode == "files":
        for read in readers:
            await read()
        return
    track.stage("Patient, Condition, Procedure, Observation", None)
    try:
        async with asyncio.TaskGroup() as group:  # the first failure cancels the others
            for read in readers:
                group.create_task(_run(read))
    except BaseExceptionGroup as failed:
        # The failure itself, as one search after another would raise it: the command's error
        # handling (exit codes, the one error line) knows the adapter's exceptions, not groups.
        raise _first(failed) from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


async def _run(read: Callable[[], Awaitable[None]]) -> None:
    await read()


class _Reader:
    """One type's read into the spill, with its counts and progress."""

    def __init__(
        self,
        source: Source,
        wanted: frozenset[str],
        spill: Store,
        stats: Counter[str],
        track: Tracker,
        say: Progress,
        warm: asyncio.Future[UcumEngine] | None,
    ) -> None:
        self.source, self.wanted, self.spill = source, wanted, spill
        self.stats, self.track, self.say = stats, track, say
        self.found = 0
        # Facts built as read need the unit engine that `warm` builds.
        self.warm = warm if isinstance(spill, GatheredFacts) else None
        # One type after another (a folder): each its own progress stage.
        self.staged = source.reads.mode == "files"

    def _stage(self, name: str) -> None:
        if self.staged:
            self.track.stage(name, None)

    async def patients(self) -> None:
        self._stage("Patient")
        found: set[str] = set()
        async for res in self.source.fetch(Query("Patient", patients=self.wanted)):
            self.stats["Patient"] += 1
            self.track.advance()
            pid = patient_id_of(res)
            if pid in self.wanted:
                found.add(pid)
                self.spill.add(pid, Kind.PATIENT, res)
        self.found = len(found)
        self.say(f"patients read: {self.found}")

    async def conditions(self, trial: Trial, kept: dict[str, list[Kept]]) -> None:
        self._stage("Condition")
        leftover = {ref: (pid, body) for pid, bodies in kept.items() for ref, body in bodies}
        conditions = Query(
            "Condition",
            patients=self.wanted,
            exclude_codes=trial.cohort_tokens() if leftover else None,
        )
        async for res in self.source.fetch(conditions):
            self.stats["Condition"] += 1
            self.track.advance()
            pid = patient_id_of(res)
            if pid in self.wanted:
                leftover.pop(reference_of(res), None)
                self.spill.add(pid, Kind.CONDITION, res)
        for pid, body in leftover.values():
            # Left out by the source (`code:not`): counted as the read would have counted it.
            self.stats["Condition"] += 1
            self.spill.add_json(pid, Kind.CONDITION, body)

    async def procedures(self, reads: frozenset[str]) -> None:
        self._stage("Procedure")
        query = Query("Procedure", patients=self.wanted)
        async for res in fetch_if("Procedure" in reads, self.source, query):
            self.stats["Procedure"] += 1
            self.track.advance()
            pid = patient_id_of(res)
            if pid in self.wanted:
                self.spill.add(pid, Kind.PROCEDURE, res)

    async def observations(self, trial: Trial, reads: frozenset[str]) -> None:
        self._stage("Observation")
        builder = _builder(trial)
        observations = Query(
            "Observation",
            codes=trial.observation_codes(),
            patients=self.wanted,
            categories=trial.observation_categories(),
            uncategorised=trial.uncategorised_analytes(),
            line_codes=trial.observation_line_codes(),
        )
        stats = self.stats
        unparsed = code_skipped(self.source, "Observation")
        async for res in fetch_if("Observation" in reads, self.source, observations):
            stats["Observation"] += 1
            self.track.advance()
            pid = patient_id_of(res)
            if pid not in self.wanted:
                stats["observations_other_patients"] += 1
            elif builder.measures(res):
                if self.warm is not None and not self.warm.done():
                    # Not the lock in `engine()`, which would hold the event loop.
                    await asyncio.shield(self.warm)
                self.spill.add(pid, Kind.OBSERVATION, res)
            else:
                stats["observations_skipped_code_not_needed"] += 1
        # Lines a folder source skipped unparsed because they hold none of the codes: counted
        # as if they had been read and skipped here, so the counts do not depend on the source.
        unparsed = code_skipped(self.source, "Observation") - unparsed
        stats["Observation"] += unparsed
        self.track.advance(unparsed)
        stats["observations_skipped_code_not_needed"] += unparsed
        self.say(f"observations read: {stats['Observation']}")


def hold_unreadable(
    held: dict[str, UnreadableItem], items: list[UnreadableItem], among: frozenset[str] | None
) -> None:
    """Add to `held` each patient (`among` them, or any) an unreadable item surely names, with
    the first such item."""
    for item in items:
        if item.patient is not None and (among is None or item.patient in among):
            held.setdefault(item.patient, item)


def code_skipped(source: Source, resource_type: str) -> int:
    counts: Counter[str] | None = getattr(source, "code_skipped", None)
    return counts[resource_type] if counts is not None else 0


def _builder(trial: Trial) -> FactBuilder:
    return FactBuilder(trial.analytes, trial.units, trial.needed_analytes(), trial.system_aliases)


def building(result: SweepResult, mrn_system: str | None) -> Building:
    """What building `result`'s facts needs (`mrn_system`: the site's MRN system)."""
    return Building(_builder(result.trial), result, mrn_system)


def evaluate_cohort(
    result: SweepResult,
    patients: Iterator[tuple[str, PatientGather]],
    ids: list[str],
    held: dict[str, UnreadableItem],
    read_already: dict[str, list[ConditionFact]] | None,
    *,
    only: frozenset[str] | None,
    track: Tracker,
    staged: bool = True,
) -> None:
    """Evaluate each of `ids` from their facts (`patients`, in id order, as a spill's rows
    through `gathered` or a batch's `GatheredFacts`), one patient at a time, in id order;
    patients in `held` have their labs counted but are not evaluated. `staged`: the
    evaluation is a progress stage of its own (else the caller's stage counts the patients)."""
    trial, as_of = result.trial, result.as_of
    manual = [(m.id, m.description) for m in trial.manual]
    if staged:
        track.stage("evaluation", sum(1 for pid in ids if pid not in held))
    pending = next(patients, None)
    for pid in ids:
        while pending is not None and pending[0] < pid:  # (never: every row is of `ids`)
            pending = next(patients, None)
        gather: PatientGather | None = None
        if pending is not None and pending[0] == pid:
            gather, pending = pending[1], next(patients, None)
        read = None if read_already is None else read_already.get(pid, ())
        facts = None if gather is None else gather.facts(read)
        if pid in held:
            continue
        track.advance()
        reference = f"Patient/{pid}"
        if facts is None:
            result.errors.append(PatientFailure(reference, NOT_FOUND))
            continue
        if only is not None and not in_cohort(facts, trial.cohort, as_of):
            result.outside_cohort.append(reference)
        try:
            verdict = evaluate_patient(
                facts,
                as_of=as_of,
                criteria=trial.criteria,
                manual=manual,
                codesets=trial.codesets,
                analytes=trial.analytes,
            )
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            # A defect on one patient's data must not stop the night's sweep; it is reported
            # under `errors` (exit 3), with the exception type only: messages may hold values.
            log.warning("a patient could not be evaluated: %s", type(exc).__name__)
            result.errors.append(
                PatientFailure(reference, f"evaluation failed: {type(exc).__name__}")
            )
            continue
        _record(result, verdict, facts)


def _record(result: SweepResult, verdict: PatientVerdict, facts: PatientFacts) -> None:
    """Keep a patient's verdict, identity, the identifier a sink names them by, and the
    versions of the resources behind the evidence."""
    reference = verdict.patient
    info = facts.patient
    result.verdicts.append(verdict)
    result.identities[reference] = identity_of(info, result.as_of)
    # The MRN, else the first identifier that is no personal document number (SSNs and
    # the like never enter the facts): what a sink on another server names the patient by.
    mrn = next(((sys, val) for sys, val in info.identifiers if val == info.mrn), None)
    chosen = mrn if info.mrn is not None else None
    if chosen is None and info.identifiers:
        chosen = info.identifiers[0]
    if chosen is not None:
        result.identifiers[reference] = chosen
    versioned = [(info.reference, info.version)]
    versioned += [(f.reference, f.version) for f in facts.labs]
    versioned += [(f.reference, f.version) for f in facts.conditions]
    versioned += [(f.reference, f.version) for f in facts.procedures]
    for ref, version in versioned:
        if version:
            result.versions[ref] = f"{ref}/_history/{version}"
