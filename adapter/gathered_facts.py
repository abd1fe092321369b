"""A patient's facts, built resource by resource; and a server batch's, built as they are read.

A folder's cohort waits on disk as resources (`ResourceSpill`) and has its facts built patient by
patient when evaluated. A server's cohort comes a batch at a time (`sweep_batches`), and its
resources come while the server is still answering the batch's other searches: building their
facts then, instead of after the last answer, hides that work behind the server's (issue 15).
A batch's facts are smaller than its resources (only the trial's analytes become lab values),
at most the batches on their way are held, and past `BUILT_PER_BATCH` resources a batch spills
the rest to disk as a folder does: memory stays bounded however long its patients' histories.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson

from adapter.facts.extract import FactBuilder, condition_fact, patient_info, procedure_fact
from adapter.facts.model import ConditionFact, LabValue, PatientFacts, PatientInfo, ProcedureFact
from adapter.sources.base import Resource
from adapter.spill import Kind, ResourceSpill
from adapter.sweep_result import SweepResult, unusable_reason


@dataclass(frozen=True, slots=True)
class Building:
    """What building facts needs: the lab value builder, the result its counts go to, and the
    site's MRN system."""

    builder: FactBuilder
    result: SweepResult
    mrn_system: str | None


class PatientGather:
    """One patient's facts, from their resources in the order read.

    Each Observation is counted as used or unusable (with its reason) when added, whether or
    not the patient is evaluated. The last Patient added wins, as a search's later page would.
    """

    __slots__ = ("_building", "_conditions", "_info", "_labs", "_procedures")

    def __init__(self, building: Building) -> None:
        self._building = building
        self._info: PatientInfo | None = None
        self._labs: list[LabValue] = []
        self._conditions: list[ConditionFact] = []
        self._procedures: list[ProcedureFact] = []

    def add(self, kind: Kind, res: Resource) -> None:
        building = self._building
        result = building.result
        if kind is Kind.PATIENT:
            self._info = patient_info(res, mrn_system=building.mrn_system)
        elif kind is Kind.CONDITION:
            self._conditions.append(condition_fact(res, result.trial.system_aliases))
        elif kind is Kind.PROCEDURE:
            self._procedures.append(procedure_fact(res, result.trial.system_aliases))
        else:
            values = building.builder.observation(res)
            problem = unusable_reason(values, result.as_of) if values else "no usable value"
            if problem is None:
                result.stats["observations_used"] += 1
            else:
                result.stats["observations_unusable"] += 1
                result.unusable[problem] += 1
            self._labs.extend(values)

    def facts(self, conditions_read: Sequence[ConditionFact] | None) -> PatientFacts | None:
        """The facts (None without a Patient). `conditions_read` are the Conditions the cohort
        search read already, when the Conditions were not read again."""
        if self._info is None:
            return None
        conditions = self._conditions if conditions_read is None else conditions_read
        return PatientFacts(
            self._info,
            labs=tuple(self._labs),
            conditions=tuple(conditions),
            procedures=tuple(self._procedures),
        )


def gathered(
    rows: Iterator[tuple[str, list[tuple[Kind, Resource]]]], building: Building
) -> Iterator[tuple[str, PatientGather]]:
    """Each patient's resources (as `ResourceSpill.by_patient` gives them) as their facts."""
    for pid, resources in rows:
        gather = PatientGather(building)
        for kind, res in resources:
            gather.add(kind, res)
        yield pid, gather


#: resources a batch builds facts of as they come, about 9 MiB of them (an Observation's lab
#: values take 0.9 KiB); later ones wait on disk and are built at evaluation, so that a batch
#: whose patients have years of hourly glucose readings does not hold them all in memory. A
#: batch of 100 patients of the 2,000-patient benchmark reads 3,700 resources.
BUILT_PER_BATCH = 10_000


class GatheredFacts:
    """A batch's patients' facts, each built as its resource is added (see the module); in
    the place of a `ResourceSpill` for a server's batch. Past `budget` resources, the rest are
    spilled to disk and built when their patient is evaluated, after the facts built before."""

    def __init__(self, building: Building, budget: int | None = None) -> None:
        self._building = building
        self._patients: dict[str, PatientGather] = {}
        self._budget = BUILT_PER_BATCH if budget is None else budget
        self._spill: ResourceSpill | None = None
        self._spilled: set[str] = set()  # the patients with a resource in `_spill`
        self.added = 0

    def add(self, patient: str, kind: Kind, resource: Resource) -> None:
        self.added += 1
        if self.added > self._budget:
            if self._spill is None:
                self._spill = ResourceSpill()
            self._spill.add(patient, kind, resource)
            self._spilled.add(patient)
            return
        gather = self._patients.get(patient)
        if gather is None:
            gather = self._patients[patient] = PatientGather(self._building)
        gather.add(kind, resource)

    def add_json(self, patient: str, kind: Kind, body: bytes) -> None:
        """`add` of a resource as JSON."""
        self.add(patient, kind, orjson.loads(body))

    def by_patient(self) -> Iterator[tuple[str, PatientGather]]:
        """(patient id, their facts), patients in id order; each handed over once."""
        ids = sorted(self._patients.keys() | self._spilled)
        spilled = self._spill.by_patient() if self._spill is not None else iter(())
        later = next(spilled, None)  # both in id order (see `ResourceSpill.by_patient`)
        for pid in ids:
            gather = self._patients.pop(pid, None) or PatientGather(self._building)
            if later is not None and later[0] == pid:
                for kind, res in later[1]:
                    gather.add(kind, res)
                later = next(spilled, None)
            yield pid, gather

    def close(self) -> None:
        self._patients.clear()
        if self._spill is not None:
            self._spill.close()

    def __enter__(self) -> GatheredFacts:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
