"""The folder source's side of the group and file cohorts (issue 13): `group` and
`patients_by_identifier`."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapter.errors import IncompleteInputError
from adapter.sources.base import Resource, Source
from adapter.sources.files import FolderSource

EDGE = Path(__file__).resolve().parents[2] / "fixtures" / "edge" / "cohorts"
MRN = "urn:mrn"


def write_ndjson(path: Path, *lines: Resource | bytes) -> Path:
    data = b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def group(gid: str, *patients: str, **extra: Any) -> Resource:
    members = [{"entity": {"reference": f"Patient/{p}"}} for p in patients]
    return (
        {"resourceType": "Group", "id": gid, "type": "person", "actual": True}
        | {"member": members}
        | extra
    )


def patient(pid: str, *identifiers: tuple[str | None, str]) -> Resource:
    idents = [
        {"value": value} if system is None else {"system": system, "value": value}
        for system, value in identifiers
    ]
    return {"resourceType": "Patient", "id": pid, "identifier": idents}


def read_group(folder: Path, gid: str) -> Resource | None:
    return asyncio.run(FolderSource(folder).group(gid))


def by_identifier(source: FolderSource, *tokens: tuple[str, str]) -> list[str]:
    async def main() -> list[str]:
        return [p["id"] async for p in source.patients_by_identifier(list(tokens))]

    return asyncio.run(main())


def test_the_folder_source_is_a_source_that_reads_files() -> None:
    """It offers the whole Source protocol, and says it reads files."""
    source: Source = FolderSource(EDGE)
    assert source.reads.mode == "files"
    assert source.reads.switched is False


# --- group -------------------------------------------------------------------------------------


def test_the_group_is_found_by_id_in_the_group_file() -> None:
    found = read_group(EDGE, "hcc-registry")
    assert found is not None
    assert found["name"] == "Synthetic HCC registry (edge cases)"
    assert len(found["member"]) == 15


def test_a_group_the_folder_lacks_is_none() -> None:
    """None: the caller says what is missing (cohorts.read_members: IncompleteInputError)."""
    assert read_group(EDGE, "absent") is None


@pytest.mark.parametrize("name", ["Group.ndjson", "Group.000.ndjson.gz", "Group.1.ndjson"])
def test_groups_are_read_from_bulk_data_group_files(tmp_path: Path, name: str) -> None:
    write_ndjson(tmp_path / name, group("a", "p1"), group("b", "p2"))
    found = read_group(tmp_path, "b")
    assert found is not None
    assert found["member"] == [{"entity": {"reference": "Patient/p2"}}]


def test_a_group_file_with_a_line_of_another_type_is_read_past_it(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "Group.ndjson", {"resourceType": "Patient", "id": "x"}, group("g"))
    source = FolderSource(tmp_path)
    assert asyncio.run(source.group("g")) is not None
    assert source.skipped == {"Group.ndjson: resourceType is not Group": 1}


def test_a_group_in_a_bundle_has_its_references_made_relative(tmp_path: Path) -> None:
    """A transaction's `urn:uuid:` and absolute fullUrls become `Patient/<id>`, as for any
    resource; a reference no entry resolves stays absolute (another server's)."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                "resource": {"resourceType": "Patient"},
            },
            {
                "fullUrl": "https://h.example/fhir/Patient/p2",
                "resource": {"resourceType": "Patient", "id": "p2"},
            },
            {
                "fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222",
                "resource": {
                    "resourceType": "Group",
                    "id": "reg",
                    "type": "person",
                    "actual": True,
                    "member": [
                        {"entity": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}},
                        {"entity": {"reference": "https://h.example/fhir/Patient/p2"}},
                        {"entity": {"reference": "https://other.example/fhir/Patient/p3"}},
                    ],
                },
            },
        ],
    }
    (tmp_path / "bundle.json").write_bytes(orjson.dumps(bundle))
    found = read_group(tmp_path, "reg")
    assert found is not None
    assert [m["entity"]["reference"] for m in found["member"]] == [
        "Patient/11111111-1111-4111-8111-111111111111",
        "Patient/p2",
        "https://other.example/fhir/Patient/p3",
    ]


def test_a_group_may_be_a_json_file_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_bytes(orjson.dumps(group("reg", "p1")))
    assert read_group(tmp_path, "reg") == group("reg", "p1")


def test_two_different_groups_with_one_id_are_not_guessed_between(tmp_path: Path) -> None:
    """An old export beside a new one: which is the registry is the site's to say."""
    write_ndjson(tmp_path / "Group.000.ndjson", group("reg", "p1"))
    write_ndjson(tmp_path / "Group.001.ndjson", group("reg", "p1", "p2"))
    with pytest.raises(IncompleteInputError, match="2 different Groups with the id reg"):
        read_group(tmp_path, "reg")


def test_identical_copies_of_a_group_are_one_group(tmp_path: Path) -> None:
    """The same Group in an NDJSON file and a JSON file (keys in another order): one."""
    write_ndjson(tmp_path / "Group.ndjson", group("reg", "p1"))
    reordered = dict(reversed(list(group("reg", "p1").items())))
    (tmp_path / "reg.json").write_bytes(orjson.dumps(reordered))
    assert read_group(tmp_path, "reg") == group("reg", "p1")


def test_an_unreadable_group_line_may_be_the_group(tmp_path: Path) -> None:
    """Absent, but a Group line could not be read: not `None` (that would be a sure answer)."""
    write_ndjson(tmp_path / "Group.ndjson", group("a"), b'{"resourceType":"Group","id":"re')
    source = FolderSource(tmp_path)
    with pytest.raises(IncompleteInputError, match="1 unreadable lines in the Group files"):
        asyncio.run(source.group("reg"))
    [item] = source.unreadable
    assert (item.line, item.patient) == (2, None)


def test_an_unreadable_group_line_beside_the_group_is_recorded_naming_nobody(
    tmp_path: Path,
) -> None:
    """The Group is found, but the broken line may be another copy or hold a member: recorded
    with no patient, so the sweep withholds writes (exit 3)."""
    write_ndjson(tmp_path / "Group.ndjson", group("reg", "p1"), b'{"resourceType":"Group",')
    source = FolderSource(tmp_path)
    assert asyncio.run(source.group("reg")) is not None
    [item] = source.unreadable
    assert (item.file, item.line, item.patient) == (str(tmp_path / "Group.ndjson"), 2, None)


def test_a_folder_without_fhir_files_fails_the_group_read(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here")
    with pytest.raises(IncompleteInputError, match="no FHIR files"):
        read_group(tmp_path, "reg")


# --- patients_by_identifier --------------------------------------------------------------------


def test_patients_are_found_by_system_and_value() -> None:
    source = FolderSource(EDGE)
    assert by_identifier(source, ("urn:trial-adapter:edge-mrn", "EDGE-0012")) == ["cohort-12"]
    assert by_identifier(source, ("urn:trial-adapter:old-mrn", "OLD-78")) == [
        "cohort-07",
        "cohort-08",
    ]


def test_an_empty_system_matches_only_an_identifier_without_one() -> None:
    """R4 token search `|value`: NOSYS-0003 has no system; EDGE-0001 has one."""
    source = FolderSource(EDGE)
    assert by_identifier(source, ("", "NOSYS-0003")) == ["cohort-03"]
    assert by_identifier(source, ("", "EDGE-0001")) == []


def test_each_patient_is_yielded_once(tmp_path: Path) -> None:
    """Two of its identifiers asked for, and the same Patient in two files: once."""
    p1 = patient("p1", (MRN, "1"), ("urn:old", "A"))
    write_ndjson(tmp_path / "Patient.ndjson", p1, patient("p2", (MRN, "2")))
    (tmp_path / "p1.json").write_bytes(orjson.dumps(p1))
    source = FolderSource(tmp_path)
    assert by_identifier(source, (MRN, "1"), ("urn:old", "A"), (MRN, "2")) == ["p1", "p2"]


@pytest.mark.parametrize(
    ("spelt", "value"),
    [
        (rb"\u00c9-1", "É-1"),
        (rb"A\/1", "A/1"),
        (rb"say \"1\"", 'say "1"'),
        (rb"back\\slash", "back\\slash"),
        ("É1".encode(), "É1"),
        (b"1", "1"),
    ],
)
def test_a_value_is_found_however_json_spells_it(tmp_path: Path, spelt: bytes, value: str) -> None:
    """The bytes pre-check is exact: a line with any escape is parsed, not searched."""
    line = b'{"resourceType":"Patient","id":"p1","identifier":[{"system":"urn:mrn","value":"%s"}]}'
    line %= spelt
    write_ndjson(tmp_path / "Patient.ndjson", patient("p0", (MRN, "0")), line)
    assert by_identifier(FolderSource(tmp_path), (MRN, value)) == ["p1"]


@pytest.mark.parametrize("count", [1, 40])
def test_a_value_appearing_elsewhere_in_a_line_is_no_match(tmp_path: Path, count: int) -> None:
    """The value in another field, or under another system, passes the pre-check, not the match
    (with few values pre-checked and with too many to pre-check)."""
    tokens = [(MRN, str(n)) for n in range(count)]
    write_ndjson(
        tmp_path / "Patient.ndjson",
        patient("p0", ("urn:other", "0")) | {"gender": "0"},
        patient("p1", (MRN, "0")),
    )
    assert by_identifier(FolderSource(tmp_path), *tokens) == ["p1"]


def test_a_line_holding_the_value_but_unreadable_is_recorded(tmp_path: Path) -> None:
    """It may be a wanted Patient: recorded naming nobody (a Patient line's own id may be the
    broken part); a truncated line is parsed whatever it holds."""
    write_ndjson(
        tmp_path / "Patient.ndjson",
        patient("p1", (MRN, "1")),
        b'{"resourceType":"Patient","id":"p2","identifier":[{"system":"urn:mrn","value":"1"}],}',
        b'{"resourceType":"Patient","id":"p3","ident',
    )
    source = FolderSource(tmp_path)
    assert by_identifier(source, (MRN, "1")) == ["p1"]
    assert [(i.line, i.patient) for i in source.unreadable] == [(2, None), (3, None)]


def test_a_line_that_cannot_hold_the_value_is_not_parsed(tmp_path: Path) -> None:
    """Its bytes hold none of the values and no escape: skipped unparsed, so a damaged one is
    left for the Patient fetch to record (the sweep's fetch of its patients parses every line)."""
    write_ndjson(
        tmp_path / "Patient.ndjson",
        patient("p1", (MRN, "1")),
        b'{"resourceType":"Patient","id":"p2","identifier":[{"system":"urn:mrn","value":"2"}],}',
    )
    source = FolderSource(tmp_path)
    assert by_identifier(source, (MRN, "1")) == ["p1"]
    assert source.unreadable == []


def test_a_folder_without_patients_fails_the_lookup(tmp_path: Path) -> None:
    """As the Patient fetch does: no Patient file is incomplete input, not nobody."""
    write_ndjson(tmp_path / "Condition.ndjson", {"resourceType": "Condition", "id": "c"})
    with pytest.raises(IncompleteInputError, match="no Patient resources"):
        by_identifier(FolderSource(tmp_path), (MRN, "1"))


def test_no_identifiers_reads_nothing(tmp_path: Path) -> None:
    """An empty lookup is answered without opening a file (there is none here)."""
    assert by_identifier(FolderSource(tmp_path), *[]) == []


def test_a_lookup_stopped_early_closes_its_file(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "Patient.ndjson", patient("p1", (MRN, "1")), patient("p2", (MRN, "1")))
    source = FolderSource(tmp_path)

    async def first() -> str:
        async for found in source.patients_by_identifier([(MRN, "1")]):
            return str(found["id"])
        return ""

    assert asyncio.run(first()) == "p1"
    asyncio.run(source.aclose())
    assert not source._running
