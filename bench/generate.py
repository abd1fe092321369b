"""Deterministic benchmark populations in Bulk Data naming, cloned from the shared Synthea patients.

    bench/generate.py --patients N --seed S [--hcc-prevalence 0.02] [--gzip] --out DIR

writes `Patient.ndjson`, `Condition.ndjson`, `Observation.000.ndjson`, `Observation.001.ndjson`...
and `Procedure.ndjson` (`.ndjson.gz` with `--gzip`) into DIR, and `.population.json` beside them
(hidden, so the folder source ignores it): the parameters, what was written, and the status each
HCC patient is expected to get. The same arguments give byte-identical files.

Why clones: the shared Synthea set has 615 patients (`synthea-r4-615`, see PROVENANCE.md), and
the sweep's cost grows with the lines it reads, so larger populations are made of copies of
those records. Each copy gets new ids: every UUID in a record (resource ids, `Patient/`,
`Encounter/` and `Condition/` references, identifier values) has its first 8 hex digits
replaced by a 32-bit number mixed from (cycle, source patient, seed), so two copies of a patient
never share an id, and the other 24 digits keep ids apart within a copy (checked when the
templates are loaded). `urn:uuid:` references left in the source are made `<Type>/<id>` first.
Records are rendered by joining precomputed byte pieces around those 8 digits: no JSON is parsed
per copy, which keeps 100k patients (14 GB) to about a minute plus the disk.

Why the demo's HCC patients: Synthea has no hepatocellular carcinoma, so the hcc trial would have
no cohort. A share `--hcc-prevalence` of the patients (chosen by the seed) are instead copies of
the demo population's patients (`fixtures/demo`: 80 in the hcc cohort, 24 candidates, 21
potential candidates, 35 ineligible, and 11 outside it), taken round-robin over the statuses so
that every status is present from the fourth HCC patient on. Their dates move back
`YEAR_SHIFT` years, a multiple of 4 that keeps month, day and leap years, hence every age and
every interval: each keeps the status `fixtures/demo/expected.json` gives it, as of `HCC_AS_OF`
(2022-06-15, 14 months after Synthea's last record, so no Synthea data sits in an hcc window).
The t2dm trial's cohort comes from the Synthea patients themselves, as of `T2DM_AS_OF`
(2021-04-01, the day after Synthea's last record).

Memory is bounded by the templates (the 615 source records, about 100 MB), never by N: the files
are written patient by patient, one type after another.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import re
import shutil
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
GENERATOR_VERSION = 1
TYPES = ("Patient", "Condition", "Observation", "Procedure")
MANIFEST = ".population.json"
DEMO = ROOT / "fixtures" / "demo"
DEMO_AS_OF = date(2026, 6, 15)
YEAR_SHIFT = -4
HCC_AS_OF = DEMO_AS_OF.replace(year=DEMO_AS_OF.year + YEAR_SHIFT)
T2DM_AS_OF = date(2021, 4, 1)
OUTSIDE = "outside-cohort"
STATUS_ORDER = ("candidate", "potential-candidate", "ineligible", OUTSIDE)
# Observations per file: a Bulk export splits large types; 10k patients make 8 files.
DEFAULT_LINES_PER_FILE = 200_000
GZIP_LEVEL = 6

# A UUID as an id or a reference's id: after the quote or the slash (a lead character makes the
# scan twice as fast as a bare pattern).
_UUID = re.compile(rb'["/][0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}')
_URN = re.compile(rb"urn:uuid:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
_DATE = re.compile(r"(\d{4})((-\d{2}(-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?)")
_DEMO_ID = re.compile(r"demo-\d{2}")
_PLACEHOLDER = "@BENCH-PATIENT@"
_MASK = 0xFFFFFFFF


def shared_data() -> Path:
    """`$TRIAL_ADAPTER_SHARED/data`, default `../shared/data` beside the checkout."""
    return Path(os.environ.get("TRIAL_ADAPTER_SHARED") or ROOT.parent / "shared") / "data"


def default_source() -> Path:
    return shared_data() / "synthea-r4-615"


@dataclass(frozen=True)
class Params:
    patients: int
    seed: int
    hcc_prevalence: float = 0.02
    gzip: bool = False
    lines_per_file: int = DEFAULT_LINES_PER_FILE

    def as_dict(self) -> dict[str, Any]:
        return {
            "patients": self.patients,
            "seed": self.seed,
            "hcc_prevalence": self.hcc_prevalence,
            "gzip": self.gzip,
            "lines_per_file": self.lines_per_file,
        }


# ---------------------------------------------------------------- templates


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as raw:
        stream: IO[bytes] = raw
        if path.name.endswith(".gz"):
            stream = io.BufferedReader(gzip.GzipFile(fileobj=raw), 1 << 20)
        for line in stream:
            line = line.strip()
            if line:
                yield line


def _type_files(folder: Path, kind: str) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.name.split(".", 1)[0] == kind and p.name.endswith((".ndjson", ".ndjson.gz"))
    )


@dataclass
class SyntheaTemplates:
    """The source patients' records, per patient and type, as byte pieces around UUID heads.

    Rendering patient `p` with head `h` is `h.join(pieces[p][type])`: the pieces are the record's
    bytes with the first 8 hex digits of every UUID cut out.
    """

    patient_ids: list[str]
    pieces: list[dict[str, tuple[bytes, ...]]]
    lines: list[dict[str, int]]

    @classmethod
    def load(cls, folder: Path) -> SyntheaTemplates:
        by_patient: dict[str, dict[str, list[bytes]]] = defaultdict(lambda: defaultdict(list))
        order: list[str] = []
        types_of: dict[bytes, bytes] = {}
        for kind in TYPES:
            files = _type_files(folder, kind)
            if not files:
                raise SystemExit(f"generate: no {kind}*.ndjson(.gz) in {folder}")
            for path in files:
                for line in _lines(path):
                    resource = orjson.loads(line)
                    types_of[resource["id"].encode()] = kind.encode()
                    if kind == "Patient":
                        owner = resource["id"]
                        order.append(owner)
                    else:
                        reference = (resource.get("subject") or {}).get("reference", "")
                        owner = reference.rsplit("/", 1)[-1].removeprefix("urn:uuid:")
                    by_patient[owner][kind].append(line)
        order.sort()

        def resolve(match: re.Match[bytes]) -> bytes:
            kind = types_of.get(match.group(1))
            return kind + b"/" + match.group(1) if kind else match.group(0)

        heads: dict[bytes, bytes] = {}
        pieces: list[dict[str, tuple[bytes, ...]]] = []
        counts: list[dict[str, int]] = []
        for pid in order:
            record = by_patient.pop(pid)
            mine: dict[str, tuple[bytes, ...]] = {}
            for kind in TYPES:
                block = b"".join(line + b"\n" for line in record.get(kind, ()))
                if b"urn:uuid:" in block:
                    block = _URN.sub(resolve, block)
                parts: list[bytes] = []
                start = 0
                for match in _UUID.finditer(block):
                    at = match.start() + 1
                    head, tail = block[at : at + 8], block[at + 9 : at + 36]
                    # Ids stay apart within a copy only if the tails do: checked, not assumed.
                    if heads.setdefault(tail, head) != head:
                        raise SystemExit(f"generate: two source UUIDs share the tail {tail!r}")
                    parts.append(block[start:at])
                    start = at + 8
                parts.append(block[start:])
                mine[kind] = tuple(parts)
            pieces.append(mine)
            counts.append({kind: len(record.get(kind, ())) for kind in TYPES})
        return cls(order, pieces, counts)


def _shift_date(value: str) -> str:
    match = _DATE.fullmatch(value)
    if match is None:
        return value
    return f"{int(match.group(1)) + YEAR_SHIFT:04d}{match.group(2)}"


def _is_date_key(key: str) -> bool:
    return key.endswith(("DateTime", "Date", "Instant")) or key in {
        "issued",
        "start",
        "end",
        "date",
        "lastUpdated",
    }


def _rewrite_demo(node: Any, demo_id: str, key: str = "") -> Any:
    """Dates moved YEAR_SHIFT years; the demo patient's id and MRN become the placeholder."""
    if isinstance(node, dict):
        return {k: _rewrite_demo(v, demo_id, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_demo(v, demo_id, key) for v in node]
    if isinstance(node, str):
        if _is_date_key(key):
            return _shift_date(node)
        if demo_id in node:
            return node.replace(demo_id, _PLACEHOLDER)
        if key == "value" and node == "DEMO-00" + demo_id[-2:]:
            return _PLACEHOLDER
    return node


@dataclass
class DemoTemplates:
    """The demo's patients (fixtures/demo), rewritten once; rendered with a new patient id."""

    order: list[str]  # round-robin over STATUS_ORDER, shuffled by the seed within each status
    status: dict[str, str]
    pieces: dict[str, dict[str, tuple[bytes, ...]]]
    lines: dict[str, dict[str, int]]

    @classmethod
    def load(cls, folder: Path, seed: int) -> DemoTemplates:
        expected = json.loads((folder / "expected.json").read_text())
        if expected["as_of"] != DEMO_AS_OF.isoformat():
            raise SystemExit(f"generate: the demo's as-of is {expected['as_of']}, not {DEMO_AS_OF}")
        records: dict[str, dict[str, list[bytes]]] = defaultdict(lambda: defaultdict(list))
        for kind in TYPES:
            for line in _lines(folder / f"{kind}.ndjson"):
                resource = orjson.loads(line)
                if kind == "Patient":
                    owner = resource["id"]
                else:
                    owner = resource["subject"]["reference"].removeprefix("Patient/")
                if not _DEMO_ID.fullmatch(owner):
                    raise SystemExit(f"generate: unexpected demo patient id {owner!r}")
                rewritten = orjson.dumps(_rewrite_demo(resource, owner))
                records[owner][kind].append(rewritten + b"\n")
        status = {
            pid: expected["patients"].get(f"Patient/{pid}", {}).get("status", OUTSIDE)
            for pid in records
        }
        rng = random.Random(f"{seed}/demo-order")
        groups = []
        for wanted in STATUS_ORDER:
            group = sorted(pid for pid, s in status.items() if s == wanted)
            rng.shuffle(group)
            groups.append(group)
        order = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
        pieces = {
            pid: {k: tuple(b"".join(rec.get(k, ())).split(_PLACEHOLDER.encode())) for k in TYPES}
            for pid, rec in records.items()
        }
        lines = {pid: {k: len(rec.get(k, ())) for k in TYPES} for pid, rec in records.items()}
        return cls(order, status, pieces, lines)


# ---------------------------------------------------------------- the population


def _mix32(x: int) -> int:
    """A bijection on 32-bit integers (so distinct inputs give distinct UUID heads)."""
    x = (x * 0x9E3779B1) & _MASK
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & _MASK
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & _MASK
    return x ^ (x >> 16)


@dataclass
class Plan:
    """Who is at each position: a copy of a Synthea patient or of a demo HCC patient."""

    params: Params
    synthea: SyntheaTemplates
    demo: DemoTemplates
    hcc_at: dict[int, str] = field(default_factory=dict)  # position -> demo patient id
    _cycle: int = -1
    _perm: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.params.patients
        n_hcc = round(n * self.params.hcc_prevalence)
        rng = random.Random(f"{self.params.seed}/hcc-positions")
        positions = sorted(rng.sample(range(n), n_hcc))
        self.hcc_at = {
            pos: self.demo.order[j % len(self.demo.order)] for j, pos in enumerate(positions)
        }
        self._seed_key = _mix32(self.params.seed & _MASK)
        if (n // len(self.synthea.patient_ids) + 1) * len(self.synthea.patient_ids) > _MASK:
            raise SystemExit("generate: too many patients for 32-bit UUID heads")

    def hcc_id(self, position: int) -> str:
        return f"bench-hcc-{position:07d}"

    def synthea_at(self, position: int) -> tuple[int, bytes]:
        """(source patient index, UUID head) of the Synthea copy at `position`."""
        size = len(self.synthea.patient_ids)
        cycle, slot = divmod(position, size)
        if cycle != self._cycle:
            self._perm = list(range(size))
            random.Random(f"{self.params.seed}/cycle/{cycle}").shuffle(self._perm)
            self._cycle = cycle
        source = self._perm[slot]
        head = _mix32((cycle * size + source) ^ self._seed_key)
        return source, f"{head:08x}".encode()

    def render(self, position: int, kind: str) -> tuple[bytes, int]:
        """The bytes and line count of one patient's resources of `kind`."""
        demo_id = self.hcc_at.get(position)
        if demo_id is not None:
            pieces = self.demo.pieces[demo_id][kind]
            return self.hcc_id(position).encode().join(pieces), self.demo.lines[demo_id][kind]
        source, head = self.synthea_at(position)
        return head.join(self.synthea.pieces[source][kind]), self.synthea.lines[source][kind]


class _Writer:
    """One type's output: a single file, or numbered files of about `lines_per_file` lines."""

    def __init__(self, out: Path, kind: str, numbered: bool, params: Params) -> None:
        self.out, self.kind, self.numbered, self.params = out, kind, numbered, params
        self.files: list[dict[str, Any]] = []
        self._file: IO[bytes] | gzip.GzipFile | None = None
        self._raw: IO[bytes] | None = None
        self._lines = 0

    def _open(self) -> None:
        suffix = ".ndjson.gz" if self.params.gzip else ".ndjson"
        name = (
            f"{self.kind}.{len(self.files):03d}{suffix}"
            if self.numbered
            else f"{self.kind}{suffix}"
        )
        self._raw = open(self.out / name, "wb")  # noqa: SIM115 (closed by close())
        if self.params.gzip:
            # filename "" and mtime 0: the header holds nothing that changes between runs.
            self._file = gzip.GzipFile("", "wb", GZIP_LEVEL, self._raw, mtime=0)
        else:
            self._file = self._raw
        self.files.append({"name": name, "lines": 0, "raw_bytes": 0})
        self._lines = 0

    def write(self, data: bytes, lines: int) -> None:
        if not lines:
            return
        if self._file is None:
            self._open()
        assert self._file is not None
        self._file.write(data)
        self.files[-1]["lines"] += lines
        self.files[-1]["raw_bytes"] += len(data)
        self._lines += lines
        if self.numbered and self._lines >= self.params.lines_per_file:
            self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            if self._raw is not self._file and self._raw is not None:
                self._raw.close()
            self.files[-1]["bytes"] = (self.out / self.files[-1]["name"]).stat().st_size
        self._file = self._raw = None


def generate(
    params: Params, out: Path, source: Path | None = None, demo: Path = DEMO
) -> dict[str, Any]:
    """Write the population into `out` (created; must be empty or absent); returns the manifest."""
    if params.patients < 1:
        raise SystemExit("generate: --patients must be at least 1")
    if not 0 <= params.hcc_prevalence <= 1:
        raise SystemExit("generate: --hcc-prevalence must be between 0 and 1")
    source = source or default_source()
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise SystemExit(f"generate: {out} is not empty")
    plan = Plan(params, SyntheaTemplates.load(source), DemoTemplates.load(demo, params.seed))
    files: list[dict[str, Any]] = []
    for kind in TYPES:
        writer = _Writer(out, kind, kind == "Observation", params)
        try:
            for position in range(params.patients):
                writer.write(*plan.render(position, kind))
        finally:
            writer.close()
        files += writer.files
    by_status: dict[str, int] = defaultdict(int)
    for demo_id in plan.hcc_at.values():
        by_status[plan.demo.status[demo_id]] += 1
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "params": params.as_dict(),
        "source": source.name,
        "as_of": {
            "t2dm-glycaemic-control": T2DM_AS_OF.isoformat(),
            "hcc-ablation-lenvatinib-pd1": HCC_AS_OF.isoformat(),
        },
        "hcc_patients": len(plan.hcc_at),
        "hcc_by_expected_status": dict(sorted(by_status.items())),
        "hcc_expected": {
            f"Patient/{plan.hcc_id(pos)}": plan.demo.status[d]
            for pos, d in sorted(plan.hcc_at.items())
        },
        "files": files,
        "lines": {
            k: sum(f["lines"] for f in files if f["name"].startswith(k + ".")) for k in TYPES
        },
        "bytes": sum(f["bytes"] for f in files),
        "raw_bytes": sum(f["raw_bytes"] for f in files),
    }
    (out / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--hcc-prevalence", type=float, default=0.02)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument(
        "--lines-per-file",
        type=int,
        default=DEFAULT_LINES_PER_FILE,
        help="Observations per file (default %(default)s)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="Synthea NDJSON folder (default $TRIAL_ADAPTER_SHARED/data/synthea-r4-615)",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--force", action="store_true", help="empty --out first")
    args = parser.parse_args(argv)
    if args.force and args.out.exists():
        shutil.rmtree(args.out)
    params = Params(args.patients, args.seed, args.hcc_prevalence, args.gzip, args.lines_per_file)
    manifest = generate(params, args.out, args.source)
    print(
        f"{args.out}: {params.patients:,} patients ({manifest['hcc_patients']:,} HCC: "
        f"{manifest['hcc_by_expected_status']}), "
        + ", ".join(f"{n:,} {k}" for k, n in manifest["lines"].items())
        + f"; {manifest['bytes'] / 2**20:,.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
