"""The REST benchmark of issue #15 (`make bench-rest`): the adapter's sweep over a FHIR server.

For each dataset (BENCH_REST_DATA, default `synthea-615,2000`: the shared Synthea 615, and a
2,000-patient population from bench/generate.py), a sekmet-fhir instance of its own
(tools/fhir-server/server.sh, state in a temporary folder, port BENCH_FHIR_PORT, never the test
server's 8765) is started and loaded through transaction Bundles of PUTs (loading is timed apart,
never in a ratio). Then, for each trial on its own, as medians of BENCH_RUNS runs:

  - the sweep in-process: `adapter.connect.open_source(url, ServerConfig(), ...)` then
    `run_sweep`, timed without open_source (which reads /metadata once per process); every HTTP
    exchange is recorded by wrapping `httpx.AsyncHTTPTransport.handle_async_request` in this
    process: method, the whole URL (the adapter's own logs hide ids and queries), the body of a
    `POST _search`, and the response;
  - the floor: exactly those requests replayed plainly, one at a time, with httpx and orjson;
  - resources fetched (every entry of every response, duplicates included) against the distinct
    resources of cohort patients among them (the Patients themselves and the resources whose
    subject is one): the waste of fetching other patients' resources, or the same ones twice;
  - the peer: fhirpy, in its own venv (bench/.venv-fhirpy, made by `make bench-rest`), running
    the same searches (the sweep's first pages, without `_summary=count`; it follows the next
    links itself) in its own process (its start-up untimed), once after each sweep and its
    replay, so that the three meet the same server; medians of BENCH_RUNS;
  - the same sweep from the folder source, which must agree with the REST sweep (cohort,
    per-patient statuses, errors, Patients and Conditions read, Observations used and
    unusable); a difference is a WARNING and exit status 1, as is an hcc patient of a generated
    population whose status is not the demo's.

Targets (issue #15): the in-process sweep at most 1.05x the replay; resources fetched at most
1.05x the cohort's; fhirpy slower than the sweep. Saved as JSON under
bench/results/<date>-<sha>-rest.json. Nothing here asserts a time.

Environment:
  TRIAL_ADAPTER_SHARED   the shared folder (default ../shared next to the repository)
  BENCH_REST_DATA        datasets, comma-separated: `synthea-615` and/or patient counts
  BENCH_RUNS             runs per measurement (default 3)
  BENCH_FHIR_PORT        port of the temporary server (default 8790; another free port if taken)
  BENCH_LOAD_BATCH       entries per transaction Bundle (default 2000)
  BENCH_FHIRPY           0 skips the fhirpy peer
  BENCH_REST_PROFILE     the server profile the sweep uses (default hapi: sekmet-fhir honours
                         the `code:not` the hapi profile sends on Conditions; `generic` sends none)
  BENCH_MAX_CONCURRENT   the sweep's max_concurrent (default: the site file's default, 4)
  BENCH_FHIR_URL         an already running server holding the one dataset of BENCH_REST_DATA
                         (nothing is started, loaded or stopped)
  BENCH_LATENCY_MS       milliseconds each way between every client and the server (default 0):
                         a proxy (bench/latency.py) that holds each chunk back, as a network
                         would; loading goes around it
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import common
import generate
import httpx
import orjson
from common import HCC, T2DM
from latency import DelayProxy

from adapter.config import ServerConfig
from adapter.connect import open_source, resolve_profile
from adapter.sweep import SweepResult, run_sweep
from adapter.trials import Trial, load_trial

ROOT = common.ROOT
SERVER_SH = ROOT / "tools" / "fhir-server" / "server.sh"
FHIRPY_PYTHON = ROOT / "bench" / ".venv-fhirpy" / "bin" / "python"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
PORT = int(os.environ.get("BENCH_FHIR_PORT", "8790"))
LOAD_BATCH = int(os.environ.get("BENCH_LOAD_BATCH", "2000"))
DATASETS = os.environ.get("BENCH_REST_DATA", "synthea-615,2000")
FHIRPY = os.environ.get("BENCH_FHIRPY", "1") != "0"
PROFILE = os.environ.get("BENCH_REST_PROFILE", "hapi")
#: the sweep's `max_concurrent` (default: ServerConfig's); 1 suits a server that answers one
#: request at a time, as sekmet does (requests then never wait on each other at the server)
MAX_CONCURRENT = os.environ.get("BENCH_MAX_CONCURRENT")
EXTERNAL_URL = os.environ.get("BENCH_FHIR_URL")
LATENCY_MS = float(os.environ.get("BENCH_LATENCY_MS", "0"))
TRIALS = (T2DM, HCC)
TARGET_SWEEP = 1.05
TARGET_FETCHED = 1.05
LOAD_TYPES = ("Patient", "Condition", "Observation", "Procedure")

say = common.say


# ---------------------------------------------------------------- datasets and the server


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: Path
    generated: bool


def datasets() -> list[Dataset]:
    found = []
    for item in filter(None, (s.strip() for s in DATASETS.split(","))):
        if item == "synthea-615":
            found.append(Dataset(item, generate.default_source(), False))
        else:
            params = generate.Params(int(item), seed=1)
            found.append(Dataset(f"{int(item):,} patients", common.population(params), True))
    return found


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


def load(base: str, folder: Path) -> tuple[Counter[str], float]:
    """PUT every Patient, Condition, Observation and Procedure through transaction Bundles."""
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
            for path in common.ndjson_files(folder):
                if path.name.split(".", 1)[0] != kind:
                    continue
                for line in generate._lines(path):
                    rid = orjson.loads(line)["id"]
                    url = orjson.dumps(f"{kind}/{rid}")
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


# ---------------------------------------------------------------- recording the adapter's HTTP


@dataclass
class Exchange:
    method: str
    url: str
    content: bytes
    content_type: str | None
    seconds: float
    status: int
    body: bytes
    in_sweep: bool

    def query(self) -> list[tuple[str, str]]:
        pairs = parse_qsl(urlsplit(self.url).query, keep_blank_values=True)
        if self.method == "POST" and self.url.rstrip("/").endswith("/_search"):
            pairs += parse_qsl(self.content.decode("ascii", "replace"), keep_blank_values=True)
        return pairs

    def resource_type(self) -> str:
        parts = urlsplit(self.url).path.rstrip("/").split("/")
        return parts[-2] if parts[-1] == "_search" else parts[-1]

    def is_count(self) -> bool:
        return ("_summary", "count") in self.query()


class _Recorder:
    """Records every request the adapter sends while installed, with its whole response.

    At the transport, below the adapter's client: the URL is the one sent (ids and all), and
    the body is read here, decoded, then handed on as if it were the server's.
    """

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.in_sweep = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Recorder]:
        original = httpx.AsyncHTTPTransport.handle_async_request
        recorder = self

        async def handle(
            transport: httpx.AsyncHTTPTransport, request: httpx.Request
        ) -> httpx.Response:
            start = time.perf_counter()
            response = await original(transport, request)
            await response.aread()
            recorder.exchanges.append(
                Exchange(
                    request.method,
                    str(request.url),
                    request.content,
                    request.headers.get("Content-Type"),
                    time.perf_counter() - start,
                    response.status_code,
                    response.content,
                    recorder.in_sweep,
                )
            )
            return response

        httpx.AsyncHTTPTransport.handle_async_request = handle  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            httpx.AsyncHTTPTransport.handle_async_request = original  # type: ignore[method-assign]


@dataclass
class RestRun:
    result: SweepResult
    exchanges: list[Exchange] = field(default_factory=list)
    sweep_seconds: float = 0.0
    open_seconds: float = 0.0

    @property
    def sweep_exchanges(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.in_sweep]


def rest_sweep(base: str, trial: Trial, as_of: date) -> RestRun:
    async def go() -> RestRun:
        recorder = _Recorder()
        with recorder.installed():
            start = time.perf_counter()
            config = ServerConfig(profile=PROFILE)
            if MAX_CONCURRENT:
                config = ServerConfig(profile=PROFILE, max_concurrent=int(MAX_CONCURRENT))
            profile = resolve_profile(config, None, None)
            async with open_source(
                base, config, env={}, say=lambda _m: None, profile=profile
            ) as source:
                opened = time.perf_counter()
                recorder.in_sweep = True
                result = await run_sweep(trial, source, as_of)
                seconds = time.perf_counter() - opened
        return RestRun(result, recorder.exchanges, seconds, opened - start)

    return asyncio.run(go())


def folder_sweep(folder: Path, trial: Trial, as_of: date) -> SweepResult:
    async def go() -> SweepResult:
        async with open_source(str(folder), ServerConfig(), env={}, say=lambda _m: None) as src:
            return await run_sweep(trial, src, as_of)

    return asyncio.run(go())


def replay(exchanges: list[Exchange]) -> float:
    """The same requests, plainly, one at a time: httpx, then orjson on every body."""
    start = time.perf_counter()
    with httpx.Client(headers={"Accept": "application/fhir+json"}, timeout=600) as client:
        for e in exchanges:
            headers = {"Content-Type": e.content_type} if e.content_type else None
            response = client.request(e.method, e.url, content=e.content or None, headers=headers)
            response.raise_for_status()
            orjson.loads(response.content)
    return time.perf_counter() - start


# ---------------------------------------------------------------- what was fetched


def _owner(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource.get('id')}"
    for key in ("subject", "patient"):
        ref = (resource.get(key) or {}).get("reference")
        if isinstance(ref, str):
            return ref
    return None


def fetched(run: RestRun) -> dict[str, Any]:
    """Entries fetched by the sweep, against the distinct resources of cohort patients in them."""
    cohort = {v.patient for v in run.result.verdicts}
    total: Counter[str] = Counter()
    mine: set[tuple[str, str]] = set()
    for e in run.sweep_exchanges:
        if not e.body.startswith(b"{"):
            continue
        for entry in orjson.loads(e.body).get("entry") or ():
            resource = entry.get("resource") or {}
            kind = resource.get("resourceType", "?")
            if kind == "OperationOutcome":
                continue
            total[kind] += 1
            if _owner(resource) in cohort:
                mine.add((kind, str(resource.get("id"))))
    n = sum(total.values())
    return {
        "fetched": n,
        "fetched_by_type": dict(sorted(total.items())),
        "cohort_resources": len(mine),
        "ratio": round(n / len(mine), 3) if mine else None,
    }


def first_page_searches(run: RestRun) -> list[dict[str, Any]]:
    """The sweep's searches as a peer would ask them: first pages, no `_summary=count`."""
    nexts: set[str] = set()
    for e in run.sweep_exchanges:
        if e.body.startswith(b"{"):
            for link in orjson.loads(e.body).get("link") or ():
                if link.get("relation") == "next":
                    nexts.add(link.get("url"))
    return [
        {"type": e.resource_type(), "params": e.query()}
        for e in run.sweep_exchanges
        if e.url not in nexts and not e.is_count() and e.method in ("GET", "POST")
    ]


# The peer, run by bench/.venv-fhirpy/bin/python: argv = base, searches.json, runs.
FHIRPY_PEER = """
import json, statistics, sys, time
from fhirpy import SyncFHIRClient
base, path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
searches = json.load(open(path))
times, n = [], 0
for _ in range(runs):
    client = SyncFHIRClient(base, extra_headers={"Accept": "application/fhir+json"})
    start = time.perf_counter()
    n = 0
    for s in searches:
        params = {}
        for k, v in s["params"]:
            params.setdefault(k, []).append(v)
        n += len(client.resources(s["type"]).clone(override=True, **params).fetch_all())
    times.append(time.perf_counter() - start)
import fhirpy
print(json.dumps({"seconds": statistics.median(times), "runs": times, "resources": n,
                  "version": fhirpy.__version__}))
"""


def fhirpy_peer(
    base: str, searches: list[dict[str, Any]], runs: int = RUNS
) -> dict[str, Any] | None:
    if not FHIRPY or not searches:
        return None
    if not FHIRPY_PYTHON.is_file():
        say(f"no {FHIRPY_PYTHON}: run `make bench-rest` (it makes the fhirpy venv), skipping")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(searches, f)
        f.flush()
        done = subprocess.run(
            [str(FHIRPY_PYTHON), "-c", FHIRPY_PEER, base, f.name, str(runs)],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        say(f"the fhirpy peer failed: {done.stderr[-1500:]}")
        return None
    peer: dict[str, Any] = json.loads(done.stdout)
    return peer


# ---------------------------------------------------------------- agreement


def summary(result: SweepResult) -> dict[str, object]:
    """What must be equal between sources: cohort, verdicts, errors, facts used.

    Not the resources read: the server applies the code filters, the folder source reads every
    line of the patients asked for and the sweep skips the codes no criterion needs.
    """
    stats = result.stats
    return {
        "cohort": len(result.verdicts),
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
    """The sweep's HTTP exchanges by kind, and how its time splits."""
    groups: dict[str, list[Exchange]] = {}
    for e in run.exchanges:
        kind = f"{e.method} {e.resource_type()}" + (" _summary=count" if e.is_count() else "")
        groups.setdefault(kind if e.in_sweep else f"{kind} (open_source)", []).append(e)
    lines = [f"    {'request':44} {'n':>4} {'s':>7} {'KB':>8}"]
    for kind, exs in groups.items():
        lines.append(
            f"    {kind:44} {len(exs):4} {sum(e.seconds for e in exs):7.3f} "
            f"{sum(len(e.body) for e in exs) / 1e3:8.0f}"
        )
    http = sum(e.seconds for e in run.sweep_exchanges)
    lines.append(
        f"    run_sweep {run.sweep_seconds:.3f} s = {len(run.sweep_exchanges)} exchanges "
        f"{http:.3f} s (server + transfer, in series or overlapped) + the rest "
        f"{run.sweep_seconds - http:.3f} s; open_source {run.open_seconds:.3f} s"
    )
    return lines


# ---------------------------------------------------------------- measuring


@contextlib.contextmanager
def far(base: str) -> Iterator[str]:
    """`base` itself, or with BENCH_LATENCY_MS the same server through a `DelayProxy`."""
    if not LATENCY_MS:
        yield base
        return
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    with DelayProxy(host, port, delay=LATENCY_MS / 1000) as proxy_port:
        say(f"every exchange {LATENCY_MS:g} ms each way further (bench/latency.py)")
        yield f"http://127.0.0.1:{proxy_port}{parts.path}"


def measure(base: str, data: Dataset) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    with far(base) as reached:
        return _measure(reached, data)


def _measure(base: str, data: Dataset) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    warnings: list[str] = []
    for trial_id in TRIALS:
        trial = load_trial(trial_id)
        as_of = common.AS_OF[trial_id]
        expected = summary(folder_sweep(data.folder, trial, as_of))
        sweeps: list[RestRun] = []
        replays: list[float] = []
        peers: list[dict[str, Any]] = []
        # Interleaved, a round at a time: the server's pace drifts over minutes (its caches,
        # its memory), and a peer measured after all the sweeps would meet another server.
        for _ in range(RUNS):
            sweeps.append(rest_sweep(base, trial, as_of))
            replays.append(replay(sweeps[-1].sweep_exchanges))
            peer_run = fhirpy_peer(base, first_page_searches(sweeps[-1]), runs=1)
            if peer_run is not None:
                peers.append(peer_run)
        for run in sweeps:
            warnings += compare(f"{data.name}, {trial_id}", summary(run.result), expected)
        ordered = sorted(sweeps, key=lambda r: r.sweep_seconds)
        typical = ordered[(len(ordered) - 1) // 2]
        if data.generated and trial_id == HCC:
            statuses = {v.patient: str(v.status) for v in typical.result.verdicts}
            want = common.manifest(data.folder)["hcc_expected"]
            bad = [p for p, s in want.items() if statuses.get(p, generate.OUTSIDE) != s]
            if bad:
                warnings.append(f"WARNING: {data.name}: {len(bad)} hcc patients not as the demo")
        sweep_s = common.median([r.sweep_seconds for r in sweeps])
        replay_s = common.median(replays)
        got = fetched(typical)
        peer = None
        if peers:
            runs = [t for p in peers for t in p["runs"]]
            peer = {**peers[0], "seconds": common.median(runs), "runs": runs}
        rows.append(
            {
                "dataset": data.name,
                "trial": trial_id,
                "as_of": as_of.isoformat(),
                "cohort": len(typical.result.verdicts),
                "statuses": expected["statuses"],
                "sweep_seconds": round(sweep_s, 3),
                "sweep_runs": [round(r.sweep_seconds, 3) for r in sweeps],
                "open_source_seconds": round(typical.open_seconds, 3),
                "replay_seconds": round(replay_s, 3),
                "replay_runs": [round(s, 3) for s in replays],
                "ratio_to_replay": round(sweep_s / replay_s, 3) if replay_s else None,
                "requests": len(typical.sweep_exchanges),
                "requests_in_open_source": len(typical.exchanges) - len(typical.sweep_exchanges),
                "http_seconds": round(sum(e.seconds for e in typical.sweep_exchanges), 3),
                **{f"fetch_{k}": v for k, v in got.items()},
                "fhirpy": peer,
            }
        )
        notes += [f"  {data.name}, {trial_id} (the median run):", *breakdown(typical)]
        say(f"{data.name}, {trial_id}: sweep {sweep_s:.2f} s, replay {replay_s:.2f} s")
    return rows, notes, warnings


def targets(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    found = []
    for r in rows:
        if not r["cohort"]:
            continue
        where = f"{r['dataset']}, {r['trial']}"
        ratio = r["ratio_to_replay"]
        found.append(
            {
                "target": f"REST, {where}: in-process sweep <= {TARGET_SWEEP}x the replay",
                "measured": f"{ratio:.2f}x",
                "verdict": "met" if ratio <= TARGET_SWEEP else "not met",
            }
        )
        fetched_ratio = r["fetch_ratio"]
        found.append(
            {
                "target": f"REST, {where}: resources fetched <= {TARGET_FETCHED}x the cohort's",
                "measured": f"{r['fetch_fetched']:,} / {r['fetch_cohort_resources']:,} = "
                f"{fetched_ratio:.2f}x",
                "verdict": "met" if fetched_ratio <= TARGET_FETCHED else "not met",
            }
        )
        if r["fhirpy"]:
            peer = r["fhirpy"]["seconds"]
            found.append(
                {
                    "target": f"peer, {where}: fhirpy slower than the sweep",
                    "measured": f"fhirpy {peer:.2f} s vs sweep {r['sweep_seconds']:.2f} s "
                    f"({peer / r['sweep_seconds']:.2f}x)",
                    "verdict": "met" if peer > r["sweep_seconds"] else "not met",
                }
            )
    return found


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    parts = [
        f"Machine: {m.get('cpu', '?')}, {m['cores']} cores, {m.get('memory_gib', '?')} GiB; load "
        f"average at start {m['load_average']}; "
        + ", ".join(f"{k} {v}" for k, v in doc["versions"].items())
        + f"; main at {doc['git']} (and the working tree as it was); runs {RUNS}; "
        f"server profile {doc.get('profile', 'generic')}; max_concurrent "
        f"{doc.get('max_concurrent')}; latency each way {doc.get('latency_ms_each_way', 0):g} ms."
    ]
    parts += [
        f"Load ({d['dataset']}): {d['resources']:,} resources in {d['seconds']:.0f} s "
        f"({d['resources'] / d['seconds']:,.0f}/s; not timed in any ratio)"
        for d in doc["loads"]
    ]
    rows = [
        [
            r["dataset"],
            r["trial"],
            f"{r['cohort']:,}",
            f"{r['sweep_seconds']:.2f}",
            f"{r['replay_seconds']:.2f}",
            f"**{r['ratio_to_replay']:.2f}x**" if r["ratio_to_replay"] else "-",
            f"{r['requests']} (+{r['requests_in_open_source']})",
            f"{r['fetch_fetched']:,} / {r['fetch_cohort_resources']:,}",
            f"{r['fetch_ratio']:.2f}x" if r["fetch_ratio"] else "-",
            f"{r['fhirpy']['seconds']:.2f}" if r["fhirpy"] else "-",
        ]
        for r in doc["rows"]
    ]
    parts.append(
        common.markdown_table(
            [
                "dataset",
                "trial",
                "cohort",
                "sweep s",
                "replay s",
                "sweep / replay",
                "requests",
                "fetched / cohort's",
                "ratio",
                "fhirpy s",
            ],
            rows,
        )
    )
    parts.append(
        "Targets of issue #15\n\n"
        + common.markdown_table(
            ["target", "measured", "verdict"],
            [[t["target"], t["measured"], t["verdict"]] for t in doc["targets"]],
        )
    )
    parts.append("Where each sweep's time goes:\n" + "\n".join(doc["notes"]))
    parts += doc["warnings"]
    return "\n\n".join(parts)


def main() -> int:
    # SIGTERM ends the run through the finally blocks (the server is stopped), as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.perf_counter()
    doc: dict[str, Any] = {
        "benchmark": "rest",
        "git": common.git_short_sha(),
        "machine": common.machine(),
        "versions": common.versions(),
        "targets_issue": 15,
        "profile": PROFILE,
        "max_concurrent": int(MAX_CONCURRENT) if MAX_CONCURRENT else ServerConfig().max_concurrent,
        "latency_ms_each_way": LATENCY_MS,
        "loads": [],
        "rows": [],
        "notes": [],
        "warnings": [],
    }
    chosen = datasets()
    if EXTERNAL_URL and len(chosen) != 1:
        say("BENCH_FHIR_URL holds one dataset: name it alone in BENCH_REST_DATA")
        return 2
    for data in chosen:
        if EXTERNAL_URL:
            say(f"using the running server {EXTERNAL_URL}: nothing is loaded or stopped")
            rows, notes, warnings = measure(EXTERNAL_URL.rstrip("/"), data)
        else:
            with temporary_server() as base:
                loaded, seconds = load(base, data.folder)
                doc["loads"].append(
                    {
                        "dataset": data.name,
                        "resources": sum(loaded.values()),
                        "by_type": dict(loaded),
                        "seconds": round(seconds, 1),
                    }
                )
                rows, notes, warnings = measure(base, data)
        doc["rows"] += rows
        doc["notes"] += notes
        doc["warnings"] += warnings
    doc["targets"] = targets(doc["rows"])
    doc["whole_run_seconds"] = round(time.perf_counter() - start)
    print(render(doc))
    # A run of other datasets than the default ones is named after them: it measures less.
    default = DATASETS == "synthea-615,2000"
    suffix = "-rest" if default else "-rest-" + DATASETS.replace(",", "-").replace(" ", "")
    if MAX_CONCURRENT:
        suffix += f"-mc{MAX_CONCURRENT}"
    if LATENCY_MS:
        suffix += f"-{LATENCY_MS:g}ms"
    path = common.save_results(doc, suffix)
    print(f"\nsaved {path.relative_to(ROOT)}; whole run {doc['whole_run_seconds']} s")
    return 1 if doc["warnings"] else 0


if __name__ == "__main__":
    sys.exit(main())
