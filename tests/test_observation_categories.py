"""The Observation categories analytes name (issue 13): what a per-patient read searches by where
the server's `code` is no filter, and what such a read cannot reach."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from adapter.errors import MappingError
from adapter.trials import load_trial

TRIAL = "hcc-ablation-lenvatinib-pd1"


def site(tmp_path: Path, analytes: str) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "site-mappings.yaml").write_text(textwrap.dedent(analytes), encoding="utf-8")
    return folder


@pytest.mark.parametrize("trial", [TRIAL, "t2dm-glycaemic-control"])
def test_every_needed_analyte_of_a_bundled_trial_names_a_category(trial: str) -> None:
    loaded = load_trial(trial)
    assert loaded.uncategorised_analytes() == frozenset()
    assert "laboratory" in loaded.observation_categories()


def test_labs_are_laboratory_and_blood_pressure_vital_signs() -> None:
    trial = load_trial(TRIAL)
    assert trial.analytes["albumin"].categories == ("laboratory",)
    assert trial.analytes["systolic_bp"].categories == ("vital-signs",)


def test_a_site_adds_a_category_to_a_bundled_analyte(tmp_path: Path) -> None:
    folder = site(
        tmp_path,
        """
        analytes:
          ecog:
            categories: ["http://example.org/epic-flowsheet|smartdata"]
        """,
    )
    trial = load_trial(TRIAL, site_mappings=folder)
    assert trial.analytes["ecog"].categories[-1] == "http://example.org/epic-flowsheet|smartdata"
    assert "survey" in trial.analytes["ecog"].categories


def test_a_site_analyte_without_categories_is_named_as_unreachable_by_category(
    tmp_path: Path,
) -> None:
    folder = site(
        tmp_path,
        """
        analytes:
          albumin:
            replace: true
            name: Albumin
            unit: g/L
            codes: {loinc: ["1751-7"]}
        """,
    )
    trial = load_trial(TRIAL, site_mappings=folder)
    assert trial.uncategorised_analytes() == frozenset({"albumin"})


def test_a_category_token_with_spaces_is_refused_with_its_file(tmp_path: Path) -> None:
    folder = site(
        tmp_path,
        """
        analytes:
          ecog:
            categories: ["not a token"]
        """,
    )
    with pytest.raises(MappingError, match=r"site-mappings\.yaml"):
        load_trial(TRIAL, site_mappings=folder)
