"""`trial-adapter`: the command line, and the one place that turns errors into exit codes.

Data and reports go to files (and the summary to stdout); logs and progress go to stderr and never
name a patient. Exit codes are `adapter.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from adapter import __version__, terminology
from adapter.config import SiteConfig, load_site_config
from adapter.connect import fhir_client, is_url, open_source
from adapter.criteria.results import PatientVerdict, Status
from adapter.errors import (
    AdapterError,
    ExitCode,
    FhirError,
    PatientError,
    TransportError,
    UsageError,
)
from adapter.fhir.capability import read_capabilities
from adapter.fhir.client import ServerBase
from adapter.report.explain import explain_table
from adapter.report.results import results_json, unknown_summary, verdict_json, write_reports
from adapter.sinks.folder import FolderSink
from adapter.sinks.resources import StudyInfo, research_study, research_subject, trial_policy
from adapter.sinks.server import ServerSink, SubjectInput
from adapter.sweep import PatientFailure, SweepResult, run_sweep
from adapter.trials import Trial, default_mappings_dir, load_trial

log = logging.getLogger("adapter")


def _as_of(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so one handler owns exit codes."""

    def error(self, message: str) -> Any:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trial-adapter", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"trial-adapter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--trial", required=True, help="trial id from mappings/, or a trial file")
        p.add_argument("--source", required=True, help="folder of FHIR files, or FHIR base URL")
        p.add_argument("--as-of", type=_as_of, help="evaluation day, YYYY-MM-DD (default today)")
        p.add_argument("--mappings", type=Path, help="mappings folder (default: the bundled one)")
        p.add_argument(
            "--config",
            type=Path,
            help="site configuration (default $TRIAL_ADAPTER_CONFIG): auth, limits, query sizes",
        )
        p.add_argument("--timeout", type=float, help="seconds to wait for a server (default 60)")

    sweep = sub.add_parser("sweep", help="evaluate a trial's cohort and write the results")
    common(sweep)
    sweep.add_argument("--sink", help="folder for NDJSON, or FHIR base URL (default: none)")
    sweep.add_argument("--out", type=Path, help="report folder (default out/<trial>/<as-of>/)")
    sweep.add_argument(
        "--dry-run",
        action="store_true",
        help="read and decide everything, list what would be written, write nothing",
    )
    sweep.add_argument("--batch-size", type=_positive, help="patients per server query")
    sweep.add_argument("--page-size", type=_positive, help="_count for server searches")
    sweep.add_argument("-q", "--quiet", action="store_true", help="no progress, errors only")

    explain = sub.add_parser("explain", help="print the criterion table of one patient")
    common(explain)
    explain.add_argument("--patient", required=True, help="Patient id (or Patient/<id>)")
    explain.add_argument("--json", action="store_true", help="print JSON instead of a table")
    explain.set_defaults(batch_size=None, page_size=None, quiet=True)

    codesets = sub.add_parser("codesets", help="value-set expansions (mappings/valuesets/)")
    actions = codesets.add_subparsers(dest="action", required=True, parser_class=_Parser)
    refresh = actions.add_parser(
        "refresh", help="re-expand value sets from a terminology server's ValueSet/$expand"
    )
    refresh.add_argument(
        "--tx", required=True, metavar="URL", help="terminology server FHIR base URL"
    )
    refresh.add_argument(
        "--mappings", type=Path, metavar="DIR", help="mappings folder (default: the bundled one)"
    )
    refresh.add_argument(
        "--site-mappings",
        type=Path,
        metavar="DIR",
        help="write into DIR/valuesets/ instead of the mappings folder",
    )
    refresh.add_argument(
        "--only", nargs="+", action="extend", metavar="NAME", help="refresh only these sets"
    )
    refresh.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds to wait for the server (default 60)",
    )
    refresh.set_defaults(quiet=False)
    return parser


def _site(args: argparse.Namespace) -> SiteConfig:
    path = args.config or (
        Path(os.environ["TRIAL_ADAPTER_CONFIG"]) if os.environ.get("TRIAL_ADAPTER_CONFIG") else None
    )
    site = load_site_config(path)
    if args.timeout is not None:
        if args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        site = SiteConfig(
            source=site.source.model_copy(update={"timeout": args.timeout}),
            sink=site.sink.model_copy(update={"timeout": args.timeout}),
        )
    return site


async def _codesets(args: argparse.Namespace) -> ExitCode:
    """`codesets refresh`: one summary line per set on stderr."""
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if not is_url(args.tx):
        raise UsageError(f"--tx must be an http(s) URL: {args.tx}")
    async with terminology.tx_client(args.timeout) as http:
        await terminology.refresh(
            http,
            args.tx,
            mappings_dir=args.mappings or default_mappings_dir(),
            site_mappings=args.site_mappings,
            only=args.only or (),
            say=lambda m: print(m, file=sys.stderr),
        )
    return ExitCode.OK


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    if args.quiet:
        return lambda _m: None
    return lambda m: log.info("%s", m)


async def _explain(args: argparse.Namespace, trial: Trial, as_of: date) -> ExitCode:
    pid = args.patient.removeprefix("Patient/")
    site = _site(args)
    async with open_source(args.source, site.source, env=os.environ, say=_say(args)) as source:
        result = await run_sweep(trial, source, as_of, only=frozenset({pid}))
    if result.errors:
        raise UsageError(f"patient not found in the source: {result.errors[0].reason}")
    (verdict,) = result.verdicts
    if args.json:
        doc = verdict_json(verdict) | {
            "trial": trial.id,
            "as_of": as_of.isoformat(),
            "in_cohort": not result.outside_cohort,
        }
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(explain_table(verdict, trial.id, as_of, in_cohort=not result.outside_cohort))
    return ExitCode.OK


async def _sweep(args: argparse.Namespace, trial: Trial, as_of: date) -> ExitCode:
    say = _say(args)
    site = _site(args)
    out_dir: Path = args.out or Path("out") / trial.id / as_of.isoformat()
    async with open_source(
        args.source,
        site.source,
        env=os.environ,
        say=say,
        batch_size=args.batch_size,
        page_size=args.page_size,
    ) as source:
        result = await run_sweep(trial, source, as_of, progress=say)
    writes = await _write(args, site, trial, result, as_of, say)
    doc = results_json(result, extra={"sink": args.sink and _sink_label(args.sink)})
    for entry in doc["patients"]:
        outcome = writes.get(entry["patient"])
        if outcome is not None:
            entry["research_subject"] = outcome
    doc["errors"] = [{"patient": e.patient, "reason": e.reason} for e in result.errors]
    if args.dry_run:
        doc["planned_writes"] = result.planned_writes
    write_reports(out_dir, doc, result.verdicts)
    _print_summary(result, doc, out_dir, writes)
    return ExitCode.PARTIAL if result.errors else ExitCode.OK


def _sink_label(sink: str) -> str:
    return sink if not is_url(sink) else sink.split("?", 1)[0]


async def _write(
    args: argparse.Namespace,
    site: SiteConfig,
    trial: Trial,
    result: SweepResult,
    as_of: date,
    say: Callable[[str], None],
) -> dict[str, str]:
    """Write to the sink; patient -> what was done. Per-patient failures go to result.errors."""
    sink: str | None = args.sink
    if not sink:
        return {}
    study = StudyInfo(trial.id, trial.study_system, trial.study_value, trial.title)
    flagged = [
        v for v in result.verdicts if v.status in (Status.CANDIDATE, Status.POTENTIAL_CANDIDATE)
    ]
    if not is_url(sink):
        subjects = [
            research_subject(study, v.patient.split("/", 1)[1], v.status, as_of) for v in flagged
        ]
        if args.dry_run:
            result.planned_writes = [
                {
                    "method": "write",
                    "resource_type": "ResearchSubject",
                    "resource_id": s["id"],
                    "condition": None,
                    "patient": v.patient,
                    "reason": f"{sink}/ResearchSubject.ndjson",
                }
                for s, v in zip(subjects, flagged, strict=True)
            ]
            say(f"dry run: would write {len(subjects)} ResearchSubjects to the sink folder")
            return {v.patient: "would_write" for v in flagged}
        FolderSink(Path(sink)).write(research_study(study), subjects)
        say(f"wrote {len(subjects)} ResearchSubjects to the sink folder")
        return {v.patient: "written" for v in flagged}
    source: str = args.source
    async with fhir_client(sink, site.sink, env=os.environ) as client:
        server = ServerSink(
            client,
            study,
            trial_policy=trial_policy(trial.id, trial.content_hash),
            capabilities=await read_capabilities(client, probe_elements=False),
            logical_references=not _same_server(source, sink),
            source_base=source if is_url(source) else Path(source).resolve().as_uri(),
            dry_run=args.dry_run,
        )
        writes = await _write_server(server, result, as_of, say)
    if args.dry_run:
        # The plan names patients: it goes to results.json (see _sweep), never to stderr.
        result.planned_writes = [dataclasses.asdict(p) for p in server.planned]
        say(f"dry run: {len(server.planned)} writes planned, none sent")
    return writes


#: Provenance.entity: the evidence types (trial-spec, 'What gets written')
_EVIDENCE_TYPES = frozenset({"Observation", "Condition", "Procedure", "Patient"})


def _entities(verdict: PatientVerdict, versions: Mapping[str, str]) -> tuple[str, ...]:
    """The evidence behind a verdict, versioned where the source has versions."""
    refs = [verdict.patient]
    refs += [e.reference for c in verdict.criteria.values() for e in c.evidence if e.reference]
    kept = (r for r in refs if r.split("/", 1)[0] in _EVIDENCE_TYPES)
    return tuple(dict.fromkeys(versions.get(r, r) for r in kept))


def _same_server(source: str, sink: str) -> bool:
    """Whether source and sink are one FHIR server (a parsed comparison of their bases)."""
    if not is_url(source):
        return False
    a, b = ServerBase.parse(source), ServerBase.parse(sink)
    return (a.origin, a.segments) == (b.origin, b.segments)


async def _write_server(
    server: ServerSink, result: SweepResult, as_of: date, say: Callable[[str], None]
) -> dict[str, str]:
    await server.prepare()
    writes: dict[str, str] = {}
    for v in result.verdicts:
        pid = v.patient.split("/", 1)[1]
        try:
            if v.status is Status.INELIGIBLE:
                noted = await server.ineligible_outcome(pid)
                if noted is not None:
                    writes[v.patient] = noted.value
                continue
            subject = SubjectInput(
                pid, v.status, _entities(v, result.versions), result.identifiers.get(v.patient)
            )
            writes[v.patient] = (await server.write_subject(subject, as_of)).value
        except TransportError:
            raise  # the server is gone: fatal, not one patient's problem
        except PatientError as exc:
            result.errors.append(PatientFailure(v.patient, f"write failed: {exc.reason}"))
        except FhirError as exc:
            result.errors.append(PatientFailure(v.patient, f"write failed: {exc}"))
    say(server.summary())
    return writes


def _print_summary(
    result: SweepResult, doc: dict[str, Any], out_dir: Path, writes: dict[str, str]
) -> None:
    counts = doc["counts"]
    lines = [
        f"trial {result.trial.id}, as of {result.as_of.isoformat()}: "
        f"{len(result.verdicts)} patients in the cohort",
        f"  candidate            {counts['candidate']}",
        f"  potential-candidate  {counts['potential-candidate']}",
        f"  ineligible           {counts['ineligible']}",
    ]
    unknown = unknown_summary(result.verdicts)
    if unknown:
        top = ", ".join(f"{cid} ({n})" for cid, n in list(unknown.items())[:5])
        lines.append(f"  most often unknown: {top}")
    if result.errors:
        lines.append(f"  could not be evaluated or written: {len(result.errors)} (see errors)")
    lines.append(f"report: {out_dir / 'results.json'} and {out_dir / 'candidates.csv'}")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and turn every error into a one-line message and an exit code."""
    logging.basicConfig(level=logging.INFO, format="trial-adapter: %(message)s", stream=sys.stderr)
    # httpx logs every request URL at INFO, and search URLs carry patient ids (`patient=...`).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    try:
        args = build_parser().parse_args(argv)
        if args.quiet:
            logging.getLogger().setLevel(logging.WARNING)
        if args.command == "codesets":
            code = asyncio.run(_codesets(args))
        else:
            as_of = args.as_of or date.today()
            trial = load_trial(args.trial, args.mappings)
            command = _explain if args.command == "explain" else _sweep
            code = asyncio.run(command(args, trial, as_of))
    except AdapterError as exc:
        print(f"trial-adapter: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("trial-adapter: interrupted", file=sys.stderr)
        return int(ExitCode.FATAL)
    return int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
