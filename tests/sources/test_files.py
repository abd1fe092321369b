"""The folder source: Bulk Data NDJSON (plain and gzipped), Bundles and single-resource JSON."""

from __future__ import annotations

import asyncio
import gzip
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from adapter.errors import ExitCode, IncompleteInputError, SourcePathError
from adapter.facts.model import Coding
from adapter.sources.base import Query, Resource, UnreadableItem, patient_id_of
from adapter.sources.files import FolderSource
from adapter.sources.unreadable import patient_named_by

if TYPE_CHECKING:
    from pathlib import Path


def collect(
    source: FolderSource, resource_type: str, patients: set[str] | None = None, **kw: Any
) -> list[Resource]:
    """Everything one fetch yields."""
    query = Query(resource_type, patients=None if patients is None else frozenset(patients), **kw)

    async def main() -> list[Resource]:
        return [r async for r in source.fetch(query)]

    return asyncio.run(main())


def ids(resources: list[Resource]) -> list[str]:
    return [r["id"] for r in resources]


def obs(rid: str, patient: str | None = "p1", **extra: Any) -> Resource:
    resource: Resource = {"resourceType": "Observation", "id": rid, "status": "final"}
    if patient is not None:
        # A bare id is a Patient's; anything with a slash or colon is a reference already.
        ref = patient if "/" in patient or ":" in patient else f"Patient/{patient}"
        resource["subject"] = {"reference": ref}
    return resource | extra


def write_ndjson(path: Path, *resources: Resource) -> Path:
    """One compact JSON a line, gzipped when the name ends in .gz."""
    data = b"".join(orjson.dumps(r) + b"\n" for r in resources)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_json(path: Path, document: Any) -> Path:
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return path


def bundle(kind: str, *entries: dict[str, Any]) -> Resource:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


# --- NDJSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Observation.ndjson",
        "Observation.000.ndjson",
        "Observation.1.ndjson",
        "Observation.ndjson.gz",
        "Observation.002.ndjson.gz",
    ],
)
def test_the_ndjson_file_name_gives_the_resource_type(tmp_path: Path, name: str) -> None:
    """Bulk Data names, plain or gzipped, are read for the type before the first dot only."""
    write_ndjson(tmp_path / name, obs("o1"), obs("o2"))
    source = FolderSource(tmp_path)
    assert ids(collect(source, "Observation")) == ["o1", "o2"]
    with pytest.raises(IncompleteInputError, match="no Condition resources"):
        collect(source, "Condition")
    assert source.yielded == {"Observation": 2}


def test_other_files_subfolders_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    """Only the top folder's .ndjson, .ndjson.gz and .json files are read."""
    write_ndjson(tmp_path / "Observation.ndjson", obs("o1"))
    write_ndjson(tmp_path / "Observation.ndjson.bak", obs("bak"))
    (tmp_path / "README.md").write_text("# export\n")
    (tmp_path / "manifest.txt").write_text("Observation.ndjson\n")
    # macOS leaves binary AppleDouble files beside copied ones.
    (tmp_path / "._Observation.ndjson").write_bytes(b"\x00\x05\x16\x07\x00\x02")
    (tmp_path / "nested").mkdir()
    write_ndjson(tmp_path / "nested" / "Observation.ndjson", obs("nested"))
    assert ids(collect(FolderSource(tmp_path), "Observation")) == ["o1"]


def test_files_are_read_in_name_order(tmp_path: Path) -> None:
    """NDJSON and JSON files come in the order of their names, whatever order they were made in."""
    write_ndjson(tmp_path / "Observation.001.ndjson", obs("o3"))
    write_ndjson(tmp_path / "Observation.000.ndjson.gz", obs("o1"), obs("o2"))
    write_json(tmp_path / "Observation-x.json", obs("x"))
    assert ids(collect(FolderSource(tmp_path), "Observation")) == ["x", "o1", "o2", "o3"]


ONE, TWO = orjson.dumps(obs("o1")), orjson.dumps(obs("o2"))


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbf" + ONE + b"\r\n\r\n   \n" + TWO + b"\r\n\n",
        b"\xef\xbb\xbf\n" + ONE + b"\n\t\n" + TWO,
    ],
    ids=["crlf-blank-lines", "bom-alone-no-final-newline"],
)
@pytest.mark.parametrize("name", ["Observation.ndjson", "Observation.ndjson.gz"])
def test_blank_lines_crlf_and_a_byte_order_mark_are_accepted(
    tmp_path: Path, name: str, data: bytes
) -> None:
    """Windows tools write CRLF and a BOM; blank lines carry nothing."""
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert ids(collect(FolderSource(tmp_path), "Observation")) == ["o1", "o2"]


def test_a_line_of_another_type_is_skipped_and_counted(tmp_path: Path) -> None:
    """A Condition inside Observation.ndjson is left out, and the count says so."""
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}
    write_ndjson(tmp_path / "Observation.ndjson", obs("o1"), condition, {"id": "x"}, obs("o2"))
    source = FolderSource(tmp_path)
    assert ids(collect(source, "Observation")) == ["o1", "o2"]
    assert source.skipped == {"Observation.ndjson: resourceType is not Observation": 2}
    assert source.yielded == {"Observation": 2}


@pytest.mark.parametrize(
    ("bad_line", "patients", "reason"),
    [
        (
            b'{"resourceType":"Observation","id":"secret-value","subject":{"refer',
            None,
            "not valid JSON",
        ),
        (
            b'{"resourceType":"Observation","id":"secret-value","subject":{"refer',
            {"p1"},
            "not valid JSON",
        ),
        (b'{"resourceType":"Observation","id":"secret-value",}', None, "trailing comma"),
        (b'["secret-value"]', None, "not a JSON object"),
        (b'["secret-value"]', {"p1"}, "not a JSON object"),
        (b'{"resourceType":"Observation","id":"secret-value\xff"}', None, "not valid UTF-8"),
        (
            b'{"resourceType":"Observation","id":"secret-value","valueInteger":NaN}',
            None,
            "not valid JSON",
        ),
    ],
    ids=["truncated", "truncated-filtered", "comma", "array", "array-filtered", "not-utf8", "nan"],
)
@pytest.mark.parametrize("name", ["Observation.ndjson", "Observation.ndjson.gz"])
def test_a_malformed_line_is_skipped_and_recorded_by_file_and_line_but_not_its_content(
    tmp_path: Path, name: str, bad_line: bytes, patients: set[str] | None, reason: str
) -> None:
    """One corrupt line no longer stops the sweep (issue 11): the lines around it come back, and
    `unreadable` names file:line and why, never the data."""
    data = orjson.dumps(obs("o1")) + b"\n\n" + bad_line + b"\n" + orjson.dumps(obs("o2")) + b"\n"
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    source = FolderSource(tmp_path)
    assert ids(collect(source, "Observation", patients)) == ["o1", "o2"]
    [item] = source.unreadable
    assert (item.file, item.line, item.patient) == (str(tmp_path / name), 3, None)
    assert reason in item.reason
    assert "secret" not in repr(item)


def test_an_unreadable_line_is_recorded_once_however_often_it_is_read(tmp_path: Path) -> None:
    """The sweep reads Condition.ndjson for the cohort and again for its patients."""
    bad = b'{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"x":tru}'
    (tmp_path / "Observation.ndjson").write_bytes(orjson.dumps(obs("o1")) + b"\n" + bad + b"\n")
    source = FolderSource(tmp_path)
    collect(source, "Observation")
    collect(source, "Observation", {"p1"})
    assert [(i.line, i.patient) for i in source.unreadable] == [(2, "p1")]


@pytest.mark.parametrize(
    ("line", "patient"),
    [
        (b'{"resourceType":"Observation","subject":{"reference":"Patient/p-1.2"},"x":', "p-1.2"),
        (b'{"subject" : { "reference" : "Patient/p1/_history/3" }, "v": tru}', "p1"),
        (b'{"patient":{"reference":"Patient/p1"},"performer":[{"reference":"Patient/p1"}],', "p1"),
        (b'{"subject":{"reference":"Patient/p1"},"x":"\xff"}', "p1"),
        # Two patients, or the subject perhaps another's: nobody for sure.
        (b'{"subject":{"reference":"Patient/p1"},"performer":[{"reference":"Patient/p2"}],', None),
        (b'{"subject":{"reference":"Patient/p1"},"x":"http://h/fhir/Patient/p2"', None),
        (b'{"subject":{"reference":"Patient/p1"},"note":"see Patient/p1"', None),
        (b'{"performer":[{"reference":"Patient/p1"}],"subject":{"refer', None),
        (b'{"subject":{"display":"x","reference":"Patient/p1"}', None),
        # Escapes could spell another reference; a cut-short or invalid id is no id.
        (b'{"subject":{"reference":"Patient/p1"},"y":{"reference":"Patient\\/p2"}', None),
        (b'{"subject":{"reference":"Patient/p1"},"y":"\\u0050atient/p2"', None),
        (b'{"subject":{"reference":"Patient/p1', None),
        (b'{"subject":{"reference":"Patient/p 1"}', None),
        (b'{"subject":{"reference":"Patient/' + b"x" * 65 + b'"}', None),
        (b'{"subject":{"reference":"Patient/p1/other/2"}', None),
        (b'{"subject":{"reference":"Group/g1"}', None),
        (b"\xff\xfe", None),
    ],
)
def test_an_unreadable_line_names_its_patient_only_beyond_doubt(line: bytes, patient: str) -> None:
    """Every `Patient/` in the line is the subject's one relative reference, or nobody."""
    assert patient_named_by(line) == patient


@pytest.mark.parametrize("name", ["Condition.ndjson", "Observation.000.ndjson.gz"])
def test_an_unreadable_line_of_a_patient_linked_type_names_its_patient(
    tmp_path: Path, name: str
) -> None:
    """Read from the raw bytes, also when the query asks for that patient only."""
    kind = name.split(".", 1)[0]
    bad = b'{"resourceType":"%s","subject":{"reference":"Patient/p7"},"code":{' % kind.encode()
    good = orjson.dumps({"resourceType": kind, "id": "r1", "subject": {"reference": "Patient/p1"}})
    data = good + b"\n" + bad + b"\n"
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    for patients in (None, {"p7"}):
        source = FolderSource(tmp_path)
        collect(source, kind, patients)
        [item] = source.unreadable
        assert item == UnreadableItem(str(tmp_path / name), 2, item.reason, "p7")


def test_an_unreadable_patient_line_names_nobody(tmp_path: Path) -> None:
    """A Patient line's own id may be what broke; its `link`s name other patients."""
    bad = b'{"resourceType":"Patient","id":"p2","link":[{"other":{"reference":"Patient/p1"}}],'
    good = orjson.dumps({"resourceType": "Patient", "id": "p1"})
    (tmp_path / "Patient.ndjson").write_bytes(good + b"\n" + bad + b"\n")
    source = FolderSource(tmp_path)
    assert ids(collect(source, "Patient", {"p1", "p2"})) == ["p1"]
    assert [(i.line, i.patient) for i in source.unreadable] == [(2, None)]


def test_a_line_the_patient_pre_check_drops_is_not_parsed_nor_recorded(tmp_path: Path) -> None:
    """Shaped like one object and naming no wanted patient: it cannot be a wanted patient's, and
    is counted with the other patients' lines; read for every patient, it is recorded."""
    bad = b'{"resourceType":"Observation","subject":{"reference":"Patient/p2"},"x":tru}'
    (tmp_path / "Observation.ndjson").write_bytes(orjson.dumps(obs("o1")) + b"\n" + bad + b"\n")
    source = FolderSource(tmp_path)
    assert ids(collect(source, "Observation", {"p1"})) == ["o1"]
    assert source.unreadable == []
    assert source.other_patients == {"Observation": 1}
    collect(source, "Observation")
    assert [(i.line, i.patient) for i in source.unreadable] == [(2, "p2")]


def test_a_damaged_line_naming_no_patient_is_parsed_and_recorded_even_when_filtered(
    tmp_path: Path,
) -> None:
    """Its subject may be a wanted patient's with a garbled byte: the pre-check lets it through."""
    bad = b'{"resourceType":"Observation","subject":{"reference":"Pat\xffent/p1"}}'
    (tmp_path / "Observation.ndjson").write_bytes(orjson.dumps(obs("o1")) + b"\n" + bad + b"\n")
    source = FolderSource(tmp_path)
    assert ids(collect(source, "Observation", {"p1"})) == ["o1"]
    assert [(i.line, i.reason, i.patient) for i in source.unreadable] == [
        (2, "not valid UTF-8", None)
    ]


@pytest.mark.parametrize("patients", [None, {"p1"}], ids=["all", "filtered"])
def test_a_file_without_one_readable_line_of_its_type_is_incomplete_input(
    tmp_path: Path, patients: set[str] | None
) -> None:
    """Every line unreadable: a wrong or wholly damaged file, not an export with a bad line."""
    write_ndjson(tmp_path / "Observation.000.ndjson", obs("o1"))
    (tmp_path / "Observation.001.ndjson").write_bytes(b"garbage\n{\n")
    with pytest.raises(IncompleteInputError, match=r"001\.ndjson: 2 unreadable lines, no readable"):
        collect(FolderSource(tmp_path), "Observation", patients)


@pytest.mark.parametrize(
    "data",
    [
        b"not gzip at all\n",
        gzip.compress(orjson.dumps(obs("o1")) + b"\n" * 5000)[:-30],
    ],
    ids=["not-gzip", "truncated"],
)
def test_a_bad_gzip_file_fails_naming_it(tmp_path: Path, data: bytes) -> None:
    """An unreadable .gz is incomplete input (exit 1), not an empty file."""
    (tmp_path / "Observation.000.ndjson.gz").write_bytes(data)
    with pytest.raises(IncompleteInputError, match=r"Observation\.000\.ndjson\.gz: .*gzip"):
        collect(FolderSource(tmp_path), "Observation")


# --- the folder ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "reason"), [(False, "no such folder"), (True, "not a folder")])
def test_a_missing_folder_or_a_file_fails_naming_the_path(
    tmp_path: Path, make: bool, reason: str
) -> None:
    """The path is checked when the source is built, before any sweep starts."""
    path = tmp_path / "export"
    if make:
        path.write_text("")
    with pytest.raises(SourcePathError, match=reason) as caught:
        FolderSource(path)
    assert str(path) in str(caught.value)


# --- incomplete input (issue 10, item 2) -------------------------------------------------------


def test_an_empty_folder_is_incomplete_input(tmp_path: Path) -> None:
    """No FHIR file at all (a README does not count): exit 1, never an empty cohort."""
    (tmp_path / "README.md").write_text("# export\n")
    with pytest.raises(IncompleteInputError, match="no FHIR files") as caught:
        collect(FolderSource(tmp_path), "Condition")
    assert caught.value.exit_code == ExitCode.FATAL


@pytest.mark.parametrize("patients", [None, {"p1"}], ids=["every-patient", "filtered"])
def test_a_needed_type_without_its_file_is_incomplete_input_naming_the_type(
    tmp_path: Path, patients: set[str] | None
) -> None:
    """A folder without Observation.ndjson has not said that nobody has Observations."""
    write_ndjson(tmp_path / "Patient.ndjson", {"resourceType": "Patient", "id": "p1"})
    with pytest.raises(
        IncompleteInputError, match=r"no Observation resources .*Observation\.ndjson"
    ):
        collect(FolderSource(tmp_path), "Observation", patients)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("Observation.ndjson", b""),
        ("Observation.ndjson", b"\n  \r\n"),
        ("Observation.001.ndjson", b""),
        ("Observation.ndjson.gz", gzip.compress(b"")),
        ("Observation.ndjson", orjson.dumps({"resourceType": "Condition", "id": "c1"}) + b"\n"),
    ],
    ids=["empty", "blank-lines", "empty-part", "empty-gzip", "only-another-type"],
)
@pytest.mark.parametrize("patients", [None, {"p1"}], ids=["all", "the-sweeps-batch"])
def test_an_empty_file_of_a_needed_type_is_incomplete_input(
    tmp_path: Path, name: str, data: bytes, patients: set[str] | None
) -> None:
    """An empty file is a cut-short copy, even beside a full one: it fails, naming the file,
    also when the sweep asks for some patients only (lines are then pre-checked, not parsed)."""
    write_ndjson(tmp_path / "Observation.000.ndjson", obs("o1"))
    (tmp_path / name).write_bytes(data)
    with pytest.raises(IncompleteInputError, match=rf"{name}: empty"):
        collect(FolderSource(tmp_path), "Observation", patients)


def test_an_empty_file_of_a_type_not_fetched_is_no_error(tmp_path: Path) -> None:
    """Only the types the sweep fetches must be complete: an empty Procedure file is not read."""
    write_ndjson(tmp_path / "Observation.ndjson", obs("o1"))
    (tmp_path / "Procedure.ndjson").write_bytes(b"")
    assert ids(collect(FolderSource(tmp_path), "Observation")) == ["o1"]


def test_a_folder_in_place_of_the_file_leaves_the_type_absent(tmp_path: Path) -> None:
    """A folder named Observation.ndjson is no file (and unreadable as one): the type is absent."""
    write_ndjson(tmp_path / "Patient.ndjson", {"resourceType": "Patient", "id": "p1"})
    (tmp_path / "Observation.ndjson").mkdir()
    with pytest.raises(IncompleteInputError, match="no Observation resources"):
        collect(FolderSource(tmp_path), "Observation")


def test_a_type_in_no_bundle_is_absent_and_in_one_bundle_is_present(tmp_path: Path) -> None:
    """In a folder of Bundles a type is present when any file holds it, for any patient."""
    patient = {"resourceType": "Patient", "id": "p1"}
    write_json(tmp_path / "a.json", bundle("collection", {"resource": patient}))
    write_json(
        tmp_path / "b.json",
        bundle("collection", {"resource": {"resourceType": "Patient", "id": "p2"}}),
    )
    source = FolderSource(tmp_path)
    with pytest.raises(IncompleteInputError, match=r"no Observation resources .*JSON files"):
        collect(source, "Observation", {"p1"})
    write_json(tmp_path / "c.json", bundle("collection", {"resource": obs("o2", "p2")}))
    assert collect(FolderSource(tmp_path), "Observation", {"p1"}) == []


# --- another server's patients (issue 10, item 3) ------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        "http://other-hospital.example/fhir/Patient/h01",
        # A Bulk export's urn:uuid that no Bundle entry resolves: nobody's here, not dropped unseen.
        "urn:uuid:5e1c2f0a-9b7d-4c1e-8f3a-2d6b9e0c4a17",
    ],
    ids=["other-server", "unresolved-urn-uuid"],
)
@pytest.mark.parametrize("patients", [None, {"h01"}, {"h02"}], ids=["all", "h01", "h02"])
@pytest.mark.parametrize("storage", ["ndjson", "bundle"])
def test_another_servers_patient_is_not_the_local_one_and_is_counted(
    tmp_path: Path, storage: str, patients: set[str] | None, reference: str
) -> None:
    """`http://other-hospital.example/fhir/Patient/h01` is not local h01: left out, counted;
    so is any subject that is neither relative nor resolved (issue 10: "count the rest")."""
    foreign = obs("theirs", reference)
    local = obs("ours", "h01")
    if storage == "bundle":
        write_json(
            tmp_path / "b.json", bundle("collection", {"resource": foreign}, {"resource": local})
        )
    else:
        write_ndjson(tmp_path / "Observation.ndjson", foreign, local)
    source = FolderSource(tmp_path)
    found = ids(collect(source, "Observation", patients))
    assert found == ([] if patients == {"h02"} else ["ours"])
    assert source.foreign == {"Observation": 1}


# --- JSON: Bundles and single resources -------------------------------------------------------


def test_transaction_bundle_urn_uuid_references_become_relative(tmp_path: Path) -> None:
    """A Synthea-style transaction reads as a server would hold it after the transaction."""
    write_json(
        tmp_path / "Alice.json",
        bundle(
            "transaction",
            {
                "fullUrl": "urn:uuid:p-1",
                "resource": {"resourceType": "Patient", "id": "p-1"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"fullUrl": "urn:uuid:e-1", "resource": {"resourceType": "Encounter", "id": "e-1"}},
            {
                "fullUrl": "urn:uuid:o-1",
                "resource": {
                    "resourceType": "Observation",
                    "subject": {"reference": "urn:uuid:p-1"},
                    "encounter": {"reference": "urn:uuid:e-1"},
                    "performer": [{"reference": "Practitioner/9"}],
                    "hasMember": [{"reference": "urn:uuid:elsewhere"}],
                    "derivedFrom": [{"reference": "urn:uuid:o-1", "display": "itself"}],
                },
            },
            {"request": {"method": "DELETE", "url": "Observation/old"}},
        ),
    )
    source = FolderSource(tmp_path)
    [observation] = collect(source, "Observation")
    assert observation["id"] == "o-1"
    assert observation["subject"] == {"reference": "Patient/p-1"}
    assert observation["encounter"] == {"reference": "Encounter/e-1"}
    assert observation["performer"] == [{"reference": "Practitioner/9"}]
    assert observation["hasMember"] == [{"reference": "urn:uuid:elsewhere"}]
    assert observation["derivedFrom"] == [{"reference": "Observation/o-1", "display": "itself"}]
    assert ids(collect(source, "Patient")) == ["p-1"]
    assert source.skipped == {"Alice.json: Bundle entry without resource": 2}


def test_absolute_full_urls_become_the_entry_resources_type_and_id(tmp_path: Path) -> None:
    """The entry's own id wins over the fullUrl's last segment."""
    write_json(
        tmp_path / "searchset.json",
        bundle(
            "collection",
            {
                "fullUrl": "http://host/fhir/Patient/url-id",
                "resource": {"resourceType": "Patient", "id": "real-id"},
            },
            {
                "fullUrl": "http://host/fhir/Observation/o1",
                "resource": obs("o1", "http://host/fhir/Patient/url-id"),
            },
        ),
    )
    [observation] = collect(FolderSource(tmp_path), "Observation")
    assert observation["subject"] == {"reference": "Patient/real-id"}


@pytest.mark.parametrize(
    ("full_url", "expected"),
    [
        ("urn:uuid:6b1d1c3e-0000-4000-8000-000000000001", "6b1d1c3e-0000-4000-8000-000000000001"),
        ("urn:oid:1.2.840.1", "1.2.840.1"),
        ("http://host/fhir/Patient/7", "7"),
        ("http://host/fhir/Patient/7/_history/2", "7"),
    ],
)
def test_an_entry_without_id_takes_it_from_its_full_url(
    tmp_path: Path, full_url: str, expected: str
) -> None:
    """Transaction entries to be created often carry no id; the fullUrl stands in for it."""
    write_json(
        tmp_path / "b.json",
        bundle(
            "transaction",
            {"fullUrl": full_url, "resource": {"resourceType": "Patient"}},
            {"resource": obs("o1", full_url)},
        ),
    )
    source = FolderSource(tmp_path)
    assert ids(collect(source, "Patient")) == [expected]
    assert collect(source, "Observation")[0]["subject"] == {"reference": f"Patient/{expected}"}
    assert ids(collect(source, "Observation", {expected})) == ["o1"]


def test_a_single_resource_json_file_is_read_for_its_type(tmp_path: Path) -> None:
    """One resource a file, as in the HL7 examples."""
    write_json(tmp_path / "Patient-example.json", {"resourceType": "Patient", "id": "example"})
    source = FolderSource(tmp_path)
    assert ids(collect(source, "Patient")) == ["example"]
    with pytest.raises(IncompleteInputError, match="no Observation resources"):
        collect(source, "Observation")


def test_json_that_is_not_a_fhir_resource_is_skipped_and_counted(tmp_path: Path) -> None:
    """A package.json beside the examples is no error, but it is counted."""
    write_json(tmp_path / "package.json", {"name": "hl7.fhir.r4.examples"})
    write_json(tmp_path / "list.json", [{"resourceType": "Patient", "id": "p1"}])
    source = FolderSource(tmp_path)
    with pytest.raises(IncompleteInputError, match="no Patient resources"):
        collect(source, "Patient")
    assert source.skipped == {
        "list.json: not a FHIR resource": 1,
        "package.json: not a FHIR resource": 1,
    }


def test_a_malformed_json_file_is_skipped_and_recorded_naming_nobody(tmp_path: Path) -> None:
    """A broken Bundle is recorded with the file (a type-named one) and line; it holds many
    patients' resources, so its bytes name none for sure. The other files are read."""
    (tmp_path / "Bundle_1.json").write_text(
        '{\n  "resourceType": "Bundle",\n  "entry": [\n  ,]\n}\n'
    )
    write_json(tmp_path / "Bundle_2.json", bundle("collection", {"resource": obs("o1")}))
    source = FolderSource(tmp_path)
    assert ids(collect(source, "Observation")) == ["o1"]
    [item] = source.unreadable
    assert (item.file, item.line, item.patient) == (str(tmp_path / "Bundle_1.json"), 4, None)
    assert item.reason.startswith("not valid JSON")


def test_a_folder_of_only_broken_json_files_lacks_the_type(tmp_path: Path) -> None:
    """Nothing readable holds the type: incomplete input, as for a missing file."""
    (tmp_path / "Bundle_1.json").write_text("{not json")
    source = FolderSource(tmp_path)
    with pytest.raises(IncompleteInputError, match="no Patient resources"):
        collect(source, "Patient")
    assert len(source.unreadable) == 1


# --- filtering ----------------------------------------------------------------------------------


def patient_linked(tmp_path: Path, storage: str) -> FolderSource:
    """Observations of p1, p2 and nobody, written as NDJSON, gzipped NDJSON or a Bundle."""
    resources = [
        obs("plain", "p1"),
        obs("absolute", "http://host/fhir/Patient/p1/_history/3"),
        obs("other", "p2"),
        obs("mentions-p1-elsewhere", "p2", performer=[{"reference": "Patient/p1"}]),
        obs("group", "Group/p1"),
        obs("no-subject", None),
        obs("weird", "Patient/weird id"),
        {
            "resourceType": "Observation",
            "id": "patient-key",
            "patient": {"reference": "Patient/p1"},
        },
    ]
    if storage == "bundle":
        write_json(tmp_path / "b.json", bundle("collection", *({"resource": r} for r in resources)))
    else:
        write_ndjson(tmp_path / f"Observation.{storage}", *resources)
        # JSON escapes a bytes search could miss: `\/` and `\u0050` (P).
        with (tmp_path / "Observation.zz.ndjson").open("wb") as extra:
            extra.write(b'{"resourceType":"Observation","id":"escaped-slash",')
            extra.write(b'"subject":{"reference":"Patient\\/p1"}}\n')
            extra.write(b'{"resourceType":"Observation","id":"escaped-u",')
            extra.write(b'"subject":{"reference":"\\u0050atient/p1"}}\n')
    return FolderSource(tmp_path)


ESCAPED = ["escaped-slash", "escaped-u"]


@pytest.mark.parametrize("storage", ["ndjson", "ndjson.gz", "bundle"])
@pytest.mark.parametrize(
    ("patients", "expected"),
    [
        ({"p1"}, ["plain", "patient-key"]),
        ({"p2"}, ["other", "mentions-p1-elsewhere"]),
        ({"p1", "p2"}, ["plain", "other", "mentions-p1-elsewhere", "patient-key"]),
        ({"nobody"}, []),
        (set(), []),
        # Not a FHIR id: the bytes pre-check is off, the parse still finds it.
        ({"weird id"}, ["weird"]),
    ],
)
def test_only_the_wanted_patients_resources_come_back(
    tmp_path: Path, storage: str, patients: set[str], expected: list[str]
) -> None:
    """Subject or patient, relative only; never a mere mention, a Group or another server's."""
    source = patient_linked(tmp_path, storage)
    found = ids(collect(source, "Observation", patients))
    escaped = ESCAPED if "p1" in patients and storage != "bundle" else []
    assert found == expected + escaped
    # `http://host/fhir/Patient/p1` is another server's p1, wherever the query looks.
    assert source.foreign == {"Observation": 1}


def test_no_patient_filter_gives_every_resource(tmp_path: Path) -> None:
    """patients=None means every local patient, and resources of none."""
    found = collect(patient_linked(tmp_path, "ndjson"), "Observation")
    assert len(found) == 7 + len(ESCAPED)
    assert "absolute" not in ids(found)


@pytest.mark.parametrize("name", ["Patient.ndjson", "Patient.000.ndjson.gz"])
def test_patients_match_by_their_own_id(tmp_path: Path, name: str) -> None:
    """A Patient belongs to itself."""
    write_ndjson(
        tmp_path / name,
        *({"resourceType": "Patient", "id": pid} for pid in ["p1", "p2", "p3"]),
    )
    assert ids(collect(FolderSource(tmp_path), "Patient", {"p1", "p3"})) == ["p1", "p3"]


def test_other_patients_lines_are_dropped_unparsed_and_doubtful_ones_parsed(
    tmp_path: Path,
) -> None:
    """A Patient line whose `"id":"..."` names nobody wanted is not parsed (a damaged one is not
    recorded); one written otherwise (spaces, escapes, cut short) is, and recorded if damaged."""
    lines = [
        orjson.dumps({"resourceType": "Patient", "id": "p0"}),
        orjson.dumps({"resourceType": "Patient", "id": "p1"}),
        b'{"resourceType":"Patient","id":"p2","x":tru}',
        b'{"resourceType":"Patient","id":"p3","x":tru}',
        b'{"resourceType":"Patient", "id" : "p3"}',
        b'{"resourceType":"Patient","id":"p\\u0033"}',
        b'{"resourceType":"Patient","id":"p3"',
    ]
    (tmp_path / "Patient.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    source = FolderSource(tmp_path)
    assert ids(collect(source, "Patient", {"p1", "p3"})) == ["p1", "p3", "p3"]
    assert [i.line for i in source.unreadable] == [4, 7]
    assert source.other_patients == {"Patient": 2}


def test_codes_are_not_filtered_here(tmp_path: Path) -> None:
    """The sweep re-checks codes on the client, so a folder returns every code."""
    write_ndjson(tmp_path / "Observation.ndjson", obs("o1"), obs("o2"))
    codes = frozenset({Coding("http://loinc.org", "718-7")})
    assert ids(collect(FolderSource(tmp_path), "Observation", codes=codes)) == ["o1", "o2"]


# --- the event loop -----------------------------------------------------------------------------


def test_a_long_file_gives_the_event_loop_turns(tmp_path: Path) -> None:
    """Reading is CPU work in the loop's thread; other tasks still run during a big file."""
    write_ndjson(tmp_path / "Observation.ndjson", *(obs(f"o{i}") for i in range(5000)))

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        async for _ in FolderSource(tmp_path).fetch(Query("Observation")):
            pass
        task.cancel()
        return ticks - before

    assert asyncio.run(main()) >= 4


def test_aclose_ends_an_unfinished_fetch(tmp_path: Path) -> None:
    """A caller that stops early can still release the open file."""
    write_ndjson(tmp_path / "Observation.ndjson.gz", *(obs(f"o{i}") for i in range(3000)))

    async def main() -> tuple[Resource, list[Resource]]:
        source = FolderSource(tmp_path)
        fetch = source.fetch(Query("Observation"))
        first = await anext(fetch)
        await source.aclose()
        return first, [r async for r in fetch]

    first, rest = asyncio.run(main())
    assert first["id"] == "o0"
    assert rest == []


# --- the shared data ----------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.parametrize(
    ("folder", "resource_type", "count"),
    [
        ("synthea-r4-100", "Patient", 100),
        ("synthea-r4-615", "Condition", 4546),
        ("hl7-examples", "Patient", 22),
        ("hl7-examples", "Observation", 64),
        ("bulk-export-10", "Patient", 13),
        ("bulk-export-1000-patients-only", "Patient", 1144),
    ],
)
def test_the_shared_data_reads_in_full(
    shared_data: Path, folder: str, resource_type: str, count: int
) -> None:
    """Every resource of the shared exports comes back, once (hl7-examples/ndjson/ is not read)."""
    source = FolderSource(shared_data / folder)
    found = collect(source, resource_type)
    assert len(found) == count
    assert len(set(ids(found))) == count
    assert {r["resourceType"] for r in found} == {resource_type}


@pytest.mark.data
def test_the_hl7_examples_package_json_is_counted_as_skipped(shared_data: Path) -> None:
    """The examples folder holds one JSON file that is not FHIR."""
    source = FolderSource(shared_data / "hl7-examples")
    collect(source, "Patient")
    assert source.skipped == {"package.json: not a FHIR resource": 1}


@pytest.mark.data
def test_the_bytes_pre_check_agrees_with_a_full_parse_on_synthea(shared_data: Path) -> None:
    """Filtering by patient gives exactly what parsing every line and filtering after gives."""
    source = FolderSource(shared_data / "synthea-r4-100")
    patients = set(ids(collect(source, "Patient"))[::20])
    everything = collect(source, "Observation")
    expected = [r["id"] for r in everything if patient_id_of(r) in patients]
    assert len(expected) > 100
    assert ids(collect(source, "Observation", patients)) == expected


def test_a_broken_file_named_after_a_patient_is_not_named_in_the_record(tmp_path: Path) -> None:
    """Synthea names Bundle files after the patient: the record shows the file's place, not its
    name, and so does the error when nothing else holds the type."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "Abe604_Frami345_1234.json").write_text("{not json")
    write_json(folder / "Zed_Zee_9.json", bundle("collection", {"resource": obs("o1")}))
    source = FolderSource(folder)
    collect(source, "Observation")
    [item] = source.unreadable
    assert "Abe604" not in item.file
    assert "Frami345" not in item.file
    assert "file 1 of 2 in name order" in item.file
