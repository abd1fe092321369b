"""`trial-adapter`: the command line, and the one place that turns errors into exit codes.

Data and reports go to files (and the summary to stdout); logs and progress go to stderr and never
name a patient. Exit codes are `adapter.errors.ExitCode`.

Only argument parsing is imported up front: each command imports its implementation when it runs,
so `--version`, `--help` and a mistyped option answer without loading pydantic, httpx, pint or
fhir.resources (issue 15, target 4; tests/test_startup.py holds the line).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter import logs
from adapter.cli_args import build_parser, early_log_options, log_level
from adapter.errors import AdapterError, ExitCode, PatientError, UsageError, redact_url

if TYPE_CHECKING:
    from adapter.config import SiteConfig
    from adapter.mapcache import MappingCache
    from adapter.trials import Trial

log = logging.getLogger("adapter")


def _config_path(args: argparse.Namespace) -> Path | None:
    """--config, else $TRIAL_ADAPTER_CONFIG, else none."""
    env = os.environ.get("TRIAL_ADAPTER_CONFIG")
    return args.config or (Path(env) if env else None)


async def _check(args: argparse.Namespace) -> ExitCode:
    """`check`: one line per check on stdout, 0 only when none failed (adapter.commands.check)."""
    from adapter.commands import check as check_command

    return await check_command.run_checks(
        _config_path(args),
        source=args.source,
        sink=args.sink,
        trials=args.trial or (),
        env=os.environ,
        say=lambda line: print(line, flush=True),
        mappings=args.mappings,
        site_mappings=args.site_mappings,
        out_dir=args.out,
        state_dir=args.state_dir,
        timeout=args.timeout,
        profile=args.profile,
        read=args.read,
    )


async def _survey(args: argparse.Namespace) -> ExitCode:
    """`survey`: the table on stdout, survey.json and the draft site-mappings.yaml in --out."""
    from adapter.connect import is_url, source_profile
    from adapter.survey import outputs as survey_outputs
    from adapter.survey import run as survey_run
    from adapter.trials import default_mappings_dir

    site = _site(args)
    mappings = survey_run.load_mappings(
        args.trial or (),
        args.mappings or default_mappings_dir(),
        args.site_mappings or site.site_mappings,
    )
    tally, sample = await survey_run.read_source(
        args.source,
        config=site.source,
        env=os.environ,
        sample=args.sample,
        say=_say(args),
        profile=source_profile(args, site),
        cohort=args.cohort,
        categories=frozenset(
            c for t in mappings.trials for a in t.analytes.values() for c in a.categories
        ),
        patients=args.patients,
    )
    result = survey_run.survey(tally, mappings)
    label = redact_url(args.source) if is_url(args.source) else args.source
    out_dir: Path = args.out or Path("out") / "survey"
    paths = survey_outputs.write_outputs(out_dir, result, mappings.known, label, sample)
    print(survey_outputs.table(result, sample))
    print(f"\nwrote {paths[0]} and {paths[1]}")
    return ExitCode.OK


def _site(args: argparse.Namespace) -> SiteConfig:
    from adapter.config import load_site_config

    path = args.config or (
        Path(os.environ["TRIAL_ADAPTER_CONFIG"]) if os.environ.get("TRIAL_ADAPTER_CONFIG") else None
    )
    site = load_site_config(path)
    server = {
        key: value for key in ("profile", "read") if (value := getattr(args, key, None)) is not None
    }
    if server:  # --profile and --read are the source server's
        site = site.model_copy(update={"source": site.source.model_copy(update=server)})
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
    from adapter import terminology
    from adapter.connect import is_url
    from adapter.trials import default_mappings_dir

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
    import orjson

    from adapter.connect import open_source, source_profile
    from adapter.report.explain import explain_table
    from adapter.report.results import verdict_json
    from adapter.sweep import NOT_FOUND, run_sweep

    pid = args.patient.removeprefix("Patient/")
    site = _site(args)
    async with open_source(
        args.source,
        site.source,
        env=os.environ,
        say=_say(args),
        profile=source_profile(args, site),
    ) as source:
        result = await run_sweep(
            trial, source, as_of, only=frozenset({pid}), mrn_system=site.mrn_system
        )
    if result.errors:
        failure = result.errors[0]
        if result.verdicts or not failure.reason.startswith(NOT_FOUND):
            # Found, but not evaluated (an unreadable line may hold its data): exit 3.
            raise PatientError(failure.patient, f"not evaluated: {failure.reason}")
        raise UsageError(f"patient not found in the source: {failure.reason}")
    (verdict,) = result.verdicts
    if args.json:
        doc = verdict_json(verdict, result.identities.get(verdict.patient)) | {
            "trial": trial.id,
            "as_of": as_of.isoformat(),
            "in_cohort": not result.outside_cohort,
        }
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(explain_table(verdict, trial.id, as_of, in_cohort=not result.outside_cohort))
    return ExitCode.OK


async def _sweep(args: argparse.Namespace, trial: Trial, as_of: date) -> ExitCode:
    from adapter.commands.sweep import sweep_command

    site = _site(args)
    return await sweep_command(
        args, trial, as_of, site=site, state_dir=_state_dir(args, site), say=_say(args)
    )


def _from_site_file(args: argparse.Namespace, site: SiteConfig) -> None:
    """The trial, source and sink the command line leaves out, from the site file (issue 12:
    one file holds the nightly job); the command line wins."""
    from adapter.connect import is_url

    args.source = args.source or site.source.url
    if not args.source:
        raise UsageError("--source is required (or source.url in the site file)")
    if args.command == "sweep":
        args.sink = args.sink or site.sink.url
        if args.bulk is not None:
            # With Bulk, the cohort is found in the exported Conditions (issue 14).
            if args.cohort is not None:
                raise UsageError(
                    "--bulk and --cohort exclude each other: with --bulk, the "
                    "cohort is found in the exported Conditions"
                )
            if not is_url(args.source):
                raise UsageError("--bulk needs a FHIR server's base URL as --source")
    if not args.trial:
        if len(site.trials) != 1:
            several = "several trials are" if site.trials else "no trial is"
            raise UsageError(
                f"--trial is required: {several} in the site file (one trial per sweep, each "
                "with its own lock, report and exit code)"
            )
        args.trial = site.trials[0]


def _state_dir(args: argparse.Namespace, site: SiteConfig | None = None) -> Path:
    """--state-dir, else the site file's state_dir, else the XDG default; made 0700."""
    from adapter import state

    chosen = args.state_dir or (site or _site(args)).state_dir
    return state.prepare_state_dir(chosen or state.default_state_dir(os.environ, Path.home()))


def _load_trial(args: argparse.Namespace, site: SiteConfig) -> Trial:
    """The trial of `sweep` or `explain`, its mappings checked with the help of what earlier
    sweeps proved of the same content (adapter.mapcache: issue 15 wants an empty sweep started
    in 0.6 s, and the UCUM checks alone took 0.4). `explain` only reads the cache; a sweep
    writes what it added."""
    from adapter.trials import load_trial

    cache = _mapping_cache()
    site_dir = args.site_mappings or site.site_mappings
    trial = load_trial(args.trial, args.mappings, site_mappings=site_dir, cache=cache)
    if cache is not None and args.command == "sweep":
        cache.save()
    return trial


def _mapping_cache() -> MappingCache | None:
    """The user's cache of checked mappings, as it is (nothing is made here)."""
    from adapter.mapcache import CACHE_FILE, MappingCache, default_cache_dir

    try:
        folder = default_cache_dir(os.environ, Path.home())
    except RuntimeError:  # no home folder to find: no cache, the mappings are checked whole
        return None
    return MappingCache.open(folder / CACHE_FILE)


def _run_lock(args: argparse.Namespace, trial: Trial) -> contextlib.AbstractContextManager[Any]:
    """The (trial, sink) lock of a sweep that writes to a sink; nothing for any other run.

    Dry runs and runs without a sink write only their own report, so they neither take the lock
    nor wait for it: a rehearsal never blocks the nightly run.
    """
    if args.command != "sweep" or not args.sink or args.dry_run:
        return contextlib.nullcontext()
    from adapter import state

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


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd stop, a Kubernetes pod ending, `kill`) ends a sweep as Ctrl-C does: the
    running step is cancelled, results.json says the sink failed ("interrupted"), the ledger
    records the run as ended with exit 1, and the next run repairs whatever was half done.
    Without this the interpreter would stop at once and leave the run unfinished."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stdout_to_devnull() -> None:
    """Point stdout's descriptor at os.devnull: what is still buffered then has a place to go."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no real descriptor: nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


def _run(args: argparse.Namespace) -> ExitCode:
    """Run the command parsed; each imports what it needs only now (see the module docstring)."""
    import asyncio

    if args.command == "codesets":
        return asyncio.run(_codesets(args))
    if args.command == "survey":
        return asyncio.run(_survey(args))
    if args.command == "check":
        return asyncio.run(_check(args))
    if args.command == "runs":
        from adapter.commands.runs import list_runs

        sys.stdout.write(list_runs(_state_dir(args), as_json=args.json, limit=args.limit))
        return ExitCode.OK
    as_of = args.as_of or date.today()
    site = _site(args)
    _from_site_file(args, site)
    trial = _load_trial(args, site)
    command = _explain if args.command == "explain" else _sweep
    with _run_lock(args, trial), _terminate_as_interrupt():
        return asyncio.run(command(args, trial, as_of))


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
            code = _run(args)
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


def _failure_line(exc: BaseException) -> str:
    """The sweep's one line for an error (`adapter.commands.sweep.failure_line`), imported only
    now: the failure may be that module's own import, and then the class name is all we say."""
    try:
        from adapter.commands.sweep import failure_line
    except Exception:
        return type(exc).__name__
    return failure_line(exc)


def _where(exc: BaseException) -> str:
    """` at <file>:<line> in <function>` of the innermost frame, for a bug report."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {Path(last.filename).name}:{last.lineno} in {last.name}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
