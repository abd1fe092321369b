"""Loading trial definitions and mappings: validated once, at start, with file, line and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from spec_ids import AUTOMATED, MANUAL

from adapter.errors import MappingError
from adapter.facts.model import Coding
from adapter.trials import default_mappings_dir, load_trial

ROOT = Path(__file__).resolve().parents[1]
TRIAL = "hcc-ablation-lenvatinib-pd1"
SPEC_CRITERIA = list(AUTOMATED)
SPEC_MANUAL = list(MANUAL)


def test_the_first_trial_has_every_criterion_of_the_spec_in_order():
    """Criterion ids are the spec's, automated then manual."""
    trial = load_trial(TRIAL)
    assert [c.id for c in trial.criteria] == SPEC_CRITERIA
    assert [m.id for m in trial.manual] == SPEC_MANUAL
    assert (trial.study_system, trial.study_value) == ("https://clinicaltrials.gov", "NCT05803928")


def test_the_cohort_query_lists_exact_codes_and_site_variants():
    """Token search matches exact codes: the query lists C22.0, its variants and possible_hcc."""
    tokens = load_trial(TRIAL).cohort_tokens()
    icd10, icd10cm = "http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-cm"
    for code in ("C22.0", "C22.000x", "C22.8", "C22.9"):
        assert Coding(icd10, code) in tokens
        assert Coding(icd10cm, code) in tokens
    assert Coding("http://snomed.info/sct", "109841003") in tokens


def test_a_trial_file_path_works_like_an_id():
    """--trial accepts the path of a trial file."""
    path = ROOT / "mappings" / "trials" / f"{TRIAL}.yaml"
    assert load_trial(str(path)).id == TRIAL


def _trial_with(tmp_path: Path, old: str, new: str) -> Path:
    src = (ROOT / "mappings" / "trials" / f"{TRIAL}.yaml").read_text()
    assert old in src
    path = tmp_path / "t.yaml"
    path.write_text(src.replace(old, new, 1))
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if needle in t)


@pytest.mark.parametrize(
    ("old", "new", "needle", "reason"),
    [
        ("kind: age\n", "kind: agee\n", "agee", "unknown criterion kind 'agee'"),
        (
            "analyte: hemoglobin\n",
            "analyte: haemoglobin\n",
            "haemoglobin",
            "unknown analyte 'haemoglobin'",
        ),
        ("unit: g/dL\n", "unit: mmol/L\n", "mmol/L", "not the analyte's canonical unit"),
        ("window_days: 30\n", "window_days: -3\n", "window_days: -3", "greater than 0"),
        (
            "codeset: extrahepatic_metastasis\n",
            "codeset: metastasis\n",
            "codeset: metastasis",
            "unknown code set 'metastasis'",
        ),
        ("min_years: 18\n", "min_years: 80\n", "min_years: 80", "min_years is above max_years"),
        ("  - id: platelets\n", "  - id: hemoglobin\n", "id: hemoglobin", "used twice"),
        ('op: ">="\n', 'op: "=>"\n', "=>", "Input should be"),
    ],
)
def test_a_mistake_fails_at_load_with_file_line_and_reason(tmp_path, old, new, needle, reason):
    """Unknown kind or analyte, unit not the analyte's, bad window: file, line, reason."""
    path = _trial_with(tmp_path, old, new)
    with pytest.raises(MappingError) as info:
        load_trial(str(path))
    assert reason in str(info.value)
    assert info.value.file == str(path)
    if needle == "id: hemoglobin":
        # the second use of the id is the one reported
        lines = [i for i, t in enumerate(path.read_text().splitlines(), 1) if needle in t]
        assert info.value.line == lines[-1]
    else:
        assert info.value.line == _line_of(path, needle)


def test_invalid_yaml_names_the_line(tmp_path):
    """YAML syntax errors carry their line."""
    path = tmp_path / "t.yaml"
    path.write_text("id: x\ntitle: [unclosed\n")
    with pytest.raises(MappingError) as info:
        load_trial(str(path))
    assert info.value.line is not None


def test_a_bad_shared_mapping_fails_at_load(tmp_path):
    """A wrong analyte unit in analytes.yaml stops the adapter at start."""
    mdir = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), mdir)
    text = (mdir / "analytes.yaml").read_text().replace("unit: g/dL\n", "unit: grams\n", 1)
    (mdir / "analytes.yaml").write_text(text)
    with pytest.raises(MappingError, match="'grams' is not a UCUM unit"):
        load_trial(TRIAL, mdir)


def test_an_unknown_trial_lists_the_known_ones():
    """A typo in --trial says which trials exist."""
    with pytest.raises(MappingError, match=TRIAL):
        load_trial("hcc")


def test_a_local_code_for_an_analyte_no_file_defines_fails_at_load(tmp_path):
    """local-codes.yaml: an analyte that neither analytes.yaml nor any trial defines is a typo."""
    mdir = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), mdir)
    with (mdir / "local-codes.yaml").open("a") as fh:
        fh.write("  - {system: example-site-lab, code: X, analyte: haemoglobin}\n")
    with pytest.raises(MappingError, match="unknown analyte 'haemoglobin'"):
        load_trial(TRIAL, mdir)


def _copy_mappings(tmp_path: Path) -> Path:
    mdir = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), mdir)
    return mdir


def test_a_code_set_naming_a_missing_value_set_fails_at_load_with_its_line(tmp_path):
    """A value-set expansion named in codesets.yaml must exist: file, line and field."""
    mdir = _copy_mappings(tmp_path)
    path = mdir / "codesets.yaml"
    text = path.read_text().replace("valuesets: [snomed-ascites]", "valuesets: [snomed-ascitis]", 1)
    path.write_text(text)
    with pytest.raises(MappingError, match="no value set 'snomed-ascitis'") as info:
        load_trial(TRIAL, mdir)
    assert info.value.file == str(path)
    assert info.value.line == _line_of(path, "snomed-ascitis")


def test_a_broken_value_set_file_names_its_file_line_and_field(tmp_path):
    """An expansion file is validated when loaded (codes must be text, sources named)."""
    mdir = _copy_mappings(tmp_path)
    path = mdir / "valuesets" / "snomed-ascites.yaml"
    path.write_text(path.read_text().replace("  system: snomed", "  system: snowmed", 1))
    with pytest.raises(MappingError, match="unknown code system 'snowmed'"):
        load_trial(TRIAL, mdir)
    path.write_text(path.read_text().replace("name: snomed-ascites", "name: snomed-other", 1))
    with pytest.raises(MappingError, match="is not the file's name") as info:
        load_trial(TRIAL, mdir)
    assert info.value.file == str(path)
    assert info.value.field == "valueset.name"


def test_every_shipped_value_set_names_its_sources_and_is_used():
    """Each expansion says where it came from, and some code set uses it."""
    from adapter.valuesets import load_valueset

    mdir = default_mappings_dir()
    used = (mdir / "codesets.yaml").read_text()
    for path in sorted((mdir / "valuesets").glob("*.yaml")):
        vs = load_valueset(path)
        assert vs.sources, path.name
        assert all(s.name for s in vs.sources), path.name
        assert path.stem in used, f"{path.name} is not used by any code set"


def test_one_spelling_may_name_one_system_only(tmp_path):
    """equivalents: an OID given for two systems is refused at load."""
    mdir = _copy_mappings(tmp_path)
    path = mdir / "systems.yaml"
    path.write_text(
        path.read_text().replace(
            '"http://snomed.info/sct": ["urn:oid:2.16.840.1.113883.6.96"]',
            '"http://snomed.info/sct": ["urn:oid:2.16.840.1.113883.6.1"]',
        )
    )
    with pytest.raises(MappingError, match="given for both"):
        load_trial(TRIAL, mdir)


def test_plausibility_bounds_must_be_finite_and_ordered(tmp_path):
    """A bound of .nan or a low above its high fails at load."""
    mdir = _copy_mappings(tmp_path)
    path = mdir / "analytes.yaml"
    original = path.read_text()
    path.write_text(
        original.replace("plausible: {low: 1, high: 25}", "plausible: {low: .nan, high: 25}", 1)
    )
    with pytest.raises(MappingError):
        load_trial(TRIAL, mdir)
    path.write_text(
        original.replace("plausible: {low: 1, high: 25}", "plausible: {low: 30, high: 25}", 1)
    )
    with pytest.raises(MappingError, match="low is above high"):
        load_trial(TRIAL, mdir)


def test_a_character_yaml_refuses_names_its_line(tmp_path):
    """A control character (say, UTF-8 decoded twice) is refused with its line and code point."""
    path = tmp_path / "t.yaml"
    path.write_text("id: x\ntitle: ok\nunit: \x9f\n", encoding="utf-8")
    with pytest.raises(MappingError, match="U\\+009F") as info:
        load_trial(str(path))
    assert info.value.line == 3
