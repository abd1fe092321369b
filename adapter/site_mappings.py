"""A site folder merged over the bundled mappings (issue 9): reading both, the merge rules, origins.

A site keeps its own codes in a folder laid out like `mappings/` (`--site-mappings DIR`), so an
upgrade of the bundled folder never loses them. Its files (`systems.yaml`, `codesets.yaml`,
`analytes.yaml`, `local-codes.yaml`, `units.yaml`, `uln.yaml`, then `site-mappings.yaml`, which may
hold any of their keys) are merged over the bundled ones, in that order:

- lists of codes are joined: an analyte's `codes`, `coded_as`, `value_codes`, `panels`; a code
  set's `include`, `exclude`, `search_variants` (and their `valuesets` lists); `local_codes`;
- single values are overridden: an analyte's `name`, `unit`, `molar_mass`, `default_uln`,
  `iu_as_u`, `unit_if_missing`, `plausible` bounds (`low` and `high` each); a unit synonym's
  target; a system's `urls` or `match`; an `equivalents` entry; an analyte's ULN bands;
- `replace: true` on an analyte, a code set or a system swaps the entry whole;
- new entries are added (stated whole, as in the bundled files);
- `valuesets/<name>.yaml` replaces the bundled file of that name, and new names may be used;
- `trials/<id>.yaml` adds the site's trials; an id of a bundled trial is refused.

Every entry keeps the file it came from, so the evidence can name it (`Analyte.code_origins`...).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from adapter import mapfiles
from adapter.errors import MappingError
from adapter.facts.units import Units, load_synonyms
from adapter.mapschema import (
    ANALYTE_SCALARS,
    SITE_KEYS,
    AnalyteModel,
    AnalytePatch,
    AnalytesFile,
    CodeSetModel,
    CodeSetPatch,
    CodeSetsFile,
    LocalCode,
    LocalCodesFile,
    SiteFile,
    SystemModel,
    SystemsFile,
    UlnBandModel,
)
from adapter.valuesets import ValueSetModel, load_valueset, valueset_path

if TYPE_CHECKING:
    from adapter.mapcache import MappingCache

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Loc = mapfiles.Loc


@functools.cache  # asked for every code's origin label: `resources.files` each time cost 40 ms
def default_mappings_dir() -> Path:
    """`adapter/mappings` in an installed wheel, else the checkout's top-level `mappings/`."""
    packaged = Path(str(resources.files("adapter"))) / "mappings"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "mappings"


@dataclass(frozen=True)
class Layer(Generic[T]):
    """One file's statement of an entry: the model, the file, and the entry's place in it."""

    model: T
    file: Path
    loc: Loc


@dataclass(frozen=True)
class FoldedAnalyte:
    """An analyte's single values merged over its layers; the layers still hold its codes."""

    model: AnalyteModel
    layers: list[Layer[AnalyteModel | AnalytePatch]]
    uln_file: Path | None
    bounds_file: Path | None


@dataclass
class Mappings:
    """The bundled (or `--mappings`) folder with a site folder merged over it, entry by entry."""

    folder: Path
    site: Path | None
    systems: dict[str, SystemModel] = field(default_factory=dict)
    equivalents: dict[str, list[str]] = field(default_factory=dict)
    #: the last file that stated equivalents (a conflict is reported there)
    equivalents_file: Path = Path()
    codesets: dict[str, list[Layer[CodeSetModel | CodeSetPatch]]] = field(default_factory=dict)
    analytes: dict[str, list[Layer[AnalyteModel | AnalytePatch]]] = field(default_factory=dict)
    local_codes: list[Layer[LocalCode]] = field(default_factory=list)
    synonyms: dict[str, str] = field(default_factory=dict)
    synonym_files: dict[str, Path] = field(default_factory=dict)
    uln: dict[str, Layer[list[UlnBandModel]]] = field(default_factory=dict)
    lines: dict[Path, dict[Loc, int]] = field(default_factory=dict)
    #: site files read so far (mapping files, then the value sets a trial uses), for the hash
    site_files: list[Path] = field(default_factory=list)
    #: what earlier starts proved (adapter.mapcache); None: everything is checked now
    cache: MappingCache | None = None
    _valuesets: dict[str, ValueSetModel] = field(default_factory=dict)

    # --- where things are ---------------------------------------------------------------------

    def label(self, path: Path) -> str:
        """How the evidence names a mapping file: `mappings/...` for the bundled folder."""
        if self.folder == default_mappings_dir() and path.is_relative_to(self.folder):
            return f"mappings/{path.relative_to(self.folder).as_posix()}"
        return str(path)

    def fail(self, file: Path, loc: Loc, reason: str) -> MappingError:
        known = self.lines.get(file)
        line = mapfiles.line_of(known, loc) if known is not None else None
        return MappingError(str(file), reason, line=line, field=".".join(map(str, loc)))

    def units(self) -> Units:
        origins = {text: self.label(path) for text, path in self.synonym_files.items()}
        return Units(self.synonyms, origins)

    def valueset(self, name: str, loc: Loc, file: Path) -> ValueSetModel:
        """The expansion `name`: the site's file of that name, else the bundled one."""
        if name not in self._valuesets:
            site_path = valueset_path(self.site, name) if self.site is not None else None
            if site_path is not None and site_path.is_file():
                self._valuesets[name] = self._load_valueset(site_path)
                self.site_files.append(site_path)
            else:
                vs_path = valueset_path(self.folder, name)
                if not vs_path.is_file():
                    raise self.fail(file, loc, f"no value set '{name}' ({vs_path})")
                self._valuesets[name] = self._load_valueset(vs_path)
        return self._valuesets[name]

    # --- the checks an earlier start may have made (adapter.mapcache) --------------------------

    def _load_valueset(self, path: Path) -> ValueSetModel:
        if self.cache is None:
            return load_valueset(path)
        return self.cache.valueset(path, load_valueset)

    def _load_synonyms(self, path: Path) -> dict[str, str]:
        if self.cache is None:
            return load_synonyms(path)
        return self.cache.synonyms(path, load_synonyms)

    def is_ucum(self, units: Units, code: str) -> bool:
        """`units.is_valid(code)`, or the answer of an earlier start."""
        if self.cache is None:
            return units.is_valid(code)
        return self.cache.ucum_valid(code, units.is_valid)

    def convertible(self, units: Units, unit: str, to: str, molar_mass: float | None) -> bool:
        """`units.compatible(unit, to, molar_mass=...)`, or the answer of an earlier start."""

        def check() -> bool:
            return units.compatible(unit, to, molar_mass=molar_mass)

        if self.cache is None:
            return check()
        return self.cache.convertible(unit, to, molar_mass, check)

    def trial_dirs(self) -> list[Path]:
        dirs = [self.folder / "trials"]
        return [*dirs, self.site / "trials"] if self.site is not None else dirs

    def trial_path(self, name: str) -> Path:
        """The file of trial id `name`: the bundled one, else the site's."""
        self._no_shadowing()
        for folder in self.trial_dirs():
            path = folder / f"{name}.yaml"
            if path.is_file():
                return path
        known = sorted(p.stem for d in self.trial_dirs() for p in d.glob("*.yaml"))
        raise MappingError(
            str(self.folder / "trials" / f"{name}.yaml"),
            f"no trial '{name}' (known: {', '.join(known) or 'none'})",
        )

    def check_trial_id(self, path: Path, trial_id: str, lines: dict[Loc, int]) -> None:
        """A site trial may not take a bundled trial's id, whatever its file is called."""
        if self.site is None or not path.is_relative_to(self.site):
            return
        if (self.folder / "trials" / f"{trial_id}.yaml").is_file():
            raise MappingError(
                str(path),
                f"trial id '{trial_id}' is a bundled trial's: a site trial needs an id of its own",
                line=mapfiles.line_of(lines, ("id",)),
                field="id",
            )

    def _no_shadowing(self) -> None:
        if self.site is None:
            return
        for path in sorted((self.site / "trials").glob("*.yaml")):
            if (self.folder / "trials" / path.name).is_file():
                raise MappingError(
                    str(path),
                    f"trial '{path.stem}' shadows the bundled trial of that id: "
                    "a site trial needs an id of its own",
                )

    def content_hash(self, trial_file: Path) -> str:
        """sha256 of the trial file, and of every site file read (the trial's policy changes with
        them); without a site folder, of the trial file alone, as before site folders."""
        digest = hashlib.sha256(trial_file.read_bytes())
        if not self.site_files:
            return digest.hexdigest()
        assert self.site is not None
        for path in sorted(set(self.site_files)):
            name = path.relative_to(self.site).as_posix()
            digest.update(f"\0{name}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    # --- merged entries ------------------------------------------------------------------------

    def fold_analyte(self, name: str) -> FoldedAnalyte:
        """An analyte's single values, later files overriding earlier ones (bounds field by field).

        A site that changes an analyte's unit restates its default ULN and bounds in the new unit:
        the bundled ones are in the old unit.
        """
        layers = self.analytes[name]
        scalars: dict[str, Any] = {}
        set_by: dict[str, Layer[AnalyteModel | AnalytePatch]] = {}
        for layer in layers:
            given = layer.model.model_dump(include=set(ANALYTE_SCALARS), exclude_unset=True)
            old_bounds = scalars.get("plausible")
            if isinstance(given.get("plausible"), dict) and isinstance(old_bounds, dict):
                given["plausible"] = {**old_bounds, **given["plausible"]}
            old_unit = scalars.get("unit")
            if old_unit is not None and given.get("unit", old_unit) != old_unit:
                for dependent in ("default_uln", "plausible"):
                    if scalars.get(dependent) is not None and dependent not in given:
                        raise self.fail(
                            layer.file,
                            (*layer.loc, "unit"),
                            f"the unit changes from '{old_unit}' to '{given['unit']}': give "
                            f"`{dependent}` in '{given['unit']}' too, or `replace: true`",
                        )
            scalars.update(given)
            set_by.update(dict.fromkeys(given, layer))
        last = layers[-1]
        model = self._validate(AnalyteModel, {**scalars, "codes": {}}, last.file, last.loc)
        uln = set_by.get("default_uln") if model.default_uln is not None else None
        bounds = set_by.get("plausible") if model.plausible is not None else None
        return FoldedAnalyte(
            model, layers, uln.file if uln else None, bounds.file if bounds else None
        )

    def _validate(self, model: type[M], data: Any, file: Path, base: Loc) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = (*base, *err["loc"])
            raise self.fail(file, loc, err["msg"]) from None

    # --- reading the folders -------------------------------------------------------------------

    def _read(self, path: Path) -> Any:
        data, lines = mapfiles.read_yaml(path)
        self.lines[path] = lines
        return data

    def _load_folder(self) -> None:
        folder = self.folder
        path = folder / "systems.yaml"
        systems = mapfiles.validate(SystemsFile, self._read(path), path, self.lines[path])
        self.systems = dict(systems.systems)
        self.equivalents = dict(systems.equivalents)
        self.equivalents_file = path
        path = folder / "codesets.yaml"
        sets = mapfiles.validate(CodeSetsFile, self._read(path), path, self.lines[path])
        for name, cs in sets.codesets.items():
            self.codesets[name] = [Layer(cs, path, ("codesets", name))]
        path = folder / "analytes.yaml"
        analytes = mapfiles.validate(AnalytesFile, self._read(path), path, self.lines[path])
        for name, analyte in analytes.analytes.items():
            self.analytes[name] = [Layer(analyte, path, ("analytes", name))]
        path = folder / "local-codes.yaml"
        if path.is_file():
            local = mapfiles.validate(LocalCodesFile, self._read(path), path, self.lines[path])
            self.local_codes = [
                Layer(lc, path, ("local_codes", i)) for i, lc in enumerate(local.local_codes)
            ]
        path = folder / "units.yaml"
        for text, ucum in self._load_synonyms(path).items():
            self.synonyms[text] = ucum
            self.synonym_files[text] = path
        if (folder / "uln.yaml").is_file():  # bundled: none (the spec's table has no bands)
            self._merge(folder / "uln.yaml")

    def _load_site(self, site: Path) -> None:
        if not site.is_dir():
            raise MappingError(str(site), "site mappings folder not found")
        for name in SITE_KEYS:
            if (site / name).is_file():
                self._merge(site / name)
                self.site_files.append(site / name)

    def _merge(self, path: Path) -> None:
        """Merge one site file (any of `SITE_KEYS`) over what is loaded."""
        data = self._read(path)
        if data is None:
            return
        allowed = SITE_KEYS.get(path.name, tuple(SiteFile.model_fields))
        if isinstance(data, dict):
            for key in data:
                if key not in allowed:
                    raise self.fail(
                        path, (str(key),), f"unknown key (expected {', '.join(allowed)})"
                    )
        site = self._validate(SiteFile, data, path, ())
        for alias, system in site.systems.items():
            loc: Loc = ("systems", alias)
            old = self.systems.get(alias)
            merged = {} if old is None or system.replace else old.model_dump()
            merged.update(system.model_dump(exclude_unset=True, exclude={"replace"}))
            self.systems[alias] = self._validate(SystemModel, merged, path, loc)
        if site.equivalents:
            self.equivalents.update(site.equivalents)
            self.equivalents_file = path
        for name, cs in site.codesets.items():
            loc = ("codesets", name)
            if (name not in self.codesets or cs.replace) and "include" not in cs.model_fields_set:
                raise self.fail(path, loc, f"the new code set '{name}' needs `include`")
            sets = [] if cs.replace else self.codesets.get(name, [])
            self.codesets[name] = [*sets, Layer(cs, path, loc)]
        for name, analyte in site.analytes.items():
            earlier = [] if analyte.replace else self.analytes.get(name, [])
            self.analytes[name] = [*earlier, Layer(analyte, path, ("analytes", name))]
            self.fold_analyte(name)  # a bad merge is this file's mistake: report it here
        for i, lc in enumerate(site.local_codes):
            self.local_codes.append(Layer(lc, path, ("local_codes", i)))
        checker = Units({})
        for text, ucum in site.synonyms.items():
            if not text.strip():
                raise self.fail(path, ("synonyms",), "a synonym must be non-empty unit text")
            if not self.is_ucum(checker, ucum):
                raise self.fail(path, ("synonyms", text), f"target '{ucum}' is not valid UCUM")
            self.synonyms[text] = ucum.strip()
            self.synonym_files[text] = path
        for name, bands in site.uln.items():
            self.uln[name] = Layer(bands, path, ("uln", name))


def load_mappings(
    folder: Path | None = None, site: Path | None = None, *, cache: MappingCache | None = None
) -> Mappings:
    """Read the mappings folder (default: the bundled one) and merge the site folder over it;
    `cache` spares the checks that earlier starts made of the same content."""
    mappings = Mappings(folder or default_mappings_dir(), site, cache=cache)
    mappings._load_folder()
    if site is not None:
        mappings._load_site(site)
    return mappings
