"""What an OperationOutcome may say where: coded issues in messages, free text only in `detail`.

A server's diagnostics can name a patient (issue 11 found a name, MRN, birth date and id in one
printed on stderr), so a message shows only each issue's severity, code and `details.coding`
(`system|code`), each checked against its value set or a strict token pattern; the free text,
URL queries removed, goes to `FhirError.detail` for the owner-only results.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import orjson

from adapter.errors import TEMPORARY_STATUSES, HttpStatusError, TemporaryHttpError, redact_url

if TYPE_CHECKING:
    import httpx

OUTCOME_LIMIT = 500
#: at most this many issues (and codings of each) are named in a message
SHOWN_ISSUES = 3
SHOWN_CODINGS = 2

# R4 value sets issue-severity and issue-type (valueset-issue-type.html), both required bindings.
SEVERITIES = frozenset({"fatal", "error", "warning", "information"})
_ISSUE_TYPES = """
    invalid structure required value invariant security login unknown expired forbidden
    suppressed processing not-supported duplicate multiple-matches not-found deleted too-long
    code-invalid extension too-costly business-rule conflict transient lock-error no-store
    exception timeout incomplete throttled informational
    """
ISSUE_TYPES = frozenset(_ISSUE_TYPES.split())
# A code system URI (no query, fragment, spaces or `|`) and a code as code systems write them
# (HAPI's MSG_PARAM_INVALID, Epic's 4100); anything else is left out of the message.
_SYSTEM = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[A-Za-z0-9/._~:@!$&'()*+,;=%\-]{1,200}")
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")
# OperationOutcome diagnostics often echo the request URL, query (patient ids) included.
_URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>]+")


def _issues(body: object) -> list[dict[str, object]]:
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    issues = body.get("issue")
    return [i for i in issues if isinstance(i, dict)] if isinstance(issues, list) else []


def outcome_text(body: object) -> str:
    """An OperationOutcome's issue diagnostics (or details.text) joined with '; ', URLs redacted.

    Free text, for `detail` only. Empty when `body` is not an OperationOutcome. Cut to
    OUTCOME_LIMIT characters: HAPI lists every valid search parameter in some of its messages.
    """
    texts: list[str] = []
    for issue in _issues(body):
        text = issue.get("diagnostics")
        if not isinstance(text, str) or not text.strip():
            details = issue.get("details")
            text = details.get("text") if isinstance(details, dict) else None
        if isinstance(text, str) and text.strip():
            texts.append(_URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text.strip()))
    return cut("; ".join(texts))


def cut(text: str, limit: int = OUTCOME_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def coded_issues(body: object) -> str:
    """The coded part of an OperationOutcome, safe for a message; empty when there is none.

    `error/processing (http://terminology.hl7.org/CodeSystem/operation-outcome|MSG_PARAM_INVALID)`,
    issues joined with '; '. A severity or code outside its R4 value set shows as `?`.
    """
    shown: list[str] = []
    issues = _issues(body)
    for issue in issues[:SHOWN_ISSUES]:
        severity = issue.get("severity")
        code = issue.get("code")
        text = (
            f"{severity if severity in SEVERITIES else '?'}/{code if code in ISSUE_TYPES else '?'}"
        )
        codings = _codings(issue.get("details"))
        if codings:
            text += f" ({', '.join(codings)})"
        shown.append(text)
    if len(issues) > SHOWN_ISSUES:
        shown.append(f"{len(issues) - SHOWN_ISSUES} more")
    return "; ".join(shown)


def _codings(details: object) -> list[str]:
    codings = details.get("coding") if isinstance(details, dict) else None
    out: list[str] = []
    for coding in codings if isinstance(codings, list) else []:
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            continue
        if isinstance(system, str) and _SYSTEM.fullmatch(system):
            out.append(f"{system}|{code}")
        else:
            out.append(code)
        if len(out) == SHOWN_CODINGS:
            break
    return out


def parse_body(content: bytes) -> object:
    """The JSON of an error body, or None when it is not JSON."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def status_error(response: httpx.Response, url: str) -> HttpStatusError | None:
    """The classified error of an error status (coded issues in the message, text in `detail`);
    None for a success."""
    status = response.status_code
    if status < 400:
        return None
    body = parse_body(response.content)
    error = TemporaryHttpError if status in TEMPORARY_STATUSES else HttpStatusError
    return error(status, url=url, summary=coded_issues(body), detail=outcome_text(body))
