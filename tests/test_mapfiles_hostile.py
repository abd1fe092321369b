"""Hostile mapping, trial and site files (issue 11, items 3 and 4): refused with file, line, field.

Every YAML file goes through `mapfiles.read_yaml`; these tests hold it to refusing alias bombs,
numbers that are not finite, and text that is not UTF-8, without a traceback or a runaway.
The alias bombs here are small (a few thousand values) and the budget is lowered to match, so a
regression fails the test instead of eating the machine; tests/cli/test_hostile_args.py runs
full-size bombs in a subprocess with a timeout.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from adapter import mapfiles
from adapter.config import load_site_config
from adapter.errors import ConfigError, MappingError
from adapter.mapfiles import read_yaml
from adapter.trials import default_mappings_dir, load_trial

TRIAL = "hcc-ablation-lenvatinib-pd1"
TRIAL_FILE = default_mappings_dir() / "trials" / f"{TRIAL}.yaml"


def laughs(levels: int, width: int = 9) -> str:
    """A "billion laughs" document: each level a list of `width` aliases of the level above."""
    names = [chr(ord("a") + i) for i in range(levels + 1)]
    out = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * width)}]"]
    for above, name in itertools.pairwise(names):
        out.append(f"{name}: &{name} [{', '.join([f'*{above}'] * width)}]")
    return "\n".join(out) + "\n"


def write(tmp_path: Path, text: str | bytes, name: str = "file.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def line_with(path: Path, fragment: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if fragment in t)


# --- aliases --------------------------------------------------------------------------------


def test_an_alias_bomb_is_refused_at_its_first_alias_before_it_expands(tmp_path, monkeypatch):
    """Nested aliases over the budget: a MappingError at the line of the first alias."""
    monkeypatch.setattr(mapfiles, "MAX_ALIAS_NODES", 1_000)
    path = write(tmp_path, "id: x\n" + laughs(4))  # 9**4 = 6,561 values expanded
    with pytest.raises(MappingError) as caught:
        read_yaml(path)
    assert caught.value.file == str(path)
    assert caught.value.line == 3
    assert "repeat more than 1,000 values in all" in str(caught.value)


def test_the_full_size_bomb_is_refused_with_the_real_budget(tmp_path):
    """Nine levels (387 million values) meet the default budget after a bounded walk."""
    path = write(tmp_path, laughs(9))
    with pytest.raises(MappingError, match="repeat more than 100,000 values in all") as caught:
        read_yaml(path)
    assert caught.value.line == 2


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    """A value that holds itself would make every walk of it endless."""
    path = write(tmp_path, "ok: 1\nloop: &a [1, *a]\n")
    with pytest.raises(MappingError, match="inside its own anchor") as caught:
        read_yaml(path)
    assert caught.value.line == 2


def test_an_alias_sharing_a_list_is_read_as_the_list(tmp_path):
    """Honest sharing, as the bundled hints.yaml does it, reads as before; anchors alone too."""
    path = write(
        tmp_path,
        "shared: &words [urine, stool]\nalone: &unused 3\nhints:\n  hb:\n    not: [*words, A1c]\n",
    )
    data, lines = read_yaml(path)
    assert data["hints"]["hb"]["not"] == [["urine", "stool"], "A1c"]
    assert data["alone"] == 3
    assert lines[("hints", "hb", "not", 0, 1)] == 1  # an aliased value's line is its anchor's


def test_the_bundled_hints_file_with_its_aliases_still_loads():
    """mappings/hints.yaml shares `not_blood` through aliases: under the budget."""
    data, _ = read_yaml(default_mappings_dir() / "hints.yaml")
    assert "urine" in data["hints"]["hemoglobin"]["not"][0]


# --- numbers that are not finite ------------------------------------------------------------


@pytest.mark.parametrize("number", [".nan", ".NaN", ".inf", "-.inf", "+.Inf", "1.0e+999"])
def test_a_non_finite_float_anywhere_is_refused_with_line_and_field(tmp_path, number):
    """YAML's NaN and infinities, and a float too large for a double, name file, line, key path."""
    path = write(tmp_path, f"a:\n  b:\n    - 1\n    - {number}\n")
    with pytest.raises(MappingError, match="not a finite number") as caught:
        read_yaml(path)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), 4, "a.b.1")


@pytest.mark.parametrize("digits", [400, 5_000])
def test_an_integer_beyond_a_floats_range_is_refused(tmp_path, digits):
    """Used as a threshold it would overflow; over 4,300 digits Python will not even convert it."""
    path = write(tmp_path, f"ok: 1\nvalue: {'9' * digits}\n")
    with pytest.raises(MappingError, match="not a usable number") as caught:
        read_yaml(path)
    assert (caught.value.line, caught.value.field) == (2, "value")


def test_a_day_the_calendar_lacks_is_refused_with_its_line(tmp_path):
    """YAML reads 2026-02-30 as a date; constructing it raised ValueError, not a MappingError."""
    path = write(tmp_path, "ok: 1\nexpanded: 2026-02-30\n")
    with pytest.raises(MappingError, match="2026-02-30") as caught:
        read_yaml(path)
    assert caught.value.line == 2


def test_ordinary_numbers_and_dates_read_as_before(tmp_path):
    """Finite floats, large-but-finite integers and real dates are untouched."""
    path = write(tmp_path, f"f: 1.5e+300\ni: {'9' * 300}\nd: 2026-06-15\nn: -0.0\n")
    data, _ = read_yaml(path)
    assert data["f"] == 1.5e300
    assert data["i"] == int("9" * 300)
    assert str(data["d"]) == "2026-06-15"


def trial_copy(tmp_path: Path, old: str, new: str, suffix: str = ".yaml") -> Path:
    text = TRIAL_FILE.read_text()
    assert old in text
    return write(tmp_path, text.replace(old, new, 1), f"{TRIAL}{suffix}")


@pytest.mark.parametrize("value", [".nan", ".inf", '"nan"', '"Infinity"', '"1e999"'])
def test_a_non_finite_threshold_in_a_trial_is_refused_with_line_and_field(tmp_path, value):
    """A NaN threshold compares false with everything: it made candidates potential ones.

    Written as YAML's `.nan` (read_yaml) or as text that pydantic turns into a float (validate).
    """
    path = trial_copy(tmp_path, "value: 9.0", f"value: {value}")
    with pytest.raises(MappingError) as caught:
        load_trial(str(path))
    err = caught.value
    assert err.file == str(path)
    assert err.line == line_with(path, f"value: {value}")
    assert err.field.startswith("criteria."), err.field
    assert err.field.endswith(".value"), err.field
    assert "finite number" in err.reason


def test_a_nan_threshold_in_a_json_trial_file_is_refused(tmp_path):
    """A JSON trial file is read as YAML: its `NaN` token is text that must not become a float."""
    data, _ = read_yaml(TRIAL_FILE)
    for criterion in data["criteria"]:
        if criterion["id"] == "hemoglobin":
            criterion["value"] = float("nan")
    path = write(tmp_path, json.dumps(data, default=str, indent=1), f"{TRIAL}.json")
    assert "NaN" in path.read_text()
    with pytest.raises(MappingError, match="finite number") as caught:
        load_trial(str(path))
    assert caught.value.line == line_with(path, "NaN")


def site_folder(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    write(folder, text, name)
    return folder


@pytest.mark.parametrize(
    ("name", "text", "line", "field"),
    [
        (
            "analytes.yaml",
            "analytes:\n  alt:\n    default_uln: .inf\n",
            3,
            "analytes.alt.default_uln",
        ),
        (
            "analytes.yaml",
            "analytes:\n  alt:\n    default_uln: 'inf'\n",
            3,
            "analytes.alt.default_uln",
        ),
        (
            "analytes.yaml",
            "analytes:\n  alt:\n    plausible: {high: .inf}\n",
            3,
            "analytes.alt.plausible.high",
        ),
        ("uln.yaml", "uln:\n  alt:\n    - {sex: any, uln: .inf}\n", 3, "uln.alt.0.uln"),
        ("uln.yaml", "uln:\n  alt:\n    - {sex: any, uln: 'NaN'}\n", 3, "uln.alt.0.uln"),
    ],
)
def test_a_non_finite_number_in_a_site_mapping_is_refused(tmp_path, name, text, line, field):
    """Site analytes and ULN bands: refused as YAML (`.inf`) and as text (`'inf'`)."""
    folder = site_folder(tmp_path, name, text)
    with pytest.raises(MappingError) as caught:
        load_trial(TRIAL, site_mappings=folder)
    err = caught.value
    assert (err.file, err.line, err.field) == (str(folder / name), line, field)
    assert "finite number" in err.reason


@pytest.mark.parametrize("timeout", [".inf", "'inf'", ".nan"])
def test_a_non_finite_number_in_the_site_configuration_is_refused(tmp_path, timeout):
    """`timeout: .inf` passed `gt=0`: every request would wait for ever."""
    path = write(tmp_path, f"source:\n  timeout: {timeout}\n", "site.yaml")
    with pytest.raises(ConfigError) as caught:
        load_site_config(path)
    assert isinstance(caught.value, MappingError)
    assert (caught.value.line, caught.value.field) == (2, "source.timeout")


# --- text that is not UTF-8, and other things YAML refuses ----------------------------------


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"a: 1\nb: caf\xe9\n", 2),  # Latin-1
        (b"\xff\xfea\x00:\x00 \x001\x00\n\x00", 1),  # UTF-16
        (b"a: 1\r\nb: 2\r\n# \xc3\r\n", 3),  # a truncated sequence, CRLF lines
    ],
)
def test_a_file_that_is_not_utf8_names_the_line_of_the_first_bad_byte(tmp_path, data, line):
    """UnicodeDecodeError was a traceback; now a MappingError with the line of the byte."""
    path = write(tmp_path, data)
    with pytest.raises(MappingError, match="not UTF-8") as caught:
        read_yaml(path)
    assert (caught.value.file, caught.value.line) == (str(path), line)


def test_a_site_configuration_that_is_not_utf8_is_a_config_error(tmp_path):
    """config.py reads through read_yaml: exit 2, file and line."""
    path = write(tmp_path, b"source:\n  timeout: 5 # d\xe9lai\n", "site.yaml")
    with pytest.raises(ConfigError, match=r"site\.yaml:2: not UTF-8"):
        load_site_config(path)


def test_nesting_deeper_than_a_walk_allows_is_a_mapping_error(tmp_path):
    """libyaml stops at 1,000 levels, Python's recursion a little sooner: a MappingError either way,
    never a RecursionError."""
    for depth in (999, 5000):
        path = write(tmp_path, "a: " + "[" * depth + "]" * depth + "\n", f"deep{depth}.yaml")
        with pytest.raises(MappingError, match=r"nested too deeply|not valid YAML") as caught:
            read_yaml(path)
        assert caught.value.file == str(path)


def test_read_yaml_data_matches_pyyaml_on_every_bundled_file():
    """One composition instead of two: the data is what yaml.load reads, for every bundled file."""
    for path in sorted(default_mappings_dir().rglob("*.yaml")):
        data, lines = read_yaml(path)
        assert data == yaml.safe_load(path.read_text(encoding="utf-8")), path
        assert lines[()] >= 1
