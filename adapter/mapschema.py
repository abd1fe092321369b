"""The schema of every mapping file: the bundled folder's files, and a site folder's patches.

A bundled file states each entry whole (`AnalyteModel`); a site file states only what it changes
(`AnalytePatch`: every field optional, `replace: true` to swap the entry whole). How patches merge
is `adapter.site_mappings`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator


class Strict(BaseModel):
    """A mapping file's record: unknown keys are mistakes, values never change after loading.

    No number may be NaN or infinite, however it is written (`.nan`, `"nan"`, `"1e999"`): it
    compares false with everything, so a NaN threshold passed every patient (issue 11, item 4).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SystemModel(Strict):
    urls: list[str] = Field(min_length=1)
    match: Literal["exact", "icd"]


class SystemsFile(Strict):
    systems: dict[str, SystemModel]
    #: a system's URL -> its other spellings (the OID forms of the standard systems, v2)
    equivalents: dict[str, list[str]] = {}


class CodeSetModel(Strict):
    description: str = ""
    include: dict[str, list[str]]
    exclude: dict[str, list[str]] = {}
    search_variants: dict[str, list[str]] = {}


class CodeSetsFile(Strict):
    codesets: dict[str, CodeSetModel]


class CodedAs(Strict):
    system: str
    code: str
    molar_mass: float = Field(gt=0)


class Bounds(Strict):
    low: float = Field(ge=0, allow_inf_nan=False)
    high: float = Field(gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.low > self.high:
            raise ValueError("low is above high")
        return self


#: a search token for Observation.category: a code, or `system|code`
CategoryToken = Annotated[str, StringConstraints(pattern=r"^([^|\s]+\|)?[A-Za-z0-9\-._]{1,64}$")]


class AnalyteModel(Strict):
    name: str
    unit: str
    molar_mass: float | None = Field(default=None, gt=0)
    default_uln: float | None = Field(default=None, gt=0)
    iu_as_u: bool = False
    unit_if_missing: str | None = None
    codes: dict[str, list[str]]
    coded_as: list[CodedAs] = []
    value_codes: dict[str, list[str]] = {}
    panels: dict[str, list[str]] = {}
    #: plausibility bounds in `unit` (trial-spec v2): outside them a value is unusable
    plausible: Bounds | None = None
    #: Observation category tokens (`laboratory`, `vital-signs`, or `system|code`) this analyte's
    #: Observations carry: what a per-patient read searches by where `code` is no filter
    categories: list[CategoryToken] = []


#: the fields of an analyte that hold one value (overridden by a site), the rest are code lists
ANALYTE_SCALARS = (
    "name",
    "unit",
    "molar_mass",
    "default_uln",
    "iu_as_u",
    "unit_if_missing",
    "plausible",
)


class AnalytesFile(Strict):
    analytes: dict[str, AnalyteModel]


class LocalCode(Strict):
    system: str
    code: str
    analyte: str


class LocalCodesFile(Strict):
    local_codes: list[LocalCode] = []


# --- a site folder's files (issue 9) -------------------------------------------------------------


class SystemPatch(Strict):
    urls: list[str] | None = Field(default=None, min_length=1)
    match: Literal["exact", "icd"] | None = None
    replace: bool = False


class CodeSetPatch(Strict):
    description: str | None = None
    include: dict[str, list[str]] = {}
    exclude: dict[str, list[str]] = {}
    search_variants: dict[str, list[str]] = {}
    replace: bool = False


class BoundsPatch(Strict):
    low: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    high: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class AnalytePatch(Strict):
    name: str | None = None
    unit: str | None = None
    molar_mass: float | None = Field(default=None, gt=0)
    default_uln: float | None = Field(default=None, gt=0)
    iu_as_u: bool | None = None
    unit_if_missing: str | None = None
    codes: dict[str, list[str]] = {}
    coded_as: list[CodedAs] = []
    value_codes: dict[str, list[str]] = {}
    panels: dict[str, list[str]] = {}
    plausible: BoundsPatch | None = None
    categories: list[CategoryToken] = []
    replace: bool = False


class UlnBandModel(Strict):
    """A default ULN for one sex and age band, in the analyte's canonical unit."""

    sex: Literal["male", "female", "any"] = "any"
    #: completed years at as-of, both ends included
    age_min: int | None = Field(default=None, ge=0)
    age_max: int | None = Field(default=None, ge=0)
    uln: float = Field(gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> UlnBandModel:
        if self.age_min is not None and self.age_max is not None and self.age_min > self.age_max:
            raise ValueError("age_min is above age_max")
        return self


class SiteFile(Strict):
    """Any file of a site folder; each file may hold only its own keys (`SITE_KEYS`)."""

    systems: dict[str, SystemPatch] = {}
    equivalents: dict[str, list[str]] = {}
    codesets: dict[str, CodeSetPatch] = {}
    analytes: dict[str, AnalytePatch] = {}
    local_codes: list[LocalCode] = []
    #: unit text -> UCUM code (units.yaml)
    synonyms: dict[str, str] = {}
    #: analyte -> its default ULNs by sex and age (uln.yaml)
    uln: dict[str, list[UlnBandModel]] = {}


#: a site folder's files, in the order they are merged, and the keys each may hold
SITE_FILE = "site-mappings.yaml"
SITE_KEYS: dict[str, tuple[str, ...]] = {
    "systems.yaml": ("systems", "equivalents"),
    "codesets.yaml": ("codesets",),
    "analytes.yaml": ("analytes",),
    "local-codes.yaml": ("local_codes",),
    "units.yaml": ("synonyms",),
    "uln.yaml": ("uln",),
    SITE_FILE: tuple(SiteFile.model_fields),
}
