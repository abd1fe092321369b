"""What a finished export says: its manifest, and its error files read as coded issues.

`parse_manifest` checks the complete-status body (Bulk Data Access IG v2, export.html "Response -
Complete Status") into a `Manifest`: every file URL absolute https (http only to this machine), and
nothing of the server's own text in a message. `read_error_file` turns an `error` file
(OperationOutcome NDJSON) into one coded line per issue, diagnostics dropped: they can name a
patient (issue 11). `is_blocking` says whether those lines leave the export incomplete.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

import orjson

from adapter.bulk.model import Manifest, OutputFile
from adapter.errors import InvalidResponseError
from adapter.fhir.outcome import coded_issues
from adapter.fhir.urls import is_loopback, parse_url

#: the line `read_error_file` gives for a line that is not an OperationOutcome
UNREADABLE: Final = "unreadable error line"

# FHIR R4 `instant` (datatypes.html#instant): seconds and a time zone are required.
_INSTANT = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?"
    r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
# An issue line from coded_issues starts `severity/code`; `?` is a severity outside the value set.
_BLOCKING_SEVERITIES = frozenset({"error", "fatal", "?"})


def parse_manifest(body: object, *, url: str) -> Manifest:
    """The manifest in a complete-status body; InvalidResponseError naming the field at fault.

    `url` is the status URL, for the error. `requiresAccessToken` absent counts as true, the
    safe reading (the IG requires it). `error` and `deleted` absent count as empty; `output` is
    required. `deleted` entries default to type `Bundle`: IG v2 lists there files of transaction
    Bundles whose DELETE entries name the resources deleted since `_since`.
    """
    if not isinstance(body, dict):
        raise InvalidResponseError("the export manifest is not a JSON object", url=url)
    when = body.get("transactionTime")
    if not isinstance(when, str) or not _INSTANT.fullmatch(when):
        raise InvalidResponseError("the export manifest has no transactionTime instant", url=url)
    token = body.get("requiresAccessToken", True)
    if not isinstance(token, bool):
        raise InvalidResponseError(
            "the export manifest's requiresAccessToken is not a boolean", url=url
        )
    if "output" not in body:
        raise InvalidResponseError("the export manifest has no output list", url=url)
    output = _files(body, "output", url, default_type=None)
    error = _files(body, "error", url, default_type=None)
    deleted = _files(body, "deleted", url, default_type="Bundle")
    seen: set[str] = set()
    for field, files in (("output", output), ("error", error), ("deleted", deleted)):
        for index, file in enumerate(files):
            if file.url in seen:
                # Read twice, a file's resources would count twice; the job folder keys by URL.
                raise InvalidResponseError(
                    f"the export manifest lists the file of {field}[{index}] twice", url=url
                )
            seen.add(file.url)
    request = body.get("request")
    return Manifest(
        transaction_time=when,
        requires_access_token=token,
        output=output,
        error=error,
        deleted=deleted,
        request=request if isinstance(request, str) else "",
    )


def _files(
    body: dict[str, object], field: str, url: str, *, default_type: str | None
) -> tuple[OutputFile, ...]:
    value = body.get(field, [])
    if value is None:
        value = []
    if not isinstance(value, list):
        raise InvalidResponseError(f"the export manifest's {field} is not a list", url=url)
    return tuple(
        _file(entry, f"{field}[{index}]", url, default_type) for index, entry in enumerate(value)
    )


def _file(entry: object, where: str, url: str, default_type: str | None) -> OutputFile:
    if not isinstance(entry, dict):
        raise InvalidResponseError(f"the export manifest's {where} is not an object", url=url)
    kind = entry.get("type", default_type)
    if not isinstance(kind, str) or not _RESOURCE_TYPE.fullmatch(kind):
        raise InvalidResponseError(
            f"the export manifest's {where}.type is not a resource type", url=url
        )
    location = entry.get("url")
    if not isinstance(location, str) or not is_file_url(location):
        # The URL itself is not repeated: it is the server's text, and may carry a signature.
        raise InvalidResponseError(
            f"the export manifest's {where}.url is not an absolute https URL", url=url
        )
    count = entry.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise InvalidResponseError(
            f"the export manifest's {where}.count is not a whole number", url=url
        )
    return OutputFile(type=kind, url=location, count=count)


def is_file_url(url: str) -> bool:
    """Whether a manifest may point at `url`: absolute https, or http to this machine only.

    Files hold patient data and, when `requiresAccessToken`, get the token: plain http to another
    machine would hand both to anyone on the path. No credentials in the URL (parse_url).
    """
    parsed = parse_url(url)
    if parsed is None:
        return False
    scheme, host, _ = parsed.origin
    return scheme == "https" or is_loopback(host)


def read_error_file(lines: Iterable[bytes]) -> list[str]:
    """One coded line per issue of an error file's OperationOutcomes, in file order.

    `error/processing (http://terminology.hl7.org/CodeSystem/operation-outcome|MSG_X)`:
    severity and code (`?` when outside their R4 value sets) and the details' codings, never
    diagnostics or details.text. Blank lines are skipped; a line that is not an OperationOutcome
    with issues adds UNREADABLE (`3 unreadable error lines` for three), last.
    """
    shown: list[str] = []
    unreadable = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        try:
            outcome = orjson.loads(line)
        except orjson.JSONDecodeError:
            unreadable += 1
            continue
        issues = outcome.get("issue") if isinstance(outcome, dict) else None
        if (
            not isinstance(outcome, dict)
            or outcome.get("resourceType") != "OperationOutcome"
            or not isinstance(issues, list)
            or not issues
        ):
            unreadable += 1
            continue
        for issue in issues:
            # coded_issues formats (and checks) one issue at a time: one line each.
            text = coded_issues({"resourceType": "OperationOutcome", "issue": [issue]})
            shown.append(text or "?/?")
    if unreadable == 1:
        shown.append(UNREADABLE)
    elif unreadable:
        shown.append(f"{unreadable} {UNREADABLE}s")
    return shown


def is_blocking(coded_lines: Sequence[str]) -> bool:
    """Whether an export with these error lines is incomplete: an issue of severity error or
    fatal, or one whose severity is unknown (`?`, or an unreadable line), may stand for data
    the export left out, and deciding without it could flag a patient it rules out.
    """
    for line in coded_lines:
        if line.endswith(UNREADABLE) or line.endswith(UNREADABLE + "s"):
            return True
        if line.split("/", 1)[0] in _BLOCKING_SEVERITIES:
            return True
    return False
