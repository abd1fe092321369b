"""REST benchmark: the adapter's sweep over a FHIR server, against the plain-paging floor.

Starts its own sekmet-fhir instance (tools/fhir-server/server.sh, state in a temporary folder,
port BENCH_FHIR_PORT, default 8790), loads synthea-r4-615 into it through transaction Bundles
(PUT entries), and measures, as medians of BENCH_RUNS runs (default 3):

  (a) the floor: plain httpx + orjson paging in series over
      `Observation?code=<the t2dm trial's codes + the hcc trial's lab codes>&_count=1000`;
      and, with BENCH_CALIBRATE=1, ../shared/PERFORMANCE.md's own floor query (its 8 lab codes);
  (b) the adapter's REST sweep of t2dm-glycaemic-control as of 2021-04-01
      (`adapter.connect.open_source(url, ServerConfig(), ...)` + `run_sweep`), with the
      requests it made, and the same with two ServerConfig variants (bigger pages, no count);
  (c) the same sweep from the folder source.

The server is stopped at the end, also on failure or Ctrl-C. Results of the REST and folder sweeps
must agree (cohort, per-patient statuses, errors, facts read and used): a difference is printed as
a WARNING and the exit status is 1. Nothing here asserts a time. See bench/README.md.

Environment:
  TRIAL_ADAPTER_SHARED   the shared folder (default ../shared next to the repository)
  BENCH_RUNS             runs per measurement (default 3)
  BENCH_FHIR_PORT        port of the temporary server (default 8790; another free port if taken)
  BENCH_LOAD             `all` (default): every Patient, Condition and Observation;
                         `needed`: only the Observations with a code of the floor query (about
                         16k of 88k; loads in ~20 s instead of ~2 min, but this server's searches
                         cost grows with every Observation it holds: NOT comparable with `all`)
  BENCH_LOAD_BATCH       entries per transaction Bundle (default 2000)
  BENCH_CALIBRATE        1 adds PERFORMANCE.md's floor query (default 0: ~25 s more)
  BENCH_FHIR_URL         use this already running and loaded server instead (nothing is started,
                         loaded or stopped; it must hold synthea-r4-615 as loaded here)
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson

from adapter.config import ServerConfig
from adapter.connect import open_source
from adapter.facts.model import Coding
from adapter.sources.rest import code_token
from adapter.sweep import SweepResult, run_sweep
from adapter.trials import Trial, load_trial

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRIAL_ADAPTER_SHARED") or ROOT.parent / "shared") / "data"
DATA = SHARED / "synthea-r4-615"
SERVER_SH = ROOT / "tools" / "fhir-server" / "server.sh"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
PORT = int(os.environ.get("BENCH_FHIR_PORT", "8790"))
LOAD = os.environ.get("BENCH_LOAD", "all")
LOAD_BATCH = int(os.environ.get("BENCH_LOAD_BATCH", "2000"))
CALIBRATE = os.environ.get("BENCH_CALIBRATE", "0") == "1"
EXTERNAL_URL = os.environ.get("BENCH_FHIR_URL")

TRIAL = "t2dm-glycaemic-control"
HCC = "hcc-ablation-lenvatinib-pd1"
AS_OF = date(2021, 4, 1)
PAGE = 1000  # sekmet's MAX_COUNT, and PERFORMANCE.md's page size
# The hcc trial's analytes that are not laboratory results (scores, vital signs, imaging).
NON_LAB_ANALYTES = frozenset({"ecog", "systolic_bp", "diastolic_bp", "tumour_size", "nyha_class"})
# ../shared/PERFORMANCE.md's floor query: "8 LOINC codes", 11,008 Observations. It does not list
# them; these hcc labs are one of the two 8-code sets that match exactly 11,008 (the other has
# 777-3, platelets, for 6690-2, leukocytes: both have 1,233 Observations).
PERFORMANCE_MD_CODES = (
    "1742-6",
    "1751-7",
    "1920-8",
    "1975-2",
    "38483-4",
    "6299-2",
    "6690-2",
    "718-7",
)
# Loaded: what the t2dm sweep reads (Patient, Condition, Observation). Procedure is not: no
# measured query reads it (the t2dm trial reads no Procedure; the floor reads Observations only).
LOAD_TYPES = ("Patient", "Condition", "Observation")

T = TypeVar("T")


def say(message: str) -> None:
    print(f"bench_rest: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the server


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def temporary_server() -> Iterator[str]:
    """A sekmet-fhir instance of its own (state in a temporary folder), stopped on every way out.

    The `finally` stops it on errors, Ctrl-C and SIGTERM; a watchdog process stops it too if this
    process dies without running it (SIGKILL, the OOM killer).
    """
    state = Path(tempfile.mkdtemp(prefix="trial-adapter-bench-rest-"))
    port = PORT if _port_free(PORT) else _free_port()
    if port != PORT:
        say(f"port {PORT} is taken: using {port}")
    env = {**os.environ, "FHIR_STATE_DIR": str(state / "fhir-server"), "FHIR_PORT": str(port)}
    stop = ["bash", str(SERVER_SH), "stop"]
    watchdog = subprocess.Popen(
        [
            "bash",
            "-c",
            'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "${@:2}"; rm -rf "$0"',
            str(state),
            str(os.getpid()),
            *stop,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        started = subprocess.run(
            ["bash", str(SERVER_SH), "start"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        yield started.stdout.strip()
    finally:
        watchdog.terminate()
        watchdog.wait()
        subprocess.run(stop, env=env, check=False)
        shutil.rmtree(state, ignore_errors=True)


# ---------------------------------------------------------------- loading


def floor_codings() -> set[Coding]:
    """The t2dm trial's Observation codes and the hcc trial's lab codes."""
    codings = set(load_trial(TRIAL).observation_codes())
    hcc = load_trial(HCC)
    for name in hcc.needed_analytes() - NON_LAB_ANALYTES:
        analyte = hcc.analytes[name]
        codings.update(analyte.codes)
        codings.update(analyte.panel_codes)
    return codings


def floor_tokens() -> list[str]:
    """`system|code` search tokens of `floor_codings`, escaped as the adapter does."""
    return sorted(code_token(c) for c in floor_codings())


def _has_code(resource: dict[str, Any], wanted: frozenset[tuple[str, str]]) -> bool:
    codings = (resource.get("code") or {}).get("coding") or []
    return any((c.get("system"), c.get("code")) in wanted for c in codings)


def load(base: str, wanted: frozenset[tuple[str, str]] | None) -> tuple[Counter[str], float]:
    """PUT the data through transaction Bundles; Observations only with `wanted` codes if given."""
    loaded: Counter[str] = Counter()
    headers = {
        "Content-Type": "application/fhir+json",
        "Accept": "application/fhir+json",
        "Prefer": "return=minimal",
    }
    start = time.perf_counter()
    with httpx.Client(headers=headers, timeout=600) as client:

        def send(kind: str, batch: list[bytes]) -> None:
            body = b'{"resourceType":"Bundle","type":"transaction","entry":[' + b",".join(batch)
            response = client.post(base, content=body + b"]}")
            if response.status_code != 200:
                raise RuntimeError(
                    f"a {kind} transaction failed: HTTP {response.status_code} "
                    f"{response.text[:300]}"
                )
            statuses = [
                e.get("response", {}).get("status", "")
                for e in orjson.loads(response.content).get("entry", [])
            ]
            bad = [s for s in statuses if not s.startswith(("200", "201"))]
            if bad or len(statuses) != len(batch):
                raise RuntimeError(
                    f"a {kind} transaction answered {len(statuses)} of "
                    f"{len(batch)} entries, failures: {bad[:5]}"
                )
            loaded[kind] += len(batch)

        for kind in LOAD_TYPES:
            t0 = time.perf_counter()
            batch: list[bytes] = []
            with gzip.open(DATA / f"{kind}.ndjson.gz") as lines:
                for line in lines:
                    line = line.strip()
                    if not line:
                        continue
                    resource = orjson.loads(line)
                    observation = kind == "Observation"
                    if observation and wanted is not None and not _has_code(resource, wanted):
                        loaded["Observation skipped"] += 1
                        continue
                    url = orjson.dumps(f"{kind}/{resource['id']}")
                    batch.append(
                        b'{"resource":' + line + b',"request":{"method":"PUT","url":' + url + b"}}"
                    )
                    if len(batch) == LOAD_BATCH:
                        send(kind, batch)
                        batch = []
            if batch:
                send(kind, batch)
            say(f"loaded {loaded[kind]:,} {kind} in {time.perf_counter() - t0:.1f} s")
    return loaded, time.perf_counter() - start


# ---------------------------------------------------------------- measuring


def median_of(fn: Callable[[], T]) -> tuple[float, list[tuple[float, T]]]:
    """The median wall time of RUNS calls, and each run's (seconds, result)."""
    runs = []
    for _ in range(RUNS):
        start = time.perf_counter()
        value = fn()
        runs.append((time.perf_counter() - start, value))
    return statistics.median(s for s, _ in runs), runs


def median_run(runs: list[tuple[float, T]]) -> T:
    ordered = sorted(runs, key=lambda r: r[0])
    return ordered[(len(ordered) - 1) // 2][1]


def floor_paging(base: str, tokens: list[str]) -> tuple[int, int]:
    """Plain httpx + orjson, in series, along next links: (resources, requests)."""
    params = {"code": ",".join(tokens), "_count": str(PAGE)}
    n = requests = 0
    with httpx.Client(headers={"Accept": "application/fhir+json"}, timeout=600) as client:
        url: str | None = f"{base}/Observation"
        while url is not None:
            response = client.get(url, params=params if requests == 0 else None)
            response.raise_for_status()
            page = orjson.loads(response.content)
            requests += 1
            n += sum(
                1
                for e in page.get("entry", ())
                if e.get("resource", {}).get("resourceType") == "Observation"
            )
            url = next(
                (link["url"] for link in page.get("link", ()) if link.get("relation") == "next"),
                None,
            )
    return n, requests


@dataclass
class Exchange:
    kind: str
    seconds: float
    size: int
    page_size: str | None
    in_sweep: bool


@dataclass
class RestRun:
    result: SweepResult
    exchanges: list[Exchange] = field(default_factory=list)
    sweep_seconds: float = 0.0


class _Recorder:
    """Times every `httpx.AsyncClient.send` of the process while installed (the adapter's HTTP)."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.in_sweep = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Recorder]:
        original = httpx.AsyncClient.send
        recorder = self

        async def send(
            client: httpx.AsyncClient, request: httpx.Request, *args: Any, **kwargs: Any
        ) -> httpx.Response:
            start = time.perf_counter()
            response = await original(client, request, *args, **kwargs)
            seconds = time.perf_counter() - start
            recorder.exchanges.append(_exchange(request, response, seconds, recorder.in_sweep))
            return response

        httpx.AsyncClient.send = send  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            httpx.AsyncClient.send = original  # type: ignore[method-assign]


def _exchange(
    request: httpx.Request, response: httpx.Response, seconds: float, in_sweep: bool
) -> Exchange:
    parts = urlsplit(str(request.url))
    query = dict(parse_qsl(parts.query))
    if request.method == "POST" and parts.path.endswith("/_search"):
        query.update(parse_qsl(request.content.decode("ascii", "replace")))
    kind = parts.path.rstrip("/").rsplit("/", 1)[-1]
    if kind == "_search":
        kind = parts.path.rstrip("/").rsplit("/", 2)[-2] + " (POST)"
    if query.get("_summary") == "count":
        kind += " _summary=count"
    elif kind != "metadata":
        kind += " next page" if query.get("_offset", "0") != "0" else " first page"
    return Exchange(kind, seconds, len(response.content), query.get("_count"), in_sweep)


def rest_sweep(base: str, trial: Trial, config: ServerConfig) -> RestRun:
    messages: list[str] = []

    async def go() -> RestRun:
        recorder = _Recorder()
        with recorder.installed():
            async with open_source(base, config, env={}, say=messages.append) as source:
                recorder.in_sweep = True
                start = time.perf_counter()
                result = await run_sweep(trial, source, AS_OF)
                seconds = time.perf_counter() - start
        return RestRun(result, recorder.exchanges, seconds)

    return asyncio.run(go())


def folder_sweep(trial: Trial) -> SweepResult:
    async def go() -> SweepResult:
        async with open_source(str(DATA), ServerConfig(), env={}, say=lambda _m: None) as source:
            return await run_sweep(trial, source, AS_OF)

    return asyncio.run(go())


def summary(result: SweepResult) -> dict[str, object]:
    """What must be equal between sources: cohort, verdicts, errors, facts used.

    Not the resources read: the server applies the code filters, the folder source reads every
    line of the patients asked for and the sweep skips the codes no criterion needs.
    """
    stats = result.stats
    return {
        "cohort (patients evaluated)": len(result.verdicts),
        "statuses": dict(sorted(Counter(str(v.status) for v in result.verdicts).items())),
        "errors": len(result.errors),
        "per-patient statuses": sorted((v.patient, str(v.status)) for v in result.verdicts),
        "Patients read": stats["Patient"],
        "Conditions read": stats["Condition"],
        "observations_used": stats["observations_used"],
        "observations_unusable": stats["observations_unusable"],
        "unusable reasons": dict(sorted(result.unusable.items())),
    }


def compare(name: str, got: dict[str, object], expected: dict[str, object]) -> list[str]:
    return [
        f"WARNING: {name}: {key} is {got[key]!r}, the folder sweep has {expected[key]!r}"
        if key != "per-patient statuses"
        else f"WARNING: {name}: per-patient statuses differ from the folder sweep's"
        for key in expected
        if got[key] != expected[key]
    ]


def breakdown(run: RestRun) -> list[str]:
    """The adapter's HTTP exchanges by kind, and how the sweep's time splits."""
    groups: dict[tuple[str, str | None], list[Exchange]] = {}
    for ex in run.exchanges:
        key = (ex.kind if ex.in_sweep else f"{ex.kind} (open_source)", ex.page_size)
        groups.setdefault(key, []).append(ex)
    lines = [f"    {'request':44} {'n':>3} {'_count':>6} {'s':>7} {'KB':>8}"]
    for (kind, page_size), exs in groups.items():
        lines.append(
            f"    {kind:44} {len(exs):3} {page_size or '-':>6} "
            f"{sum(e.seconds for e in exs):7.3f} {sum(e.size for e in exs) / 1e3:8.0f}"
        )
    http = sum(e.seconds for e in run.exchanges if e.in_sweep)
    n = sum(1 for e in run.exchanges if e.in_sweep)
    lines.append(
        f"    run_sweep {run.sweep_seconds:.3f} s = {n} HTTP exchanges {http:.3f} s "
        f"(server + transfer) + client work {run.sweep_seconds - http:.3f} s; "
        f"open_source (metadata, _elements probe) "
        f"{sum(e.seconds for e in run.exchanges if not e.in_sweep):.3f} s"
    )
    return lines


def measure(base: str) -> int:
    rows: list[tuple[str, float, str]] = []
    notes: list[str] = []
    tokens = floor_tokens()
    floor_s, floor_runs = median_of(lambda: floor_paging(base, tokens))
    n, requests = floor_runs[0][1]
    rows.append(
        (
            "floor: httpx+orjson, t2dm + hcc lab codes",
            floor_s,
            f"{n:,} Observations, {len(tokens)} codes, {requests} requests of {PAGE}",
        )
    )
    if CALIBRATE:
        loinc = [f"http://loinc.org|{c}" for c in PERFORMANCE_MD_CODES]
        seconds, calibration_runs = median_of(lambda: floor_paging(base, loinc))
        n, requests = calibration_runs[0][1]
        rows.append(
            (
                "floor: PERFORMANCE.md's 8 codes (4.22 s there)",
                seconds,
                f"{n:,} Observations, {requests} requests of {PAGE}",
            )
        )

    trial = load_trial(TRIAL)
    folder_s, folder_runs = median_of(lambda: folder_sweep(trial))
    folder_stats = folder_runs[0][1].stats
    expected = summary(folder_runs[0][1])
    warnings: list[str] = []
    for _, result in folder_runs[1:]:
        warnings += compare("folder sweep (a later run)", summary(result), expected)

    variants = [
        ("adapter REST sweep t2dm, ServerConfig()", ServerConfig()),
        ("  same, page_size=1000", ServerConfig(page_size=PAGE)),
        ("  same, page_size=1000, result_cap=None", ServerConfig(page_size=PAGE, result_cap=None)),
    ]
    for name, config in variants:
        seconds, rest_runs = median_of(partial(rest_sweep, base, trial, config))
        for _, run in rest_runs:
            warnings += compare(name.strip(), summary(run.result), expected)
        typical = median_run(rest_runs)
        got = summary(typical.result)
        requests = sum(1 for e in typical.exchanges if e.in_sweep)
        rows.append(
            (
                name,
                seconds,
                f"{got['cohort (patients evaluated)']} patients, "
                f"{typical.result.stats['Observation']} Observations, "
                f"{got['Conditions read']} Conditions, {requests} requests "
                f"(+{len(typical.exchanges) - requests} in open_source)",
            )
        )
        notes += [f"  {name.strip()} (the median run):", *breakdown(typical)]

    rows.append(
        (
            "folder sweep t2dm (same trial, as-of)",
            folder_s,
            f"{expected['cohort (patients evaluated)']} patients, "
            f"{folder_stats['Observation']:,} Observations read "
            f"({expected['observations_used']} used), statuses {expected['statuses']}",
        )
    )

    print(f"{'benchmark':50} {'median s':>9} {'vs floor':>9}  notes (runs: {RUNS})")
    for name, seconds, note in rows:
        print(f"{name:50} {seconds:9.3f} {seconds / floor_s:9.2f}  {note}")
    print("\nWhere the adapter's REST sweep spends its time:")
    print("\n".join(notes))
    for line in warnings:
        print(line)
    if not warnings:
        print(
            "\nREST and folder sweeps agree: cohort, per-patient statuses, errors, Patients and "
            "Conditions read, Observations used and unusable."
        )
    return 1 if warnings else 0


def main() -> int:
    if not DATA.is_dir():
        say(f"no benchmark data at {DATA}: set TRIAL_ADAPTER_SHARED")
        return 2
    if LOAD not in ("all", "needed"):
        say("BENCH_LOAD must be all or needed")
        return 2
    # SIGTERM ends the run through the finally blocks (the server is stopped), as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.perf_counter()
    if EXTERNAL_URL:
        say(f"using the running server {EXTERNAL_URL}: nothing is loaded or stopped")
        code = measure(EXTERNAL_URL.rstrip("/"))
    else:
        with temporary_server() as base:
            wanted = None
            if LOAD == "needed":
                wanted = frozenset((c.system, c.code) for c in floor_codings())
            loaded, seconds = load(base, wanted)
            total = sum(v for k, v in loaded.items() if " " not in k)
            what = ", ".join(f"{v:,} {k}" for k, v in loaded.items())
            print(
                f"load ({LOAD}): {total:,} resources in {seconds:.1f} s "
                f"({total / seconds:,.0f}/s, transaction Bundles of {LOAD_BATCH} PUTs): {what}"
                + ("; Procedure not loaded (no measured query reads it)")
            )
            code = measure(base)
    print(f"\nwhole run: {time.perf_counter() - start:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
