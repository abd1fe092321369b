"""Hypothesis strategies for messy FHIR JSON: odd numbers, odd text, dates of every form, junk.

Shared by the property tests of the fact builder and the engine (issue 11). Resources are built as
orjson would hand them over, except that numbers may be NaN, infinities or integers too large for
a float (a JSON parser with NaN support, or Python's own `json`, produces those), text may hold
lone surrogates (invalid UTF-8 read with `surrogateescape`), and any field may be replaced by a
random JSON-ish tree.
"""

from __future__ import annotations

import calendar
import copy
from collections.abc import Iterable
from datetime import date, timedelta
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from adapter.analytes import Analyte
from adapter.cli_args import AS_OF_MAX, AS_OF_MIN  # the range of --as-of the CLI accepts
from adapter.codes import CodeSet
from adapter.facts.model import Coding
from adapter.trials import Trial, load_trial

ROOT = Path(__file__).resolve().parents[2]
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
HCC_TRIAL = "hcc-ablation-lenvatinib-pd1"
T2DM_TRIAL = "t2dm-glycaemic-control"


Json = dict[str, Any]


@cache
def trial(name: str) -> Trial:
    """A bundled trial, loaded once per process (loading reads and checks every mapping)."""
    return load_trial(name, None, site_mappings=None)


# -- numbers and text ----------------------------------------------------------------------------
HUGE_INTS = (10**400, -(10**400), 2**1024, -(2**1024), 2**63, 10**20)
#: every float, NaN and infinities included, as a JSON parser with NaN support produces them
any_float = st.floats(allow_nan=True, allow_infinity=True)
any_number = st.one_of(
    any_float,
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.sampled_from([0, -0.0, 1e-320, 5e-324, 1e-300, 1e300, 1.7976931348623157e308, -1.0]),
)
#: numbers of the size labs write (most examples should reach the conversions and thresholds)
lab_number = st.one_of(
    st.floats(min_value=0, max_value=500, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=500),
    st.sampled_from([0, 1, 1.5, 2.0, 2.8, 3.5, 9.0, 28, 34.2, 40, 50, 90, 140]),
)

ODD_TEXT = (
    "",
    " ",
    "\u200b",
    "\ufeff",
    "\u202e",
    "\x00",
    "e\u0301",
    "\U0001f9ea",
    "\u00d710^9/L",
    "\u00d710\u2079/L",
    "µkat/L",
    "μmol/L",
    "秒",
    "\uff11\uff12",
    "٢٠٢٦",
    "\udc80\udcff",
    "mg/dL\n",
    "K/uL",
    "10.3/uL",
    "%",
    "{INR}",
    "[IU]/L",
    "Cel",
    "[degF]",
    "m[Hg]",
    "mm[Hg]",
    "10*400",
    "10*-400/L",
    "((((((((((",
    "g" * 200,
)
#: invalid UTF-8 as a source decoding with `surrogateescape` hands it over
invalid_utf8 = st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape"))
odd_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(ODD_TEXT),
    invalid_utf8,
    st.text(st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), max_size=4),
)

#: any JSON-ish value: what a field of the wrong type can hold
json_scalar = st.one_of(st.none(), st.booleans(), any_number, odd_text)
json_tree = st.recursive(
    json_scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.sampled_from(["value", "code"])), children, max_size=3
        ),
    ),
    max_leaves=8,
)


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, drawn with the given weights; the first is what examples shrink to.

    `st.one_of(s, s, s, t)` draws `s` and `t` alike: it weighs distinct strategies, not entries.
    """
    pool = [strategy for weight, strategy in options for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


# -- dates -----------------------------------------------------------------------------------------
years = st.one_of(
    st.sampled_from([1, 9999, 0, 1900, 1970, 2000, 2024, 2026, 2999]),
    st.integers(min_value=0, max_value=9999),
)
offsets = st.one_of(
    st.just("Z"),
    st.builds(
        lambda sign, hours, minutes: f"{sign}{hours:02d}:{minutes:02d}",
        st.sampled_from("+-"),
        st.integers(min_value=0, max_value=14),
        st.sampled_from([0, 30, 45]),
    ),
    st.sampled_from(["+14:00", "-14:00", "+15:00", "-00:00", "+05:60", "+99:99", ""]),
)
fractions = st.one_of(
    st.just(""), st.text("0123456789", min_size=1, max_size=12).map(lambda digits: f".{digits}")
)


@st.composite
def fhir_date_text(draw: st.DrawFn, year: int | None = None) -> str:
    """A FHIR date, dateTime or instant of any precision, valid or nearly so.

    Months 0..13, days 0..32, hours 0..24 and seconds 0..61 make invalid ones (2021-02-30,
    24:00:00); 23:59:60 is a leap second; an offset may be missing, or beyond +-14:00.
    """
    y = draw(years) if year is None else year
    text = f"{y:04d}"
    precision = draw(st.sampled_from(["year", "month", "day", "minute", "second", "fraction"]))
    if precision == "year":
        return text
    text += f"-{draw(st.integers(min_value=0, max_value=13)):02d}"
    if precision == "month":
        return text
    text += f"-{draw(st.integers(min_value=0, max_value=32)):02d}"
    if precision == "day":
        return text
    text += f"T{draw(st.integers(0, 24)):02d}:{draw(st.integers(0, 60)):02d}"
    if precision != "minute":
        text += f":{draw(st.integers(0, 61)):02d}"
    if precision == "fraction":
        text += draw(fractions)
    return text + draw(offsets)


def format_day(day: date, precision: str, time: str = "08:00:00", offset: str = "Z") -> str:
    if precision == "year":
        return f"{day.year:04d}"
    if precision == "month":
        return f"{day.year:04d}-{day.month:02d}"
    if precision == "day":
        return day.isoformat()
    return f"{day.isoformat()}T{time}{offset}"


@st.composite
def valid_fhir_date(draw: st.DrawFn) -> tuple[str, date, date]:
    """A valid FHIR date/dateTime/instant, and the first and last calendar day it stands for."""
    day = draw(st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)))
    precision = draw(st.sampled_from(["year", "month", "day", "time"]))
    second = draw(st.sampled_from(["00", "59", "60"]))  # 60: a leap second
    hour = draw(st.integers(0, 23))
    time = f"{hour:02d}:{draw(st.integers(0, 59)):02d}:{second}{draw(fractions)}"
    offset = draw(offsets.filter(lambda o: o not in ("", "+15:00", "+05:60", "+99:99")))
    text = format_day(day, precision, time, offset)
    if precision == "year":
        return text, date(day.year, 1, 1), date(day.year, 12, 31)
    if precision == "month":
        last = calendar.monthrange(day.year, day.month)[1]
        return text, day.replace(day=1), day.replace(day=last)
    return text, day, day


@st.composite
def date_near(draw: st.DrawFn, as_of: date, before: int = 40, after: int = 3) -> str:
    """A date of any precision near `as_of` (so it falls in, out and across lab windows)."""
    delta = draw(st.integers(min_value=-before, max_value=after))
    day = as_of + timedelta(days=delta)
    precision = draw(st.sampled_from(["day", "time", "time", "time", "month", "year"]))
    time = f"{draw(st.integers(0, 23)):02d}:{draw(st.sampled_from(['00', '30']))}:00"
    offset = draw(st.sampled_from(["Z", "+08:00", "-05:00", "+14:00", "-14:00", ""]))
    return format_day(day, precision, time, offset)


@lru_cache(maxsize=512)
def any_date(as_of: date | None = None) -> st.SearchStrategy[Any]:
    """A date field: near as-of, of any form, at the edges of the calendar, or junk."""
    edges = st.sampled_from(
        [
            "0001-01-01",
            "9999-12-31",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "9999-12-31T23:59:60Z",
            "2021-02-30",
            "2016-12-31T23:59:60Z",
            "0000-01-01",
            "9999",
            "0001",
        ]
    )
    if as_of is None:
        return st.one_of(fhir_date_text(), edges, json_tree)
    return weighted((6, date_near(as_of)), (1, fhir_date_text()), (1, edges), (1, json_tree))


# -- codes, units, quantities ----------------------------------------------------------------------
@cache
def unit_texts() -> tuple[str, ...]:
    """Every spelling in the synonym table, every target, and the analytes' canonical units."""
    data = yaml.safe_load((ROOT / "mappings" / "units.yaml").read_text(encoding="utf-8"))
    synonyms: dict[str, str] = data["synonyms"]
    canonical = {a.unit for a in trial(HCC_TRIAL).analytes.values()}
    canonical |= {a.unit for a in trial(T2DM_TRIAL).analytes.values()}
    return tuple(sorted({*synonyms, *synonyms.values(), *canonical}))


@lru_cache(maxsize=512)
def units() -> st.SearchStrategy[Any]:
    return weighted((2, st.sampled_from(unit_texts())), (1, odd_text))


@cache
def lab_codings(name: str) -> tuple[Coding, ...]:
    """The codes of every analyte a trial reads, panels included, in every system spelling."""
    t = trial(name)
    out: set[Coding] = set()
    for analyte in t.analytes.values():
        out.update(analyte.codes)
        out.update(analyte.panel_codes)
    return tuple(sorted(out, key=lambda c: (c.system, c.code)))


@cache
def answer_codings() -> tuple[Coding, ...]:
    """Coded answers the criteria read: ECOG, hCG presence, NYHA classes, and a stranger."""
    loinc = [f"LA962{n}-{c}" for n, c in ((2, 7), (3, 5), (4, 3), (5, 0), (6, 8), (7, 6))]
    snomed = ["10828004", "260385009", "420300004", "421704003", "420913000", "422293003"]
    return (
        *(Coding(LOINC, c) for c in (*loinc, "LA6576-8", "LA6577-6", "LA0000-0")),
        *(Coding(SNOMED, c) for c in snomed),
        Coding("urn:oid:2.16.840.1.113883.6.96", "420913000"),
    )


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON tree (the root excluded) where a value could be replaced."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            out += _paths(value, (*prefix, index))
    return out


@st.composite
def corrupted(draw: st.DrawFn, strategy: st.SearchStrategy[Json], most: int = 2) -> Json:
    """A resource from `strategy` with up to `most` of its values, at any depth, replaced by any
    JSON-ish tree (a field of the wrong type or shape). `resourceType` and `id` stay."""
    tree = copy.deepcopy(draw(strategy))
    # half of them intact, so that most reach the criteria; the rest with 1..most changes
    for _ in range(draw(st.sampled_from([0] * most + list(range(1, most + 1))))):
        paths = [p for p in _paths(tree) if p[0] not in ("resourceType", "id")]
        if not paths:
            break
        *parents, last = draw(st.sampled_from(paths))
        node = tree
        for step in parents:
            node = node[step]
        node[last] = draw(json_tree)
    return tree


@lru_cache(maxsize=512)
def coding_json(codes: tuple[Coding, ...]) -> st.SearchStrategy[Json]:
    known = st.sampled_from(codes).map(lambda c: {"system": c.system, "code": c.code})
    unknown = st.fixed_dictionaries(
        {"system": st.sampled_from([LOINC, UCUM, "urn:local", ""]), "code": odd_text}
    )
    return weighted((6, known), (1, unknown))


@lru_cache(maxsize=512)
def concept(codes: tuple[Coding, ...]) -> st.SearchStrategy[Json]:
    return st.fixed_dictionaries(
        {"coding": st.lists(coding_json(codes), min_size=1, max_size=2)},
        optional={"text": odd_text},
    )


@lru_cache(maxsize=512)
def unit_fields(canonical: str | None = None) -> st.SearchStrategy[Json]:
    """A quantity's unit: text and UCUM code alike, text only, code only, none; from the synonym
    table, the analyte's own canonical unit, or odd text."""
    text = weighted(
        (4 if canonical is not None else 0, st.just(canonical)),
        (3, st.sampled_from(unit_texts())),
        (1, odd_text),
    )
    systems = st.sampled_from([UCUM, UCUM, UCUM, "urn:oid:2.16.840.1.113883.6.8", "", "urn:local"])
    return weighted(
        (4, st.builds(lambda u, s: {"unit": u, "system": s, "code": u}, text, systems)),
        (2, text.map(lambda u: {"unit": u})),
        (1, st.builds(lambda u, s: {"system": s, "code": u}, text, systems)),
        (1, st.builds(lambda u, c: {"unit": u, "system": UCUM, "code": c}, text, text)),
        (1, st.just({})),
    )


COMPARATOR_TEXT = ["<", "<=", ">", ">=", "ad", "\u2264"]


@lru_cache(maxsize=512)
def quantity(
    value: st.SearchStrategy[Any] | None = None, canonical: str | None = None
) -> st.SearchStrategy[Json]:
    """A Quantity: a number (mostly lab-sized, else any), a unit, sometimes a comparator."""
    number = value if value is not None else weighted((2, lab_number), (1, any_number))
    comparator = weighted(
        (3, st.just({})), (1, st.sampled_from(COMPARATOR_TEXT).map(lambda c: {"comparator": c}))
    )
    return st.builds(
        lambda v, u, c: {"value": v, **u, **c}, number, unit_fields(canonical), comparator
    )


@lru_cache(maxsize=512)
def reference_range(canonical: str | None = None) -> st.SearchStrategy[Json]:
    return st.fixed_dictionaries(
        {},
        optional={
            "low": quantity(canonical=canonical),
            "high": quantity(canonical=canonical),
            "appliesTo": st.lists(concept(answer_codings()), max_size=2),
            "age": st.fixed_dictionaries(
                {},
                optional={"low": quantity(any_number), "high": quantity(any_number)},
            ),
        },
    )


def plausible_number(analyte: Analyte) -> st.SearchStrategy[float]:
    """A number inside the analyte's plausibility bounds (trial-spec v2), in its own unit."""
    low = analyte.plausible_low if analyte.plausible_low is not None else 0.0
    high = analyte.plausible_high if analyte.plausible_high is not None else 10.0
    return st.one_of(
        st.floats(min_value=low, max_value=high), st.sampled_from([low, high, (low + high) / 2])
    )


@lru_cache(maxsize=512)
def value_fields(trial_name: str, analyte_id: str) -> st.SearchStrategy[Json]:
    """One value[x] (a quantity most often), or a dataAbsentReason, or none; reference ranges.

    Numbers are mostly plausible ones, so that values reach the thresholds; else lab-sized or
    any number at all."""
    analyte = trial(trial_name).analytes[analyte_id]
    canonical = analyte.unit
    number = weighted((6, plausible_number(analyte)), (1, lab_number), (1, any_number))
    integer = weighted((4, st.integers(-1, 6)), (1, st.sampled_from(HUGE_INTS)))
    value = weighted(
        (10, quantity(number, canonical).map(lambda q: {"valueQuantity": q})),
        (2, concept(answer_codings()).map(lambda c: {"valueCodeableConcept": c})),
        (2, integer.map(lambda n: {"valueInteger": n})),
        (1, st.just({"dataAbsentReason": {"coding": [{"code": "not-performed"}]}})),
        (1, st.just({})),
    )
    ranges = weighted(
        (2, st.just({})),
        (
            1,
            st.lists(reference_range(canonical), min_size=1, max_size=2).map(
                lambda rr: {"referenceRange": rr}
            ),
        ),
    )
    return st.builds(lambda v, r: {**v, **r}, value, ranges)


STATUSES = ["final", "amended", "corrected", "preliminary", "registered", "cancelled", "unknown"]


@lru_cache(maxsize=512)
def measured(trial_name: str, analyte_id: str | None = None) -> st.SearchStrategy[Json]:
    """code + value of one measurement of an analyte the trial reads (`analyte_id`, else any),
    in a unit that may or may not be its own."""
    t = trial(trial_name)
    if analyte_id is None:
        names = sorted(t.needed_analytes())
        return st.sampled_from(names).flatmap(lambda name: measured(trial_name, name))
    analyte = t.analytes[analyte_id]
    codes = _ordered(analyte.codes) or lab_codings(trial_name)
    return st.builds(
        lambda code, fields: {"code": code, **fields},
        concept(codes),
        value_fields(trial_name, analyte_id),
    )


@st.composite
def _observation(
    draw: st.DrawFn, trial_name: str, as_of: date | None, analyte_id: str | None
) -> Json:
    status = draw(weighted((6, st.just("final")), (6, st.sampled_from(STATUSES)), (1, odd_text)))
    res: Json = {
        "resourceType": "Observation",
        "id": draw(st.text("abcdef0123456789", min_size=1, max_size=6)),
        "status": status,
    }
    t = trial(trial_name)
    if analyte_id is not None:
        panels = sorted(t.analytes[analyte_id].panel_codes, key=lambda c: (c.system, c.code))
    else:
        panels = sorted(
            {c for a in t.analytes.values() for c in a.panel_codes},
            key=lambda c: (c.system, c.code),
        )
    if panels and draw(st.integers(0, 2)) == 0:
        # a panel (blood pressure, tumour size): components carry the values
        res["code"] = draw(concept(tuple(panels)))
        parts = weighted((3, measured(trial_name, analyte_id)), (1, measured(trial_name)))
        res["component"] = draw(st.lists(parts, min_size=1, max_size=3))
    else:
        res.update(draw(measured(trial_name, analyte_id)))
    when = draw(
        st.sampled_from(["effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"])
    )
    res[when] = (
        {"start": draw(any_date(as_of))} if when == "effectivePeriod" else draw(any_date(as_of))
    )
    if draw(st.booleans()):
        res["issued"] = draw(any_date(as_of))
    if draw(st.booleans()):
        res["meta"] = {"versionId": draw(st.sampled_from(["1", "2"]))}
    return res


@lru_cache(maxsize=512)
def observation(
    trial_name: str = HCC_TRIAL, as_of: date | None = None, analyte_id: str | None = None
) -> st.SearchStrategy[Json]:
    """An Observation the trial reads (or a panel of them), of any value, unit, date and status,
    with up to two of its values, at any depth, replaced by junk."""
    return corrupted(_observation(trial_name, as_of, analyte_id))


@st.composite
def lab_history(draw: st.DrawFn, trial_name: str, as_of: date) -> list[Json]:
    """A patient's Observations: one to three of each of a few analytes the trial reads (so that
    latest-value rules, corrections and same-day pairs come up), dated around as-of."""
    names = draw(
        st.lists(
            st.sampled_from(sorted(trial(trial_name).needed_analytes())),
            min_size=2,
            max_size=10,
            unique=True,
        )
    )
    out: list[Json] = []
    for name in names:
        out += draw(st.lists(observation(trial_name, as_of, name), min_size=1, max_size=3))
    if draw(st.booleans()):
        # one draw of blood: same-day rules (PT / ratio, WBC x neutrophil %) apply
        day = draw(date_near(as_of))
        for res in out:
            res["effectiveDateTime"] = day
    return out


# -- patients, conditions, procedures --------------------------------------------------------------
def _codings_of(sets: Iterable[CodeSet]) -> set[Coding]:
    """A few codes of each set: exact codes, ICD prefixes, and ICD codes that extend them."""
    out: set[Coding] = set()
    for cs in sets:
        for pattern in (*cs.include[:40], *cs.exclude[:10]):
            text = pattern.text.split("-", 1)[0].rstrip("*")
            out.add(Coding(pattern.system, text))
            if pattern.kind == "icd":
                out.add(Coding(pattern.system, f"{text}.000x" if "." not in text else text + "1"))
    return out


def _ordered(codes: Iterable[Coding]) -> tuple[Coding, ...]:
    return tuple(sorted(codes, key=lambda c: (c.system, c.code)))


@cache
def condition_codings(name: str) -> tuple[Coding, ...]:
    """Codes of every code set of the trial, its cohort's ten times over (so that most patients
    are in the cohort and the other criteria have something to decide)."""
    t = trial(name)
    return _ordered(_codings_of(t.cohort)) * 10 + _ordered(_codings_of(t.codesets.values()))


@cache
def procedure_codings(name: str) -> tuple[Coding, ...]:
    """Codes of the code sets the trial's criteria read Procedures from, and a few others."""
    t = trial(name)
    names = {getattr(c, "procedure_codeset", None) for c in t.criteria}
    sets = [t.codesets[n] for n in sorted(n for n in names if n)]
    return _ordered(_codings_of(sets)) * 3 + _ordered(_codings_of(t.codesets.values()))


CLINICAL = ("active", "recurrence", "relapse", "inactive", "remission", "resolved")
VERIFICATION = ("confirmed", "provisional", "refuted", "entered-in-error")


def status_concept(codes: tuple[str, ...]) -> st.SearchStrategy[Json]:
    return st.sampled_from(codes).map(lambda code: {"coding": [{"code": code}]})


def one_of_fields(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Json]:
    """One of the choice-type fields (onset[x], abatement[x], ...), or none of them."""
    return st.one_of(
        st.just({}), *(strategy.map(lambda v, k=key: {k: v}) for key, strategy in fields.items())
    )


def _merge(*parts: Json) -> Json:
    out: Json = {}
    for part in parts:
        out.update(part)
    return out


@lru_cache(maxsize=512)
def condition(trial_name: str = HCC_TRIAL, as_of: date | None = None) -> st.SearchStrategy[Json]:
    """A Condition of a code set the trial reads (or not), any status, onset and abatement."""
    codes = condition_codings(trial_name)
    clean = st.builds(
        _merge,
        st.fixed_dictionaries(
            {
                "resourceType": st.just("Condition"),
                "id": st.text("0123456789", min_size=1, max_size=4),
                "code": concept(codes),
            },
            optional={
                "clinicalStatus": status_concept(CLINICAL),
                "verificationStatus": status_concept(VERIFICATION),
                "recordedDate": any_date(as_of),
                "stage": st.lists(
                    st.fixed_dictionaries({"summary": concept(answer_codings())}), max_size=2
                ),
            },
        ),
        one_of_fields(
            {
                "onsetDateTime": any_date(as_of),
                "onsetPeriod": st.fixed_dictionaries({"start": any_date(as_of)}),
            }
        ),
        one_of_fields(
            {
                "abatementDateTime": any_date(as_of),
                "abatementPeriod": st.fixed_dictionaries({"end": any_date(as_of)}),
                "abatementString": odd_text,
                "abatementBoolean": st.booleans(),
                "abatementAge": quantity(any_number),
                "abatementRange": st.fixed_dictionaries(
                    {}, optional={"low": quantity(any_number), "high": quantity(any_number)}
                ),
            }
        ),
    )
    return corrupted(clean)


@lru_cache(maxsize=512)
def procedure(trial_name: str = HCC_TRIAL, as_of: date | None = None) -> st.SearchStrategy[Json]:
    codes = procedure_codings(trial_name)
    clean = st.builds(
        _merge,
        st.fixed_dictionaries(
            {
                "resourceType": st.just("Procedure"),
                "id": st.text("0123456789", min_size=1, max_size=4),
                "code": concept(codes),
                "status": st.sampled_from(
                    ["completed", "completed", "in-progress", "not-done", "preparation"]
                ),
            }
        ),
        one_of_fields(
            {
                "performedDateTime": any_date(as_of),
                "performedPeriod": st.fixed_dictionaries({"start": any_date(as_of)}),
            }
        ),
    )
    return corrupted(clean)


BIRTH_SEX = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"
CLINICAL_SEX = "http://hl7.org/fhir/StructureDefinition/patient-sexParameterForClinicalUse"


@lru_cache(maxsize=512)
def birth_date(as_of: date | None) -> st.SearchStrategy[Any]:
    """birthDate of every precision, around the trials' age limits when as-of is known."""
    if as_of is None:
        return any_date()
    ages = st.sampled_from([0, 17, 18, 19, 39, 40, 55, 56, 74, 75, 76, 120])
    near = st.builds(
        lambda age, days, precision: format_day(
            as_of - timedelta(days=int(age * 365.25) + days), precision
        ),
        ages,
        st.integers(-400, 400),
        st.sampled_from(["year", "month", "day", "day"]),
    )
    return weighted((6, near), (1, any_date()))


@lru_cache(maxsize=512)
def patient(as_of: date | None = None) -> st.SearchStrategy[Json]:
    """A Patient: birthDate of any precision, sex by gender or extensions, deceased or not."""
    extension = st.one_of(
        st.fixed_dictionaries(
            {"url": st.just(BIRTH_SEX), "valueCode": st.sampled_from(["M", "F", "UNK"])}
        ),
        st.fixed_dictionaries(
            {"url": st.just(CLINICAL_SEX), "valueCodeableConcept": concept(answer_codings())}
        ),
    )
    clean = st.builds(
        _merge,
        st.fixed_dictionaries(
            {
                "resourceType": st.just("Patient"),
                "id": st.just("p1"),
                "birthDate": birth_date(as_of),
            },
            optional={
                "gender": st.sampled_from(["male", "female", "other", "unknown"]),
                "extension": st.lists(extension, max_size=2),
                "identifier": st.lists(
                    st.fixed_dictionaries({"system": odd_text, "value": odd_text}), max_size=2
                ),
                "meta": st.fixed_dictionaries({"versionId": odd_text}),
            },
        ),
        one_of_fields({"deceasedBoolean": st.booleans(), "deceasedDateTime": any_date(as_of)}),
    )
    return corrupted(clean)


def as_of_dates() -> st.SearchStrategy[date]:
    """as-of across the range the CLI accepts, its edges included."""
    return st.one_of(
        st.dates(min_value=AS_OF_MIN, max_value=AS_OF_MAX),
        st.sampled_from([AS_OF_MIN, AS_OF_MAX, date(2026, 6, 15), date(2000, 2, 29)]),
    )
