"""`trial-adapter`: the command line, and the one place that turns errors into exit codes.

Data and reports go to files (and the summary to stdout); logs and progress go to stderr and never
name a patient. Exit codes are `adapter.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson

from adapter import __version__, logs, state, terminology
from adapter.cli_args import (
    AS_OF_HELP,
    TIMEOUT_HELP,
    Parser,
    as_of,
    early_log_options,
    log_level,
    log_options,
    positive,
    seconds,
)
from adapter.config import SiteConfig, load_site_config
from adapter.connect import is_url, open_source
from adapter.deliver import deliver
from adapter.errors import (
    AdapterError,
    ExitCode,
    FhirError,
    OutputError,
    PatientError,
    UsageError,
    redact_url,
)
from adapter.report.explain import explain_table
from adapter.report.files import check_writable_folder, write_private
from adapter.report.results import (
    sweep_json,
    unknown_summary,
    verdict_json,
    write_reports,
)
from adapter.survey import outputs as survey_outputs
from adapter.survey import run as survey_run
from adapter.sweep import NOT_FOUND, SweepResult, run_sweep
from adapter.trials import Trial, default_mappings_dir, load_trial

log = logging.getLogger("adapter")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="trial-adapter", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"trial-adapter {__version__}")
    log_options(parser, default=None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--trial", required=True, help="trial id from mappings/, or a trial file")
        p.add_argument("--source", required=True, help="folder of FHIR files, or FHIR base URL")
        p.add_argument("--as-of", type=as_of, help=AS_OF_HELP)
        p.add_argument("--mappings", type=Path, help="mappings folder (default: the bundled one)")
        p.add_argument(
            "--site-mappings",
            type=Path,
            metavar="DIR",
            help="site folder merged over the mappings (default: site_mappings in --config)",
        )
        p.add_argument(
            "--config",
            type=Path,
            help="site configuration (default $TRIAL_ADAPTER_CONFIG): auth, limits, query sizes",
        )
        p.add_argument("--timeout", type=seconds, metavar="SECONDS", help=TIMEOUT_HELP)
        log_options(p)

    sweep = sub.add_parser("sweep", help="evaluate a trial's cohort and write the results")
    common(sweep)
    sweep.add_argument("--sink", help="folder for NDJSON, or FHIR base URL (default: none)")
    sweep.add_argument("--out", type=Path, help="report folder (default out/<trial>/<as-of>/)")
    sweep.add_argument(
        "--dry-run",
        action="store_true",
        help="read and decide everything, list what would be written, write nothing",
    )
    sweep.add_argument("--batch-size", type=positive, help="patients per server query")
    sweep.add_argument("--page-size", type=positive, help="_count for server searches")
    sweep.add_argument("-q", "--quiet", action="store_true", help="= --log-level warning")
    sweep.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="locks (and later the run ledger); default $XDG_STATE_HOME/trial-adapter, else "
        "~/.local/state/trial-adapter",
    )

    explain = sub.add_parser("explain", help="print the criterion table of one patient")
    common(explain)
    explain.add_argument("--patient", required=True, help="Patient id (or Patient/<id>)")
    explain.add_argument("--json", action="store_true", help="print JSON instead of a table")
    explain.set_defaults(batch_size=None, page_size=None, quiet=True)

    codesets = sub.add_parser("codesets", help="value-set expansions (mappings/valuesets/)")
    actions = codesets.add_subparsers(dest="action", required=True, parser_class=Parser)
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
    refresh.add_argument("--timeout", type=seconds, metavar="SECONDS", help=TIMEOUT_HELP)
    refresh.add_argument(
        "--config",
        type=Path,
        help="site configuration (default $TRIAL_ADAPTER_CONFIG): its `terminology:` section "
        "gives the proxy, CA bundle and timeout",
    )
    log_options(refresh)
    refresh.set_defaults(quiet=False)
    _survey_parser(sub)
    return parser


def _survey_parser(sub: Any) -> None:
    survey = sub.add_parser(
        "survey", help="which codes and units a source sends, and what the mappings read of them"
    )
    survey.add_argument("--source", required=True, help="folder of FHIR files, or FHIR base URL")
    survey.add_argument(
        "--trial",
        action="append",
        metavar="T",
        help="trial id or file, repeatable (default: every bundled and site trial)",
    )
    survey.add_argument(
        "--sample",
        type=positive,
        metavar="N",
        help="resources read per type (default: 10,000 from a server, all of a folder)",
    )
    survey.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default out/survey/)"
    )
    survey.add_argument(
        "--mappings", type=Path, metavar="DIR", help="mappings folder (default: the bundled one)"
    )
    survey.add_argument(
        "--site-mappings",
        type=Path,
        metavar="DIR",
        help="site folder merged over the mappings (default: site_mappings in --config)",
    )
    survey.add_argument(
        "--config", type=Path, help="site configuration (default $TRIAL_ADAPTER_CONFIG)"
    )
    survey.add_argument("--timeout", type=seconds, metavar="SECONDS", help=TIMEOUT_HELP)
    survey.add_argument("-q", "--quiet", action="store_true", help="no progress, errors only")
    log_options(survey)


async def _survey(args: argparse.Namespace) -> ExitCode:
    """`survey`: the table on stdout, survey.json and the draft site-mappings.yaml in --out."""
    site = _site(args)
    mappings = survey_run.load_mappings(
        args.trial or (),
        args.mappings or default_mappings_dir(),
        args.site_mappings or site.site_mappings,
    )
    tally, sample = await survey_run.read_source(
        args.source, config=site.source, env=os.environ, sample=args.sample, say=_say(args)
    )
    result = survey_run.survey(tally, mappings)
    label = redact_url(args.source) if is_url(args.source) else args.source
    out_dir: Path = args.out or Path("out") / "survey"
    paths = survey_outputs.write_outputs(out_dir, result, mappings.known, label, sample)
    print(survey_outputs.table(result, sample))
    print(f"\nwrote {paths[0]} and {paths[1]}")
    return ExitCode.OK


def _site(args: argparse.Namespace) -> SiteConfig:
    path = args.config or (
        Path(os.environ["TRIAL_ADAPTER_CONFIG"]) if os.environ.get("TRIAL_ADAPTER_CONFIG") else None
    )
    site = load_site_config(path)
    if args.timeout is not None:  # finite and positive: checked by its argument type
        site = site.model_copy(
            update={
                "source": site.source.model_copy(update={"timeout": args.timeout}),
                "sink": site.sink.model_copy(update={"timeout": args.timeout}),
            }
        )
    return site


async def _codesets(args: argparse.Namespace) -> ExitCode:
    """`codesets refresh`: one summary line per set on stderr."""
    if not is_url(args.tx):
        raise UsageError(f"--tx must be an http(s) URL: {args.tx}")
    tx = _site(args).terminology
    timeout = args.timeout or tx.timeout
    async with terminology.tx_client(timeout, proxy=tx.proxy, ca_bundle=tx.ca_bundle) as http:
        await terminology.refresh(
            http,
            args.tx,
            mappings_dir=args.mappings or default_mappings_dir(),
            site_mappings=args.site_mappings,
            only=args.only or (),
            say=lambda m: log.info("%s", m),
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
        failure = result.errors[0]
        if result.verdicts or not failure.reason.startswith(NOT_FOUND):
            # Found, but not evaluated (an unreadable line may hold its data): exit 3.
            raise PatientError(failure.patient, f"not evaluated: {failure.reason}")
        raise UsageError(f"patient not found in the source: {failure.reason}")
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
    # Every output place before the first request: not found after the whole sweep.
    check_writable_folder(out_dir, "--out")
    if args.sink and not is_url(args.sink):
        check_writable_folder(Path(args.sink), "--sink")
    try:
        async with open_source(
            args.source,
            site.source,
            env=os.environ,
            say=say,
            batch_size=args.batch_size,
            page_size=args.page_size,
        ) as source:
            result = await run_sweep(trial, source, as_of, progress=say)
    except FhirError as exc:
        _keep_server_words(out_dir, exc, args.run_id)
        raise
    writes: dict[str, str] = {}
    sinking = bool(args.sink) and not args.dry_run

    def report(status: str | None, error: str | None = None) -> dict[str, Any]:
        doc = sweep_json(
            result,
            sink=args.sink and _sink_label(args.sink),
            writes=writes,
            sink_status=status if sinking else None,
            sink_error=error,
            planned_writes=result.planned_writes if args.dry_run else None,
        )
        write_reports(out_dir, doc, result.verdicts)
        return doc

    # The results first, so a sink that fails cannot take them with it; rewritten after.
    report("started")
    try:
        await deliver(
            args.sink,
            source=args.source,
            server_config=site.sink,
            env=os.environ,
            dry_run=args.dry_run,
            trial=trial,
            result=result,
            as_of=as_of,
            say=say,
            writes=writes,
        )
    except BaseException as exc:
        if sinking:
            try:
                report("failed", _failure_line(exc) + _detail(exc))
            except OutputError as again:
                log.warning("results.json could not record the sink failure: %s", again)
        raise
    doc = report("complete")
    _print_summary(result, doc, out_dir, writes)
    return ExitCode.PARTIAL if result.partial else ExitCode.OK


def _failure_line(exc: BaseException) -> str:
    """The error's one line (adapter messages hold no patient data), for results.json."""
    if isinstance(exc, AdapterError | OSError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
        return "interrupted"
    return type(exc).__name__  # an unexpected error's text may hold values


def _detail(exc: BaseException) -> str:
    """The server's own words behind an error, for the owner-only results.json only."""
    detail = getattr(exc, "detail", "")
    return f"; the server said: {detail}" if isinstance(detail, str) and detail else ""


def _keep_server_words(out_dir: Path, exc: FhirError, run_id: str) -> None:
    """A failed source's free text (it may name a patient) in the owner-only `error.json`,
    never on stderr; a good report of an earlier run in the same folder is left as it is."""
    if not exc.detail:
        return
    doc = {"run_id": run_id, "error": _failure_line(exc), "detail": exc.detail}
    try:
        write_private(out_dir / "error.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    except OSError:
        return
    log.warning(
        "the server's own words are in %s (they may name a patient)", out_dir / "error.json"
    )


def _sink_label(sink: str) -> str:
    return sink if not is_url(sink) else sink.split("?", 1)[0]


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
    if result.unreadable:
        lines.append(f"  unreadable input skipped: {len(result.unreadable)} (see unreadable_input)")
    if result.withhold_writes:
        lines.append("  nothing written to the sink: an unreadable line names no patient for sure")
    lines.append(f"report: {out_dir / 'results.json'} and {out_dir / 'candidates.csv'}")
    print("\n".join(lines))


def _state_dir(args: argparse.Namespace) -> Path:
    """--state-dir, else the site file's state_dir, else the XDG default; made 0700."""
    chosen = args.state_dir or _site(args).state_dir
    return state.prepare_state_dir(chosen or state.default_state_dir(os.environ, Path.home()))


def _run_lock(args: argparse.Namespace, trial: Trial) -> contextlib.AbstractContextManager[Any]:
    """The (trial, sink) lock of a sweep that writes to a sink; nothing for any other run.

    Dry runs and runs without a sink write only their own report, so they neither take the lock
    nor wait for it: a rehearsal never blocks the nightly run.
    """
    if args.command != "sweep" or not args.sink or args.dry_run:
        return contextlib.nullcontext()
    now = datetime.now().astimezone()
    return state.sweep_lock(_state_dir(args), trial.id, state.sink_identity(args.sink), now=now)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and turn every error into a one-line message and an exit code.

    Every stderr line, the final error line included, goes through the one log handler
    (adapter.logs), in the format asked for and with this run's id.

    A stdout closed before everything was printed (`sweep ... | head -1`) stops the run quietly
    with exit 1 (fatal: what was asked for was not all printed), as Python's documentation
    advises, with no line on stderr: the reader chose to stop reading. A sweep prints its summary
    last, after its reports and sink writes, so those are never lost to it.
    """
    try:
        try:
            return _main(argv)
        finally:
            # Now rather than at the interpreter's exit, where a closed pipe can only be reported
            # as "Exception ignored" and a traceback (also after --help).
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        return int(ExitCode.FATAL)


def _stdout_to_devnull() -> None:
    """Point stdout's descriptor at os.devnull: what is still buffered then has a place to go."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no real descriptor: nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_id = logs.new_run_id()
    fmt, level = early_log_options(argv)
    with logs.configured(level=level, fmt=fmt, run_id=run_id, stream=sys.stderr):
        try:
            args = build_parser().parse_args(argv)
            args.run_id = run_id
            level = log_level(getattr(args, "log_level", None), quiet=args.quiet)
            args.quiet = level > logging.INFO
            logs.set_level(level)
            if args.command == "codesets":
                code = asyncio.run(_codesets(args))
            elif args.command == "survey":
                code = asyncio.run(_survey(args))
            else:
                as_of = args.as_of or date.today()
                site_dir = args.site_mappings or _site(args).site_mappings
                trial = load_trial(args.trial, args.mappings, site_mappings=site_dir)
                command = _explain if args.command == "explain" else _sweep
                with _run_lock(args, trial):
                    code = asyncio.run(command(args, trial, as_of))
        except AdapterError as exc:
            log.error(
                "error: %s",
                exc,
                extra={"error": type(exc).__name__, "exit_code": int(exc.exit_code)},
            )
            return int(exc.exit_code)
        except KeyboardInterrupt:
            log.error("interrupted", extra={"exit_code": int(ExitCode.FATAL)})
            return int(ExitCode.FATAL)
        except BrokenPipeError:
            raise  # stdout closed by its reader: `main` stops quietly
        except Exception as exc:
            # Unforeseen (a full disk, a bug): one line all the same, in the format asked for,
            # naming the place rather than printing a traceback whose text may hold values.
            log.error(
                "error: unexpected %s%s",
                _failure_line(exc),
                _where(exc),
                extra={"error": type(exc).__name__, "exit_code": int(ExitCode.FATAL)},
            )
            return int(ExitCode.FATAL)
        return int(code)


def _where(exc: BaseException) -> str:
    """` at <file>:<line> in <function>` of the innermost frame, for a bug report."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {Path(last.filename).name}:{last.lineno} in {last.name}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
