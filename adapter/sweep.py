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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import date

from adapter.cohorts import CohortSpec, read_members
from adapter.criteria.evaluate import evaluate_patient, in_cohort
from adapter.criteria.labs import USABLE_STATUSES
from adapter.criteria.results import PatientVerdict
from adapter.facts.extract import (
    FactBuilder,
    codings,
    condition_fact,
    patient_info,
    procedure_fact,
)
from adapter.facts.identity import Identity, identity_of
from adapter.facts.model import ConditionFact, LabValue, PatientFacts, PatientInfo, ProcedureFact
from adapter.progress import NoProgress
from adapter.progress import Progress as Tracker
from adapter.sources.base import (
    Query,
    ReadNotes,
    Resource,
    Source,
    UnreadableItem,
    patient_id_of,
)
from adapter.trials import Trial

log = logging.getLogger(__name__)

#: Unreadable lines logged one by one; the rest are counted in one line (results.json lists all).
UNREADABLE_LOGGED = 20

Progress = Callable[[str], None]
NOT_FOUND = "the Patient resource was not found in the source"


@dataclass(frozen=True, slots=True)
class PatientFailure:
    patient: str
    reason: str
    #: the server's own words behind `reason` (FhirError.detail): for the owner-only results only
    detail: str = ""


@dataclass
class SweepResult:
    trial: Trial
    as_of: date
    verdicts: list[PatientVerdict] = field(default_factory=list)
    errors: list[PatientFailure] = field(default_factory=list)
    #: resources read per type, and Observations used / skipped / unusable (with reasons)
    stats: Counter[str] = field(default_factory=Counter)
    unusable: Counter[str] = field(default_factory=Counter)
    outside_cohort: list[str] = field(default_factory=list)
    #: per type, resources left out because their subject is another server's patient
    foreign: Counter[str] = field(default_factory=Counter)
    #: Patient reference -> its first identifier (system, value): logical references in sinks
    identifiers: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Patient reference -> name, MRN, birth date, age and sex of each evaluated patient, for
    #: results.json and the CSVs only (never logs or notifications)
    identities: dict[str, Identity] = field(default_factory=dict)
    #: reference -> versioned reference (`Observation/1/_history/3`) of each fact with a version
    versions: dict[str, str] = field(default_factory=dict)
    #: Patient reference -> the ResearchSubject status people set on the sink (withdrawn,
    #: on-study...), read by the sink stage; such a patient is never listed as a new candidate
    people_status: dict[str, str] = field(default_factory=dict)
    #: a dry run's planned sink writes (adapter.sinks.plan.PlannedWrite as dicts)
    planned_writes: list[dict[str, str | None]] = field(default_factory=list)
    #: input lines (and JSON files) the source skipped as unreadable, in the order met
    unreadable: list[UnreadableItem] = field(default_factory=list)
    #: how the cohort was found (issue 13): `form` (search, group:ID, file:NAME) and, for a
    #: Group or a file, its members' counts and the lines that named nobody (no patient data)
    cohort: dict[str, object] = field(default_factory=lambda: {"form": "search"})
    #: how the source read: mode, profile, a switch to per-patient reads, what it cannot reach
    reads: ReadNotes = field(default_factory=ReadNotes)
    #: the Bulk export read (`sweep --bulk`, adapter.bulk.export.Export.summary), else None
    bulk: dict[str, object] | None = None
    #: the export's error files say some data may be missing: nothing may be written
    export_blocking: bool = False

    @property
    def withhold_writes(self) -> bool:
        """Whether nothing may be written: an unreadable line names no patient for sure, so any
        patient's data may be missing a piece, and a sink never takes a verdict back."""
        return self.export_blocking or any(item.patient is None for item in self.unreadable)

    @property
    def partial(self) -> bool:
        """Done, but not whole (exit 3): patients under `errors`, input skipped as unreadable,
        or an export whose error files say data may be missing."""
        return bool(self.errors or self.unreadable or self.export_blocking)


def unusable_reason(values: list[LabValue], as_of: date) -> str | None:
    """Why no value of an Observation can be used, or None when one can (for the accounting)."""
    first = values[0]
    if first.status not in USABLE_STATUSES:
        return f"status {first.status}"
    if first.date is None:
        return "no usable date"
    if first.date.first_day > as_of:
        return "dated after as-of"
    if all(v.normalised is None and not v.value_codes for v in values):
        # Reasons hold unit text and codes, never values.
        return next((v.problem for v in values if v.problem), "no usable value")
    return None


async def _fetch_if(needed: bool, source: Source, query: Query) -> AsyncIterator[Resource]:
    """Fetch only what some criterion reads (trial-spec: fetch only what the criteria need)."""
    if needed:
        async for res in source.fetch(query):
            yield res


async def cohort_ids(trial: Trial, source: Source, as_of: date, stats: Counter[str]) -> set[str]:
    """Patients with an active, counting Condition in a cohort code set.

    The server matches exact codes only; the prefix rules are applied here on every Condition.
    A folder source returns every Condition of the export: only the code is read of each (a
    whole fact costs ten times as much), and a fact is built for the few that match.
    """
    by_patient: dict[str, list[ConditionFact]] = defaultdict(list)
    aliases = trial.system_aliases
    cohort = trial.cohort
    async for res in source.fetch(Query("Condition", codes=trial.cohort_tokens())):
        stats["cohort_conditions_read"] += 1
        pid = patient_id_of(res)
        if pid is None:
            continue
        # The same codes `condition_fact` gives the fact, read before the rest of it.
        codes = codings(res.get("code"), aliases)
        if any(cs.matches_any(codes) for cs in cohort):
            by_patient[pid].append(condition_fact(res, aliases))
    ids = set()
    for pid, conditions in by_patient.items():
        probe = PatientFacts(
            PatientInfo(f"Patient/{pid}", None, None), conditions=tuple(conditions)
        )
        if in_cohort(probe, trial.cohort, as_of):
            ids.add(pid)
    return ids


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
    if only is not None:
        ids = set(only)
    elif cohort is None or cohort.kind == "search":
        ids = await cohort_ids(trial, source, as_of, stats)
        _hold(held, source.unreadable, None)
    else:
        ids, read_already = await _members_in_cohort(trial, source, as_of, cohort, result, track)
        _hold(held, source.unreadable, None)
    say(f"cohort: {len(ids)} patients")
    track.advance(len(ids))
    if not ids:
        track.done()
        _hold_back(result, held)
        _note_source(result, source)
        return result
    wanted = frozenset(ids)

    patients: dict[str, PatientInfo] = {}
    track.stage("Patient", None)
    async for res in source.fetch(Query("Patient", patients=wanted)):
        stats["Patient"] += 1
        track.advance()
        pid = patient_id_of(res)
        if pid in wanted:
            patients[pid] = patient_info(res, mrn_system=mrn_system)
    say(f"patients read: {len(patients)}")

    reads = trial.reads()
    conditions: dict[str, list[ConditionFact]] = defaultdict(list)
    if read_already is not None:
        conditions.update((pid, facts) for pid, facts in read_already.items() if pid in wanted)
    elif "Condition" in reads:
        conditions = await _read_conditions(trial, source, wanted, stats, track)

    procedures: dict[str, list[ProcedureFact]] = defaultdict(list)
    track.stage("Procedure", None)
    async for res in _fetch_if("Procedure" in reads, source, Query("Procedure", patients=wanted)):
        stats["Procedure"] += 1
        track.advance()
        pid = patient_id_of(res)
        if pid in wanted:
            procedures[pid].append(procedure_fact(res, trial.system_aliases))

    builder = FactBuilder(
        trial.analytes, trial.units, trial.needed_analytes(), trial.system_aliases
    )
    labs: dict[str, list[LabValue]] = defaultdict(list)
    observations = Query(
        "Observation",
        codes=trial.observation_codes(),
        patients=wanted,
        categories=trial.observation_categories(),
        uncategorised=trial.uncategorised_analytes(),
    )
    track.stage("Observation", None)
    async for res in _fetch_if("Observation" in reads, source, observations):
        stats["Observation"] += 1
        track.advance()
        pid = patient_id_of(res)
        if pid not in wanted:
            stats["observations_other_patients"] += 1
            continue
        values = builder.observation(res)
        if not values:
            stats["observations_skipped_code_not_needed"] += 1
            continue
        problem = unusable_reason(values, as_of)
        if problem is None:
            stats["observations_used"] += 1
        else:
            stats["observations_unusable"] += 1
            result.unusable[problem] += 1
        labs[pid].extend(values)
    say(f"observations read: {stats['Observation']}")

    _hold(held, source.unreadable, wanted)
    manual = [(m.id, m.description) for m in trial.manual]
    evaluated = sorted(wanted - held.keys())
    track.stage("evaluation", len(evaluated))
    for pid in evaluated:
        track.advance()
        reference = f"Patient/{pid}"
        info = patients.get(pid)
        if info is None:
            result.errors.append(PatientFailure(reference, NOT_FOUND))
            continue
        facts = PatientFacts(
            info,
            labs=tuple(labs.get(pid, ())),
            conditions=tuple(conditions.get(pid, ())),
            procedures=tuple(procedures.get(pid, ())),
        )
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
        result.verdicts.append(verdict)
        result.identities[reference] = identity_of(info, as_of)
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
    track.done()
    _hold_back(result, held)
    _note_source(result, source)
    return result


def _hold(
    held: dict[str, UnreadableItem], items: list[UnreadableItem], among: frozenset[str] | None
) -> None:
    """Add to `held` each patient (`among` them, or any) an unreadable item surely names, with
    the first such item."""
    for item in items:
        if item.patient is not None and (among is None or item.patient in among):
            held.setdefault(item.patient, item)


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
