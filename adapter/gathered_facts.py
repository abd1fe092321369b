"""A patient's facts, built resource by resource; and a server batch's, built as they are read.

A folder's cohort waits on disk as resources (`ResourceSpill`) and has its facts built patient by
patient when evaluated. A server's cohort comes a batch at a time (`sweep_batches`), and its
resources come while the server is still answering the batch's other searches: building their
facts then, instead of after the last answer, hides that work behind the server's (issue 15).
A batch's facts are far smaller than its resources (only the trial's analytes become lab values),
and at most the batches on their way are held, so memory stays bounded by the batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson

from adapter.facts.extract import FactBuilder, condition_fact, patient_info, procedure_fact
from adapter.facts.model import ConditionFact, LabValue, PatientFacts, PatientInfo, ProcedureFact
from adapter.sources.base import Resource
from adapter.spill import Kind
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


class GatheredFacts:
    """A batch's patients' facts, each built as its resource is added (see the module); in
    the place of a `ResourceSpill` for a server's batch."""

    def __init__(self, building: Building) -> None:
        self._building = building
        self._patients: dict[str, PatientGather] = {}
        self.added = 0

    def add(self, patient: str, kind: Kind, resource: Resource) -> None:
        gather = self._patients.get(patient)
        if gather is None:
            gather = self._patients[patient] = PatientGather(self._building)
        gather.add(kind, resource)
        self.added += 1

    def add_json(self, patient: str, kind: Kind, body: bytes) -> None:
        """`add` of a resource as JSON."""
        self.add(patient, kind, orjson.loads(body))

    def by_patient(self) -> Iterator[tuple[str, PatientGather]]:
        """(patient id, their facts), patients in id order; each handed over once."""
        for pid in sorted(self._patients):
            yield pid, self._patients.pop(pid)

    def close(self) -> None:
        self._patients.clear()

    def __enter__(self) -> GatheredFacts:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
