"""`sweep --bulk` end to end against a fake Bulk Data server (issue 14, "respx tests of the whole
flow"): kick-off, polls, manifest, downloads, the sweep of the job folder, DELETE and cleanup,
and every way a run can stop half-way and be taken up by the next.

Each test drives `adapter.cli.main(["sweep", ...])` with respx standing in for the server
(tests/bulk/fakes.py). Status polls never really sleep: `poll`'s sleep is replaced by one that
records the waits asked for.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapter.bulk import client as bulk_client
from adapter.bulk.jobs import BULK, STATE_FILE
from adapter.cli import main
from tests.bulk.fakes import (
    BASE,
    DEMO,
    ELSEWHERE,
    TRANSACTION_TIME,
    FakeBulk,
    demo_data,
    interrupt,
    only_for,
    outcome_line,
)

TRIAL = "hcc-ablation-lenvatinib-pd1"
AS_OF = "2026-06-15"
TOKEN = "site-token-123"
TOKEN_URL = "https://auth.test/oauth2/token"
#: free text of an error file's issue: a patient's name, which must never be shown anywhere
NAME = "Wilhelmina Fakename"
#: a few patients of each verdict, and one outside the cohort, for the tests that need no more
FEW = ("demo-01", "demo-02", "demo-14", "demo-30", "demo-31", "demo-54")
FEW_COUNTS = {"candidate": 2, "potential-candidate": 1, "ineligible": 2}
TYPES = ["Patient", "Condition", "Observation", "Procedure"]
OO_SYSTEM = "http://terminology.hl7.org/CodeSystem/operation-outcome"


@pytest.fixture(autouse=True)
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits between status polls, recorded instead of slept."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)

    assert bulk_client.poll.__kwdefaults__ is not None
    monkeypatch.setitem(bulk_client.poll.__kwdefaults__, "sleep", sleep)
    return asked


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        yield mock


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    out: Path

    @property
    def results(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out / "results.json").read_text())
        return data

    @property
    def report(self) -> str:
        return (self.out / "report.html").read_text()

    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if " ERROR " in line]


class Site:
    """A test's folders and site file: the state folder is kept from one run to the next."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp_path
        self.capsys = capsys
        self.state = tmp_path / "state"
        self.config = tmp_path / "site.yaml"
        self.runs = 0
        self.configure()

    def configure(self, text: str = "") -> None:
        self.config.write_text(text or "{}\n")

    def sweep(self, *extra: str, source: str = BASE, bulk: str | None = "system") -> Run:
        self.runs += 1
        out = self.tmp / f"out-{self.runs}"
        args = ["sweep", "--source", source, "--trial", TRIAL, "--as-of", AS_OF]
        args += ["--out", str(out), "--state-dir", str(self.state), "--config", str(self.config)]
        if bulk is not None:
            args += ["--bulk", bulk]
        self.capsys.readouterr()
        code = main([*args, *extra])
        stdout, stderr = self.capsys.readouterr()
        return Run(code, stdout, stderr, out)

    def job_folders(self) -> list[Path]:
        root = self.state / BULK
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def job_state(self) -> dict[str, Any]:
        (folder,) = self.job_folders()
        data: dict[str, Any] = orjson.loads((folder / STATE_FILE).read_bytes())
        return data


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Site:
    return Site(tmp_path, capsys)


def few() -> dict[str, list[bytes]]:
    return demo_data(FEW)


def verdicts(doc: dict[str, Any]) -> dict[str, str]:
    return {p["patient"]: p["status"] for p in doc["patients"]}


# -- the whole flow --------------------------------------------------------------------------------


def test_the_whole_flow_gives_the_verdicts_of_the_folder_sweep_and_cleans_up(
    site: Site, router: respx.MockRouter, waits: list[float]
) -> None:
    """202, two polls answered 202 (Retry-After 1, X-Progress), the manifest, four files in Bulk
    naming and owner-only, the sweep of those files with the verdicts of `--source
    fixtures/demo`, then the job DELETEd at its status URL and its folder removed."""
    server = FakeBulk()
    server.mount(router)
    seen_at_delete: dict[str, int] = {}

    def look(_request: httpx.Request) -> None:
        # The sweep is done and recorded when the job is DELETEd: the files are still there.
        (folder,) = site.job_folders()
        for path in folder.iterdir():
            if path.is_file() and not path.name.startswith("."):
                seen_at_delete[path.name] = stat.S_IMODE(path.stat().st_mode)

    server.hooks["delete"] = look
    run = site.sweep()
    assert run.code == 0, run.stderr
    assert server.unexpected == []

    (kick_off,) = server.kick_offs()
    assert "respond-async" in kick_off.headers["Prefer"]
    job = server.jobs["job-1"]
    assert job.path == "$export"
    assert job.types() == TYPES
    assert [r.url for r in server.polls()] == [httpx.URL(server.status_url("job-1"))] * 3
    assert waits == [1.0, 1.0]
    assert sorted(seen_at_delete) == [f"{kind}.000.ndjson" for kind in sorted(TYPES)]
    assert set(seen_at_delete.values()) == {0o600}
    (delete,) = server.deletes()
    assert delete.url == httpx.URL(server.status_url("job-1"))
    assert site.job_folders() == []
    assert server.progress is not None
    assert server.progress not in run.stderr  # the server's text is never logged

    folder_run = site.sweep(source=str(DEMO), bulk=None)
    assert folder_run.code == 0, folder_run.stderr
    doc = run.results
    assert doc["counts"] == folder_run.results["counts"]
    assert doc["counts"] == {"candidate": 24, "potential-candidate": 21, "ineligible": 35}
    assert verdicts(doc) == verdicts(folder_run.results)
    bulk = doc["bulk"]
    assert bulk["level"] == "system"
    assert bulk["transaction_time"] == TRANSACTION_TIME
    assert bulk["files"] == dict.fromkeys(TYPES, 1)
    assert bulk["types"] == TYPES
    assert bulk["issues"] == []
    assert bulk["resumed"] is False


def test_keep_export_keeps_the_files_owner_only_and_still_deletes_the_job(
    site: Site, router: respx.MockRouter
) -> None:
    """--keep-export: the job folder stays, its files in Bulk naming and 0600, the state saying
    the job was swept; the job on the server is DELETEd all the same."""
    server = FakeBulk(data=few())
    server.mount(router)
    run = site.sweep("--keep-export")
    assert run.code == 0, run.stderr
    assert run.results["counts"] == FEW_COUNTS
    (folder,) = site.job_folders()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}
    assert files == {f"{kind}.000.ndjson": 0o600 for kind in TYPES} | {STATE_FILE: 0o600}
    assert (folder / "Observation.000.ndjson").read_bytes().splitlines() == few()["Observation"]
    assert site.job_state()["swept"] is True
    assert [r.url for r in server.deletes()] == [httpx.URL(server.status_url("job-1"))]


# -- Retry-After -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "config", "expected"),
    [
        ("7", "", [7.0, 7.0]),
        ("3600", "source: {bulk_max_wait: 1}\n", [1.0, 1.0]),
        ("86400", "source: {bulk_max_wait: 30}\n", [30.0, 30.0]),
        (None, "", [1.0, 2.0]),
    ],
    ids=["honoured", "clamped-to-1", "clamped-to-30", "absent-backs-off"],
)
def test_retry_after_is_honoured_within_bulk_max_wait(
    site: Site,
    router: respx.MockRouter,
    waits: list[float],
    retry_after: str | None,
    config: str,
    expected: list[float],
) -> None:
    """The wait between polls is the server's Retry-After, never more than the site's
    `bulk_max_wait`; without one, 1 s then doubling."""
    site.configure(config)
    server = FakeBulk(data=few(), retry_after=retry_after)
    server.mount(router)
    run = site.sweep()
    assert run.code == 0, run.stderr
    assert waits == expected
    assert len(server.polls("job-1")) == 3


def test_a_bulk_max_wait_under_a_second_is_a_config_error_before_any_request(
    site: Site, router: respx.MockRouter
) -> None:
    site.configure("source: {bulk_max_wait: 0.5}\n")
    server = FakeBulk(data=few())
    server.mount(router)
    run = site.sweep()
    assert run.code == 2
    (line,) = run.errors()
    assert "bulk_max_wait" in line
    assert server.requests == []


# -- error files -----------------------------------------------------------------------------------


def everything_written(site: Site) -> str:
    """Every byte the run left on disk (reports, ledger, state), as text, the site file aside."""
    texts = []
    for path in sorted(site.tmp.rglob("*")):
        if path.is_file() and path != site.config:
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(texts)


def test_an_error_file_with_an_error_withholds_every_write_and_shows_codes_only(
    site: Site, router: respx.MockRouter
) -> None:
    """An error issue: some patient's data may be missing, so nothing goes to the sink (exit 3);
    results.json lists the issue by its codes, and the free text (a patient's name) is nowhere."""
    diagnostics = f"Observation for {NAME} could not be exported"
    server = FakeBulk(
        data=few(),
        errors=[
            outcome_line("error", "processing", "MSG_RESOURCE_NOT_EXPORTED", diagnostics),
            outcome_line("warning", "informational", "MSG_NOTE", f"{NAME} has notes"),
        ],
    )
    server.mount(router)
    sink = site.tmp / "sink"
    run = site.sweep("--sink", str(sink))
    assert run.code == 3, run.stderr
    assert [p for p in sink.rglob("*") if p.is_file()] == []
    doc = run.results
    assert doc["writes_withheld"] is True
    assert doc["counts"] == FEW_COUNTS  # the verdicts are still shown
    assert doc["bulk"]["error_files"] == 1
    assert doc["bulk"]["issues"] == [
        f"error/processing ({OO_SYSTEM}|MSG_RESOURCE_NOT_EXPORTED)",
        f"warning/informational ({OO_SYSTEM}|MSG_NOTE)",
    ]
    assert server.file_gets("errors-0.ndjson")
    for text in (run.stdout, run.stderr, run.report, everything_written(site)):
        assert NAME not in text
    assert "nothing will be written" in run.stderr


def test_the_sink_line_says_the_writes_were_withheld_for_the_exports_error_files(
    site: Site, router: respx.MockRouter
) -> None:
    server = FakeBulk(
        data=few(), errors=[outcome_line("error", "processing", "MSG_X", "no diagnostics")]
    )
    server.mount(router)
    run = site.sweep("--sink", str(site.tmp / "sink"))
    assert run.code == 3
    (line,) = [x for x in run.stderr.splitlines() if "writes withheld" in x]
    assert "0 unreadable input lines" not in line
    assert "error files" in line


def test_an_error_file_with_warnings_only_is_listed_and_the_run_goes_on(
    site: Site, router: respx.MockRouter
) -> None:
    """Warnings leave the export whole: exit 0, the sink written, the issue listed."""
    server = FakeBulk(
        data=few(), errors=[outcome_line("warning", "informational", "MSG_NOTE", NAME)]
    )
    server.mount(router)
    sink = site.tmp / "sink"
    run = site.sweep("--sink", str(sink))
    assert run.code == 0, run.stderr
    doc = run.results
    assert doc["writes_withheld"] is False
    assert doc["bulk"]["issues"] == [f"warning/informational ({OO_SYSTEM}|MSG_NOTE)"]
    assert [p for p in sink.rglob("*") if p.is_file()] != []
    for text in (run.stdout, run.stderr, run.report, everything_written(site)):
        assert NAME not in text


# -- an expired token ------------------------------------------------------------------------------


def smart_site(site: Site, *, extra: str = "") -> None:
    """A SMART Backend Services client with its own key, the token endpoint configured."""
    key = ec.generate_private_key(ec.SECP384R1())
    path = site.tmp / "key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    site.configure(
        "source:\n"
        "  auth:\n"
        "    type: smart-backend\n"
        "    client_id: trial-adapter\n"
        f"    private_key_file: {path}\n"
        "    algorithm: ES384\n"
        "    kid: k1\n"
        f"    token_endpoint: {TOKEN_URL}\n" + extra
    )


def test_a_file_refused_to_an_expired_token_is_fetched_with_a_fresh_one(
    site: Site, router: respx.MockRouter
) -> None:
    """The export outlived token A: the file's 401 brings token B from the token endpoint, and
    every file is read with it."""
    smart_site(site, extra="  max_concurrent: 1\n")
    issued = 0

    def token(_request: httpx.Request) -> httpx.Response:
        nonlocal issued
        issued += 1
        return httpx.Response(
            200, json={"access_token": f"tok{issued}", "token_type": "bearer", "expires_in": 300}
        )

    endpoint = router.post(TOKEN_URL).mock(side_effect=token)
    server = FakeBulk(data=few(), expired_tokens=frozenset({"tok1"}))
    server.mount(router)
    run = site.sweep()
    assert run.code == 0, run.stderr
    assert run.results["counts"] == FEW_COUNTS
    assert server.kick_offs()[0].headers["Authorization"] == "Bearer tok1"
    sent = [(r.url.path.rsplit("/", 1)[1], r.headers["Authorization"]) for r in server.file_gets()]
    first = f"{TYPES[0]}-0.ndjson"
    assert sent[:2] == [(first, "Bearer tok1"), (first, "Bearer tok2")]
    assert sent[2:] == [(f"{kind}-0.ndjson", "Bearer tok2") for kind in TYPES[1:]]
    assert endpoint.call_count >= 2


# -- resume ----------------------------------------------------------------------------------------


def test_a_run_killed_while_polling_is_taken_up_at_the_same_status_url(
    site: Site, router: respx.MockRouter
) -> None:
    """Killed after the kick-off: the status URL is kept; the next run polls it, with no second
    kick-off."""
    server = FakeBulk(data=few())
    server.mount(router)
    server.hooks["status"] = interrupt()
    first = site.sweep()
    assert first.code == 1
    assert "interrupted" in first.stderr
    state = site.job_state()
    assert state["status_url"] == server.status_url("job-1")
    assert state["manifest"] is None
    del server.hooks["status"]

    second = site.sweep()
    assert second.code == 0, second.stderr
    assert len(server.kick_offs()) == 1
    assert {r.url.params["_jobId"] for r in server.polls()} == {"job-1"}
    assert len(server.polls()) == 1 + 3
    assert second.results["counts"] == FEW_COUNTS
    assert second.results["bulk"]["resumed"] is True
    assert site.job_folders() == []


def test_a_run_killed_before_its_first_file_downloads_without_polling_again(
    site: Site, router: respx.MockRouter
) -> None:
    """Killed once the manifest came: the next run neither kicks off nor polls; it downloads."""
    site.configure("source: {max_concurrent: 1}\n")
    server = FakeBulk(data=few())
    server.mount(router)
    server.hooks["file"] = interrupt()
    first = site.sweep()
    assert first.code == 1
    state = site.job_state()
    assert state["manifest"]["transaction_time"] == TRANSACTION_TIME
    assert state["downloaded"] == []
    polled = len(server.polls())
    del server.hooks["file"]

    second = site.sweep()
    assert second.code == 0, second.stderr
    assert len(server.kick_offs()) == 1
    assert len(server.polls()) == polled == 3
    assert sorted(r.url.path.rsplit("/", 1)[1] for r in server.file_gets()) == sorted(
        [f"{TYPES[0]}-0.ndjson"] + [f"{kind}-0.ndjson" for kind in TYPES]
    )
    assert second.results["counts"] == FEW_COUNTS


def test_a_run_killed_between_files_downloads_only_the_missing_ones(
    site: Site, router: respx.MockRouter
) -> None:
    """Two files of each type, one at a time; killed at the third: the two downloaded whole are
    kept and never fetched again, the others are."""
    site.configure("source: {max_concurrent: 1}\n")
    server = FakeBulk(data=few(), files_per_type=2)
    server.mount(router)
    server.hooks["file"] = only_for("Condition-0.ndjson", interrupt())
    first = site.sweep()
    assert first.code == 1
    (folder,) = site.job_folders()
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == [
        STATE_FILE,
        "Patient.000.ndjson",
        "Patient.001.ndjson",
    ]
    assert [f["path"] for f in site.job_state()["downloaded"]] == [
        "Patient.000.ndjson",
        "Patient.001.ndjson",
    ]

    second = site.sweep()
    assert second.code == 0, second.stderr
    assert len(server.kick_offs()) == 1
    assert len(server.polls()) == 3
    gets = {name: len(server.file_gets(name)) for name in server.file_names()}
    assert gets == {name: 2 if name == "Condition-0.ndjson" else 1 for name in server.file_names()}
    assert second.results["counts"] == FEW_COUNTS
    assert second.results["bulk"]["files"] == dict.fromkeys(TYPES, 2)


def killed_during_the_delete(site: Site, server: FakeBulk) -> None:
    """A first run whose sweep is done and recorded, killed while it DELETEs the job."""
    server.hooks["delete"] = interrupt()
    first = site.sweep()
    assert first.code == 1
    assert "interrupted" in first.stderr
    assert first.results["counts"] == FEW_COUNTS  # the sweep itself was done and reported
    assert site.job_folders() != []  # the job and its files are kept
    del server.hooks["delete"]


def test_after_a_kill_during_the_delete_an_incremental_run_deletes_the_old_job_and_exports(
    site: Site, router: respx.MockRouter
) -> None:
    """The next run is incremental (the facts store took in the swept export), so its request
    differs: the old job is DELETEd, a new export asks for what changed since, and nothing of
    either job is left behind."""
    server = FakeBulk(data=few())
    server.mount(router)
    killed_during_the_delete(site, server)
    second = site.sweep()
    assert second.code == 0, second.stderr
    assert second.results["counts"] == FEW_COUNTS
    assert len(server.kick_offs()) == 2
    assert ("_since", TRANSACTION_TIME) in server.jobs["job-2"].params
    deleted = [r.url.params["_jobId"] for r in server.deletes()]
    assert deleted[1:] == ["job-1", "job-2"]
    assert server.requests.index(server.deletes()[1]) < server.requests.index(server.kick_offs()[1])
    assert site.job_folders() == []


def test_after_a_kill_during_the_delete_a_full_run_exports_anew(
    site: Site, router: respx.MockRouter
) -> None:
    """The files were swept, so the next run does not sweep them again: it DELETEs the old job
    (DELETE is idempotent) and exports anew."""
    server = FakeBulk(data=few())
    server.mount(router)
    killed_during_the_delete(site, server)
    second = site.sweep("--full")
    assert second.code == 0, second.stderr
    assert len(server.kick_offs()) == 2
    assert second.results["bulk"]["resumed"] is False
    deleted = [r.url.params["_jobId"] for r in server.deletes()]
    assert deleted[1:] == ["job-1", "job-2"]
    assert site.job_folders() == []


# -- DELETE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "warned"), [(202, False), (404, False), (500, True)])
def test_the_job_is_deleted_once_the_run_is_recorded_and_a_failed_delete_is_no_failure(
    site: Site, router: respx.MockRouter, status: int, warned: bool
) -> None:
    """DELETE goes after every file was read and results.json written; 404 (already gone) is what
    was asked, any other failure a warning: the server expires its files itself."""
    server = FakeBulk(data=few(), delete_status=status)
    server.mount(router)
    reported: list[bool] = []

    def look(_request: httpx.Request) -> None:
        reported.append((site.tmp / "out-1" / "results.json").is_file())

    server.hooks["delete"] = look
    run = site.sweep()
    assert run.code == 0, run.stderr
    assert reported
    assert all(reported)
    last_file = max(i for i, r in enumerate(server.requests) if r in server.file_gets())
    first_delete = server.requests.index(server.deletes()[0])
    assert first_delete > last_file
    assert {r.url.params["_jobId"] for r in server.deletes()} == {"job-1"}
    assert ("could not be deleted" in run.stderr) is warned
    assert site.job_folders() == []


# -- files elsewhere -------------------------------------------------------------------------------


def bearer_site(site: Site, extra: str = "") -> None:
    token = site.tmp / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    site.configure(f"source:\n  auth: {{type: bearer, token_file: {token}}}\n{extra}")


def test_a_file_needing_the_token_on_a_foreign_origin_is_refused_unread(
    site: Site, router: respx.MockRouter
) -> None:
    """requiresAccessToken and a file on another host: one error line, exit 1, no request to
    that host at all, so the token never goes there."""
    bearer_site(site)
    server = FakeBulk(data=few(), elsewhere=frozenset({"Observation"}))
    server.mount(router)
    run = site.sweep()
    assert run.code == 1
    (line,) = run.errors()
    assert "requiresAccessToken" in line
    assert ELSEWHERE in line
    elsewhere = httpx.URL(ELSEWHERE).host
    assert [r for r in server.requests if r.url.host == elsewhere] == []
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in server.requests)


def test_files_needing_no_token_are_fetched_without_one_from_every_origin(
    site: Site, router: respx.MockRouter
) -> None:
    """requiresAccessToken false: no Authorization header on any file, the server's own
    included; the FHIR requests carry the token as ever."""
    bearer_site(site)
    server = FakeBulk(data=few(), requires_token=False, elsewhere=frozenset({"Observation"}))
    server.mount(router)
    run = site.sweep()
    assert run.code == 0, run.stderr
    assert run.results["counts"] == FEW_COUNTS
    files = server.file_gets()
    assert {r.url.host for r in files} == {httpx.URL(ELSEWHERE).host, httpx.URL(BASE).host}
    assert [r for r in files if "Authorization" in r.headers] == []
    assert server.kick_offs()[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_trusted_origin_gets_the_token_for_its_files(
    site: Site, router: respx.MockRouter
) -> None:
    """requiresAccessToken and a file on an origin the site trusts: read with the token."""
    bearer_site(site, f"  trusted_origins: [{ELSEWHERE}]\n")
    server = FakeBulk(data=few(), elsewhere=frozenset({"Observation"}))
    server.mount(router)
    run = site.sweep()
    assert run.code == 0, run.stderr
    (observations,) = [r for r in server.file_gets() if r.url.host == httpx.URL(ELSEWHERE).host]
    assert observations.headers["Authorization"] == f"Bearer {TOKEN}"


# -- Group level -----------------------------------------------------------------------------------


def test_a_group_level_export_kicks_off_at_the_group(site: Site, router: respx.MockRouter) -> None:
    server = FakeBulk(data=few())
    server.mount(router)
    run = site.sweep(bulk="group:registry")
    assert run.code == 0, run.stderr
    (job,) = server.jobs.values()
    assert job.path == "Group/registry/$export"
    assert job.types() == TYPES
    assert run.results["bulk"]["level"] == "group:registry"
    assert run.results["counts"] == FEW_COUNTS


@pytest.mark.parametrize("bulk", ["group:registry", "system", "patient"])
def test_a_level_the_capability_statement_lacks_fails_in_one_line_before_any_kick_off(
    site: Site, router: respx.MockRouter, bulk: str
) -> None:
    level = {"group:registry": "Group", "system": "system", "patient": "Patient"}[bulk]
    offered = tuple(x for x in ("system", "Patient", "Group") if x != level)
    server = FakeBulk(data=few(), levels=offered)
    server.mount(router)
    run = site.sweep(bulk=bulk)
    assert run.code == 1
    (line,) = run.errors()
    assert "$export" in line
    assert server.kick_offs() == []
    assert [r.url.path for r in server.requests] == ["/fhir/metadata"]


# -- usage -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "source", "bulk", "message"),
    [
        (("--cohort", "search"), BASE, "system", "exclude each other"),
        ((), str(DEMO), "system", "needs a FHIR server"),
        ((), BASE, "nonsense", "unknown Bulk export level"),
        ((), BASE, "group:", "unknown Bulk export level"),
        ((), BASE, "group:a/b", "unknown Bulk export level"),
    ],
    ids=["with-cohort", "folder-source", "nonsense", "group-without-id", "group-bad-id"],
)
def test_bulk_usage_errors_exit_2_before_any_request(
    site: Site,
    router: respx.MockRouter,
    extra: tuple[str, ...],
    source: str,
    bulk: str,
    message: str,
) -> None:
    server = FakeBulk(data=few())
    server.mount(router)
    run = site.sweep(*extra, source=source, bulk=bulk)
    assert run.code == 2
    (line,) = run.errors()
    assert message in line
    assert server.requests == []


# -- a stale job -----------------------------------------------------------------------------------


def test_a_job_older_than_bulk_resume_hours_is_deleted_and_exported_anew(
    site: Site, router: respx.MockRouter
) -> None:
    """A job kicked off two days ago is not taken up: its status URL is DELETEd, and a new
    export is started, polled and read."""
    server = FakeBulk(data=few())
    server.mount(router)
    server.hooks["status"] = interrupt()
    assert site.sweep().code == 1
    del server.hooks["status"]
    (folder,) = site.job_folders()
    state = site.job_state()
    state["kicked_off"] = "2026-01-01T00:00:00+00:00"
    (folder / STATE_FILE).write_bytes(orjson.dumps(state))

    run = site.sweep()
    assert run.code == 0, run.stderr
    assert [r.url.params["_jobId"] for r in server.deletes()] == ["job-1", "job-2"]
    assert len(server.kick_offs()) == 2
    assert server.requests.index(server.deletes()[0]) < server.requests.index(server.kick_offs()[1])
    assert {r.url.params["_jobId"] for r in server.polls()[1:]} == {"job-2"}
    assert run.results["bulk"]["resumed"] is False
    assert run.results["counts"] == FEW_COUNTS


def test_a_taken_up_job_the_server_no_longer_knows_is_exported_anew(
    site: Site, router: respx.MockRouter
) -> None:
    """Killed while polling, and the server dropped the job meanwhile (404 on its status URL):
    the next run starts one new export rather than failing."""
    server = FakeBulk(data=few())
    server.mount(router)
    server.hooks["status"] = interrupt()
    assert site.sweep().code == 1
    del server.hooks["status"]
    server.jobs["job-1"].deleted = True

    run = site.sweep()
    assert run.code == 0, run.stderr
    assert [r.url.params["_jobId"] for r in server.polls()] == ["job-1", "job-1"] + ["job-2"] * 3
    assert len(server.kick_offs()) == 2
    assert run.results["counts"] == FEW_COUNTS
    assert [r.url.params["_jobId"] for r in server.deletes()] == ["job-2"]


def test_a_group_export_keeps_only_the_groups_current_members(
    site: Site, router: respx.MockRouter
) -> None:
    """A Group export holds every member's data; an inactive member is not evaluated, as with
    --cohort group:ID (issue 13's membership rules)."""
    server = FakeBulk(data=few(), inactive_members=frozenset({"demo-01"}))
    server.mount(router)
    run = site.sweep(bulk="group:registry")
    assert run.code == 0, run.stderr
    assert "Patient/demo-01" not in verdicts(run.results)
    assert run.results["cohort"]["inactive"] == 1
    assert run.results["cohort"]["form"] == "group:registry"
