"""Cohorts without a server-wide search (issue 13): `--cohort search|group:ID|file:PATH`.

The folder `fixtures/edge/cohorts` (see its README) holds the Group `hcc-registry`, with members
inactive, ended, not started, of another type and another server's, and `members.txt`, a cohort
file with ids, `system|value` lines, comments and bad lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapter.cohorts import CohortSpec, Members, group_members, parse_cohort, read_members
from adapter.errors import ConfigError, ExitCode, IncompleteInputError, UsageError
from adapter.sources.base import Resource
from adapter.sources.files import FolderSource

EDGE = Path(__file__).resolve().parents[1] / "fixtures" / "edge" / "cohorts"
AS_OF = date(2026, 6, 15)
MRN = "urn:trial-adapter:edge-mrn"


def members_of(spec: CohortSpec, folder: Path = EDGE) -> Members:
    async def main() -> Members:
        source = FolderSource(folder)
        try:
            return await read_members(spec, source, AS_OF)
        finally:
            await source.aclose()

    return asyncio.run(main())


def file_cohort(tmp_path: Path, data: bytes, folder: Path = EDGE) -> Members:
    path = tmp_path / "cohort.txt"
    path.write_bytes(data)
    return members_of(CohortSpec("file", path=path), folder)


def group(*members: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Group",
        "id": "g",
        "type": "person",
        "actual": True,
        "member": [*members],
    }


def member(reference: str, **extra: Any) -> dict[str, Any]:
    return {"entity": {"reference": reference}, **extra}


# --- the forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("search", CohortSpec("search")),
        ("group:hcc-registry", CohortSpec("group", group_id="hcc-registry")),
        ("group:A.1-b", CohortSpec("group", group_id="A.1-b")),
        ("file:cohort.txt", CohortSpec("file", path=Path("cohort.txt"))),
        ("file:/tmp/a:b|c.txt", CohortSpec("file", path=Path("/tmp/a:b|c.txt"))),
    ],
)
def test_the_three_cohort_forms_are_read(text: str, spec: CohortSpec) -> None:
    """`search`, `group:ID` and `file:PATH`; a path may hold colons (split at the first)."""
    assert parse_cohort(text) == spec
    assert str(parse_cohort(text)) == text


@pytest.mark.parametrize(
    "text",
    ["", "Search", "search:", "groups:x", "group", "list:x", "patients", "group:", "file:"],
)
def test_unknown_cohort_forms_exit_2(text: str) -> None:
    """Anything but the three forms is a usage error, and the message names the forms or the
    part that is missing."""
    with pytest.raises(UsageError) as caught:
        parse_cohort(text)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "search, group:ID or file:PATH" in str(caught.value) or "needs" in str(caught.value)


@pytest.mark.parametrize("group_id", ["a b", "a/b", "a_b", "x" * 65, "é", "1?x=2"])
def test_a_group_id_must_be_a_fhir_id(group_id: str) -> None:
    """group:ID takes a FHIR id (letters, digits, `-`, `.`, at most 64) and nothing else."""
    with pytest.raises(UsageError, match="FHIR id"):
        parse_cohort(f"group:{group_id}")


def test_a_refused_form_is_shown_by_its_first_40_characters_only() -> None:
    """A long value (a pasted file, an MRN list) never reaches the message whole."""
    text = "patients:" + "MRN-12345," * 50
    with pytest.raises(UsageError) as caught:
        parse_cohort(text)
    message = str(caught.value)
    assert repr(text[:40]) in message
    assert text[:41] not in message


# --- group:ID ----------------------------------------------------------------------------------


def test_a_group_cohort_is_the_groups_current_patient_members() -> None:
    """hcc-registry: inactive, ended and not yet started members are skipped, and so are
    entities that are not Patients and another server's; a Patient listed twice counts once."""
    members = members_of(parse_cohort("group:hcc-registry"))
    assert members.ids == [
        "cohort-01",
        "cohort-06",
        "cohort-07",
        "cohort-09",
        "cohort-10",
        "cohort-11",
    ]
    assert members.entries == 15
    assert (members.inactive, members.ended, members.not_started) == (1, 2, 1)
    assert (members.not_patients, members.foreign, members.duplicates) == (2, 2, 1)
    assert members.bad_period == 0


def test_the_group_is_chosen_by_its_id() -> None:
    """other-registry, beside hcc-registry in the same file, holds cohort-12 only."""
    assert members_of(parse_cohort("group:other-registry")).ids == ["cohort-12"]


def test_a_group_the_folder_lacks_is_incomplete_input() -> None:
    """For a folder source, the Group must be in the folder: exit 1, the Group's id named."""
    with pytest.raises(IncompleteInputError, match="Group no-such-registry not found") as caught:
        members_of(parse_cohort("group:no-such-registry"))
    assert caught.value.exit_code == ExitCode.FATAL


@pytest.mark.parametrize(
    ("period", "kept"),
    [
        ({"end": "2026-06-14"}, False),
        ({"end": "2026-06-15"}, True),
        ({"end": "2026-06-15T00:00:00+14:00"}, True),
        ({"end": "2026-06-14T23:59:59-12:00"}, False),
        ({"end": "2026-05"}, False),
        ({"end": "2026-06"}, True),
        ({"end": "2025"}, False),
        ({"end": "2026"}, True),
        ({"start": "2026-06-16"}, False),
        ({"start": "2026-06-15T23:00:00-05:00"}, True),
        ({"start": "2026-06"}, True),
        ({"start": "2026-07"}, False),
        ({"start": "2020-01-01", "end": "2030-01-01"}, True),
        ({}, True),
    ],
)
def test_a_member_is_dropped_only_when_its_period_is_surely_over_or_not_begun(
    period: dict[str, str], kept: bool
) -> None:
    """By calendar day in the date's own offset; a partial date is out only when every day it
    may stand for is before as-of (end) or after it (start)."""
    members = group_members(group(member("Patient/p", period=period)), AS_OF)
    assert members.ids == (["p"] if kept else [])


@pytest.mark.parametrize(
    "period", [{"end": "14/06/2026"}, {"start": "soon"}, "2026", {"end": 2026}]
)
def test_a_member_with_an_unreadable_period_is_kept_and_counted(period: Any) -> None:
    """A member kept by mistake still meets the cohort rules and a reviewer; one dropped by
    mistake is never seen."""
    members = group_members(group(member("Patient/p", period=period)), AS_OF)
    assert members.ids == ["p"]
    assert members.bad_period == 1
    assert "1 members with an unreadable period date kept" in "\n".join(members.describe())


@pytest.mark.parametrize(
    ("entity", "counted"),
    [
        ({"reference": "Patient/p"}, None),
        ({"reference": "Patient/p/_history/3"}, None),
        ({"reference": "Device/d"}, "not_patients"),
        ({"reference": "Group/g2"}, "not_patients"),
        ({"reference": "https://other.example/fhir/Patient/p"}, "foreign"),
        ({"reference": "urn:uuid:6b1f2d6e-0000-4000-8000-000000000001"}, "foreign"),
        ({"reference": "#contained-patient"}, "foreign"),
        ({"reference": "Patient?identifier=x|1"}, "foreign"),
        ({"reference": "Patient/"}, "foreign"),
        ({"reference": "Patient/p/_history/"}, "foreign"),
        ({"reference": "Patients/p"}, "foreign"),
        ({"identifier": {"system": "urn:x", "value": "1"}}, "foreign"),
        ({"display": "someone"}, "foreign"),
    ],
)
def test_only_a_local_patient_reference_is_a_member(
    entity: dict[str, Any], counted: str | None
) -> None:
    """Relative `Patient/x` (versioned or not) counts; another type is not a patient; an absolute
    reference (sources make their own relative), or one nothing resolves, is foreign."""
    members = group_members(group({"entity": entity}), AS_OF)
    assert members.ids == ([] if counted else ["p"])
    if counted:
        assert getattr(members, counted) == 1


def test_a_patient_is_a_member_when_any_of_its_entries_is_current() -> None:
    """An ended entry and a current one for the same patient: a member, the ended one counted."""
    members = group_members(
        group(
            member("Patient/p", period={"end": "2020-01-01"}),
            member("Patient/p", inactive=True),
            member("Patient/p"),
        ),
        AS_OF,
    )
    assert members.ids == ["p"]
    assert (members.ended, members.inactive, members.duplicates) == (1, 1, 0)


def test_a_group_without_members_is_an_empty_cohort() -> None:
    """A Group with `actual: false` holds no members (grp-1): nobody, not an error."""
    definitional = {"resourceType": "Group", "id": "g", "type": "person", "actual": False}
    members = group_members(definitional, AS_OF)
    assert members.ids == []
    assert members.describe() == ["group: 0 patients from 0 entries"]


def test_the_group_description_holds_counts_only() -> None:
    """The log lines name no patient: counts of what was skipped and why."""
    members = members_of(parse_cohort("group:hcc-registry"))
    lines = members.describe()
    assert lines == [
        "group:hcc-registry: 6 patients from 15 entries",
        "group:hcc-registry: skipped 1 inactive, 2 ended before as-of, 1 not started by "
        "as-of, 2 not a Patient, 2 another server's or unresolvable, 1 naming a patient already "
        "listed",
    ]
    assert "cohort-" not in "\n".join(lines)
    assert members.summary() == {
        "members": 6,
        "entries": 15,
        "inactive": 1,
        "ended": 2,
        "not_started": 1,
        "not_patients": 2,
        "foreign": 2,
        "duplicates": 1,
    }


# --- file:PATH ---------------------------------------------------------------------------------


def test_a_file_cohort_takes_ids_and_resolves_system_value_lines() -> None:
    """members.txt: ids as they are, identifiers resolved to the one Patient carrying exactly
    them; an identifier nobody carries, or two Patients carry, is not guessed at."""
    members = members_of(parse_cohort(f"file:{EDGE / 'members.txt'}"))
    assert members.ids == ["cohort-01", "cohort-03", "cohort-10", "cohort-12", "cohort-99"]
    assert members.entries == 12
    assert members.unresolved_lines == [6, 13]
    assert members.ambiguous_lines == [7]
    assert members.bad_lines == [10, 11]
    assert members.duplicates == 2


def test_the_file_description_holds_line_numbers_only() -> None:
    """Logs and results.json show the file by its name (its folder may name its keeper), the
    counts and the line numbers; never an id or identifier from it."""
    spec = parse_cohort(f"file:{EDGE / 'members.txt'}")
    assert spec.describe() == "file:members.txt"
    members = members_of(spec)
    lines = members.describe()
    assert lines == [
        "file:members.txt: 5 patients from 12 lines",
        "file:members.txt: skipped 2 naming a patient already listed",
        "file:members.txt: lines 6, 13 matched no Patient",
        "file:members.txt: line 7 matched more than one Patient (skipped)",
        "file:members.txt: lines 10, 11 neither a FHIR id nor system|value (skipped)",
    ]
    assert members.summary() == {
        "members": 5,
        "entries": 12,
        "duplicates": 2,
        "unresolved_lines": [6, 13],
        "ambiguous_lines": [7],
        "bad_lines": [10, 11],
    }
    text = "\n".join(lines)
    assert "EDGE-" not in text
    assert "OLD-78" not in text


@pytest.mark.parametrize(
    ("line", "ids"),
    [
        (f"{MRN}|EDGE-0001", ["cohort-01"]),
        ("|EDGE-0001", []),  # cohort-01's identifier has a system: `|value` means none
        ("|NOSYS-0003", ["cohort-03"]),
        ("urn:other|NOSYS-0003", []),
        (f"{MRN}|edge-0001", []),  # exact: no case folding
        (f"{MRN}|EDGE-0001 ", ["cohort-01"]),  # the line's surrounding whitespace goes
        (f"{MRN}| EDGE-0001", []),  # inside the line, it stays
        ("urn:trial-adapter:site-b|ÉDGE/12", ["cohort-12"]),
        ("urn:trial-adapter:old-mrn|OLD-78", []),
        ("cohort-04", ["cohort-04"]),
        ("\tcohort-04\r", ["cohort-04"]),
        ("# cohort-04", []),
        ("Patient/cohort-04", []),
        ("cohort 04", []),
    ],
)
def test_one_line_of_a_cohort_file(tmp_path: Path, line: str, ids: list[str]) -> None:
    """Each line form, resolved against the edge folder's Patients."""
    assert file_cohort(tmp_path, line.encode() + b"\n").ids == ids


def test_a_utf8_bom_and_crlf_line_ends_are_fine(tmp_path: Path) -> None:
    """A file saved by Windows Notepad or Excel as UTF-8."""
    data = b"\xef\xbb\xbfcohort-01\r\n# comment\r\n|NOSYS-0003\r\n"
    members = file_cohort(tmp_path, data)
    assert members.ids == ["cohort-01", "cohort-03"]
    assert members.bad_lines == []


def test_a_non_utf8_file_is_a_configuration_error_naming_the_line(tmp_path: Path) -> None:
    """Latin-1 `É` on line 3: exit 2, the path and line number, never the line's content."""
    data = b"cohort-01\n# ok\nurn:trial-adapter:site-b|\xc9DGE/12\n"
    with pytest.raises(ConfigError) as caught:
        file_cohort(tmp_path, data)
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE
    assert f"{tmp_path / 'cohort.txt'}:3: not valid UTF-8" in message
    assert "DGE" not in message
    assert caught.value.__cause__ is None


def test_a_missing_cohort_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the --cohort file"):
        members_of(CohortSpec("file", path=tmp_path / "absent.txt"))
    with pytest.raises(ConfigError, match="cannot read the --cohort file"):
        members_of(CohortSpec("file", path=tmp_path))


def test_an_empty_cohort_file_names_nobody(tmp_path: Path) -> None:
    members = file_cohort(tmp_path, b"# nobody yet\n\n")
    assert (members.ids, members.entries) == ([], 0)


def test_a_file_of_ids_only_never_searches_identifiers(tmp_path: Path) -> None:
    """Ids need no lookup: a folder without any Patient file still gives the cohort (the sweep
    then reports each missing Patient)."""
    (tmp_path / "Condition.ndjson").write_bytes((EDGE / "Condition.ndjson").read_bytes())
    cohort = tmp_path / "ids.txt"
    cohort.write_text("cohort-01\ncohort-02\n")
    assert members_of(CohortSpec("file", path=cohort), tmp_path).ids == ["cohort-01", "cohort-02"]


class CountingSource(FolderSource):
    """A folder source that counts its identifier lookups and the tokens each asks for."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lookups: list[int] = []

    def patients_by_identifier(self, tokens: Sequence[tuple[str, str]]) -> AsyncIterator[Resource]:
        self.lookups.append(len(tokens))
        return super().patients_by_identifier(tokens)


def test_a_large_file_cohort_is_resolved_in_one_lookup(tmp_path: Path) -> None:
    """100,000 identifier lines against 2,000 Patients: one lookup (one scan of the Patient file,
    one batched search on a server), each identifier asked once."""
    folder = tmp_path / "folder"
    folder.mkdir()
    patients = [
        {
            "resourceType": "Patient",
            "id": f"p{n}",
            "identifier": [{"system": MRN, "value": f"M{n}"}],
        }
        for n in range(2000)
    ]
    (folder / "Patient.ndjson").write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in patients))
    path = tmp_path / "cohort.txt"
    path.write_text("".join(f"{MRN}|M{n % 50_000}\n" for n in range(100_000)))
    source = CountingSource(folder)
    members = asyncio.run(read_members(CohortSpec("file", path=path), source, AS_OF))
    assert source.lookups == [50_000]
    assert len(members.ids) == 2000
    assert members.duplicates == 2000
    assert len(members.unresolved_lines) == 96_000
    assert members.describe()[-1].endswith("and 95980 more matched no Patient")


def test_the_search_cohort_is_not_read_here() -> None:
    """`search` is the sweep's own Condition search (sweep.cohort_ids)."""
    with pytest.raises(ValueError, match="not search"):
        members_of(CohortSpec("search"))
