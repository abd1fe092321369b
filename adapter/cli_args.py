"""The argument parser of `trial-adapter`: commands and options, value types, log options.

Each type refuses at parse time (exit 2) what would only fail later: `--as-of 0001-01-01` made
every patient fail with OverflowError, and `--timeout nan` passed a `<= 0` test (issue 11, items
4 and 5). Nothing here imports a command's implementation (`--cohort` parses its value with
adapter.cohorts when given), so `--version`, `--help` and usage errors answer at once (issue 15);
adapter/cli.py runs the commands.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from adapter import __version__, logs
from adapter.errors import UsageError

#: `trial-adapter --help`'s first line: the first line of adapter/cli.py's docstring
DESCRIPTION = (
    "`trial-adapter`: the command line, and the one place that turns errors into exit codes."
)

#: The days `--as-of` accepts. The engine moves as-of by at most ten years (the longest lab window
#: is 3,650 days) and ages are counted back from it, so two centuries on either side of today keep
#: every computation far inside `date`'s range (years 1 to 9999) and every real birth date covered.
AS_OF_MIN = date(1900, 1, 1)
AS_OF_MAX = date(2999, 12, 31)
AS_OF_HELP = (
    f"evaluation day, YYYY-MM-DD, from {AS_OF_MIN.isoformat()} to {AS_OF_MAX.isoformat()} "
    "(default today)"
)

#: The longest `--timeout`: a day per request is already more than any server is worth waiting
#: for, and a larger number (1e308) overflows the event loop's clock arithmetic.
MAX_TIMEOUT = 86_400.0
TIMEOUT_HELP = f"seconds to wait for a server, above 0 and at most {MAX_TIMEOUT:,.0f} (default 60)"


def as_of(text: str) -> date:
    """A calendar day within AS_OF_MIN..AS_OF_MAX."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
    if not AS_OF_MIN <= day <= AS_OF_MAX:
        raise argparse.ArgumentTypeError(
            f"{day.isoformat()} is outside {AS_OF_MIN.isoformat()} to {AS_OF_MAX.isoformat()}"
        )
    return day


def positive(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds above 0 and at most MAX_TIMEOUT (`nan` passes `<= 0`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"must be above 0 and at most {MAX_TIMEOUT:,.0f} seconds: {text!r}"
        )
    return value


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so one handler owns exit codes."""

    def error(self, message: str) -> Any:
        raise UsageError(message)


def log_options(p: argparse.ArgumentParser, *, default: Any = argparse.SUPPRESS) -> None:
    """--log-level and --log-format, accepted before the command and after it."""
    # SUPPRESS on the commands, so that their unset option never hides the global one.
    p.add_argument(
        "--log-level",
        choices=tuple(logs.LEVELS),
        default=default,
        help="debug, info (default; warning with --quiet), warning or error",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text" if default is None else default,
        help="text (default): time, level, run id, message; json: one object per line",
    )


def early_log_options(argv: Sequence[str]) -> tuple[logs.LogFormat, int]:
    """The log format and level from `argv` before it is parsed, so a bad argument's line has them.

    Anything unreadable is left to the full parse, which says what is wrong. Abbreviations are
    read as the full parse reads them (`--log-form json`), and a bad or missing `--log-level`
    leaves the format as asked: the line saying what is wrong is JSON when JSON was asked for.
    """
    pre = Parser(add_help=False)
    pre.add_argument("--log-format", choices=("text", "json"), default="text")
    pre.add_argument("--log-level", nargs="?")
    pre.add_argument("-q", "--quiet", action="store_true")
    try:
        known, _ = pre.parse_known_args(argv)
    except UsageError:
        return "text", logging.INFO
    name = known.log_level if known.log_level in logs.LEVELS else None
    return known.log_format, log_level(name, quiet=known.quiet)


def log_level(name: str | None, *, quiet: bool) -> int:
    """--log-level when given; else warning with --quiet (and for `explain`), else info."""
    if name is not None:
        return logs.LEVELS[name]
    return logging.WARNING if quiet else logging.INFO


def add_runs_parser(sub: Any) -> None:
    """`runs`: recent runs from the ledger in the state folder."""
    runs = sub.add_parser("runs", help="list recent runs from the run ledger")
    runs.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    runs.add_argument("--limit", type=positive, default=20, help="runs listed (default 20)")
    runs.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the state folder (default: state_dir in --config, else "
        "$XDG_STATE_HOME/trial-adapter, else ~/.local/state/trial-adapter)",
    )
    runs.add_argument(
        "--config", type=Path, help="site configuration (default $TRIAL_ADAPTER_CONFIG)"
    )
    log_options(runs)
    runs.set_defaults(timeout=None, quiet=False)


def add_check_parser(sub: Any) -> None:
    """`check`: the set-up proved before the first night (adapter.commands.check)."""
    check = sub.add_parser(
        "check",
        help="prove the set-up before the first night: configuration, secrets, servers, tokens, "
        "capabilities, folders",
    )
    check.add_argument(
        "--config", type=Path, help="site configuration (default $TRIAL_ADAPTER_CONFIG)"
    )
    check.add_argument("--source", help="FHIR base URL or folder (default: source.url)")
    check.add_argument("--sink", help="FHIR base URL or folder (default: sink.url)")
    check.add_argument(
        "--trial",
        action="append",
        metavar="T",
        help="trial id or file, repeatable (default: trials in --config)",
    )
    mapping_options(check)
    check.add_argument(
        "--out", type=Path, metavar="DIR", help="report folder (default: out_dir, else out/)"
    )
    check.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="state folder (default: state_dir, else XDG)"
    )
    check.add_argument("--timeout", type=seconds, metavar="SECONDS", help=TIMEOUT_HELP)
    server_options(check)
    log_options(check)
    check.set_defaults(quiet=False)


def mapping_options(p: argparse.ArgumentParser) -> None:
    """--mappings and --site-mappings, read the same way by every command that loads trials."""
    p.add_argument(
        "--mappings", type=Path, metavar="DIR", help="mappings folder (default: the bundled one)"
    )
    p.add_argument(
        "--site-mappings",
        type=Path,
        metavar="DIR",
        help="site folder merged over the mappings (default: site_mappings in --config)",
    )


def server_options(p: argparse.ArgumentParser) -> None:
    """--profile and --read: how the source server is searched (issue 13), over the site file."""
    p.add_argument(
        "--profile",
        metavar="NAME",
        help="the source server's family: generic, hapi, epic, oracle-health, medplum, or a "
        "site folder's servers/NAME.yaml (default: source.profile, else generic)",
    )
    p.add_argument(
        "--read",
        choices=("batch", "per-patient"),
        help="searches name many patients (batch) or one each (per-patient); default: the "
        "profile's",
    )


def cohort_spec(text: str) -> Any:
    """`--cohort`: search, group:ID or file:PATH (adapter.cohorts); anything else is exit 2."""
    from adapter.cohorts import parse_cohort

    try:
        return parse_cohort(text)
    except Exception as exc:  # ConfigError/UsageError: one line, no traceback
        raise argparse.ArgumentTypeError(str(exc)) from None


def bulk_level(text: str) -> tuple[str, str | None]:
    """`--bulk`: `system`, `patient` or `group:ID` (a FHIR id), as (level, group id)."""
    if text in ("system", "patient"):
        return text, None
    kind, _, group = text.partition(":")
    if kind == "group" and re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", group):
        return "group", group
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise argparse.ArgumentTypeError(
        f"unknown Bulk export level {shown!r} (use system, patient or group:ID)"
    )


def build_parser() -> argparse.ArgumentParser:
    """Every command and option; building it imports no command (tests/test_startup.py)."""
    parser = Parser(prog="trial-adapter", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"trial-adapter {__version__}")
    log_options(parser, default=None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--trial", help="trial id from mappings/, or a trial file (default: trials in --config)"
        )
        p.add_argument(
            "--source", help="folder of FHIR files, or FHIR base URL (default: source.url)"
        )
        p.add_argument("--as-of", type=as_of, help=AS_OF_HELP)
        mapping_options(p)
        p.add_argument(
            "--config",
            type=Path,
            help="site configuration (default $TRIAL_ADAPTER_CONFIG): auth, limits, query sizes",
        )
        p.add_argument("--timeout", type=seconds, metavar="SECONDS", help=TIMEOUT_HELP)
        server_options(p)
        log_options(p)

    sweep = sub.add_parser("sweep", help="evaluate a trial's cohort and write the results")
    common(sweep)
    sweep.add_argument("--sink", help="folder for NDJSON, or FHIR base URL (default: none)")
    sweep.add_argument(
        "--out",
        type=Path,
        help="report folder (default out/<trial>/<run id>/, and out/<trial>/latest points at it)",
    )
    sweep.add_argument(
        "--dry-run",
        action="store_true",
        help="read and decide everything, list what would be written, write nothing",
    )
    sweep.add_argument(
        "--cohort",
        type=cohort_spec,
        default=None,
        metavar="FORM",
        help="who is screened: `search` (default: the server-wide diagnosis search), "
        "`group:ID` (the members of a FHIR Group), `file:PATH` (one Patient id or "
        "system|value identifier a line); the trial's cohort rules apply to each",
    )
    sweep.add_argument(
        "--bulk",
        type=bulk_level,
        default=None,
        metavar="LEVEL",
        help="read the server by a Bulk Data export instead of searches: system, patient or "
        "group:ID (the cohort is then found in the exported Conditions; not with --cohort)",
    )
    sweep.add_argument(
        "--full",
        action="store_true",
        help="with --bulk: a full export, not one of what changed since the last (a full one "
        "also runs every source.full_every_days, default 7)",
    )
    sweep.add_argument(
        "--keep-export",
        action="store_true",
        help="keep the exported files in the state folder after the sweep (default: deleted)",
    )
    sweep.add_argument("--batch-size", type=positive, help="patients per server query")
    sweep.add_argument("--page-size", type=positive, help="_count for server searches")
    sweep.add_argument("-q", "--quiet", action="store_true", help="= --log-level warning")
    sweep.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="locks and the run ledger; default $XDG_STATE_HOME/trial-adapter, else "
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
    add_survey_parser(sub)
    add_check_parser(sub)
    add_runs_parser(sub)
    return parser


def add_survey_parser(sub: Any) -> None:
    """`survey`: what a source sends, and what the mappings read of it (adapter.survey)."""
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
    mapping_options(survey)
    survey.add_argument(
        "--config", type=Path, help="site configuration (default $TRIAL_ADAPTER_CONFIG)"
    )
    survey.add_argument("--timeout", type=seconds, metavar="SECONDS", help=TIMEOUT_HELP)
    server_options(survey)
    survey.add_argument(
        "--cohort",
        type=cohort_spec,
        metavar="FORM",
        help="on servers read one patient at a time: the patients to sample, group:ID or file:PATH",
    )
    survey.add_argument(
        "--patients",
        type=positive,
        metavar="N",
        default=200,
        help="patients read whole on such servers (default 200, spread over the cohort)",
    )
    survey.add_argument("-q", "--quiet", action="store_true", help="no progress, errors only")
    log_options(survey)
