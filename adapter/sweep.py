"""The sweep: cohort first, then only what the criteria need, then verdicts.

source -> cohort (Conditions with the trial's diagnosis codes) -> Patient, Condition, Procedure and
the needed Observations for those patients only -> facts -> engine -> verdicts. Sinks and reports
are the caller's (cli.py), so a sweep can be run and inspected without writing anything.

Lines the source could not read (issue 11, item 8) are judged here: a patient an unreadable line
surely belongs to is not evaluated (listed under `errors`); a line that names nobody for sure
leaves no patient's data known to be whole, so everyone is evaluated and reported but
`SweepResult.withhold_writes` keeps every write back. Either way the run is `partial` (exit 3).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import date

import orjson

from adapter.codes import line_pattern
from adapter.cohorts import CohortSpec, read_members
from adapter.criteria.evaluate import in_cohort
from adapter.facts.extract import codings, condition_fact, reference_of
from adapter.facts.model import Coding, ConditionFact, PatientFacts, PatientInfo
from adapter.gathered_facts import gathered
from adapter.progress import NoProgress
from adapter.progress import Progress as Tracker
from adapter.sources.base import Query, Resource, Source, UnreadableItem, patient_id_of
from adapter.spill import ResourceSpill
from adapter.sweep_batches import read_and_evaluate
from adapter.sweep_result import NOT_FOUND, PatientFailure, SweepResult, unusable_reason
from adapter.sweep_stages import (
    Kept,
    building,
    code_skipped,
    evaluate_cohort,
    hold_unreadable,
    read_cohort,
)
from adapter.trials import Trial

__all__ = [
    "NOT_FOUND",
    "UNREADABLE_LOGGED",
    "PatientFailure",
    "SweepResult",
    "cohort_ids",
    "run_sweep",
    "unusable_reason",
]

log = logging.getLogger(__name__)

#: Unreadable lines logged one by one; the rest are counted in one line (results.json lists all).
UNREADABLE_LOGGED = 20

Progress = Callable[[str], None]


async def cohort_ids(trial: Trial, source: Source, as_of: date, stats: Counter[str]) -> set[str]:
    """Patients with an active, counting Condition in a cohort code set."""
    ids, _ = await _cohort_search(trial, source, as_of, stats)
    return ids


async def _cohort_search(
    trial: Trial, source: Source, as_of: date, stats: Counter[str]
) -> tuple[set[str], dict[str, list[Kept]]]:
    """The cohort, and the Conditions of its patients that the search returned and that a
    search by `code:not` of the cohort's codes would leave out (kept for their facts, so the
    read of every Condition of the cohort need not fetch them again).

    The server matches exact codes only; the prefix rules are applied here on every Condition.
    A folder source returns every Condition of the export: only the code is read of each (a
    whole fact costs ten times as much), and a fact is built for the few that match. A folder's
    read of the cohort's Conditions reads every line of its patients, the cohort's own among
    them: nothing is kept from a folder (27 MiB of JSON at 100,000 patients).
    """
    by_patient: dict[str, list[ConditionFact]] = defaultdict(list)
    # As JSON: a parsed Condition takes five times the memory (6,000 candidates at 100k).
    kept: dict[str, list[Kept]] = defaultdict(list)
    aliases = trial.system_aliases
    cohort = trial.cohort
    tokens = trial.cohort_tokens()
    token_codes = frozenset(t.code for t in tokens)
    # Lines a folder source passes over (parsed whole, holding none of the codes) count as read.
    passed_over = code_skipped(source, "Condition")
    keep = source.reads.mode != "files"
    query = Query("Condition", codes=tokens, line_pattern=line_pattern(cohort, tokens))
    async for res in source.fetch(query):
        stats["cohort_conditions_read"] += 1
        pid = patient_id_of(res)
        if pid is None:
            continue
        # The same codes `condition_fact` gives the fact, read before the rest of it.
        codes = codings(res.get("code"), aliases)
        counting = any(cs.matches_any(codes) for cs in cohort)
        if counting:
            by_patient[pid].append(condition_fact(res, aliases))
        # Only with an id: a copy without one could not be told from the Condition read's.
        if (
            keep
            and (
                counting
                or (_may_be_excluded(token_codes, res) and _excluded_by(tokens, res, codes))
            )
            and isinstance(res.get("id"), str)
        ):
            kept[pid].append((reference_of(res), orjson.dumps(res)))
    stats["cohort_conditions_read"] += code_skipped(source, "Condition") - passed_over
    ids = set()
    for pid, conditions in by_patient.items():
        probe = PatientFacts(
            PatientInfo(f"Patient/{pid}", None, None), conditions=tuple(conditions)
        )
        if in_cohort(probe, trial.cohort, as_of):
            ids.add(pid)
    return ids, {pid: kept[pid] for pid in ids if pid in kept}


def _excluded_by(tokens: frozenset[Coding], res: Resource, aliased: tuple[Coding, ...]) -> bool:
    """Whether a search with `code:not` of `tokens` may leave `res` out: one of its codings is a
    token, as written (the server compares the system as sent) or in the mappings' spelling;
    a token without a system stands for its code in any system."""
    if not tokens.isdisjoint(aliased):
        return True
    written = _written_codings(res.get("code"))
    bare = {t.code for t in tokens if not t.system}
    return not tokens.isdisjoint(written) or any(c.code in bare for c in written)


def _may_be_excluded(token_codes: frozenset[str], res: Resource) -> bool:
    """False when no coding of `res` has a token's code, in any system: then `_excluded_by`
    is False too (it looks at every cohort patient's Condition: this is the cheap half)."""
    concept = res.get("code")
    listed = concept.get("coding") if isinstance(concept, dict) else None
    return isinstance(listed, list) and any(
        isinstance(c, dict) and c.get("code") in token_codes for c in listed
    )


def _written_codings(concept: object) -> set[Coding]:
    """The codings of a CodeableConcept as written (`""` for no system), aliases not applied."""
    found: set[Coding] = set()
    listed = concept.get("coding") if isinstance(concept, dict) else None
    for c in listed if isinstance(listed, list) else ():
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            system = c.get("system")
            found.add(Coding(system if isinstance(system, str) else "", c["code"]))
    return found


async def _read_conditions(
    trial: Trial, source: Source, patients: frozenset[str], stats: Counter[str], track: Tracker
) -> dict[str, list[ConditionFact]]:
    """Every Condition of `patients`, as facts by patient."""
    conditions: dict[str, list[ConditionFact]] = defaultdict(list)
    track.stage("Condition", None)
    async for res in source.fetch(Query("Condition", patients=patients)):
        stats["Condition"] += 1
        track.advance()
        pid = patient_id_of(res)
        if pid in patients:
            conditions[pid].append(condition_fact(res, trial.system_aliases))
    return conditions


async def _members_in_cohort(
    trial: Trial,
    source: Source,
    as_of: date,
    spec: CohortSpec,
    result: SweepResult,
    track: Tracker,
) -> tuple[set[str], dict[str, list[ConditionFact]]]:
    """The members of a Group or a file whose own Conditions put them in the cohort, and the
    Conditions read (kept for the facts: each member's Conditions are read once)."""
    members = await read_members(spec, source, as_of)
    result.cohort = {"form": spec.describe(), **members.summary()}
    for line in members.describe():
        log.info("cohort: %s", line)
    unnamed = len(members.unresolved_lines) + len(members.ambiguous_lines) + len(members.bad_lines)
    if unnamed:
        # The night's job is quiet at warning level: a list that names nobody must still show.
        log.warning(
            "cohort: %d %s of %s named no single Patient (line numbers in results.json, cohort)",
            unnamed,
            "line" if unnamed == 1 else "lines",
            spec.describe(),
        )
    candidates = frozenset(members.ids)
    if not candidates:
        return set(), {}
    conditions = await _read_conditions(trial, source, candidates, result.stats, track)
    ids = set()
    for pid in candidates:
        probe = PatientFacts(
            PatientInfo(f"Patient/{pid}", None, None), conditions=tuple(conditions.get(pid, ()))
        )
        if in_cohort(probe, trial.cohort, as_of):
            ids.add(pid)
    outside = len(candidates) - len(ids)
    # A member with no Condition at all may be an id that names no Patient: not told apart
    # here (reading every member's Patient would cost a read per member outside the cohort).
    bare = sum(1 for pid in candidates if not conditions.get(pid))
    result.cohort["outside_cohort"] = outside
    result.cohort["without_conditions"] = bare
    if outside:
        log.info(
            "cohort: %s no active diagnosis of the trial's cohort (%d of them no Condition at "
            "all, or no Patient by that id)",
            "1 member has" if outside == 1 else f"{outside} members have",
            bare,
        )
    return ids, conditions


async def run_sweep(
    trial: Trial,
    source: Source,
    as_of: date,
    *,
    progress: Progress | None = None,
    only: frozenset[str] | None = None,
    mrn_system: str | None = None,
    tracker: Tracker | None = None,
    cohort: CohortSpec | None = None,
) -> SweepResult:
    """Read the cohort and what the criteria need from `source`; evaluate every patient.

    `only` names Patient ids to evaluate instead of the cohort (for `explain`): they are evaluated
    whether or not they are in the cohort, and `SweepResult.outside_cohort` lists those who are not.
    `cohort` says where the cohort comes from (default: the server-wide diagnosis search); for a
    Group or a file, the trial's cohort rules are applied to each member's own Conditions.
    `mrn_system` is the site's MRN identifier system (`SiteConfig.mrn_system`), for identities.
    `tracker` is shown each stage and its counts (resources read per type, patients evaluated).
    """
    say = progress or (lambda _msg: None)
    track = tracker or NoProgress()
    track.stage("cohort", None)
    result = SweepResult(trial, as_of)
    stats = result.stats
    # An unreadable Condition line may be what puts its patient in the cohort: every patient the
    # cohort search's unreadable lines name is held back, in the cohort so far or not.
    held: dict[str, UnreadableItem] = {}
    read_already: dict[str, list[ConditionFact]] | None = None
    kept: dict[str, list[Kept]] = {}
    if only is not None:
        ids = set(only)
    elif cohort is None or cohort.kind == "search":
        ids, kept = await _cohort_search(trial, source, as_of, stats)
        hold_unreadable(held, source.unreadable, None)
    else:
        ids, read_already = await _members_in_cohort(trial, source, as_of, cohort, result, track)
        hold_unreadable(held, source.unreadable, None)
    say(f"cohort: {len(ids)} patients")
    track.advance(len(ids))
    if not ids:
        track.done()
        _hold_back(result, held)
        _note_source(result, source)
        return result
    if source.reads.mode != "files":
        # From a server, a batch at a time: each evaluated while the next ones are read.
        await read_and_evaluate(
            result,
            source,
            sorted(ids),
            kept,
            held,
            read_already,
            only=only,
            mrn_system=mrn_system,
            track=track,
            say=say,
        )
    else:
        with ResourceSpill() as spill:
            await read_cohort(
                trial, source, frozenset(ids), kept, read_already is None, spill, stats, track, say
            )
            hold_unreadable(held, source.unreadable, frozenset(ids))
            evaluate_cohort(
                result,
                gathered(spill.by_patient(), building(result, mrn_system)),
                sorted(ids),
                held,
                read_already,
                only=only,
                track=track,
            )
    track.done()
    _hold_back(result, held)
    _note_source(result, source)
    return result


def _hold_back(result: SweepResult, held: dict[str, UnreadableItem]) -> None:
    """List the patients unreadable lines surely belong to under `errors`, unevaluated: the line
    may hold what decides their verdict. Sorted with the other errors by patient."""
    if not held:
        return
    for pid, item in held.items():
        result.errors.append(
            PatientFailure(
                f"Patient/{pid}",
                f"an unreadable line in {item.file}:{item.line} may hold this patient's data",
            )
        )
    result.errors.sort(key=lambda e: e.patient)


def _note_source(result: SweepResult, source: Source) -> None:
    """Report what the source left out: unreadable lines, another server's patients' resources,
    and what its read mode cannot reach (logged once each)."""
    _note_unreadable(result, source)
    _note_foreign(result, source)
    result.reads = source.reads
    for what in source.reads.unreached:
        log.warning("not reached in %s reads: %s", source.reads.mode, what)


def _note_unreadable(result: SweepResult, source: Source) -> None:
    """Keep the source's unreadable items, and log each by file and line only: never its content
    or the patient it names (logs carry no patient ids). Past the first UNREADABLE_LOGGED, one
    line counts the rest."""
    result.unreadable = list(source.unreadable)
    for item in result.unreadable[:UNREADABLE_LOGGED]:
        log.warning("skipped an unreadable line: %s:%d (%s)", item.file, item.line, item.reason)
    rest = len(result.unreadable) - UNREADABLE_LOGGED
    if rest > 0:
        log.warning("skipped %d more unreadable lines (see unreadable_input in results.json)", rest)
    if result.withhold_writes:
        log.warning(
            "an unreadable line names no patient for certain: every patient is evaluated and "
            "reported, but nothing will be written to a sink"
        )


def _note_foreign(result: SweepResult, source: Source) -> None:
    """Report the resources the source left out as another server's patients' (counts only)."""
    result.foreign.update(source.foreign)
    total = sum(result.foreign.values())
    if total:
        log.warning(
            "left out %d resources whose subject is another server's patient "
            "(an absolute reference outside the source; see stats.foreign_subjects)",
            total,
        )
