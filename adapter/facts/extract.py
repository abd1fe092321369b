"""FHIR R4 JSON (plain dicts from orjson) -> typed facts, reading only the fields criteria need.

Building fhir.resources models costs ~100 us a resource (PERFORMANCE.md); reading a few keys from
the dict costs ~2 us, so facts are read straight from the JSON, defensively: a field of the wrong
shape is treated as absent, never as a crash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from adapter.analytes import Analyte
from adapter.facts.dates import FhirDate, parse_fhir_date
from adapter.facts.identity import human_name, is_personal, mrn_of
from adapter.facts.model import (
    Abatement,
    Coding,
    ConditionFact,
    LabValue,
    Normalised,
    PatientInfo,
    ProcedureFact,
    Recorded,
    ReferenceRange,
)
from adapter.facts.units import Unconvertible, Units

Json = Mapping[str, Any]
UCUM = "http://unitsofmeasure.org"
COMPARATORS = frozenset({"<", "<=", ">", ">="})
#: other spellings of a code system -> the one mappings use (`urn:oid:2.16.840.1.113883.6.1` ->
#: `http://loinc.org`), from mappings/systems.yaml `equivalents`
Aliases = Mapping[str, str]
NO_ALIASES: Aliases = {}
#: for isinstance: JSON objects are dicts, found at once; `Mapping` alone goes through the ABC
#: machinery (about 0.3 us a check, and facts make several per resource)
MAPPING = (dict, Mapping)

BIRTH_SEX = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"
#: the sex-for-clinical-use extension (FHIR R5 core, used in R4 too), by its URLs' last part
CLINICAL_SEX_NAMES = ("patient-sexParameterForClinicalUse", "patient-sexForClinicalUse")
_BIRTH_SEX_CODES = {"M": "male", "F": "female"}
_CLINICAL_SEX_CODES = {"male-typical": "male", "female-typical": "female"}


def array(value: object) -> list[Any] | tuple[Any, ...]:
    """A JSON array's items; any other value (text, a number, an object) has none.

    `value or ()` would iterate the characters of a string and raise on a number or `true`.
    """
    return value if isinstance(value, list | tuple) else ()


def codings(concept: object, aliases: Aliases = NO_ALIASES) -> tuple[Coding, ...]:
    """The (system, code) pairs of a CodeableConcept, systems in the mappings' spelling; codings
    missing either are skipped."""
    if not isinstance(concept, MAPPING):
        return ()
    out = []
    for c in array(concept.get("coding")):
        if isinstance(c, MAPPING):
            system, code = c.get("system"), c.get("code")
            if isinstance(system, str) and isinstance(code, str):
                out.append(Coding(aliases.get(system, system), code))
    return tuple(out)


def first_code(concept: object) -> str | None:
    """The first code of a CodeableConcept, whatever its system (status-like fields)."""
    if not isinstance(concept, MAPPING):
        return None
    for c in array(concept.get("coding")):
        if isinstance(c, MAPPING) and isinstance(c.get("code"), str):
            return str(c["code"])
    return None


def reference_of(res: Json) -> str:
    return f"{res.get('resourceType')}/{res.get('id')}"


def version_of(res: Json) -> str | None:
    meta = res.get("meta")
    if isinstance(meta, MAPPING) and isinstance(meta.get("versionId"), str):
        return str(meta["versionId"])
    return None


def observation_date(res: Json) -> FhirDate | None:
    """effectiveDateTime, else effectivePeriod.start, else effectiveInstant, else issued."""
    period = res.get("effectivePeriod")
    for text in (
        res.get("effectiveDateTime"),
        period.get("start") if isinstance(period, MAPPING) else None,
        res.get("effectiveInstant"),
        res.get("issued"),
    ):
        if text is not None:
            return parse_fhir_date(text)
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object) -> float | None:
    """A JSON number as a finite float; None for anything else, and for NaN, the infinities and
    integers too large for a float (`10**400`: parsers with big integers or NaN hand these over)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def recorded_sex(res: Json) -> str | None:
    """Sex from the sex-for-clinical-use or US Core birth-sex extension (trial-spec, fine print:
    not_pregnant); 'unknown' for any other value, or when the two disagree."""
    found: set[str] = set()
    for ext in array(res.get("extension")):
        if not isinstance(ext, MAPPING) or not isinstance(ext.get("url"), str):
            continue
        url = str(ext["url"])
        if url == BIRTH_SEX:
            code = ext.get("valueCode")
            found.add(_BIRTH_SEX_CODES.get(code, "unknown") if isinstance(code, str) else "unknown")
        elif url.rsplit("/", 1)[-1] in CLINICAL_SEX_NAMES:
            concepts = [ext.get("valueCodeableConcept")]
            concepts += [
                sub.get("valueCodeableConcept")
                for sub in array(ext.get("extension"))
                if isinstance(sub, MAPPING) and sub.get("url") == "value"
            ]
            codes = {c.code for concept in concepts for c in codings(concept)}
            if codes:
                found.update(_CLINICAL_SEX_CODES.get(c, "unknown") for c in codes)
    if not found:
        return None
    return found.pop() if len(found) == 1 else "unknown"


def patient_info(res: Json, *, mrn_system: str | None = None) -> PatientInfo:
    """The Patient's facts; its MRN is of the site's `mrn_system`, else of type MR (identity)."""
    deceased_text = res.get("deceasedDateTime")
    deceased_date = parse_fhir_date(deceased_text) if deceased_text is not None else None
    deceased_bool = res.get("deceasedBoolean")
    identifiers = []
    for ident in array(res.get("identifier")):
        if isinstance(ident, MAPPING) and not is_personal(ident):
            system, value = ident.get("system"), ident.get("value")
            if isinstance(system, str) and isinstance(value, str):
                identifiers.append((system, value))
    gender = res.get("gender")
    return PatientInfo(
        reference=reference_of(res),
        birth_date=parse_fhir_date(res.get("birthDate")),
        gender=gender if isinstance(gender, str) else None,
        deceased_boolean=deceased_bool if isinstance(deceased_bool, bool) else None,
        deceased_date=deceased_date,
        deceased_unreadable=deceased_text is not None and deceased_date is None,
        version=version_of(res),
        identifiers=tuple(identifiers),
        recorded_sex=recorded_sex(res),
        name=human_name(res),
        mrn=mrn_of(res, mrn_system),
    )


def abatement_of(res: Json) -> Abatement | None:
    """Condition.abatement[x] (trial-spec, data rules v2: abatement without a clinicalStatus ends
    a Condition)."""
    period = res.get("abatementPeriod")
    text = res.get("abatementDateTime")
    if text is None and isinstance(period, MAPPING):
        text = period.get("end")
    if text is not None:
        when = parse_fhir_date(text)
        # An unreadable date still says the Condition ended, but not when.
        return Abatement(date=when, ended=when is None)
    if isinstance(res.get("abatementString"), str) or res.get("abatementBoolean") is True:
        return Abatement(ended=True)
    age = _years(res.get("abatementAge"))
    if age is None and isinstance(res.get("abatementRange"), MAPPING):
        rng = res["abatementRange"]
        age = _years(rng.get("high"))
        if age is None:
            age = _years(rng.get("low"))
    if age is not None:
        return Abatement(years=age)
    return None


def condition_fact(res: Json, aliases: Aliases = NO_ALIASES) -> ConditionFact:
    onset_period = res.get("onsetPeriod")
    onset = parse_fhir_date(res.get("onsetDateTime"))
    if onset is None and isinstance(onset_period, MAPPING):
        onset = parse_fhir_date(onset_period.get("start"))
    stages: list[Coding] = []
    for stage in array(res.get("stage")):
        if isinstance(stage, MAPPING):
            stages.extend(codings(stage.get("summary"), aliases))
    return ConditionFact(
        reference=reference_of(res),
        codes=codings(res.get("code"), aliases),
        clinical_status=first_code(res.get("clinicalStatus")),
        verification_status=first_code(res.get("verificationStatus")),
        onset=onset,
        recorded_date=parse_fhir_date(res.get("recordedDate")),
        stage_codes=tuple(stages),
        version=version_of(res),
        abatement=abatement_of(res),
    )


def procedure_fact(res: Json, aliases: Aliases = NO_ALIASES) -> ProcedureFact:
    performed = parse_fhir_date(res.get("performedDateTime"))
    period = res.get("performedPeriod")
    if performed is None and isinstance(period, MAPPING):
        performed = parse_fhir_date(period.get("start"))
    status = res.get("status")
    return ProcedureFact(
        reference=reference_of(res),
        codes=codings(res.get("code"), aliases),
        status=status if isinstance(status, str) else None,
        performed=performed,
        version=version_of(res),
    )


class FactBuilder:
    """Turns Observations into LabValues for the analytes a trial needs, units normalised."""

    def __init__(
        self,
        analytes: Mapping[str, Analyte],
        units: Units,
        needed: frozenset[str],
        aliases: Aliases = NO_ALIASES,
    ):
        self._analytes = analytes
        self._units = units
        self._aliases = aliases
        self._index: dict[Coding, list[tuple[Analyte, float | None]]] = {}
        self._by_value: dict[Coding, list[Analyte]] = {}
        for name in sorted(needed):
            analyte = analytes[name]
            for coding, molar_mass in analyte.codes.items():
                self._index.setdefault(coding, []).append((analyte, molar_mass))
            for coding in analyte.value_codes:
                self._by_value.setdefault(coding, []).append(analyte)

    def measures(self, res: Json) -> bool:
        """Whether `observation(res)` gives any LabValue: the code check alone, a tenth of the
        cost of the values (a sweep keeps such Observations and builds their values later)."""
        return bool(self._found(res))

    def _found(self, res: Json) -> list[tuple[Json, list[tuple[Coding, Analyte, float | None]]]]:
        """The parts (the Observation, its components) that measure a needed analyte."""
        parts: list[Json] = [res]
        parts.extend(c for c in array(res.get("component")) if isinstance(c, MAPPING))
        return [
            (part, matches)
            for part in parts
            if not (part is res and len(parts) > 1 and not _has_value(part))  # a panel
            and (matches := self._matches(part))
        ]

    def observation(self, res: Json) -> list[LabValue]:
        """One LabValue per needed analyte the Observation (or a component) measures."""
        found = self._found(res)
        if not found:
            return []  # most Observations of an export: nothing a criterion reads
        status = res.get("status")
        status = status if isinstance(status, str) else "unknown"
        when = observation_date(res)
        ref = reference_of(res)
        version = version_of(res)
        issued = parse_fhir_date(res.get("issued"))
        out: list[LabValue] = []
        for part, matches in found:
            part_ranges = part.get("referenceRange")
            for coding, analyte, code_mass in matches:
                recorded, normalised, problem = self._value(part, analyte, code_mass)
                sources = _sources(analyte, coding, recorded, normalised)
                implausible = False
                if normalised is not None and not analyte.plausible(normalised.value):
                    # trial-spec v2: outside the bounds it is unusable, as if it had no value.
                    implausible, normalised = True, None
                    problem = f"implausible value (plausible: {analyte.plausible_text()})"
                    if analyte.bounds_origin is not None:
                        sources += (f"plausible bounds: {analyte.bounds_origin}",)
                out.append(
                    LabValue(
                        analyte=analyte.id,
                        reference=ref,
                        code=coding,
                        status=status,
                        date=when,
                        recorded=recorded,
                        normalised=normalised,
                        problem=problem,
                        version=version,
                        reference_ranges=self._ranges(part_ranges, recorded, analyte, code_mass),
                        value_codes=codings(part.get("valueCodeableConcept"), self._aliases),
                        issued=issued,
                        implausible=implausible,
                        mapping_sources=sources,
                    )
                )
        return out

    def _system(self, system: object) -> str | None:
        """A quantity's unit system, in the mappings' spelling (UCUM's OID is UCUM)."""
        return self._aliases.get(system, system) if isinstance(system, str) else None

    def _matches(self, part: Json) -> list[tuple[Coding, Analyte, float | None]]:
        """(code, analyte, code molar mass) for each needed analyte this part measures."""
        out: list[tuple[Coding, Analyte, float | None]] = []
        seen: set[str] = set()
        for coding in codings(part.get("code"), self._aliases):
            for analyte, code_mass in self._index.get(coding, ()):
                if analyte.id not in seen:  # other codings of the part are translations
                    seen.add(analyte.id)
                    out.append((coding, analyte, code_mass))
        if self._by_value:
            for coding in codings(part.get("valueCodeableConcept"), self._aliases):
                for analyte in self._by_value.get(coding, ()):
                    if analyte.id not in seen:
                        seen.add(analyte.id)
                        out.append((coding, analyte, None))
        return out

    def _value(
        self, part: Json, analyte: Analyte, code_mass: float | None
    ) -> tuple[Recorded | None, Normalised | None, str | None]:
        q = part.get("valueQuantity")
        field = "valueQuantity"
        if not isinstance(q, MAPPING):
            if isinstance(part.get("valueInteger"), int):
                q, field = {"value": part["valueInteger"]}, "valueInteger"
            else:
                absent = first_code(part.get("dataAbsentReason"))
                if absent:
                    return None, None, f"no value (dataAbsentReason {absent})"
                return None, None, "no valueQuantity"
        value = _number(q.get("value"))
        comparator = q.get("comparator")
        comparator = (
            comparator if isinstance(comparator, str) and comparator in COMPARATORS else None
        )
        recorded = Recorded(
            value=value,
            unit=q.get("unit") if isinstance(q.get("unit"), str) else None,
            code=q.get("code") if isinstance(q.get("code"), str) else None,
            comparator=comparator,
            system=self._system(q.get("system")),
        )
        if value is None:
            if _is_number(q.get("value")):
                return recorded, None, f"{field} is not a finite number"
            return recorded, None, "valueQuantity has no number"
        if recorded.unit is None and recorded.code is None and analyte.unit_if_missing:
            # trial-spec: a blood pressure component with a value but no unit is mm[Hg].
            assumed = Recorded(value, None, analyte.unit_if_missing, comparator, UCUM)
            result = self._normalise(value, assumed, analyte, code_mass)
            if isinstance(result, Normalised):
                note = f"no unit; taken as {analyte.unit_if_missing}"
                return recorded, Normalised(result.value, result.unit, comparator, note), None
        result = self._normalise(value, recorded, analyte, code_mass)
        if isinstance(result, Unconvertible):
            return recorded, None, result.reason
        return recorded, result, None

    def _normalise(
        self, value: float, rec: Recorded, analyte: Analyte, code_mass: float | None
    ) -> Normalised | Unconvertible:
        if code_mass is None:
            return self._units.normalise(
                value,
                to=analyte.unit,
                code=rec.code,
                system=rec.system,
                unit=rec.unit,
                comparator=rec.comparator,
                molar_mass=analyte.molar_mass,
                iu_as_u=analyte.iu_as_u,
            )
        # The code measures a related substance (urea for BUN): to amount of substance with its
        # own molar mass, then to the analyte with the analyte's.
        step = self._units.normalise(
            value,
            to="mmol/L",
            code=rec.code,
            system=rec.system,
            unit=rec.unit,
            comparator=rec.comparator,
            molar_mass=code_mass,
        )
        if isinstance(step, Unconvertible):
            return step
        final = self._units.convert(
            step.value, "mmol/L", analyte.unit, molar_mass=analyte.molar_mass
        )
        if isinstance(final, Unconvertible):
            return final
        via = f"{step.via}, as {analyte.name}"
        return Normalised(final, analyte.unit, rec.comparator, via, step.synonym_source)

    def _ranges(
        self, src: object, recorded: Recorded | None, analyte: Analyte, code_mass: float | None
    ) -> tuple[ReferenceRange, ...]:
        if not isinstance(src, list):
            return ()
        out = []
        for rr in src:
            if not isinstance(rr, MAPPING):
                continue
            bounds: dict[str, Normalised | None] = {"low": None, "high": None}
            high_problem = None
            for key in ("low", "high"):
                q = rr.get(key)
                if not isinstance(q, MAPPING) or not _is_number(q.get("value")):
                    continue
                value = _number(q.get("value"))
                if value is None or value < 0:
                    # NaN, an infinity, too large for a float, negative: recorded but unusable;
                    # a high like that gives unknown, as an unconvertible one does.
                    if key == "high":
                        high_problem = "reference range high is not a plausible number"
                    continue
                has_unit = isinstance(q.get("unit"), str) or isinstance(q.get("code"), str)
                # A bound with no unit takes the value's unit (trial-spec, fine print).
                unit_src = (
                    q
                    if has_unit or recorded is None
                    else {"unit": recorded.unit, "code": recorded.code, "system": recorded.system}
                )
                rec = Recorded(
                    value,
                    unit_src.get("unit") if isinstance(unit_src.get("unit"), str) else None,
                    unit_src.get("code") if isinstance(unit_src.get("code"), str) else None,
                    None,
                    self._system(unit_src.get("system")),
                )
                result = self._normalise(value, rec, analyte, code_mass)
                if isinstance(result, Unconvertible):
                    if key == "high":
                        high_problem = f"reference range high: {result.reason}"
                elif key == "high" and not analyte.plausible(result.value):
                    # A ULN of 1e308 U/L would let any value pass (trial-spec v2 plausibility).
                    high_problem = "reference range high is implausible"
                else:
                    bounds[key] = result
            age = rr.get("age")
            age_low = age_high = None
            if isinstance(age, MAPPING):
                age_low = _years(age.get("low"))
                age_high = _years(age.get("high"))
            applies: list[Coding] = []
            for concept in array(rr.get("appliesTo")):
                applies.extend(codings(concept, self._aliases))
            out.append(
                ReferenceRange(
                    low=bounds["low"],
                    high=bounds["high"],
                    high_problem=high_problem,
                    applies_to=tuple(applies),
                    age_low_years=age_low,
                    age_high_years=age_high,
                )
            )
        return tuple(out)


def _sources(
    analyte: Analyte, coding: Coding, recorded: Recorded | None, normalised: Normalised | None
) -> tuple[str, ...]:
    """The mapping files that read this value: its code's, and its unit synonym's."""
    out: list[str] = []
    origin = analyte.code_origins.get(coding)
    if origin is not None:
        out.append(f"code {coding.token()}: {origin}")
    if normalised is not None and normalised.synonym_source is not None and recorded is not None:
        out.append(f"unit '{recorded.unit}': {normalised.synonym_source}")
    return tuple(out)


def _has_value(part: Json) -> bool:
    return any(key.startswith("value") for key in part)


def _years(q: object) -> float | None:
    if not isinstance(q, MAPPING):
        return None
    value = _number(q.get("value"))
    if value is None:
        return None
    unit = q.get("code") or q.get("unit")
    if unit in ("mo", "month", "months"):
        return value / 12
    if unit in ("wk", "week", "weeks"):
        return value / 52.1775
    if unit in ("d", "day", "days"):
        return value / 365.25
    return value
