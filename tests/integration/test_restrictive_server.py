"""Sweeps through a server that restricts search as Epic does (issue 13, "Tests against real
behaviour").

The demo population is copied under ids of its own (a fresh prefix, identifiers too) into a
folder and onto the local server, with a Group of its patients: some members inactive, some whose
membership ended before as-of or starts after it. tests/integration/restrictive.py stands in
front of the server: one patient per Condition, Observation and Procedure search, `code` applied
after the search, `_count` capped at PAGE_CAP so that every patient's searches page.

What must hold: the verdicts never depend on how the source reads. The sweep of the folder with
the default cohort is the truth. A sweep of the Group straight from the server; sweeps through
the proxy with `--profile epic` and with a profile that says what the proxy enforces; and sweeps
with the generic profile, which fall back to per-patient reads on the first refusal: all give
the truth's verdicts for the Group's current members, and the same ResearchSubjects. So do
`--cohort file:` lists of ids and of `system|value` identifiers, on the server and on the folder.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import own_server
import pytest
import yaml
from restrictive import CLINICAL, Refusal, RestrictiveProxy, Rules, Seen, renamed

from adapter.servers import load_profiles
from adapter.sources.per_patient import SWITCH_MESSAGE

if TYPE_CHECKING:  # conftest is not importable at run time; the names are for the reader
    from conftest import Sweep, SweepRunner

# The module's own server (tests/integration/own_server.py) in place of the session's.
fhir_base_url = own_server.fhir_base_url
fhir = own_server.fhir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ROOT / "fixtures" / "demo" / "expected.json"
MAPPINGS = ROOT / "mappings"
MRN = "urn:trial-adapter:demo-mrn"
PAGE_CAP = 7  # the proxy's `_count` cap: below most patients' Observations, so searches page
RUN_SECONDS = 300
Verdicts = dict[str, tuple[str, dict[str, str]]]

# Group members (demo ids) that are not current on as-of, one per status where it can be.
INACTIVE = ("demo-02", "demo-14", "demo-30")  # candidate, potential-candidate, ineligible
ENDED = ("demo-03", "demo-15", "demo-31")  # period ended 2026-01-31
NOT_STARTED = ("demo-04",)  # period starts 2026-07-01
ENDS_LATER = ("demo-05",)  # period ends 2026-12-31: current, evaluated
# The `--cohort file:` lists: every status, an inactive Group member (a file knows nothing of the
# Group) and one patient outside the cohort (demo-54).
LISTED: tuple[str, ...] = (
    *("demo-01", "demo-02", "demo-06", "demo-16", "demo-21", "demo-25", "demo-33", "demo-36"),
    *("demo-45", "demo-54", "demo-70", "demo-86"),
)


@dataclass(frozen=True)
class Population:
    """The renamed demo: its folder (with Group.ndjson) and what the Group holds."""

    prefix: str
    folder: Path
    group_id: str
    members: tuple[str, ...]  # every member's Patient id, current or not
    skipped: frozenset[str]  # Patient references of members not current on as-of
    outside: frozenset[str]  # Patient references outside the trial's cohort

    def ref(self, demo_id: str) -> str:
        return f"Patient/{self.prefix}{demo_id}"

    def mrn(self, demo_id: str) -> str:
        """The renamed MRN of a demo patient (`demo-07` has `DEMO-0007`)."""
        return f"{self.prefix}DEMO-{demo_id.removeprefix('demo-').zfill(4)}"

    def current(self) -> frozenset[str]:
        """Patient references of the members current on as-of."""
        return frozenset(f"Patient/{m}" for m in self.members) - self.skipped


@dataclass(frozen=True)
class Run:
    """A sweep, its sink folder, what the proxy saw (empty without one), the profile named."""

    sweep: Sweep
    sink: Path
    seen: tuple[Seen, ...] = ()
    profile: str | None = None

    @property
    def verdicts(self) -> Verdicts:
        return verdicts_in(self.sweep.report)

    def subjects(self) -> list[dict[str, Any]]:
        lines = (self.sink / "ResearchSubject.ndjson").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def verdicts_in(results: dict[str, Any]) -> Verdicts:
    """Patient -> (status, criterion id -> result), as conftest.verdicts."""
    return {
        p["patient"]: (p["status"], {cid: c["result"] for cid, c in p["criteria"].items()})
        for p in results["patients"]
    }


def only(found: Verdicts, patients: Iterable[str]) -> Verdicts:
    wanted = set(patients)
    return {p: v for p, v in found.items() if p in wanted}


def member(demo_id: str, prefix: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"entity": {"reference": f"Patient/{prefix}{demo_id}"}}
    if demo_id in INACTIVE:
        entry["inactive"] = True
    elif demo_id in ENDED:
        entry["period"] = {"start": "2025-01-01", "end": "2026-01-31"}
    elif demo_id in NOT_STARTED:
        entry["period"] = {"start": "2026-07-01"}
    elif demo_id in ENDS_LATER:
        entry["period"] = {"start": "2025-01-01", "end": "2026-12-31"}
    return entry


@pytest.fixture(scope="module")
def population(
    fhir: httpx.Client,
    demo_resources: list[dict[str, Any]],
    load_resources: Callable[[httpx.Client, Iterable[dict[str, Any]]], None],
    tmp_path_factory: pytest.TempPathFactory,
) -> Population:
    """The demo renamed, with a Group of every patient, written to a folder and PUT on the
    server."""
    prefix = f"rs{uuid.uuid4().hex[:8]}-"
    demo_ids = sorted(r["id"] for r in demo_resources if r["resourceType"] == "Patient")
    group = {
        "resourceType": "Group",
        "id": "registry",
        "type": "person",
        "actual": True,
        "member": [member(d, "") for d in demo_ids],
    }
    resources = renamed([*demo_resources, group], prefix)
    folder = tmp_path_factory.mktemp("restrictive-population")
    by_type: dict[str, list[str]] = {}
    for resource in resources:
        by_type.setdefault(resource["resourceType"], []).append(json.dumps(resource))
    for kind, lines in by_type.items():
        (folder / f"{kind}.ndjson").write_text("\n".join(lines) + "\n")
    load_resources(fhir, resources)
    outside = json.loads(EXPECTED.read_text())["outside_cohort"]
    not_current = (*INACTIVE, *ENDED, *NOT_STARTED)
    return Population(
        prefix=prefix,
        folder=folder,
        group_id=prefix + "registry",
        members=tuple(prefix + d for d in demo_ids),
        skipped=frozenset(f"Patient/{prefix}{d}" for d in not_current),
        outside=frozenset(o.replace("Patient/", f"Patient/{prefix}") for o in outside),
    )


def sweep(run_sweep: SweepRunner, folder: Path, source: str, *args: str, check: bool = True) -> Run:
    """The CLI on `source` with a sink folder and a state folder of the run's own."""
    sink = folder / "sink"
    done = run_sweep(
        folder / "out",
        "--source",
        source,
        "--sink",
        str(sink),
        "--state-dir",
        str(folder / "state"),
        *args,
        check=check,
        timeout=RUN_SECONDS,
    )
    return Run(done, sink)


def proxied(run_sweep: SweepRunner, folder: Path, upstream: str, rules: Rules, *args: str) -> Run:
    """`sweep` through a RestrictiveProxy of `rules`; the run keeps what the proxy saw."""
    with RestrictiveProxy(upstream, rules) as proxy:
        run = sweep(run_sweep, folder, proxy.base_url, *args)
        return Run(run.sweep, run.sink, tuple(proxy.seen))


@pytest.fixture(scope="module")
def truth(
    population: Population, run_sweep: SweepRunner, tmp_path_factory: pytest.TempPathFactory
) -> Verdicts:
    """Every cohort patient's verdicts, from the folder with the default cohort."""
    run = sweep(run_sweep, tmp_path_factory.mktemp("truth"), str(population.folder))
    assert run.sweep.code == 0, run.sweep.stderr[-2000:]
    return run.verdicts


@pytest.fixture(scope="module")
def reference(
    population: Population,
    fhir_base_url: str,
    run_sweep: SweepRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    """The Group swept straight from the server: no restriction, the generic profile."""
    folder = tmp_path_factory.mktemp("reference")
    return sweep(run_sweep, folder, fhir_base_url, "--cohort", f"group:{population.group_id}")


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site folder whose `servers/restrictive.yaml` says what the proxy enforces (but its
    `_count` cap): `code` a post-filter on all three clinical types, Observation's included."""
    folder = tmp_path_factory.mktemp("site")
    (folder / "servers").mkdir()
    profile = Rules(max_count=PAGE_CAP).profile("restrictive")
    (folder / "servers" / "restrictive.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


@pytest.fixture(scope="module", params=["epic", "restrictive"])
def per_patient(
    request: pytest.FixtureRequest,
    population: Population,
    site_dir: Path,
    fhir_base_url: str,
    run_sweep: SweepRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    """The Group swept through the proxy with a profile that reads per patient: the bundled
    `epic`, and the harness's own (whose Observation `code` is a post-filter, so Observations
    are searched by category)."""
    profile: str = request.param
    folder = tmp_path_factory.mktemp(profile)
    args = ["--profile", profile, "--cohort", f"group:{population.group_id}"]
    if profile == "restrictive":
        args += ["--site-mappings", str(site_dir)]
    run = proxied(run_sweep, folder, fhir_base_url, Rules(max_count=PAGE_CAP), *args)
    return Run(run.sweep, run.sink, run.seen, profile)


# -- the truth and the reference -------------------------------------------------------------------


def test_the_truth_covers_every_status_among_current_members(
    population: Population, truth: Verdicts
) -> None:
    """The folder sweep sees the renamed demo as the demo: 80 in the cohort, all three statuses
    among the Group's current members, none of the outside-cohort patients."""
    assert len(truth) == 80
    assert not population.outside & truth.keys()
    current = only(truth, population.current())
    assert {status for status, _ in current.values()} == {
        "candidate",
        "potential-candidate",
        "ineligible",
    }
    assert len(current) == 80 - len(population.skipped)


def test_unrestricted_group_sweep_matches_the_files(
    population: Population, truth: Verdicts, reference: Run
) -> None:
    """Straight from the server, the Group's current cohort members get the truth's verdicts."""
    assert reference.sweep.code == 0, reference.sweep.stderr[-2000:]
    assert reference.verdicts == only(truth, population.current())


def test_unrestricted_group_sweep_writes_a_subject_per_flagged_member(reference: Run) -> None:
    flagged = {
        p: status
        for p, (status, _) in reference.verdicts.items()
        if status in ("candidate", "potential-candidate")
    }
    written = {s["individual"]["reference"]: s["status"] for s in reference.subjects()}
    assert flagged
    assert written == flagged


# -- Epic: per-patient reads, code after the search, a _count cap ----------------------------------


def test_per_patient_sweep_gives_the_unrestricted_verdicts(
    reference: Run, per_patient: Run
) -> None:
    assert per_patient.sweep.code == 0, per_patient.sweep.stderr[-2000:]
    expected, found = reference.verdicts, per_patient.verdicts
    differing = sorted(p for p in expected if expected[p] != found.get(p))
    assert found.keys() == expected.keys()
    assert not differing, f"{len(differing)} patients differ, such as {differing[:3]}"


def test_per_patient_sweep_writes_the_unrestricted_research_subjects(
    reference: Run, per_patient: Run
) -> None:
    """The sink files are the same, line for line."""
    for name in ("ResearchStudy.ndjson", "ResearchSubject.ndjson"):
        assert (per_patient.sink / name).read_text() == (reference.sink / name).read_text(), name


def test_per_patient_sweep_names_one_patient_per_search_and_is_never_refused(
    per_patient: Run,
) -> None:
    clinical = [s for s in per_patient.seen if s.is_search and s.resource_type in CLINICAL]
    assert {s.resource_type for s in clinical} == set(CLINICAL)
    several = [s for s in clinical if len(s.patients) != 1]
    assert not several, f"{len(several)} searches named no patient or several"
    assert [s for s in per_patient.seen if s.refused is not None] == []
    assert {s.status for s in per_patient.seen} == {200}


def test_per_patient_sweep_searches_observations_by_code_only_where_code_filters(
    per_patient: Run, site_dir: Path
) -> None:
    """Where the profile says the server filters by `code`, Observations are searched by
    patient and code, and never by category (Observations without one must be found); where
    `code` is a post-filter, by patient and category, never by code (issue 13)."""
    profile = load_profiles(MAPPINGS, site_dir)[str(per_patient.profile)]
    observations = [s for s in per_patient.seen if s.is_search and s.resource_type == "Observation"]
    assert observations
    with_code = [s for s in observations if s.values("code")]
    with_category = [s for s in observations if s.values("category")]
    if profile.rules("Observation").honours("code"):
        assert (len(with_code), with_category) == (len(observations), [])
    else:
        assert (with_code, len(with_category)) == ([], len(observations))


def test_per_patient_sweep_follows_the_pages_the_cap_makes(per_patient: Run) -> None:
    """The server lowered `_count` to PAGE_CAP, so some searches had later pages (`_offset`),
    and the sweep read them all (the verdicts test says it read them right)."""
    asked = [s for s in per_patient.seen if s.is_search]
    assert any(int(s.values("_count")[0]) > PAGE_CAP for s in asked if s.values("_count"))
    assert any(s.values("_offset") not in ([], ["0"]) for s in asked)


def test_per_patient_sweep_reports_how_it_read(per_patient: Run) -> None:
    reads = per_patient.sweep.report["source_reads"]
    assert (reads["mode"], reads["profile"]) == ("per-patient", per_patient.profile)
    assert reads["switched_to_per_patient"] is False
    assert isinstance(reads["unreached"], list)


# -- the generic profile, which falls back to per-patient reads -----------------------------------


@pytest.mark.parametrize("mode", ["not-supported", "invalid"])
def test_generic_sweep_switches_to_per_patient_on_the_first_refusal(
    population: Population,
    fhir_base_url: str,
    run_sweep: SweepRunner,
    reference: Run,
    tmp_path: Path,
    mode: Refusal,
) -> None:
    """Without a profile the sweep reads in batches; the first multi-patient search is refused
    (400 `not-supported`, or a plain 400 `invalid`), and the rest of the run reads one patient
    at a time: one refusal, one log line, the unrestricted verdicts."""
    cohort = f"group:{population.group_id}"
    rules = Rules(max_count=PAGE_CAP, multi_patient=mode)
    run = proxied(run_sweep, tmp_path, fhir_base_url, rules, "--cohort", cohort)

    assert run.sweep.code == 0, run.sweep.stderr[-2000:]
    assert run.verdicts == reference.verdicts
    reads = run.sweep.report["source_reads"]
    assert (reads["mode"], reads["switched_to_per_patient"]) == ("per-patient", True)
    assert run.sweep.stderr.count(SWITCH_MESSAGE) == 1
    refused = [s for s in run.seen if s.refused is not None]
    assert [s.refused for s in refused] == [mode], "one refusal teaches the whole run"


# -- --cohort file: --------------------------------------------------------------------------------


@pytest.mark.parametrize("lines", ["ids", "identifiers"])
@pytest.mark.parametrize("where", ["server", "folder"])
def test_file_cohort_gives_the_truth_for_the_listed_patients(
    population: Population,
    fhir_base_url: str,
    run_sweep: SweepRunner,
    truth: Verdicts,
    tmp_path: Path,
    lines: str,
    where: str,
) -> None:
    """A list of Patient ids, or of `system|value` identifiers (resolved by
    `Patient?identifier=`), read from the folder or through the Epic-like proxy: the listed
    cohort patients get the truth's verdicts; the one outside the cohort is not evaluated."""
    if lines == "ids":
        listed = [population.prefix + d for d in LISTED]
    else:
        listed = [
            f"{MRN}|{population.prefix}DEMO-{d.removeprefix('demo-').zfill(4)}" for d in LISTED
        ]
    cohort_file = tmp_path / "cohort.txt"
    cohort_file.write_text("# patients to screen\n\n" + "\n".join(listed) + "\n")
    args = ("--cohort", f"file:{cohort_file}")

    if where == "folder":
        run = sweep(run_sweep, tmp_path, str(population.folder), *args)
    else:
        rules = Rules(max_count=PAGE_CAP)
        run = proxied(run_sweep, tmp_path, fhir_base_url, rules, "--profile", "epic", *args)
        assert [s for s in run.seen if s.refused is not None] == []
        by_identifier = [s for s in run.seen if s.path == "Patient" and s.values("identifier")]
        assert bool(by_identifier) is (lines == "identifiers")

    assert run.sweep.code == 0, run.sweep.stderr[-2000:]
    expected = only(truth, [population.ref(d) for d in LISTED])
    assert len(expected) == len(LISTED) - 1  # demo-54 is outside the cohort
    assert run.verdicts == expected
    cohort = run.sweep.report["cohort"]
    assert (cohort["members"], cohort["outside_cohort"]) == (len(LISTED), 1)


# -- a Group with members no longer (or not yet) current -------------------------------------------


def test_unrestricted_group_sweep_leaves_out_members_not_current(
    population: Population, reference: Run
) -> None:
    """Inactive members, and members whose period ended before as-of or starts after it, are
    left out and counted in results.json's cohort section."""
    assert_only_current_members(reference, population)


def test_per_patient_group_sweep_leaves_out_members_not_current(
    population: Population, per_patient: Run
) -> None:
    assert_only_current_members(per_patient, population)


def assert_only_current_members(run: Run, population: Population) -> None:
    evaluated = {p["patient"] for p in run.sweep.report["patients"]}
    assert not evaluated & population.skipped
    assert population.ref(ENDS_LATER[0]) in evaluated
    cohort = run.sweep.report["cohort"]
    assert cohort["form"] == f"group:{population.group_id}"
    assert cohort["entries"] == len(population.members)
    assert (cohort["inactive"], cohort["ended"], cohort["not_started"]) == (
        len(INACTIVE),
        len(ENDED),
        len(NOT_STARTED),
    )
    assert cohort["members"] == len(population.members) - len(population.skipped)
    assert cohort["outside_cohort"] == len(population.outside)


# -- the default cohort on a server that needs a patient -------------------------------------------


def test_default_search_cohort_on_epic_says_to_name_a_group_or_a_file(
    fhir_base_url: str, run_sweep: SweepRunner, tmp_path: Path
) -> None:
    """Epic offers no server-wide Condition search: the run ends (exit 2, or 1 if the server had
    to say so) with one line telling the user to use --cohort group: or file:."""
    with RestrictiveProxy(fhir_base_url, Rules(max_count=PAGE_CAP)) as proxy:
        done = run_sweep(
            tmp_path / "out",
            "--source",
            proxy.base_url,
            "--profile",
            "epic",
            "--state-dir",
            str(tmp_path / "state"),
            check=False,
        )
    assert done.code in (1, 2), done.stderr[-2000:]
    told = [line for line in done.stderr.splitlines() if "group:" in line and "file:" in line]
    assert len(told) == 1, done.stderr[-2000:]
