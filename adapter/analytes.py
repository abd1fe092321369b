"""An analyte as the fact builder and the engine use it, resolved from `mappings/analytes.yaml`."""

from __future__ import annotations

from dataclasses import dataclass

from adapter.facts.model import Coding


@dataclass(frozen=True, slots=True)
class Analyte:
    id: str
    name: str
    #: canonical UCUM unit: thresholds are stated in it, values are normalised to it
    unit: str
    #: g/mol, for this analyte's mass <-> substance conversions only
    molar_mass: float | None
    #: canonical unit; used when an Observation has no referenceRange high
    default_uln: float | None
    #: [IU] taken as U (enzymes; a policy, UCUM alone refuses it)
    iu_as_u: bool
    #: code -> the molar mass of what that code measures when it is not the analyte itself
    codes: dict[Coding, float | None]
    #: the unit a value with no unit at all is taken in (blood pressure components: mm[Hg])
    unit_if_missing: str | None = None
    #: answers that identify this analyte whatever the Observation's code (NYHA class)
    value_codes: frozenset[Coding] = frozenset()
    #: codes of panels whose components carry this analyte: a server search by `code` matches
    #: the panel's own code only, so these are searched too (blood pressure 85354-9)
    panel_codes: frozenset[Coding] = frozenset()
