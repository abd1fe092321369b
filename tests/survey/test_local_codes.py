"""The survey on a Chinese hospital's local codes: suggestions, unread units, draft, sweep."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter import site_mappings
from adapter.cli import build_parser, main
from adapter.errors import UsageError
from adapter.mapschema import LocalCode, SystemModel
from tests.survey.conftest import AS_OF, CN_LAB, HGB_VALUE, PATIENT_ID, PATIENT_NAME

TRIAL = "hcc-ablation-lenvatinib-pd1"


def survey(
    capsys: pytest.CaptureFixture[str], source: Path, out: Path
) -> tuple[dict[str, Any], str]:
    code = main(["survey", "--source", str(source), "--trial", TRIAL, "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    return json.loads((out / "survey.json").read_text(encoding="utf-8")), stdout


def entry(doc: dict[str, Any], code: str) -> dict[str, Any]:
    (found,) = [o for o in doc["observations"] if o["system"] == CN_LAB and o["code"] == code]
    return found


def test_local_codes_with_chinese_displays_get_suggestions_never_mappings(
    cn_folder, tmp_path, capsys
):
    """血红蛋白 and 血小板 suggest hemoglobin and platelets; the codes stay unmapped."""
    doc, _ = survey(capsys, cn_folder, tmp_path / "out")
    hgb, plt = entry(doc, "HGB"), entry(doc, "PLT")
    assert (hgb["count"], hgb["display"], hgb["analyte"]) == (3, "血红蛋白", None)
    assert [s["analyte"] for s in hgb["suggested"]] == ["hemoglobin"]
    assert "血红蛋白" in hgb["suggested"][0]["why"]
    assert hgb["units"] == [
        {
            "unit": "g/L",
            "code": None,
            "system": None,
            "count": 3,
            "parses": True,
            "ucum": "g/L",
            "via": "UCUM text",
            "problem": None,
            "converts": None,
        }
    ]
    assert (plt["count"], plt["analyte"]) == (2, None)
    assert [s["analyte"] for s in plt["suggested"]] == ["platelets"]
    assert plt["units"][0]["parses"]
    assert plt["units"][0]["via"] == "synonym"
    assert hgb["with_value"] == 3
    assert hgb["value_types"] == {"Quantity": 3}


def test_a_unit_that_does_not_parse_is_flagged_per_code(cn_folder, tmp_path, capsys):
    """个/L reads as no UCUM: flagged on WBC, listed, and offered as a synonym to fill in."""
    doc, stdout = survey(capsys, cn_folder, tmp_path / "out")
    wbc = entry(doc, "WBC")
    assert [(u["unit"], u["parses"]) for u in wbc["units"]] == [("个/L", False)]
    assert [s["analyte"] for s in wbc["suggested"]] == ["leukocytes"]
    (unparsed,) = doc["unparsed_units"]
    assert (unparsed["unit"], unparsed["count"]) == ("个/L", 1)
    assert unparsed["codes"] == [{"system": CN_LAB, "code": "WBC"}]
    assert "个/L" in stdout
    assert "NOT READ" in stdout


def test_a_code_without_words_is_suggested_by_its_unit_alone(cn_folder, tmp_path, capsys):
    """XYZ9 in g/L: analytes in a mass concentration, each saying the unit is the only reason."""
    doc, _ = survey(capsys, cn_folder, tmp_path / "out")
    suggested = {s["analyte"]: s["why"] for s in entry(doc, "XYZ9")["suggested"]}
    assert {"albumin", "hemoglobin", "creatinine"} <= set(suggested)
    assert "platelets" not in suggested
    assert all("no word" in why for why in suggested.values())


def test_unknown_systems_are_listed_with_a_name_to_declare_them(cn_folder, tmp_path, capsys):
    doc, stdout = survey(capsys, cn_folder, tmp_path / "out")
    (system,) = doc["unknown_systems"]
    assert system["system"] == CN_LAB
    assert system["suggested_alias"] == "hospital-example-cn-lab"
    assert system["counts"] == {"Observation": 7}
    assert system["codes"] == 4
    assert CN_LAB in stdout


def test_outputs_are_owner_only_and_hold_no_patient_data(cn_folder, tmp_path, capsys):
    out = tmp_path / "out"
    doc, stdout = survey(capsys, cn_folder, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("survey.json", "site-mappings.yaml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    texts = [stdout, (out / "survey.json").read_text(), (out / "site-mappings.yaml").read_text()]
    for text in texts:
        for secret in (PATIENT_ID, PATIENT_NAME, str(HGB_VALUE), "128.0", "2026-06-", "1960"):
            assert secret not in text
    assert doc["sample"]["Observation"] == {"read": 7, "limit": None, "complete": True}


def uncomment(draft: str, pattern: str) -> str:
    """The draft with the commented lines matching `pattern` made active (a site accepting them)."""
    return re.sub(rf"^(\s*)# ({pattern})", r"\1\2", draft, flags=re.MULTILINE)


def test_the_draft_loads_as_is_and_each_uncommented_line_is_valid(cn_folder, tmp_path, capsys):
    survey(capsys, cn_folder, tmp_path / "out")
    draft = (tmp_path / "out" / "site-mappings.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(draft) == {"systems": {}, "local_codes": [], "synonyms": {}}
    accepted = yaml.safe_load(uncomment(draft, r"hospital-example-cn-lab:|\{system:|\"个/L\""))
    assert [LocalCode.model_validate(c).code for c in accepted["local_codes"]][:4] == [
        "HGB",
        "PLT",
        "WBC",
        "XYZ9",
    ]
    assert SystemModel.model_validate(accepted["systems"]["hospital-example-cn-lab"]).urls == [
        CN_LAB
    ]
    assert accepted["synonyms"] == {"个/L": "?"}


def _sweep_takes_site_mappings() -> bool:
    try:
        build_parser().parse_args(
            ["sweep", "--trial", "t", "--source", "s", "--site-mappings", "d"]
        )
    except UsageError:
        return False
    return True


def hemoglobin_result(
    capsys: pytest.CaptureFixture[str], source: Path, out: Path, *extra: str
) -> str:
    args = ["sweep", "--trial", TRIAL, "--source", str(source), "--as-of", AS_OF, "--out", str(out)]
    code = main([*args, *extra])
    _, stderr = capsys.readouterr()
    assert code == 0, stderr
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    (patient,) = [p for p in doc["patients"] if p["patient"] == f"Patient/{PATIENT_ID}"]
    result: str = patient["criteria"]["hemoglobin"]["result"]
    return result


@pytest.mark.skipif(
    not _sweep_takes_site_mappings(),
    reason="sweep --site-mappings (issue 9, first half) not there yet",
)
def test_an_accepted_suggestion_decides_the_criterion_in_a_sweep(cn_folder, tmp_path, capsys):
    """Uncommenting HGB and its system in the draft turns the hemoglobin criterion from unknown
    to decided (131.5 g/L is 13.15 g/dL, at least 9)."""
    survey(capsys, cn_folder, tmp_path / "survey")
    assert hemoglobin_result(capsys, cn_folder, tmp_path / "before") == "unknown"
    draft = (tmp_path / "survey" / "site-mappings.yaml").read_text(encoding="utf-8")
    site = tmp_path / "site"
    site.mkdir()
    accepted = uncomment(
        draft, r"hospital-example-cn-lab:|\{system: hospital-example-cn-lab, code: \"HGB\""
    )
    (site / "site-mappings.yaml").write_text(accepted, encoding="utf-8")
    decided = hemoglobin_result(capsys, cn_folder, tmp_path / "after", "--site-mappings", str(site))
    assert decided == "met"


def site_with(draft: str, pattern: str, folder: Path) -> Path:
    folder.mkdir()
    (folder / "site-mappings.yaml").write_text(uncomment(draft, pattern), encoding="utf-8")
    return folder


def test_the_draft_loads_as_a_site_file_and_an_accepted_line_maps_the_code(
    cn_folder, tmp_path, capsys
):
    """The site loader takes the draft as is (nothing mapped) and, with HGB accepted, the sweep
    engine decides the hemoglobin criterion from the local code."""
    import asyncio
    from datetime import date

    from adapter.sources.files import FolderSource
    from adapter.sweep import run_sweep
    from adapter.trials import load_trial

    survey(capsys, cn_folder, tmp_path / "out")
    draft = (tmp_path / "out" / "site-mappings.yaml").read_text(encoding="utf-8")
    results = []
    for name, pattern in (("as-is", "nothing"), ("accepted", HGB_LINES)):
        trial = load_trial(TRIAL, site_mappings=site_with(draft, pattern, tmp_path / name))
        sweep = run_sweep(trial, FolderSource(cn_folder), date.fromisoformat(AS_OF))
        result = asyncio.run(sweep)
        (verdict,) = result.verdicts
        results.append(verdict.criteria["hemoglobin"].result.value)
    assert results == ["unknown", "met"]


HGB_LINES = r"hospital-example-cn-lab:|\{system: hospital-example-cn-lab, code: \"HGB\""


def append(folder: Path, kind: str, *resources: dict[str, Any]) -> None:
    with (folder / f"{kind}.ndjson").open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in resources)


def test_the_draft_loads_as_is_whatever_characters_the_units_and_displays_hold(
    cn_folder, tmp_path, capsys
):
    """A unit mis-decoded from UTF-8 (U+00D7 read as U+00C3 U+0097) and a display with Unicode line
    breaks are escaped in the draft: it loads, and an accepted synonym is the unit as sent."""
    odd = "\u00c3\u009710^9/L"
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": CN_LAB, "code": "PLT2", "display": "血小板\u2028\u0085"}]},
        "valueQuantity": {"value": 1, "unit": odd},
    }
    append(cn_folder, "Observation", obs)
    survey(capsys, cn_folder, tmp_path / "out")
    draft = (tmp_path / "out" / "site-mappings.yaml").read_text(encoding="utf-8")
    folder = site_with(draft.replace('"?"', '"10*9/L"'), '"Ã', tmp_path / "site")
    maps = site_mappings.load_mappings(site=folder)
    assert maps.synonyms[odd] == "10*9/L"


def test_an_accepted_snomed_edition_keeps_the_bundled_spellings_of_snomed(
    cn_folder, tmp_path, capsys
):
    """Accepting the draft's `equivalents` line adds the edition URI to SNOMED CT's spellings;
    the OID form the bundled mappings know stays known."""
    edition, oid = "http://snomed.info/sct/900000000000207008", "urn:oid:2.16.840.1.113883.6.96"
    conditions = [
        {"resourceType": "Condition", "code": {"coding": [{"system": s, "code": "72892002"}]}}
        for s in (edition, oid)
    ]
    append(cn_folder, "Condition", *conditions)
    survey(capsys, cn_folder, tmp_path / "out")
    draft = (tmp_path / "out" / "site-mappings.yaml").read_text(encoding="utf-8")
    folder = site_with(draft, '"http://snomed.info/sct":', tmp_path / "site")
    maps = site_mappings.load_mappings(site=folder)
    assert {edition, oid} <= set(maps.equivalents["http://snomed.info/sct"])
