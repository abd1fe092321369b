"""Value-set expansions stored as data: `mappings/valuesets/<name>.yaml`, used by code sets.

A SNOMED CT side that the trial-spec writes as "X and its descendants" cannot be matched without a
terminology server, so it ships as an expansion taken from a published source (trial-spec,
code-set grammar, v2). One file holds one expansion:

    valueset:
      name: snomed-diabetes-mellitus          # the file's stem
      title: Diabetes mellitus (73211009) and its descendants
      system: snomed                          # a code-system alias of systems.yaml
      refresh: {isa: "73211009"}              # or {url: <canonical ValueSet url>}: how
                                              # `codesets refresh` re-expands it
      sources:                                # where the codes were taken from
        - {name: ..., url: ..., version: ..., date: "2025-05-08", where: ...}
      note: how the set was built (combined sets, filtered, verified one by one)
      codes:
        "73211009": Diabetes mellitus (disorder)
        "44054006": {display: Diabetes mellitus type 2 (disorder), source: <a sources name>}

A code set names expansions under `valuesets:` in its `include` or `exclude` (codesets.yaml).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from adapter import mapfiles
from adapter.errors import MappingError
from adapter.mapschema import Strict


class Refresh(Strict):
    """How a terminology server re-expands the set: an implicit is-a set, or a named one."""

    isa: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Refresh:
        if (self.isa is None) == (self.url is None):
            raise ValueError("refresh needs exactly one of `isa` or `url`")
        return self


class Source(Strict):
    name: str
    url: str | None = None
    version: str | None = None
    date: str | None = None
    #: where the published content was read (a repository and path, a release browser)
    where: str | None = None


class CodeEntry(Strict):
    display: str
    source: str | None = None


class ValueSetModel(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]*$")
    title: str
    system: str
    refresh: Refresh | None = None
    sources: list[Source] = Field(min_length=1)
    note: str = ""
    codes: dict[str, str | CodeEntry] = Field(min_length=1)

    @field_validator("codes", mode="before")
    @classmethod
    def _codes_are_text(cls, value: object) -> object:
        # YAML reads an unquoted SNOMED code as an int: keep every code as written, as text.
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _sources_named(self) -> ValueSetModel:
        names = {s.name for s in self.sources}
        for code, entry in self.codes.items():
            if (
                isinstance(entry, CodeEntry)
                and entry.source is not None
                and (entry.source not in names)
            ):
                raise ValueError(f"code {code}: source '{entry.source}' is not in `sources`")
        return self

    def display(self, code: str) -> str:
        entry = self.codes[code]
        return entry if isinstance(entry, str) else entry.display


class ValueSetFile(Strict):
    valueset: ValueSetModel


def valueset_path(mappings_dir: Path, name: str) -> Path:
    return mappings_dir / "valuesets" / f"{name}.yaml"


def load_valueset(path: Path) -> ValueSetModel:
    """Read and validate one expansion file (a MappingError names the file, line and field)."""
    model = mapfiles.load(ValueSetFile, path).valueset
    if model.name != path.stem:
        _, lines = mapfiles.read_yaml(path)
        raise MappingError(
            str(path),
            f"name '{model.name}' is not the file's name '{path.stem}'",
            line=mapfiles.line_of(lines, ("valueset", "name")),
            field="valueset.name",
        )
    return model
