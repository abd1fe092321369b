"""Loading trial definitions and the mappings they use, validated once, at start.

A mappings folder holds `systems.yaml`, `codesets.yaml`, `analytes.yaml`, `local-codes.yaml`,
`units.yaml` and `trials/<id>.yaml`; a site folder laid out alike is merged over it
(`adapter.site_mappings`). A trial is named by id (looked up in `trials/`) or by the path of its
file; a trial file may add its own `codesets` and `analytes`, checked like the shared ones. Every
mistake is a MappingError naming file, line and field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator

from adapter import mapfiles
from adapter.analytes import Analyte, UlnBand
from adapter.codes import CodePattern, CodeSet
from adapter.criteria.kinds import Criterion, criterion_models
from adapter.errors import MappingError
from adapter.facts.model import Coding
from adapter.facts.units import Units
from adapter.mapschema import (
    AnalyteModel,
    AnalytePatch,
    CodeSetModel,
    CodeSetPatch,
    Strict,
    SystemModel,
    SystemsFile,
    UlnBandModel,
)
from adapter.site_mappings import (
    FoldedAnalyte,
    Layer,
    Mappings,
    default_mappings_dir,
    load_mappings,
)

if TYPE_CHECKING:
    from adapter.mapcache import MappingCache

__all__ = ["SystemsFile", "Trial", "default_mappings_dir", "load_trial"]

#: the key of a code set's include/exclude that names value-set expansion files
VALUESETS = "valuesets"


class StudyIdentifier(Strict):
    system: str
    value: str


class Cohort(Strict):
    active_condition_in: list[str] = Field(min_length=1)


class ManualCriterion(Strict):
    id: str
    description: str


class TrialFile(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]*$")
    title: str
    study: StudyIdentifier
    cohort: Cohort
    criteria: list[Annotated[Any, Field()]]
    manual: list[ManualCriterion] = Field(default_factory=list)
    codesets: dict[str, CodeSetModel] = Field(default_factory=dict)
    analytes: dict[str, AnalyteModel] = Field(default_factory=dict)

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
    #: the site mapping files read (their content is part of `content_hash`)
    site_files: tuple[Path, ...] = ()

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

    def observation_line_codes(self) -> frozenset[str]:
        """Every code string an Observation of a needed analyte holds (its code, a component's,
        a panel's or an answer's): an Observation holding none gives no LabValue (issue 15: a
        folder source skips such lines unparsed)."""
        codes: set[str] = set()
        for name in self.needed_analytes():
            analyte = self.analytes[name]
            codes.update(c.code for c in analyte.codes)
            codes.update(c.code for c in analyte.panel_codes)
            codes.update(c.code for c in analyte.value_codes)
        return frozenset(codes)

    def observation_categories(self) -> frozenset[str]:
        """The Observation categories the needed analytes name (per-patient reads, issue 13)."""
        return frozenset(c for n in self.needed_analytes() for c in self.analytes[n].categories)

    def uncategorised_analytes(self) -> frozenset[str]:
        """The needed analytes that name no category: a search by category cannot reach them."""
        return frozenset(n for n in self.needed_analytes() if not self.analytes[n].categories)

    def cohort_tokens(self) -> frozenset[Coding]:
        tokens: set[Coding] = set()
        for cs in self.cohort:
            tokens.update(cs.search_tokens())
        return frozenset(tokens)


def load_trial(
    name: str,
    mappings_dir: Path | None = None,
    site_mappings: Path | None = None,
    *,
    mappings: Mappings | None = None,
    cache: MappingCache | None = None,
) -> Trial:
    """Load trial `name` (an id in `trials/`, or a file path) and every mapping it uses.

    `mappings_dir` replaces the bundled folder; `site_mappings` is merged over it. `mappings`,
    already loaded from those, serves several trials with one read of the folders. `cache`
    (adapter.mapcache) spares the checks that earlier starts made of the same content.
    """
    maps = mappings or load_mappings(mappings_dir, site_mappings, cache=cache)
    candidate = Path(name)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        path = candidate
        if not path.is_file():
            raise MappingError(str(path), "trial file not found")
    else:
        path = maps.trial_path(name)
    systems = maps.systems
    aliases = system_aliases(
        SystemsFile(systems=systems, equivalents=maps.equivalents),
        maps.equivalents_file,
        maps.lines.get(maps.equivalents_file, {}),
    )
    equivalents = maps.equivalents
    units = maps.units()

    data, lines = mapfiles.read_yaml(path)
    trial_file = mapfiles.validate(TrialFile, data, path, lines)
    maps.check_trial_id(path, trial_file.id, lines)
    maps.lines[path] = lines

    def fail(loc: mapfiles.Loc, reason: str, file: Path = path) -> MappingError:
        return maps.fail(file, loc, reason)

    def resolve_system(alias: str, loc: mapfiles.Loc, file: Path) -> SystemModel:
        if alias not in systems:
            raise fail(loc, f"unknown code system '{alias}' (see systems.yaml)", file)
        return systems[alias]

    def urls_of(system: SystemModel) -> list[str]:
        """A system's URLs and their other spellings: a server search lists every form."""
        return [form for url in system.urls for form in (url, *equivalents.get(url, ()))]

    def codings(
        part: dict[str, list[str]], key: str, file: Path, base: mapfiles.Loc
    ) -> list[Coding]:
        out: list[Coding] = []
        for alias, code_list in part.items():
            system = resolve_system(alias, (*base, key, alias), file)
            out.extend(Coding(url, str(c)) for url in urls_of(system) for c in code_list)
        return out

    def build_codeset(
        name: str, layers: Sequence[Layer[CodeSetModel] | Layer[CodeSetModel | CodeSetPatch]]
    ) -> CodeSet:
        """One code set from its layers: each file's codes joined, resolved in that file."""

        def patterns(part: dict[str, list[str]], key: str, layer: Layer[Any]) -> list[CodePattern]:
            out: list[CodePattern] = []
            file, base = layer.file, layer.loc
            for alias, codes in part.items():
                if alias == VALUESETS:
                    for i, vs_name in enumerate(codes):
                        vs = maps.valueset(str(vs_name), (*base, key, alias, i), file)
                        system = resolve_system(vs.system, (*base, key, alias, i), file)
                        for url in urls_of(system):
                            out.extend(CodePattern(url, code, system.match) for code in vs.codes)
                    continue
                system = resolve_system(alias, (*base, key, alias), file)
                for url in urls_of(system):
                    out.extend(CodePattern(url, str(code), system.match) for code in codes)
            return out

        include: list[CodePattern] = []
        exclude: list[CodePattern] = []
        variants: list[Coding] = []
        for layer in layers:
            model = layer.model
            include += patterns(model.include, "include", layer)
            exclude += patterns(model.exclude, "exclude", layer)
            variants += codings(model.search_variants, "search_variants", layer.file, layer.loc)
        return CodeSet(
            name,
            tuple(dict.fromkeys(include)),
            tuple(dict.fromkeys(exclude)),
            tuple(dict.fromkeys(variants)),
        )

    codesets: dict[str, CodeSet] = {}
    for cs_name, cs_layers in maps.codesets.items():
        codesets[cs_name] = build_codeset(cs_name, cs_layers)
    for cs_name, cs_model in trial_file.codesets.items():
        codesets[cs_name] = build_codeset(cs_name, [Layer(cs_model, path, ("codesets", cs_name))])

    analytes: dict[str, Analyte] = {}
    all_analytes = [maps.fold_analyte(n) for n in maps.analytes]
    for n, m in trial_file.analytes.items():
        all_analytes.append(FoldedAnalyte(m, [Layer(m, path, ("analytes", n))], path, path))
    for folded in all_analytes:
        a_model, last = folded.model, folded.layers[-1]
        file, base = last.file, last.loc
        a_name = str(base[-1])
        if not maps.is_ucum(units, a_model.unit):
            raise fail((*base, "unit"), f"'{a_model.unit}' is not a UCUM unit", file)
        if a_model.unit_if_missing is not None and not maps.convertible(
            units, a_model.unit_if_missing, a_model.unit, a_model.molar_mass
        ):
            raise fail(
                (*base, "unit_if_missing"),
                f"'{a_model.unit_if_missing}' does not convert to '{a_model.unit}'",
                file,
            )
        value_codes: set[Coding] = set()
        panel_codes: set[Coding] = set()
        categories: dict[str, None] = {}
        codes: dict[Coding, float | None] = {}
        origins: dict[Coding, str] = {}
        for layer in folded.layers:
            model: AnalyteModel | AnalytePatch = layer.model
            file, base = layer.file, layer.loc
            value_codes.update(codings(model.value_codes, "value_codes", file, base))
            panel_codes.update(codings(model.panels, "panels", file, base))
            categories.update(dict.fromkeys(model.categories))
            found: dict[Coding, float | None] = dict.fromkeys(
                codings(model.codes, "codes", file, base)
            )
            for extra in model.coded_as:
                system = resolve_system(extra.system, (*base, "coded_as"), file)
                found.update({Coding(url, extra.code): extra.molar_mass for url in urls_of(system)})
            codes.update(found)
            origins.update(dict.fromkeys(found, maps.label(file)))
        bands = maps.uln.get(a_name)
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
            code_origins=origins,
            uln_origin=maps.label(folded.uln_file) if folded.uln_file else None,
            bounds_origin=maps.label(folded.bounds_file) if folded.bounds_file else None,
            uln_bands=_bands(bands, maps.label(bands.file)) if bands else (),
            categories=tuple(categories),
        )
    other_trials: set[str] | None = None
    for lc_layer in maps.local_codes:
        lc, local_path, lc_loc = lc_layer.model, lc_layer.file, lc_layer.loc
        if lc.analyte not in analytes:
            # local-codes.yaml is shared by every trial: a code for an analyte that only another
            # trial defines is that trial's business; one that no file defines is a mistake.
            if other_trials is None:
                other_trials = _analytes_of_other_trials(maps)
            if lc.analyte in other_trials:
                continue
            raise fail((*lc_loc, "analyte"), f"unknown analyte '{lc.analyte}'", local_path)
        system = resolve_system(lc.system, (*lc_loc, "system"), local_path)
        for url in urls_of(system):
            analytes[lc.analyte].codes[Coding(url, lc.code)] = None
            analytes[lc.analyte].code_origins[Coding(url, lc.code)] = maps.label(local_path)
    for a_name, bands in maps.uln.items():
        if a_name not in analytes:
            if other_trials is None:
                other_trials = _analytes_of_other_trials(maps)
            if a_name not in other_trials:
                raise fail(bands.loc, f"unknown analyte '{a_name}'", bands.file)

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
        content_hash=maps.content_hash(path),
        system_aliases=aliases,
        site_files=tuple(dict.fromkeys(maps.site_files)),
    )


def system_aliases(
    systems: SystemsFile, path: Path, lines: dict[mapfiles.Loc, int]
) -> dict[str, str]:
    """Every other spelling of a system -> its URL; one spelling may name one system only.

    A conflict is reported at the entry `path` states (a site file may meet a bundled entry).
    """
    out: dict[str, str] = {}
    for url, others in systems.equivalents.items():
        for other in others:
            if other in out and out[other] != url:
                stated = [u for u in (url, out[other]) if ("equivalents", u) in lines]
                blamed = stated[0] if stated else url
                raise MappingError(
                    str(path),
                    f"'{other}' is given for both {out[other]} and {url}",
                    line=mapfiles.line_of(lines, ("equivalents", blamed)),
                    field=f"equivalents.{blamed}",
                )
            out[other] = url
    return out


def _bands(layer: Layer[list[UlnBandModel]], origin: str) -> tuple[UlnBand, ...]:
    return tuple(UlnBand(b.sex, b.age_min, b.age_max, b.uln, origin) for b in layer.model)


def _analytes_of_other_trials(maps: Mappings) -> set[str]:
    """Analyte names that trial files (bundled and site) define for themselves."""
    names: set[str] = set()
    for path in sorted(p for d in maps.trial_dirs() for p in d.glob("*.yaml")):
        data, _ = mapfiles.read_yaml(path)
        if isinstance(data, dict) and isinstance(data.get("analytes"), dict):
            names.update(str(k) for k in data["analytes"])
    return names


def _sub(lines: dict[mapfiles.Loc, int], prefix: mapfiles.Loc) -> dict[mapfiles.Loc, int]:
    """The line index below `prefix`, re-rooted, so a criterion's errors point into the file."""
    n = len(prefix)
    return {loc[n:]: line for loc, line in lines.items() if loc[:n] == prefix}
