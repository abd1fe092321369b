"""Loading trial definitions and the mappings they use, validated once, at start.

A mappings folder holds `systems.yaml`, `codesets.yaml`, `analytes.yaml`, `local-codes.yaml`,
`units.yaml` and `trials/<id>.yaml`. A trial is named by id (looked up in `trials/`) or by the
path of its file; a trial file may add its own `codesets` and `analytes`, checked like the shared
ones. Every mistake is a MappingError naming file, line and field.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adapter import mapfiles
from adapter.analytes import Analyte
from adapter.codes import CodePattern, CodeSet
from adapter.criteria.kinds import Criterion, criterion_models
from adapter.errors import MappingError
from adapter.facts.model import Coding
from adapter.facts.units import Units
from adapter.valuesets import ValueSetModel, load_valueset, valueset_path

#: the key of a code set's include/exclude that names value-set expansion files
VALUESETS = "valuesets"


def default_mappings_dir() -> Path:
    """`adapter/mappings` in an installed wheel, else the checkout's top-level `mappings/`."""
    packaged = Path(str(resources.files("adapter"))) / "mappings"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "mappings"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SystemModel(_Strict):
    urls: list[str] = Field(min_length=1)
    match: Literal["exact", "icd"]


class SystemsFile(_Strict):
    systems: dict[str, SystemModel]
    #: a system's URL -> its other spellings (the OID forms of the standard systems, v2)
    equivalents: dict[str, list[str]] = {}


class CodeSetModel(_Strict):
    description: str = ""
    include: dict[str, list[str]]
    exclude: dict[str, list[str]] = {}
    search_variants: dict[str, list[str]] = {}


class CodeSetsFile(_Strict):
    codesets: dict[str, CodeSetModel]


class CodedAs(_Strict):
    system: str
    code: str
    molar_mass: float = Field(gt=0)


class Bounds(_Strict):
    low: float = Field(ge=0, allow_inf_nan=False)
    high: float = Field(gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.low > self.high:
            raise ValueError("low is above high")
        return self


class AnalyteModel(_Strict):
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


class AnalytesFile(_Strict):
    analytes: dict[str, AnalyteModel]


class LocalCode(_Strict):
    system: str
    code: str
    analyte: str


class LocalCodesFile(_Strict):
    local_codes: list[LocalCode] = []


class StudyIdentifier(_Strict):
    system: str
    value: str


class Cohort(_Strict):
    active_condition_in: list[str] = Field(min_length=1)


class ManualCriterion(_Strict):
    id: str
    description: str


class TrialFile(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]*$")
    title: str
    study: StudyIdentifier
    cohort: Cohort
    criteria: list[Annotated[Any, Field()]]
    manual: list[ManualCriterion] = []
    codesets: dict[str, CodeSetModel] = {}
    analytes: dict[str, AnalyteModel] = {}

    @field_validator("criteria")
    @classmethod
    def _non_empty(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("a trial needs at least one criterion")
        return value


@dataclass(frozen=True)
class Trial:
    """A loaded, validated trial: criteria in order, the code sets and analytes they use."""

    id: str
    title: str
    study_system: str
    study_value: str
    cohort: tuple[CodeSet, ...]
    criteria: tuple[Criterion, ...]
    manual: tuple[ManualCriterion, ...]
    codesets: dict[str, CodeSet]
    analytes: dict[str, Analyte]
    units: Units
    source_file: Path
    content_hash: str
    #: other spellings of a code system -> the one the mappings use (facts are read in it)
    system_aliases: dict[str, str]

    def needed_analytes(self) -> frozenset[str]:
        needed: set[str] = set()
        for c in self.criteria:
            needed.update(c.analytes())
        return frozenset(needed)

    def reads(self) -> frozenset[str]:
        """Resource types the criteria read besides Patient."""
        return frozenset(t for c in self.criteria for t in c.reads())

    def observation_codes(self) -> frozenset[Coding]:
        """The exact Observation codes the criteria need (for the server query)."""
        codes: set[Coding] = set()
        for name in self.needed_analytes():
            analyte = self.analytes[name]
            codes.update(analyte.codes)
            codes.update(analyte.panel_codes)
        return frozenset(codes)

    def cohort_tokens(self) -> frozenset[Coding]:
        tokens: set[Coding] = set()
        for cs in self.cohort:
            tokens.update(cs.search_tokens())
        return frozenset(tokens)


def load_trial(name: str, mappings_dir: Path | None = None) -> Trial:
    """Load trial `name` (an id in `trials/`, or a file path) and every mapping it uses."""
    mdir = mappings_dir or default_mappings_dir()
    candidate = Path(name)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        path = candidate
        if not path.is_file():
            raise MappingError(str(path), "trial file not found")
    else:
        path = mdir / "trials" / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (mdir / "trials").glob("*.yaml"))
            raise MappingError(
                str(path), f"no trial '{name}' (known: {', '.join(known) or 'none'})"
            )
    systems_file = mapfiles.load(SystemsFile, mdir / "systems.yaml")
    systems = systems_file.systems
    aliases = system_aliases(systems_file, mdir / "systems.yaml")
    equivalents = systems_file.equivalents
    valuesets: dict[str, ValueSetModel] = {}
    sets_path = mdir / "codesets.yaml"
    sets_data, sets_lines = mapfiles.read_yaml(sets_path)
    shared_sets = mapfiles.validate(CodeSetsFile, sets_data, sets_path, sets_lines)
    shared_analytes = mapfiles.load(AnalytesFile, mdir / "analytes.yaml")
    local_path = mdir / "local-codes.yaml"
    local = mapfiles.load(LocalCodesFile, local_path) if local_path.is_file() else LocalCodesFile()
    units = Units.load(mdir / "units.yaml")

    data, lines = mapfiles.read_yaml(path)
    trial_file = mapfiles.validate(TrialFile, data, path, lines)

    line_index = {path: lines, sets_path: sets_lines}

    def fail(loc: mapfiles.Loc, reason: str, file: Path = path) -> MappingError:
        known = line_index.get(file)
        line = mapfiles.line_of(known, loc) if known is not None else None
        return MappingError(str(file), reason, line=line, field=".".join(map(str, loc)))

    def resolve_system(alias: str, loc: mapfiles.Loc, file: Path) -> SystemModel:
        if alias not in systems:
            raise fail(loc, f"unknown code system '{alias}' (see systems.yaml)", file)
        return systems[alias]

    def urls_of(system: SystemModel) -> list[str]:
        """A system's URLs and their other spellings: a server search lists every form."""
        return [form for url in system.urls for form in (url, *equivalents.get(url, ()))]

    def expansion(name: str, loc: mapfiles.Loc, file: Path) -> ValueSetModel:
        if name not in valuesets:
            vs_path = valueset_path(mdir, name)
            if not vs_path.is_file():
                raise fail(loc, f"no value set '{name}' ({vs_path})", file)
            valuesets[name] = load_valueset(vs_path)
        return valuesets[name]

    def build_codeset(name: str, model: CodeSetModel, file: Path, base: mapfiles.Loc) -> CodeSet:
        def patterns(part: dict[str, list[str]], key: str) -> tuple[CodePattern, ...]:
            out: list[CodePattern] = []
            for alias, codes in part.items():
                if alias == VALUESETS:
                    for i, vs_name in enumerate(codes):
                        vs = expansion(str(vs_name), (*base, key, alias, i), file)
                        system = resolve_system(vs.system, (*base, key, alias, i), file)
                        for url in urls_of(system):
                            out.extend(CodePattern(url, code, system.match) for code in vs.codes)
                    continue
                system = resolve_system(alias, (*base, key, alias), file)
                for url in urls_of(system):
                    out.extend(CodePattern(url, str(code), system.match) for code in codes)
            return tuple(out)

        variants: list[Coding] = []
        for alias, codes in model.search_variants.items():
            system = resolve_system(alias, (*base, "search_variants", alias), file)
            variants.extend(Coding(url, str(c)) for url in urls_of(system) for c in codes)
        return CodeSet(
            name,
            patterns(model.include, "include"),
            patterns(model.exclude, "exclude"),
            tuple(variants),
        )

    codesets: dict[str, CodeSet] = {}
    for cs_name, cs_model in shared_sets.codesets.items():
        codesets[cs_name] = build_codeset(cs_name, cs_model, sets_path, ("codesets", cs_name))
    for cs_name, cs_model in trial_file.codesets.items():
        codesets[cs_name] = build_codeset(cs_name, cs_model, path, ("codesets", cs_name))

    analytes: dict[str, Analyte] = {}
    all_analytes = [
        (n, m, mdir / "analytes.yaml", ("analytes", n)) for n, m in shared_analytes.analytes.items()
    ]
    all_analytes += [(n, m, path, ("analytes", n)) for n, m in trial_file.analytes.items()]
    for a_name, a_model, file, base in all_analytes:
        if not units.is_valid(a_model.unit):
            raise fail((*base, "unit"), f"'{a_model.unit}' is not a UCUM unit", file)
        if a_model.unit_if_missing is not None and not units.compatible(
            a_model.unit_if_missing, a_model.unit, molar_mass=a_model.molar_mass
        ):
            raise fail(
                (*base, "unit_if_missing"),
                f"'{a_model.unit_if_missing}' does not convert to '{a_model.unit}'",
                file,
            )
        value_codes: set[Coding] = set()
        for alias, code_list in a_model.value_codes.items():
            system = resolve_system(alias, (*base, "value_codes", alias), file)
            value_codes.update(Coding(url, str(c)) for url in urls_of(system) for c in code_list)
        panel_codes: set[Coding] = set()
        for alias, code_list in a_model.panels.items():
            system = resolve_system(alias, (*base, "panels", alias), file)
            panel_codes.update(Coding(url, str(c)) for url in urls_of(system) for c in code_list)
        codes: dict[Coding, float | None] = {}
        for alias, code_list in a_model.codes.items():
            system = resolve_system(alias, (*base, "codes", alias), file)
            for url in urls_of(system):
                codes.update({Coding(url, str(c)): None for c in code_list})
        for extra in a_model.coded_as:
            system = resolve_system(extra.system, (*base, "coded_as"), file)
            codes.update({Coding(url, extra.code): extra.molar_mass for url in urls_of(system)})
        analytes[a_name] = Analyte(
            a_name,
            a_model.name,
            a_model.unit,
            a_model.molar_mass,
            a_model.default_uln,
            a_model.iu_as_u,
            codes,
            a_model.unit_if_missing,
            frozenset(value_codes),
            frozenset(panel_codes),
            a_model.plausible.low if a_model.plausible else None,
            a_model.plausible.high if a_model.plausible else None,
        )
    other_trials: set[str] | None = None
    for i, lc in enumerate(local.local_codes):
        if lc.analyte not in analytes:
            # local-codes.yaml is shared by every trial: a code for an analyte that only another
            # trial defines is that trial's business; one that no file defines is a mistake.
            if other_trials is None:
                other_trials = _analytes_of_other_trials(mdir)
            if lc.analyte in other_trials:
                continue
            raise MappingError(
                str(local_path), f"unknown analyte '{lc.analyte}'", field=f"local_codes.{i}.analyte"
            )
        system = resolve_system(lc.system, ("local_codes", i, "system"), local_path)
        for url in urls_of(system):
            analytes[lc.analyte].codes[Coding(url, lc.code)] = None

    cohort: list[CodeSet] = []
    for i, cs_name in enumerate(trial_file.cohort.active_condition_in):
        if cs_name not in codesets:
            raise fail(("cohort", "active_condition_in", i), f"unknown code set '{cs_name}'")
        cohort.append(codesets[cs_name])

    models = criterion_models()
    criteria: list[Criterion] = []
    seen: set[str] = set()
    for i, raw in enumerate(trial_file.criteria):
        loc: mapfiles.Loc = ("criteria", i)
        if not isinstance(raw, dict) or "kind" not in raw or "id" not in raw:
            raise fail(loc, "a criterion needs an `id` and a `kind`")
        kind = raw["kind"]
        if kind not in models:
            raise fail(
                (*loc, "kind"),
                f"unknown criterion kind '{kind}' (known: {', '.join(sorted(models))})",
            )
        try:
            criterion = mapfiles.validate(models[kind], raw, path, _sub(lines, loc))
        except MappingError as exc:
            field = ".".join(map(str, loc)) + (f".{exc.field}" if exc.field else "")
            raise MappingError(str(path), exc.reason, line=exc.line, field=field) from None
        if criterion.id in seen:
            raise fail((*loc, "id"), f"criterion id '{criterion.id}' is used twice")
        seen.add(criterion.id)
        problem = criterion.check(codesets, analytes, units)
        if problem is not None:
            field, reason = problem
            raise fail((*loc, field), reason)
        criteria.append(criterion)
    for j, manual in enumerate(trial_file.manual):
        if manual.id in seen:
            raise fail(("manual", j, "id"), f"criterion id '{manual.id}' is used twice")
        seen.add(manual.id)

    return Trial(
        id=trial_file.id,
        title=" ".join(trial_file.title.split()),
        study_system=trial_file.study.system,
        study_value=trial_file.study.value,
        cohort=tuple(cohort),
        criteria=tuple(criteria),
        manual=tuple(trial_file.manual),
        codesets=codesets,
        analytes=analytes,
        units=units,
        source_file=path,
        content_hash=hashlib.sha256(path.read_bytes()).hexdigest(),
        system_aliases=aliases,
    )


def system_aliases(systems: SystemsFile, path: Path) -> dict[str, str]:
    """Every other spelling of a system -> its URL; one spelling may name one system only."""
    out: dict[str, str] = {}
    for url, others in systems.equivalents.items():
        for other in others:
            if other in out and out[other] != url:
                raise MappingError(
                    str(path),
                    f"'{other}' is given for both {out[other]} and {url}",
                    field=f"equivalents.{url}",
                )
            out[other] = url
    return out


def _analytes_of_other_trials(mdir: Path) -> set[str]:
    """Analyte names that trial files in `mdir/trials` define for themselves."""
    names: set[str] = set()
    for path in sorted((mdir / "trials").glob("*.yaml")):
        data, _ = mapfiles.read_yaml(path)
        if isinstance(data, dict) and isinstance(data.get("analytes"), dict):
            names.update(str(k) for k in data["analytes"])
    return names


def _sub(lines: dict[mapfiles.Loc, int], prefix: mapfiles.Loc) -> dict[mapfiles.Loc, int]:
    """The line index below `prefix`, re-rooted, so a criterion's errors point into the file."""
    n = len(prefix)
    return {loc[n:]: line for loc, line in lines.items() if loc[:n] == prefix}
