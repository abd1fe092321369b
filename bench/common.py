"""What the benchmarks share: cached populations, measured subprocesses, the machine, results.

Nothing here asserts a time: the benchmarks print ratios measured in one run (so that machine
noise cancels) and save them, with the machine and the versions, under bench/results/.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: its modules import each other by path.
import generate

ROOT = generate.ROOT
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
MIB = 1 << 20
T2DM = "t2dm-glycaemic-control"
HCC = "hcc-ablation-lenvatinib-pd1"
AS_OF = {T2DM: generate.T2DM_AS_OF, HCC: generate.HCC_AS_OF}


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- populations


def population(params: generate.Params, source: Path | None = None) -> Path:
    """The folder of `params`' population under bench/data/<hash>/, generated on first use.

    The hash covers the parameters, the generator's version and the source files' names and
    sizes; the folder appears only complete (generated beside it, then renamed).
    """
    source = source or generate.default_source()
    if not source.is_dir():
        raise SystemExit(f"no Synthea data at {source}: set TRIAL_ADAPTER_SHARED")
    identity = {
        "generator_version": generate.GENERATOR_VERSION,
        "params": params.as_dict(),
        "source": sorted((p.name, p.stat().st_size) for p in source.iterdir() if p.is_file()),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    folder = DATA / f"{params.patients}-{'gz' if params.gzip else 'plain'}-{digest}"
    if (folder / generate.MANIFEST).is_file():
        return folder
    DATA.mkdir(parents=True, exist_ok=True)
    partial = DATA / f".{folder.name}.{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    say(f"generating {params.patients:,} patients{' (gzip)' if params.gzip else ''} into {folder}")
    start = time.perf_counter()
    # In a process of its own: the templates (about 250 MB) would otherwise stay in this one.
    argv = [sys.executable, str(Path(generate.__file__)), "--patients", str(params.patients)]
    argv += ["--seed", str(params.seed), "--hcc-prevalence", repr(params.hcc_prevalence)]
    argv += ["--lines-per-file", str(params.lines_per_file), "--source", str(source)]
    argv += ["--out", str(partial), *(["--gzip"] if params.gzip else [])]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    say(f"generated in {time.perf_counter() - start:.1f} s")
    return folder


def manifest(folder: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((folder / generate.MANIFEST).read_text())
    return loaded


# ---------------------------------------------------------------- the floor


def ndjson_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.name.endswith((".ndjson", ".ndjson.gz"))
    )


def orjson_floor(folder: Path) -> tuple[float, int]:
    """(seconds, lines) of `orjson.loads` on every line of the folder's NDJSON, one core.

    Files are opened as the folder source opens them (1 MiB buffers, gzip through a
    BufferedReader), so the floor pays the same reading and decompression.
    """
    lines = 0
    loads = orjson.loads
    start = time.perf_counter()
    for path in ndjson_files(folder):
        with open(path, "rb", buffering=1 << 20) as raw:
            stream: IO[bytes] = raw
            if path.name.endswith(".gz"):
                stream = io.BufferedReader(gzip.GzipFile(fileobj=raw), 1 << 20)
            for line in stream:
                if line.strip():
                    loads(line)
                    lines += 1
    return time.perf_counter() - start, lines


# ---------------------------------------------------------------- measured processes


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    return found


def _status_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of `pid` in KiB, None once it is gone (or a zombie)."""
    rss = hwm = None
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return None if rss is None or hwm is None else (rss, hwm)


class _TreeSampler:
    """Samples a process tree: the highest summed VmRSS, and each process's last VmHWM.

    VmHWM is the high-water mark of a process's own address space since its exec, so the last
    value read before a process ends is its peak (less at most one interval). The kernel's
    ru_maxrss (wait4) is not used: it keeps the RSS a process had before its exec, and a child
    forked from this process starts with this process's memory.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak_sum = 0  # KiB
        self.hwm: dict[int, int] = {}  # pid -> KiB

    def sample(self) -> None:
        total = 0
        stack = [self.root]
        while stack:
            pid = stack.pop()
            found = _status_kib(pid)
            if found is not None:
                total += found[0]
                self.hwm[pid] = found[1]
            stack += _children(pid)
        self.peak_sum = max(self.peak_sum, total)


@dataclass
class ProcessRun:
    argv: list[str]
    seconds: float
    returncode: int
    peak_rss: int  # bytes: the highest RSS summed over the process tree, at least max_single_rss
    max_single_rss: int  # bytes: the largest VmHWM of one process of the tree
    processes: int  # processes seen in the tree
    stdout: str = ""
    stderr: str = ""


def run_measured(
    argv: Sequence[str], env: dict[str, str] | None = None, interval: float = 0.02
) -> ProcessRun:
    """Run `argv`, timing it whole and sampling the RSS of its process tree (see _TreeSampler).

    Peak RSS is summed over all processes, as issue #15 asks: a thread reads /proc/<pid>/status
    of the process and every descendant each `interval` (psutil is not needed, and not a
    dependency).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
        tree = _TreeSampler(proc.pid)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(interval):
                tree.sample()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        single = max(tree.hwm.values(), default=0) * 1024
        return ProcessRun(
            list(argv),
            seconds,
            proc.returncode,
            max(tree.peak_sum * 1024, single),
            single,
            len(tree.hwm),
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )


@dataclass
class Sweep:
    """One whole `trial-adapter sweep --dry-run` process and what its results.json says."""

    trial: str
    run: ProcessRun
    cohort: int
    statuses: dict[str, int]
    read: dict[str, int]
    verdicts: dict[str, str] = field(repr=False)


def sweep_argv(trial: str, source: str, as_of: date, tmp: Path) -> list[str]:
    return [
        str(BIN / "trial-adapter"),
        "sweep",
        "--trial",
        trial,
        "--source",
        source,
        "--as-of",
        as_of.isoformat(),
        "--dry-run",
        "--out",
        str(tmp / "out"),
        "--state-dir",
        str(tmp / "state"),
        "-q",
    ]


def run_sweep_process(trial: str, folder: Path) -> Sweep:
    """A dry-run sweep as its own process (start-up included), in a fresh state folder."""
    with tempfile.TemporaryDirectory(prefix="trial-adapter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "XDG_STATE_HOME": str(tmp / "xdg")}
        run = run_measured(sweep_argv(trial, str(folder), AS_OF[trial], tmp), env)
        results = tmp / "out" / "results.json"
        if run.returncode != 0 or not results.is_file():
            raise SystemExit(
                f"the {trial} sweep of {folder} ended with {run.returncode}:\n{run.stderr[-2000:]}"
            )
        doc = json.loads(results.read_text())
    verdicts = {p["patient"]: p["status"] for p in doc["patients"]}
    return Sweep(trial, run, len(verdicts), doc["counts"], doc["stats"]["read"], verdicts)


def hcc_mismatches(sweep: Sweep, folder: Path) -> list[tuple[str, str, str]]:
    """(patient, expected, got) for the demo-derived patients whose status is not the demo's."""
    expected: dict[str, str] = manifest(folder)["hcc_expected"]
    return [
        (pid, want, sweep.verdicts.get(pid, generate.OUTSIDE))
        for pid, want in expected.items()
        if sweep.verdicts.get(pid, generate.OUTSIDE) != want
    ]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------- machine and versions


def git_short_sha() -> str:
    """HEAD's short sha, read from .git without running git (bench results name it)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            path = git / ref
            if path.is_file():
                return path.read_text().strip()[:7]
            for line in (git / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line[:7]
            return "unknown"
        return head[:7]
    except OSError:
        return "unknown"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("trial-adapter", "orjson", "httpx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def save_results(doc: dict[str, Any], suffix: str = "") -> Path:
    """bench/results/<date>-<git short sha><suffix>.json (a later run of the day replaces it)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{date.today().isoformat()}-{git_short_sha()}{suffix}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


# ---------------------------------------------------------------- extrapolation


@dataclass(frozen=True)
class Point:
    """One measured size: patients, whole sweep seconds, peak RSS bytes, disk bytes."""

    patients: int
    seconds: float
    rss: int
    disk: int


def _linear(x0: float, y0: float, x1: float, y1: float, x: float) -> float:
    slope = (y1 - y0) / (x1 - x0)
    return y1 + slope * (x - x1)


def extrapolate(
    small: Point,
    large: Point,
    gzip_time_factor: float,
    gzip_bytes_per_patient: float,
    target: int = 1_000_000,
) -> dict[str, Any]:
    """A `target`-patient gzipped export, from the growth between two measured sizes.

    Time and memory grow linearly between the two sizes (a fixed cost plus a cost per patient,
    which is what the sweep's design gives: every line is read once, and the facts of cohort
    patients are held until the end); both are carried on to `target`. The gzipped sweep is the
    plain one times `gzip_time_factor` (gz sweep / plain sweep, measured at one size), and the
    disk is the measured gzipped bytes per patient times `target`.
    """
    plain_s = _linear(small.patients, small.seconds, large.patients, large.seconds, target)
    rss = _linear(small.patients, small.rss, large.patients, large.rss, target)
    return {
        "patients": target,
        "from": [small.patients, large.patients],
        "sweep_seconds_plain": round(plain_s, 1),
        "sweep_seconds_gzip": round(plain_s * gzip_time_factor, 1),
        "peak_rss_mib": round(rss / MIB),
        "disk_gib_gzip": round(gzip_bytes_per_patient * target / 2**30, 1),
        "disk_gib_plain": round(large.disk / large.patients * target / 2**30, 1),
        "gzip_time_factor": round(gzip_time_factor, 3),
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
