"""The cache of checked mappings (adapter.mapcache, issue 15): the same trial, fewer checks.

What an earlier start proved is reused only for the same bytes and the same validating code; what
failed is never remembered; a cache file that is not to be trusted is ignored.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapter import mapcache
from adapter.errors import MappingError
from adapter.mapcache import CACHE_FILE, MappingCache
from adapter.trials import Trial, default_mappings_dir, load_trial
from adapter.valuesets import load_valueset

TRIALS = ["hcc-ablation-lenvatinib-pd1", "t2dm-glycaemic-control"]


def _comparable(trial: Trial) -> tuple[Trial, dict[str, Any]]:
    """The trial with its Units (no __eq__) set apart as their attributes."""
    return dataclasses.replace(trial, units=None), vars(trial.units)  # type: ignore[arg-type]


def _no_engine(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the UCUM engine was asked for")


def _warm(path: Path, trial: str, mappings: Path | None = None) -> Trial:
    cache = MappingCache.open(path)
    loaded = load_trial(trial, mappings, cache=cache)
    cache.save()
    return loaded


@pytest.mark.parametrize("trial", TRIALS)
def test_a_warm_cache_gives_the_same_trial_without_the_ucum_engine_or_the_value_set_yaml(
    tmp_path, monkeypatch, trial
):
    """The second start reads the units, unit checks and value sets from the cache: equal trial."""
    plain = load_trial(trial)
    cold = _warm(tmp_path / CACHE_FILE, trial)
    monkeypatch.setattr("adapter.facts.units.engine", _no_engine)
    monkeypatch.setattr("adapter.site_mappings.load_valueset", _no_engine)
    monkeypatch.setattr("adapter.site_mappings.load_synonyms", _no_engine)
    warm = load_trial(trial, cache=MappingCache.open(tmp_path / CACHE_FILE))
    assert _comparable(warm) == _comparable(cold)
    assert _comparable(warm) == _comparable(plain)  # and as without any cache


def test_the_cache_file_is_owner_only(tmp_path):
    _warm(tmp_path / "state" / CACHE_FILE, TRIALS[0])
    assert (tmp_path / "state" / CACHE_FILE).stat().st_mode & 0o777 == 0o600


def test_a_changed_units_file_is_checked_again(tmp_path):
    """units.yaml with a bad target: a MappingError naming it, whatever the cache held."""
    mappings = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), mappings)
    _warm(tmp_path / CACHE_FILE, TRIALS[0], mappings)
    units = mappings / "units.yaml"
    units.write_text(units.read_text() + '  "bogus unit": "not/a/ucum[unit"\n', encoding="utf-8")
    with pytest.raises(MappingError, match="is not valid UCUM") as caught:
        load_trial(TRIALS[0], mappings, cache=MappingCache.open(tmp_path / CACHE_FILE))
    assert caught.value.file == str(units)


def test_a_changed_value_set_is_read_again(tmp_path):
    """An edited expansion is a new content hash: its file is read, the old entry is not used."""
    mappings = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), mappings)
    _warm(tmp_path / CACHE_FILE, TRIALS[0], mappings)
    path = mappings / "valuesets" / "snomed-liver-cell-carcinoma.yaml"
    path.write_text(path.read_text().replace("title: ", "title: Edited "), encoding="utf-8")
    cache = MappingCache.open(tmp_path / CACHE_FILE)
    assert cache.valueset(path, load_valueset).title.startswith("Edited ")


def test_an_invalid_unit_is_never_remembered(tmp_path):
    cache = MappingCache.open(tmp_path / CACHE_FILE)
    asked: list[str] = []

    def check(code: str) -> bool:
        asked.append(code)
        return code == "mg/dL"

    assert cache.ucum_valid("K/uL", check) is False
    assert cache.ucum_valid("mg/dL", check) is True
    cache.save()
    again = MappingCache.open(tmp_path / CACHE_FILE)
    assert again.ucum_valid("K/uL", check) is False
    assert again.ucum_valid("mg/dL", check) is True
    assert asked == ["K/uL", "mg/dL", "K/uL"]


def test_convertible_pairs_are_remembered_with_their_molar_mass(tmp_path):
    cache = MappingCache.open(tmp_path / CACHE_FILE)
    assert cache.convertible("umol/L", "mg/dL", 584.66, lambda: True)
    cache.save()
    again = MappingCache.open(tmp_path / CACHE_FILE)
    assert again.convertible("umol/L", "mg/dL", 584.66, _no_engine)  # type: ignore[arg-type]
    assert not again.convertible("umol/L", "mg/dL", None, lambda: False)


def test_a_cache_written_by_other_code_is_dropped(tmp_path, monkeypatch):
    """Another adapter version or library version (another fingerprint): nothing is reused."""
    cache = MappingCache.open(tmp_path / CACHE_FILE)
    cache.ucum_valid("mg/dL", lambda _c: True)
    cache.save()
    monkeypatch.setattr(mapcache, "fingerprint", lambda: "another")
    asked: list[str] = []
    MappingCache.open(tmp_path / CACHE_FILE).ucum_valid("mg/dL", lambda c: asked.append(c) or True)
    assert asked == ["mg/dL"]


def test_a_tampered_value_set_entry_is_validated_and_read_from_its_file(tmp_path):
    """An entry that its model refuses (here: no codes) is not used: the file is read instead."""
    path = default_mappings_dir() / "valuesets" / "snomed-liver-cell-carcinoma.yaml"
    cache = MappingCache.open(tmp_path / CACHE_FILE)
    expected = cache.valueset(path, load_valueset)
    cache.save()
    doc = orjson.loads((tmp_path / CACHE_FILE).read_bytes())
    for entry in doc["valuesets"].values():
        entry["codes"] = {}
    (tmp_path / CACHE_FILE).write_bytes(orjson.dumps(doc))
    assert MappingCache.open(tmp_path / CACHE_FILE).valueset(path, load_valueset) == expected


def _group_writable(path: Path) -> None:
    path.chmod(0o666)


def _not_json(path: Path) -> None:
    path.write_bytes(b"{not json")


def _a_list(path: Path) -> None:
    path.write_bytes(b"[]")


def _wrong_shape(path: Path) -> None:
    doc = orjson.loads(path.read_bytes())
    doc["ucum_valid"] = {"mg/dL": True}
    path.write_bytes(orjson.dumps(doc))


def _a_symlink(path: Path) -> None:
    real = path.with_name("elsewhere.json")
    path.rename(real)
    path.symlink_to(real)


@pytest.mark.parametrize(
    "spoil",
    [_group_writable, _not_json, _a_list, _wrong_shape, _a_symlink],
    ids=lambda f: f.__name__,
)
def test_a_cache_file_not_to_be_trusted_is_ignored(tmp_path, spoil):
    path = tmp_path / CACHE_FILE
    cache = MappingCache.open(path)
    cache.ucum_valid("mg/dL", lambda _c: True)
    cache.save()
    spoil(path)
    asked: list[str] = []
    MappingCache.open(path).ucum_valid("mg/dL", lambda c: asked.append(c) or True)
    assert asked == ["mg/dL"]


def test_a_cache_that_cannot_be_written_costs_nothing_but_speed(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = MappingCache.open(blocker / CACHE_FILE)  # its folder cannot be made
    assert load_trial(TRIALS[0], cache=cache).id == TRIALS[0]
    cache.save()  # logged at debug, not raised
    assert not (blocker / CACHE_FILE).exists()


def test_the_limit_keeps_this_starts_files_and_drops_old_versions(tmp_path, monkeypatch):
    """Three starts, each with a new version of one file, and room for two: the oldest goes."""
    monkeypatch.setattr(mapcache, "MAX_FILES", 2)
    path = tmp_path / "units.yaml"
    for n in range(3):
        path.write_text(f"synonyms:\n  u{n}: mg/dL\n", encoding="utf-8")
        cache = MappingCache.open(tmp_path / CACHE_FILE)
        cache.synonyms(path, lambda _p, n=n: {f"u{n}": "mg/dL"})
        cache.save()
    kept = orjson.loads((tmp_path / CACHE_FILE).read_bytes())["synonyms"]
    assert sorted(next(iter(t)) for t in kept.values()) == ["u1", "u2"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_CACHE_HOME": "/var/cache/u"}, "/var/cache/u/trial-adapter"),
        ({"XDG_CACHE_HOME": "relative/cache"}, "/home/u/.cache/trial-adapter"),  # spec: ignored
        ({}, "/home/u/.cache/trial-adapter"),
    ],
)
def test_the_cache_folder_is_the_xdg_one(env, expected):
    assert mapcache.default_cache_dir(env, Path("/home/u")) == Path(expected)


def test_the_cli_sweep_keeps_the_cache_in_the_user_cache_folder(tmp_path, monkeypatch):
    """`sweep --dry-run` writes mapping-cache.json in $XDG_CACHE_HOME/trial-adapter (0700, 0600)."""
    from adapter.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "source"
    source.mkdir()
    (source / "Patient.ndjson").write_text(
        '{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1970-01-01"}\n'
    )
    (source / "Condition.ndjson").write_text(  # essential hypertension: not the trial's cohort
        '{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},'
        '"code":{"coding":[{"system":"http://snomed.info/sct","code":"59621000"}]}}\n'
    )
    argv = ["sweep", "--trial", TRIALS[0], "--source", str(source), "--dry-run", "-q"]
    argv += ["--as-of", "2026-06-15", "--out", str(tmp_path / "out")]
    assert main([*argv, "--state-dir", str(tmp_path / "state")]) == 0
    folder = tmp_path / "cache" / "trial-adapter"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / CACHE_FILE).stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "state" / CACHE_FILE).exists()
    written = (folder / CACHE_FILE).read_bytes()
    assert main([*argv, "--state-dir", str(tmp_path / "another-state")]) == 0
    assert (folder / CACHE_FILE).read_bytes() == written  # nothing new to keep: not rewritten
