"""An analyte as the fact builder and the engine use it, resolved from `mappings/analytes.yaml`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from adapter.facts.model import Coding


@dataclass(frozen=True, slots=True)
class UlnBand:
    """A site's default ULN for one sex and age band (completed years, both ends included)."""

    sex: Literal["male", "female", "any"]
    age_min: int | None
    age_max: int | None
    #: in the analyte's canonical unit
    uln: float
    #: the mapping file the band comes from
    origin: str = ""

    def fits_sex(self, sex: str | None) -> bool:
        return self.sex == "any" or self.sex == sex

    def fits_age(self, years: int) -> bool:
        if self.age_min is not None and years < self.age_min:
            return False
        return self.age_max is None or years <= self.age_max

    def text(self) -> str:
        low = "" if self.age_min is None else str(self.age_min)
        high = "" if self.age_max is None else str(self.age_max)
        ages = "any age" if not (low or high) else f"age {low}-{high}"
        return f"{self.sex}, {ages}"


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
    #: plausibility bounds in the canonical unit (trial-spec v2); a value outside is unusable
    plausible_low: float | None = None
    plausible_high: float | None = None
    #: the mapping file each code was mapped by (bundled analytes.yaml, local-codes.yaml, a site
    #: file), for the evidence; codes absent here were given by hand (tests)
    code_origins: dict[Coding, str] = field(default_factory=dict)
    #: the files that gave `default_uln` and the plausibility bounds
    uln_origin: str | None = None
    bounds_origin: str | None = None
    #: a site's default ULNs by sex and age, tried in order before `default_uln`
    uln_bands: tuple[UlnBand, ...] = ()
    #: Observation category tokens its Observations carry (per-patient reads by category)
    categories: tuple[str, ...] = ()

    def plausible(self, value: float) -> bool:
        """Within the bounds; a negative value is never plausible (trial-spec v2)."""
        if value < 0 or not math.isfinite(value):
            return False
        if self.plausible_low is not None and value < self.plausible_low:
            return False
        return self.plausible_high is None or value <= self.plausible_high

    def plausible_text(self) -> str:
        low = self.plausible_low if self.plausible_low is not None else 0
        high = "" if self.plausible_high is None else f"{self.plausible_high:g}"
        return f"{low:g} to {high} {self.unit}" if high else f"not negative, {self.unit}"
