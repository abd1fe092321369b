"""A site folder merged over the bundled mappings (issue 9): merge rules, errors, ULN bands."""

from __future__ import annotations

import json
import shutil
import textwrap
from datetime import date
from pathlib import Path

import pytest

from adapter.analytes import Analyte, UlnBand
from adapter.cli import main
from adapter.config import load_site_config
from adapter.criteria.context import Context
from adapter.criteria.uln import uln_of
from adapter.errors import MappingError
from adapter.facts.dates import parse_fhir_date
from adapter.facts.model import Coding, LabValue, Normalised, PatientFacts, PatientInfo, Recorded
from adapter.trials import default_mappings_dir, load_trial

TRIAL = "hcc-ablation-lenvatinib-pd1"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
SITE_LIS = "urn:oid:1.2.3.4.5.6"
AS_OF = date(2026, 6, 15)


def site(tmp_path: Path, **files: str) -> Path:
    """A site folder holding `files` (name -> YAML; `__` stands for `/`, `_` for `-`)."""
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        path = folder / name.replace("__", "/").replace("_", "-").replace("-yaml", ".yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


SITE_SYSTEMS = """\
systems:
  site-lis: {urls: ["urn:oid:1.2.3.4.5.6"], match: exact}
"""


# --- merge rules -----------------------------------------------------------------------------


def test_codes_of_a_site_analyte_are_joined_to_the_bundled_ones(tmp_path):
    """analytes.yaml: a site's `codes` for ALT add to the bundled LOINC codes."""
    folder = site(
        tmp_path,
        systems_yaml=SITE_SYSTEMS,
        analytes_yaml="analytes:\n  alt:\n    codes: {site-lis: [GPT]}\n",
    )
    alt = load_trial(TRIAL, site_mappings=folder).analytes["alt"]
    assert Coding(LOINC, "1742-6") in alt.codes
    assert Coding(SITE_LIS, "GPT") in alt.codes
    assert alt.code_origins[Coding(SITE_LIS, "GPT")] == str(folder / "analytes.yaml")
    assert alt.code_origins[Coding(LOINC, "1742-6")] == "mappings/analytes.yaml"


def test_single_values_of_an_analyte_are_overridden_and_bounds_field_by_field(tmp_path):
    """default_uln and plausible.high come from the site; plausible.low stays the bundled one."""
    folder = site(
        tmp_path,
        analytes_yaml="analytes:\n  alt:\n    default_uln: 35\n    plausible: {high: 9000}\n",
    )
    alt = load_trial(TRIAL, site_mappings=folder).analytes["alt"]
    assert (alt.default_uln, alt.plausible_low, alt.plausible_high) == (35, 0, 9000)
    assert alt.uln_origin == alt.bounds_origin == str(folder / "analytes.yaml")
    assert alt.iu_as_u is True  # not stated by the site: the bundled value


def test_replace_true_swaps_an_analyte_whole(tmp_path):
    """replace: true: only the site's codes and values are left."""
    folder = site(
        tmp_path,
        systems_yaml=SITE_SYSTEMS,
        analytes_yaml="""\
        analytes:
          alt:
            replace: true
            name: ALT (site)
            unit: U/L
            codes: {site-lis: [GPT]}
        """,
    )
    alt = load_trial(TRIAL, site_mappings=folder).analytes["alt"]
    assert set(alt.codes) == {Coding(SITE_LIS, "GPT")}
    assert (alt.name, alt.default_uln, alt.iu_as_u) == ("ALT (site)", None, False)


def test_code_set_lists_are_joined_and_replace_swaps_the_set(tmp_path):
    """codesets.yaml: `include` is joined for one set, and swapped whole for another."""
    folder = site(
        tmp_path,
        codesets_yaml="""\
        codesets:
          hcc:
            include: {icd10: [C22.7]}
          ascites:
            replace: true
            include: {icd10: [R18.8]}
        """,
    )
    sets = load_trial(TRIAL, site_mappings=folder).codesets
    assert sets["hcc"].matches(Coding(ICD10, "C22.0"))
    assert sets["hcc"].matches(Coding(ICD10, "C22.7"))
    assert sets["ascites"].matches(Coding(ICD10, "R18.8"))
    assert not sets["ascites"].matches(Coding(ICD10, "R18.0"))


def test_new_entries_are_added(tmp_path):
    """A new system, analyte and code set, stated whole, are there for the site's trials."""
    folder = site(
        tmp_path,
        systems_yaml=SITE_SYSTEMS,
        analytes_yaml="""\
        analytes:
          ferritin:
            name: Ferritin
            unit: ng/mL
            codes: {site-lis: [FERR]}
        """,
        codesets_yaml="codesets:\n  gout:\n    include: {icd10: [M10]}\n",
    )
    trial = load_trial(TRIAL, site_mappings=folder)
    assert trial.analytes["ferritin"].codes == {Coding(SITE_LIS, "FERR"): None}
    assert trial.codesets["gout"].matches(Coding(ICD10, "M10.9"))


def test_a_site_value_set_replaces_the_bundled_file_of_that_name(tmp_path):
    """valuesets/snomed-pregnancy.yaml of the site is read instead of the bundled one."""
    folder = site(
        tmp_path,
        valuesets__snomed_pregnancy_yaml="""\
        valueset:
          name: snomed-pregnancy
          title: Pregnancy, as this site's terminology server expands it
          system: snomed
          sources: [{name: site tx}]
          codes:
            "999000001": Site pregnancy code
        """,
    )
    pregnancy = load_trial(TRIAL, site_mappings=folder).codesets["pregnancy"]
    assert pregnancy.matches(Coding(SNOMED, "999000001"))
    assert not pregnancy.matches(Coding(SNOMED, "87527008"))  # only in the bundled expansion
    assert load_trial(TRIAL).codesets["pregnancy"].matches(Coding(SNOMED, "87527008"))
    assert not load_trial(TRIAL).codesets["pregnancy"].matches(Coding(SNOMED, "999000001"))


def test_a_unit_synonym_is_added_or_overridden_and_names_its_file(tmp_path):
    """units.yaml: the site's spelling reads, and the value says which file read it."""
    folder = site(tmp_path, units_yaml='synonyms:\n  "Tsd/µl": "10*3/uL"\n')
    units = load_trial(TRIAL, site_mappings=folder).units
    read = units.normalise(180, to="10*9/L", code=None, system=None, unit="Tsd/µl")
    assert isinstance(read, Normalised)
    assert (read.value, read.synonym_source) == (180, str(folder / "units.yaml"))
    bundled = units.normalise(180, to="10*9/L", code=None, system=None, unit="K/cu mm")
    assert isinstance(bundled, Normalised)
    assert bundled.synonym_source == "mappings/units.yaml"


def test_a_system_is_overridden_field_by_field(tmp_path):
    """systems.yaml: the site's urls for the example local system; `match` is kept."""
    folder = site(tmp_path, systems_yaml='systems:\n  example-site-lab: {urls: ["urn:site:lab"]}\n')
    hb = load_trial(TRIAL, site_mappings=folder).analytes["hemoglobin"]
    assert Coding("urn:site:lab", "HGB") in hb.codes
    assert hb.code_origins[Coding("urn:site:lab", "HGB")] == "mappings/local-codes.yaml"


SEPARATE = {
    "systems_yaml": SITE_SYSTEMS,
    "local_codes_yaml": "local_codes:\n  - {system: site-lis, code: THR, analyte: platelets}\n",
    "units_yaml": 'synonyms:\n  "Tsd/µl": "10*3/uL"\n',
    "uln_yaml": "uln:\n  alt:\n    - {sex: male, age_min: 18, uln: 50}\n",
}
COMBINED = """\
systems:
  site-lis: {urls: ["urn:oid:1.2.3.4.5.6"], match: exact}
local_codes:
  - {system: site-lis, code: THR, analyte: platelets}
synonyms:
  "Tsd/µl": "10*3/uL"
uln:
  alt:
    - {sex: male, age_min: 18, uln: 50}
"""


@pytest.mark.parametrize("combined", [False, True], ids=["separate-files", "site-mappings.yaml"])
def test_one_combined_site_mappings_yaml_merges_like_the_separate_files(tmp_path, combined):
    """site-mappings.yaml (the survey's draft form) loads as is, like the separate files."""
    folder = site(tmp_path, site_mappings_yaml=COMBINED) if combined else site(tmp_path, **SEPARATE)
    trial = load_trial(TRIAL, site_mappings=folder)
    assert Coding(SITE_LIS, "THR") in trial.analytes["platelets"].codes
    assert trial.analytes["alt"].uln_bands == (
        UlnBand("male", 18, None, 50.0, trial.analytes["alt"].uln_bands[0].origin),
    )
    assert isinstance(
        trial.units.normalise(1, to="10*9/L", code=None, system=None, unit="Tsd/µl"), Normalised
    )


SITE_TRIAL = """\
id: site-liver-check
title: A site's own trial
study: {system: "urn:site:studies", value: liver-check}
cohort: {active_condition_in: [hcc]}
criteria:
  - {id: platelets, kind: lab_threshold, analyte: platelets, op: ">=", value: 50, unit: 10*9/L,
     window_days: 30}
"""


def test_a_site_trial_is_found_by_id_in_the_site_folder(tmp_path):
    """trials/<id>.yaml of the site: `--trial <id>` finds it."""
    folder = site(tmp_path, trials__site_liver_check_yaml=SITE_TRIAL)
    trial = load_trial("site-liver-check", site_mappings=folder)
    assert [c.id for c in trial.criteria] == ["platelets"]


@pytest.mark.parametrize("file_name", [f"{TRIAL}.yaml", "my-copy.yaml"])
def test_a_site_trial_may_not_shadow_a_bundled_one(tmp_path, file_name):
    """A site trial file or id named like a bundled trial is refused, naming the site file."""
    folder = site(tmp_path)
    (folder / "trials").mkdir()
    path = folder / "trials" / file_name
    path.write_text(SITE_TRIAL.replace("site-liver-check", TRIAL), encoding="utf-8")
    name = TRIAL if file_name.startswith(TRIAL) else "my-copy"
    with pytest.raises(MappingError) as caught:
        load_trial(name, site_mappings=folder)
    assert caught.value.file == str(path)
    assert "bundled trial" in caught.value.reason


def test_the_trial_hash_changes_with_a_site_file_it_reads(tmp_path):
    """content_hash (the Provenance policy) covers the site files; without them it is as before."""
    plain = load_trial(TRIAL)
    folder = site(tmp_path, uln_yaml="uln:\n  alt:\n    - {sex: any, uln: 45}\n")
    first = load_trial(TRIAL, site_mappings=folder)
    (folder / "uln.yaml").write_text("uln:\n  alt:\n    - {sex: any, uln: 46}\n")
    second = load_trial(TRIAL, site_mappings=folder)
    assert len({plain.content_hash, first.content_hash, second.content_hash}) == 3
    assert first.site_files == (folder / "uln.yaml",)


def test_mappings_keeps_replacing_the_bundled_folder(tmp_path):
    """--mappings DIR replaces the bundled folder; the site folder merges over DIR."""
    mappings = tmp_path / "mappings"
    shutil.copytree(default_mappings_dir(), mappings)
    analytes = mappings / "analytes.yaml"
    analytes.write_text(analytes.read_text().replace("default_uln: 40", "default_uln: 41", 1))
    folder = site(tmp_path, analytes_yaml="analytes:\n  alt:\n    plausible: {high: 9000}\n")
    alt = load_trial(TRIAL, mappings, site_mappings=folder).analytes["alt"]
    assert (alt.default_uln, alt.plausible_high) == (41, 9000)
    assert alt.uln_origin == str(analytes)


# --- errors: file, line, field, exit 2 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "where", "field"),
    [
        (
            {"analytes_yaml": "analytes:\n  alt:\n    default_uln: -1\n"},
            "analytes.yaml:3",
            "analytes.alt.default_uln",
        ),
        (
            {"units_yaml": 'synonyms:\n  "x": "1"\n  "Tsd/ul": "K/uL"\n'},
            "units.yaml:3",
            "synonyms.Tsd/ul",
        ),
        ({"uln_yaml": "uln:\n  alt:\n    - {sex: other, uln: 5}\n"}, "uln.yaml:3", "uln.alt.0.sex"),
        ({"uln_yaml": "uln:\n  ferritin:\n    - {uln: 5}\n"}, "uln.yaml:2", "uln.ferritin"),
        ({"site_mappings_yaml": "analytes: {}\nunits: {}\n"}, "site-mappings.yaml:2", "units"),
        (
            {"codesets_yaml": "codesets:\n  hcc:\n    include: {nosuch: [X]}\n"},
            "codesets.yaml:3",
            "codesets.hcc.include.nosuch",
        ),
        (
            {"local_codes_yaml": "local_codes:\n  - {system: loinc, code: X, analyte: nosuch}\n"},
            "local-codes.yaml:2",
            "local_codes.0.analyte",
        ),
        (
            {"codesets_yaml": "codesets:\n  gout:\n    description: new, but no include\n"},
            "codesets.yaml:2",
            "codesets.gout",
        ),
        (
            {"analytes_yaml": "analytes:\n  alt:\n    unit: ukat/L\n"},
            "analytes.yaml:3",
            "analytes.alt.unit",
        ),
        (
            {"systems_yaml": f'equivalents:\n  "{LOINC}": ["urn:oid:2.16.840.1.113883.6.96"]'},
            "systems.yaml:2",
            f"equivalents.{LOINC}",
        ),
    ],
    ids=[
        "bad-uln",
        "bad-synonym",
        "bad-sex",
        "unknown-analyte-band",
        "unknown-key",
        "unknown-system",
        "unknown-local-analyte",
        "new-set-without-include",
        "unit-without-uln",
        "spelling-of-two-systems",
    ],
)
def test_an_error_in_a_site_file_names_file_line_and_field_and_exits_2(
    tmp_path, capsys, files, where, field
):
    """Through the CLI: one line naming the site file, its line and the field; exit 2."""
    folder = site(tmp_path, **files)
    code = main(
        [
            "sweep",
            "--trial",
            TRIAL,
            "--source",
            str(tmp_path),
            "--site-mappings",
            str(folder),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{folder}/{where}" in err
    assert f"({field})" in err


def test_a_missing_site_folder_exits_2(tmp_path, capsys):
    """--site-mappings naming no folder: exit 2 with the path."""
    code = main(
        [
            "sweep",
            "--trial",
            TRIAL,
            "--source",
            str(tmp_path),
            "--site-mappings",
            str(tmp_path / "nope"),
        ]
    )
    assert code == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


def test_site_mappings_in_the_config_is_relative_to_the_config_file(tmp_path):
    """`site_mappings: site` in conf/site.yaml means conf/site."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "site.yaml").write_text("site_mappings: site\n")
    assert load_site_config(conf / "site.yaml").site_mappings == conf / "site"


# --- ULN bands by sex and age (uln_of, hand-made facts) -----------------------------------------

BANDS = (
    UlnBand("male", 18, 64, 50.0, "site/uln.yaml"),
    UlnBand("male", 65, None, 45.0, "site/uln.yaml"),
    UlnBand("female", None, None, 33.0, "site/uln.yaml"),
)
ALT = Analyte(
    "alt", "ALT", "U/L", None, 40.0, True, {}, uln_origin="mappings/analytes.yaml", uln_bands=BANDS
)


def alt_uln(birth: str | None, sex: str | None, *, ranges: tuple = ()):
    lab = LabValue(
        "alt",
        "Observation/a",
        Coding(LOINC, "1742-6"),
        "final",
        parse_fhir_date("2026-06-10"),
        Recorded(100, "U/L", "U/L"),
        Normalised(100, "U/L"),
        reference_ranges=ranges,
    )
    who = PatientInfo("Patient/p", parse_fhir_date(birth) if birth else None, sex)
    return uln_of(lab, Context(PatientFacts(who, labs=(lab,)), AS_OF, {}, {"alt": ALT}))


@pytest.mark.parametrize(
    ("birth", "sex", "value", "says"),
    [
        ("1970-01-01", "male", 50, "site ULN 50 U/L for male, age 18-64 from site/uln.yaml"),
        ("1961-06-15", "male", 45, "site ULN 45 U/L for male, age 65- from site/uln.yaml"),
        ("1961-06-16", "male", 50, "age 18-64"),  # 64 until tomorrow
        ("1990-03-03", "female", 33, "for female, any age"),
        (None, "female", 33, "for female, any age"),  # no age limits: no birthDate needed
        ("2015-01-01", "male", 40, "no site ULN band fits sex male, age 11"),
        ("1970-01-01", None, 40, "no site ULN band fits sex unknown"),
        ("1961", "male", 40, "partial birthDate (age 64-65) straddles the edge of a site ULN band"),
        ("1961-01", "male", 45, "age 65-"),  # January 1961: 65 whichever day
        ("1980", "male", 50, "age 18-64"),  # a partial date inside one band is enough
    ],
)
def test_a_site_uln_band_is_used_by_sex_and_age_else_the_default(birth, sex, value, says):
    """Band by PatientInfo.sex and completed years at as-of; a straddling partial date: default."""
    uln = alt_uln(birth, sex)
    assert uln.value == value
    assert says in uln.source
    assert uln.origin == ("site/uln.yaml" if value != 40 else "mappings/analytes.yaml")


def test_the_observations_own_reference_range_comes_before_a_site_band():
    """referenceRange high first (unchanged), bands only without it."""
    from adapter.facts.model import ReferenceRange

    uln = alt_uln("1970-01-01", "male", ranges=(ReferenceRange(high=Normalised(35, "U/L")),))
    assert (uln.value, uln.origin) == (35, None)


# --- a whole sweep -------------------------------------------------------------------------------


def fhir_folder(tmp_path: Path) -> Path:
    """One male HCC patient: platelets under a local code and unit spelling, ALT with no range."""
    src = tmp_path / "fhir"
    src.mkdir()
    pat = {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1970-02-02"}
    cond = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": ICD10, "code": "C22.0"}]},
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "verificationStatus": {"coding": [{"code": "confirmed"}]},
    }
    proc = {
        "resourceType": "Procedure",
        "id": "pr1",
        "subject": {"reference": "Patient/p1"},
        "status": "completed",
        "code": {"coding": [{"system": SNOMED, "code": "80146002"}]},
        "performedDateTime": "2020-01-01",
    }

    def obs(oid: str, system: str, code: str, value: float, unit: str) -> dict:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2026-06-10",
            "code": {"coding": [{"system": system, "code": code}]},
            "valueQuantity": {"value": value, "unit": unit},
        }

    observations = [
        obs("o1", SITE_LIS, "THR", 180, "Tsd/µl"),
        obs("o2", LOINC, "1742-6", 230, "U/L"),
    ]
    for name, rows in (
        ("Patient", [pat]),
        ("Condition", [cond]),
        ("Procedure", [proc]),
        ("Observation", observations),
    ):
        (src / f"{name}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def sweep(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "out"
    args = [
        "sweep",
        "--trial",
        TRIAL,
        "--source",
        str(fhir_folder_once(tmp_path)),
        "--as-of",
        "2026-06-15",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    assert main(args) in (0, 3)
    return json.loads((out / "results.json").read_text())["patients"][0]["criteria"]


def fhir_folder_once(tmp_path: Path) -> Path:
    return tmp_path / "fhir" if (tmp_path / "fhir").is_dir() else fhir_folder(tmp_path)


def test_a_local_code_and_unit_spelling_from_the_site_folder_decide_a_criterion(tmp_path):
    """Platelets under site-lis|THR in 'Tsd/µl': unknown without the site folder, met with it;
    the evidence names the site files of the code and the unit, and the ULN band's file."""
    without = sweep(tmp_path)
    assert without["platelets"]["result"] == "unknown"
    assert without["alt"]["result"] == "not_met"  # 230 >= 5 x 40 (bundled default)
    folder = site(tmp_path, **SEPARATE)
    with_site = sweep(tmp_path, "--site-mappings", str(folder))
    platelets = with_site["platelets"]
    assert platelets["result"] == "met"
    assert platelets["evidence"][0]["mapping_sources"] == [
        f"code {SITE_LIS}|THR: {folder / 'local-codes.yaml'}",
        f"unit 'Tsd/µl': {folder / 'units.yaml'}",
    ]
    alt = with_site["alt"]
    assert alt["result"] == "met"  # 230 < 5 x 50 (the site's band for men 18 and over)
    assert f"from {folder / 'uln.yaml'}" in alt["evidence"][0]["uln_source"]
    assert f"ULN: {folder / 'uln.yaml'}" in alt["evidence"][0]["mapping_sources"]
    assert (
        "code http://loinc.org|1742-6: mappings/analytes.yaml"
        in alt["evidence"][0]["mapping_sources"]
    )


def test_the_config_names_the_site_folder_and_the_flag_wins(tmp_path):
    """site_mappings: in --config is used; --site-mappings overrides it."""
    folder = site(tmp_path, **SEPARATE)
    (tmp_path / "site.yaml").write_text("site_mappings: site\n")
    assert sweep(tmp_path, "--config", str(tmp_path / "site.yaml"))["platelets"]["result"] == "met"
    empty = tmp_path / "empty"
    empty.mkdir()
    flagged = sweep(
        tmp_path, "--config", str(tmp_path / "site.yaml"), "--site-mappings", str(empty)
    )
    assert flagged["platelets"]["result"] == "unknown"
    assert folder.is_dir()


def test_explain_lists_the_mapping_file_of_each_code_unit_and_uln(tmp_path, capsys):
    """explain prints which file read each code, unit and ULN it used."""
    folder = site(tmp_path, **SEPARATE)
    code = main(
        [
            "explain",
            "--trial",
            TRIAL,
            "--source",
            str(fhir_folder(tmp_path)),
            "--patient",
            "p1",
            "--as-of",
            "2026-06-15",
            "--site-mappings",
            str(folder),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert f"platelets: unit 'Tsd/µl': {folder / 'units.yaml'}" in out
    assert f"alt: ULN: {folder / 'uln.yaml'}" in out


def test_an_implausible_value_names_the_file_of_its_bounds(tmp_path):
    """A value refused as implausible says which file set the bound."""
    folder = site(
        tmp_path, **SEPARATE, analytes_yaml="analytes:\n  alt:\n    plausible: {high: 200}\n"
    )
    alt = sweep(tmp_path, "--site-mappings", str(folder))["alt"]
    assert alt["result"] == "unknown"
    assert f"plausible bounds: {folder / 'analytes.yaml'}" in alt["evidence"][0]["mapping_sources"]
