"""Reading mapping files: YAML with the line of every value, validated by pydantic models.

A bad mapping fails at start with the file, the line and the field (house rule 9), never mid-sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from adapter.errors import MappingError

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]
#: libyaml when PyYAML has it: the value-set expansions are large, and every start reads them
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path) -> tuple[Any, dict[Loc, int]]:
    """The file's data and, for every key path, the 1-based line where its value starts."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(str(path), f"cannot read: {exc.strerror}") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # a safe loader, C or Python
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or "not valid YAML"
        position = getattr(exc, "position", None)  # a ReaderError: a character YAML refuses
        if line is None and isinstance(position, int):
            line = text.count("\n", 0, position) + 1
            character = getattr(exc, "character", None)
            if isinstance(character, int):
                problem = f"{problem} (U+{character:04X})"
        raise MappingError(str(path), f"not valid YAML: {problem}", line=line) from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _index(node, (), lines)
    return data, lines


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _index(value, (*loc, str(key.value)), lines)
            lines[(*loc, str(key.value))] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*loc, i), lines)


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of the deepest part of `loc` that the file has (union tags in loc are skipped)."""
    best: Loc = ()
    for part in loc:
        if (*best, part) in lines:
            best = (*best, part)
    return lines.get(best)


def validate(model: type[M], data: Any, path: Path, lines: dict[Loc, int]) -> M:
    """Validate `data` as `model`, turning the first error into a MappingError with its line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc if (isinstance(p, int) or "[" not in str(p)))
        raise MappingError(str(path), err["msg"], line=line_of(lines, loc), field=field) from None


def load(model: type[M], path: Path) -> M:
    data, lines = read_yaml(path)
    return validate(model, data, path, lines)
