"""`trial-adapter sweep`: the sweep, its reports, the sink stage and the run ledger, end to end.

The CLI (adapter/cli.py) parses the arguments and turns errors into exit codes; this module runs
one sweep: cohort and verdicts (adapter.sweep), results.json and the worklist files written before
the first sink write and again after the last, the sink (adapter.deliver), and the run recorded in
the ledger from start to end, however it ends. The summary on stdout comes last, so a reader who
closes stdout early takes nothing from the reports or the sink.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from adapter.cohorts import CohortSpec
from adapter.commands.runs import run_metadata, with_changes
from adapter.config import SiteConfig
from adapter.connect import is_url, open_source, source_profile
from adapter.errors import AdapterError, ExitCode, FhirError, OutputError
from adapter.ledger import Ledger, current_states
from adapter.progress import choose_progress
from adapter.report.files import check_writable_folder, write_private
from adapter.report.outdirs import point_latest, run_out_dir
from adapter.report.results import sweep_json, unknown_summary, write_reports
from adapter.sweep import SweepResult, run_sweep
from adapter.trials import Trial

if TYPE_CHECKING:
    from adapter.bulk.export import Export

log = logging.getLogger("adapter")

Say = Callable[[str], None]


@dataclass
class _Run:
    """What one sweep has got to so far, for whoever records its end however it ends: the
    ledger (the verdicts) and the notification (the last report written)."""

    result: SweepResult | None = None
    doc: dict[str, Any] | None = None
    #: the Bulk export the sweep read (`--bulk`), cleaned up once the run is recorded
    export: Export | None = None


def _bulk_group(args: argparse.Namespace) -> CohortSpec | None:
    """`--bulk group:ID`: the Group's current members only (its export holds them all)."""
    if args.bulk is None or args.bulk[0] != "group":
        return None
    return CohortSpec("group", args.bulk[1])


def _exit_code_of(exc: BaseException) -> ExitCode:
    return exc.exit_code if isinstance(exc, AdapterError) else ExitCode.FATAL


async def sweep_command(
    args: argparse.Namespace,
    trial: Trial,
    as_of: date,
    *,
    site: SiteConfig,
    state_dir: Path,
    say: Say,
) -> ExitCode:
    """Sweep, report, deliver; the run is recorded in the ledger from start to end, whatever
    the end (a killed process leaves it unfinished), and, when the site file asks, a
    notification says how it ended (never on a dry run; a failed notification changes nothing).
    """
    out_base = site.out_dir or Path("out")
    out_dir: Path = args.out or run_out_dir(out_base, trial.id, args.run_id)
    run = _Run()
    try:
        code = await _recorded_sweep(
            args, trial, as_of, out_dir, out_base, run, site, state_dir, say
        )
    except BaseException as exc:
        await _notify(args, site, trial, as_of, _exit_code_of(exc), run.doc, out_dir)
        raise
    await _notify(args, site, trial, as_of, code, run.doc, out_dir)
    return code


async def _notify(
    args: argparse.Namespace,
    site: SiteConfig,
    trial: Trial,
    as_of: date,
    code: int,
    doc: dict[str, Any] | None,
    out_dir: Path,
) -> None:
    if site.notify is None or args.dry_run:
        return
    from adapter.notify import Summary, notify

    summary = Summary(
        trial.id,
        as_of,
        args.run_id,
        code,
        counts=doc["counts"] if doc else {},
        new_candidates=sum(1 for p in doc["patients"] if p.get("new")) if doc else None,
        report=str(out_dir / "report.html") if doc else None,
    )
    await notify(site.notify, summary, env=os.environ)


async def _recorded_sweep(
    args: argparse.Namespace,
    trial: Trial,
    as_of: date,
    out_dir: Path,
    out_base: Path,
    run: _Run,
    site: SiteConfig,
    state_dir: Path,
    say: Say,
) -> ExitCode:
    started = datetime.now().astimezone()
    # Every output place before the first request: not found after the whole sweep.
    check_writable_folder(out_dir, "--out")
    if args.sink and not is_url(args.sink):
        check_writable_folder(Path(args.sink), "--sink")
    with Ledger.open(state_dir) as ledger:
        ledger.begin_run(
            args.run_id,
            trial_id=trial.id,
            source=args.source,
            trial_hash=trial.content_hash,
            as_of=as_of,
            started=started,
            dry_run=args.dry_run,
        )
        try:
            writes = await _sweep_run(
                args,
                trial,
                as_of,
                out_dir,
                out_base,
                ledger,
                started,
                run,
                site=site,
                say=say,
                state_dir=state_dir,
            )
        except BaseException as exc:
            try:
                _finish(ledger, args.run_id, _exit_code_of(exc), run.result)
            except OutputError as again:
                log.warning("the run ledger could not record the failure: %s", again)
            raise
        # both set by a completed _sweep_run
        assert run.result is not None
        assert run.doc is not None
        code = ExitCode.PARTIAL if run.result.partial else ExitCode.OK
        _finish(ledger, args.run_id, code, run.result)
    if run.export is not None:
        from adapter.commands.export_phase import finish_for_sweep

        # After the run is recorded: an interrupted run keeps the job and files to resume.
        await finish_for_sweep(args, site, run.export)
    _print_summary(run.result, run.doc, out_dir, writes)
    return code


def _finish(ledger: Ledger, run_id: str, code: ExitCode, result: SweepResult | None) -> None:
    """End the run in the ledger: its patients' states when it got as far as verdicts."""
    ledger.finish_run(
        run_id,
        finished=datetime.now().astimezone(),
        exit_code=int(code),
        errors=len(result.errors) if result else 0,
        patients=current_states(result.verdicts, result.people_status) if result else None,
    )


async def _sweep_run(
    args: argparse.Namespace,
    trial: Trial,
    as_of: date,
    out_dir: Path,
    out_base: Path,
    ledger: Ledger,
    started: datetime,
    run: _Run,
    *,
    site: SiteConfig,
    say: Say,
    state_dir: Path,
) -> dict[str, str]:
    """The sweep, its reports and the sink; `run` holds the SweepResult once there is one and
    the last report written, for the ledger and the notification however this ends. With
    `--bulk`, the export is made (or taken up) first and its folder is what the sweep reads."""
    tracker = choose_progress(sys.stderr, quiet=args.quiet, term=os.environ.get("TERM"))
    try:
        source_text = args.source
        if args.bulk is not None:
            from adapter.commands.export_phase import export_for_sweep

            run.export = await export_for_sweep(args, trial, site, state_dir, tracker)
            source_text = str(run.export.folder.source_dir)
        async with open_source(
            source_text,
            site.source,
            env=os.environ,
            say=say,
            batch_size=args.batch_size,
            page_size=args.page_size,
            profile=source_profile(args, site),
            exported=frozenset(run.export.state.request.types) if run.export else frozenset(),
        ) as source:
            result = await run_sweep(
                trial,
                source,
                as_of,
                progress=say,
                mrn_system=site.mrn_system,
                tracker=tracker,
                cohort=_bulk_group(args) or args.cohort,
            )
        if run.export is not None:
            result.bulk = run.export.summary()
            result.export_blocking = run.export.blocking
    except FhirError as exc:
        _keep_server_words(out_dir, exc, args.run_id)
        raise
    finally:
        tracker.done()  # a bar left running by a failed read would outlive the error line
    run.result = result
    writes: dict[str, str] = {}
    sinking = bool(args.sink) and not args.dry_run

    def report(status: str | None, error: str | None = None) -> None:
        doc = sweep_json(
            result,
            sink=args.sink and _sink_label(args.sink),
            writes=writes,
            sink_status=status if sinking else None,
            sink_error=error,
            planned_writes=result.planned_writes if args.dry_run else None,
        )
        # Compared again at each write: the sink stage reads the statuses people set.
        changes = ledger.changes(args.run_id, current_states(result.verdicts, result.people_status))
        finished = None if status == "started" else datetime.now().astimezone()
        meta = run_metadata(args.run_id, source=args.source, started=started, finished=finished)
        doc = meta | with_changes(doc, changes)
        write_reports(out_dir, doc)
        write_report_html(out_dir, report_pieces(doc, **layout))
        run.doc = doc

    # Jinja2 only once a sweep has verdicts: `--version`, `runs` and bad arguments start faster.
    from adapter.report.html import layout_of, report_pieces, write_report_html

    layout = layout_of(trial)
    # The results first, so a sink that fails cannot take them with it; rewritten after.
    report("started")
    if args.out is None:
        point_latest(out_base, trial.id, out_dir)
    try:
        if args.sink:  # (deliver does nothing without one) the sink stage imports fhir.resources
            from adapter.deliver import deliver

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
                tracker=tracker,
            )
    except BaseException as exc:
        if sinking:
            try:
                report("failed", failure_line(exc) + _detail(exc))
            except OutputError as again:
                log.warning("results.json could not record the sink failure: %s", again)
        raise
    report("complete")
    return writes


def failure_line(exc: BaseException) -> str:
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
    doc = {"run_id": run_id, "error": failure_line(exc), "detail": exc.detail}
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
    new = sum(1 for p in doc["patients"] if p.get("new"))
    lines.append(f"  new since last sweep {new}")
    if doc.get("no_longer_qualifies"):
        lines.append(
            f"  no longer qualify    {len(doc['no_longer_qualifies'])} (see no_longer_qualifies)"
        )
    if result.errors:
        lines.append(f"  could not be evaluated or written: {len(result.errors)} (see errors)")
    if result.unreadable:
        lines.append(f"  unreadable input skipped: {len(result.unreadable)} (see unreadable_input)")
    if result.withhold_writes:
        lines.append("  nothing written to the sink: an unreadable line names no patient for sure")
    lines.append(f"report: {out_dir / 'report.html'}")
    lines.append(f"  with results.json, candidates.csv and candidates-detail.csv in {out_dir}")
    print("\n".join(lines))
