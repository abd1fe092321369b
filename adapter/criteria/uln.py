"""`uln_multiple`: a lab compared with a multiple of its upper limit of normal (ULN).

Trial-spec, data rules and fine print: the ULN is the deciding Observation's own
referenceRange.high, already normalised to the analyte's unit by the fact builder (a high with no
unit took the value's unit there). Among several entries, the one whose appliesTo / age fits the
patient, else the first with neither; an entry with no high passes to the next rule. An
unconvertible high gives unknown. With no referenceRange high, a site's ULN band for the patient's
sex and age (issue 9) is used, else the analyte's default ULN from the mappings, and the evidence
says which and from which file; with none, unknown.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

from pydantic import Field

from adapter.analytes import Analyte, UlnBand
from adapter.criteria.context import Context
from adapter.criteria.derived import clean, decide
from adapter.criteria.kinds import Criterion, Op, completed_years
from adapter.criteria.labs import compare, fmt, lab_evidence, latest_lab
from adapter.criteria.latest import same_value
from adapter.criteria.results import CriterionResult, Result
from adapter.facts.model import Coding, LabValue, PatientInfo, ReferenceRange

SNOMED = "http://snomed.info/sct"
ADMINISTRATIVE_GENDER = "http://hl7.org/fhir/administrative-gender"
V3_GENDER = "http://terminology.hl7.org/CodeSystem/v3-AdministrativeGender"

#: appliesTo codings that name a sex, as Patient.gender spells it. FHIR vocabulary, not a trial's
#: codes: the referencerange-appliesto value set uses SNOMED; labs also send the gender codes.
SEX_CODES: Mapping[Coding, str] = {
    Coding(SNOMED, "248153007"): "male",
    Coding(SNOMED, "248152002"): "female",
    Coding(ADMINISTRATIVE_GENDER, "male"): "male",
    Coding(ADMINISTRATIVE_GENDER, "female"): "female",
    Coding(V3_GENDER, "M"): "male",
    Coding(V3_GENDER, "F"): "female",
}


def is_constrained(entry: ReferenceRange) -> bool:
    """The entry names a population (appliesTo or age) rather than everyone."""
    return (
        bool(entry.applies_to)
        or entry.age_low_years is not None
        or entry.age_high_years is not None
    )


def fits(entry: ReferenceRange, patient: PatientInfo, as_of: date) -> bool:
    """Every constraint of the entry holds for the patient for certain.

    Every appliesTo coding must be a sex code agreeing with Patient.gender (an unrecognised one,
    such as a race, cannot be confirmed). Age is in completed years at as-of; a partial birthDate
    fits only when its whole span does.
    """
    for coding in entry.applies_to:
        if SEX_CODES.get(coding) is None or SEX_CODES[coding] != patient.gender:
            return False
    if entry.age_low_years is None and entry.age_high_years is None:
        return True
    if patient.birth_date is None:
        return False
    youngest = completed_years(patient.birth_date.last_day, as_of)
    oldest = completed_years(patient.birth_date.first_day, as_of)
    if entry.age_low_years is not None and youngest < entry.age_low_years:
        return False
    return entry.age_high_years is None or oldest <= entry.age_high_years


def ranges_for(
    entries: Sequence[ReferenceRange], patient: PatientInfo, as_of: date
) -> list[ReferenceRange]:
    """The entries that apply to the patient, best first: those that fit, then general ones."""
    specific = [e for e in entries if is_constrained(e) and fits(e, patient, as_of)]
    return specific + [e for e in entries if not is_constrained(e)]


@dataclass(frozen=True, slots=True)
class Uln:
    """The ULN used (canonical unit) and where it came from, or why there is none."""

    value: float | None
    source: str
    #: the mapping file of a default or band ULN; None for a referenceRange high
    origin: str | None = None


def site_band(analyte: Analyte, patient: PatientInfo, as_of: date) -> tuple[UlnBand | None, str]:
    """The first of the analyte's ULN bands that fits the patient for certain, or why none is used.

    Sex is `PatientInfo.sex`; age is in completed years at as-of. A partial birthDate whose span
    puts the patient in different bands (or in one and in none) chooses none: the plain default.
    """
    if not analyte.uln_bands:
        return None, ""
    bands = [b for b in analyte.uln_bands if b.fits_sex(patient.sex)]
    birth = patient.birth_date
    if birth is None:
        ageless = [b for b in bands if b.age_min is None and b.age_max is None]
        if ageless:
            return ageless[0], ""
        return None, "no site ULN band fits: no birthDate"
    youngest = completed_years(birth.last_day, as_of)
    oldest = completed_years(birth.first_day, as_of)
    ages = range(youngest, oldest + 1)
    picks = {next((b for b in bands if b.fits_age(age)), None) for age in ages}
    if len(picks) > 1:
        span = f"{youngest}-{oldest}" if oldest > youngest else str(youngest)
        return None, f"the partial birthDate (age {span}) straddles the edge of a site ULN band"
    (band,) = picks
    if band is None:
        return None, f"no site ULN band fits sex {patient.sex or 'unknown'}, age {youngest}"
    return band, ""


def uln_of(lab: LabValue, ctx: Context) -> Uln:
    for entry in ranges_for(lab.reference_ranges, ctx.facts.patient, ctx.as_of):
        if entry.high_problem is not None:
            return Uln(None, f"ULN unknown: {entry.high_problem} ({lab.reference})")
        if entry.high is not None:
            high = entry.high
            return Uln(
                high.value, f"referenceRange high {fmt(high.value)} {high.unit} of {lab.reference}"
            )
    analyte = ctx.analytes.get(lab.analyte)
    why = (
        "no referenceRange entry with a high applies to this patient"
        if lab.reference_ranges
        else "no referenceRange"
    )
    if analyte is None:
        return Uln(None, f"ULN unknown: {why} on {lab.reference} and no default ULN in mappings")
    band, no_band = site_band(analyte, ctx.facts.patient, ctx.as_of)
    if band is not None:
        text = f"site ULN {fmt(band.uln)} {analyte.unit} for {band.text()} from {band.origin}"
        return Uln(band.uln, f"{text} ({why})", band.origin or None)
    why = f"{why}; {no_band}" if no_band else why
    if analyte.default_uln is None:
        return Uln(None, f"ULN unknown: {why} on {lab.reference} and no default ULN in mappings")
    where = analyte.uln_origin or "mappings"
    return Uln(
        analyte.default_uln,
        f"default ULN {fmt(analyte.default_uln)} {analyte.unit} from {where} ({why})",
        analyte.uln_origin,
    )


class UlnMultiple(Criterion):
    """The latest usable `analyte` in the window compared `op` with `multiple` x ULN."""

    kind: Literal["uln_multiple"]
    analyte: str
    op: Op
    multiple: float = Field(gt=0)
    window_days: int = Field(gt=0, le=3650)

    def analytes(self) -> frozenset[str]:
        return frozenset({self.analyte})

    def _outcome(self, lab: LabValue, ctx: Context) -> Hashable:
        """What a value would decide against its own ULN (for candidates of 'latest')."""
        uln = uln_of(lab, ctx)
        if lab.normalised is None or uln.value is None:
            return same_value(lab)
        return compare(lab.normalised, self.op, clean(self.multiple * uln.value))

    def evaluate(self, ctx: Context) -> CriterionResult:
        pick = latest_lab(ctx, self.analyte, self.window_days, lambda lab: self._outcome(lab, ctx))
        base = f"{self.op} {fmt(self.multiple)} x ULN"
        if pick.lab is None:
            return CriterionResult(Result.UNKNOWN, pick.problem or "no value")
        lab, norm = pick.lab, pick.lab.normalised
        if pick.problem is not None or norm is None:
            ev = (lab_evidence(lab, ctx.as_of, threshold=base),)
            return CriterionResult(Result.UNKNOWN, pick.problem or "no usable value", ev)
        uln = uln_of(lab, ctx)
        if uln.value is None:
            ev = (lab_evidence(lab, ctx.as_of, threshold=base, uln_source=uln.source),)
            return CriterionResult(Result.UNKNOWN, uln.source, ev)
        limit = clean(self.multiple * uln.value)
        threshold = f"{base} ({fmt(limit)} {norm.unit})"
        used = (f"ULN: {uln.origin}",) if uln.origin else ()
        ev = (
            lab_evidence(
                lab, ctx.as_of, threshold=threshold, uln_source=uln.source, mapping_sources=used
            ),
        )
        return decide(norm, self.op, limit, threshold, ev)


KINDS: tuple[type[Criterion], ...] = (UlnMultiple,)
