"""report.html: the research coordinator's page, rendered from results.json (issue 12).

One self-contained file (hospital PCs are often offline): no scripts, fonts or styles from the
network, and a Content-Security-Policy that forbids loading any. Jinja2 autoescapes everything:
units, reasons and notes come from the source and may hold markup. The attrition chart is an
inline SVG whose geometry is computed here, so that it is tested without a browser.

The page reads the results.json document and tolerates the keys that an older run lacks
(`identity`, `people_status`, `new`, `source`, `started`, `finished`, `no_longer_qualifies`...):
a missing value shows as "—", a missing list as no section. Nothing here logs: the page names
patients, and a log must not.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from adapter.errors import OutputError
from adapter.report import values
from adapter.report.files import write_private

if TYPE_CHECKING:
    from adapter.criteria.kinds import Criterion
    from adapter.trials import Trial

#: the statuses listed as (potential) candidates, in the order the table lists them
FLAGGED = ("candidate", "potential-candidate")
#: trial-spec, "Analytes and codes": the protocol's lab window at the enrolment visit. A lab
#: dated more than this many days before as-of is redrawn at screening (exactly 7 is not older).
REDRAW_AFTER_DAYS = 7
#: criterion kinds whose Observations are blood draws (vital signs, ECOG, NYHA and imaging are
#: not: they are taken again at the visit anyway, and "redraw" would be wrong for them)
LAB_KINDS = frozenset(
    {
        "lab_threshold",
        "lab_range",
        "lab_threshold_derived",
        "uln_multiple",
        "pt_prolongation",
        "conditional_lab",
        "not_pregnant",
        "child_pugh",
    }
)
DASH = "—"

_ENV = Environment(
    loader=PackageLoader("adapter.report", "templates"),
    autoescape=True,
    undefined=StrictUndefined,  # a typo in the template fails the tests, not the coordinator
    trim_blocks=True,
    lstrip_blocks=True,
)
# Criterion ids wrap at their underscores in narrow printed columns: `<wbr>` marks where, and
# Markup.join escapes each part.
_ENV.filters["breakable"] = lambda text: Markup("_<wbr>").join(str(text).split("_"))


# --- the attrition chart --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    """One step of the attrition: the cohort, or the patients left after one criterion."""

    label: str
    #: patients none of whose criteria so far is not_met (the cohort bar: every patient)
    remaining: int
    #: patients of the whole cohort for whom this criterion is unknown (None on the cohort bar)
    unknown: int | None = None


def attrition(doc: Mapping[str, Any], automated: Sequence[str]) -> list[Bar]:
    """The cohort, then, in the trial's order, how many remain after each criterion.

    As ATLAS draws inclusion rules: a patient remains while no criterion so far is not_met, so
    an unknown keeps the patient in. The unknowns are counted over the whole cohort, whatever
    came before, since they show which data is missing most.
    """
    # One pass over the patients (they may be made as they are read: issue 15), counting for
    # each criterion the patients it is the first not_met of, and those it is unknown for.
    cohort = 0
    first_out = dict.fromkeys(automated, 0)
    unknown = dict.fromkeys(automated, 0)
    for p in doc.get("patients") or []:
        cohort += 1
        criteria = p.get("criteria") or {}
        out = False
        for cid in automated:
            result = criteria.get(cid, {}).get("result")
            if result == "not_met" and not out:
                first_out[cid] += 1
                out = True
            elif result == "unknown":
                unknown[cid] += 1
    bars = [Bar("cohort", cohort)]
    remaining = cohort
    for cid in automated:
        remaining -= first_out[cid]
        bars.append(Bar(cid, remaining, unknown[cid]))
    return bars


@dataclass(frozen=True, slots=True)
class ChartRow:
    bar: Bar
    y: float
    width: float
    unknown_width: float
    #: of the cohort, as the count's label shows it ("96%")
    percent: str


@dataclass(frozen=True, slots=True)
class Chart:
    rows: tuple[ChartRow, ...]
    height: float
    #: where the bars start (the labels end a little before)
    x0: float = 220
    #: the width of the cohort bar
    span: float = 440
    width: float = 760
    row_height: float = 30
    top: float = 34


def chart(bars: Sequence[Bar]) -> Chart:
    """Horizontal bars, one row per step, scaled to the cohort (the first bar)."""
    base = Chart((), 0)
    cohort = bars[0].remaining if bars else 0
    scale = base.span / cohort if cohort else 0.0
    rows = tuple(
        ChartRow(
            b,
            base.top + i * base.row_height,
            b.remaining * scale,
            (b.unknown or 0) * scale,
            f"{100 * b.remaining / cohort:.0f}%" if cohort else "",
        )
        for i, b in enumerate(bars)
    )
    return Chart(rows, base.top + len(rows) * base.row_height + 8)


# --- which labs are to be redrawn -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaleLab:
    criterion: str
    date: str
    days: int


def _earliest_day(text: str | None) -> date | None:
    """The first calendar day a FHIR date or dateTime can mean, in the timestamp's own offset
    (trial-spec, "Fine print": windows count calendar dates so); None if it is not a date."""
    if not text:
        return None
    match = re.match(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", text)
    if not match:
        return None
    year, month, day = match.groups()
    try:
        return date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None


def stale_labs(patient: Mapping[str, Any], as_of: date, labs: Collection[str]) -> list[StaleLab]:
    """Lab evidence dated more than REDRAW_AFTER_DAYS before as-of: "redraw at screening".

    A partial date counts by its first day: a lab that may be older is redrawn too. Evidence of
    a lab criterion that is no Observation (the Condition of `conditional_lab`, the summary of a
    Child-Pugh score) is not a lab, and neither is evidence without a date.
    """
    out: list[StaleLab] = []
    for cid, criterion in (patient.get("criteria") or {}).items():
        if cid not in labs:
            continue
        days = [d for ev in criterion.get("evidence") or [] if (d := _lab_day(ev))]
        if days and min(days) < _redraw_before(as_of):
            out.append(StaleLab(cid, min(days).isoformat(), (as_of - min(days)).days))
    return out


def _redraw_before(as_of: date) -> date:
    return as_of - timedelta(days=REDRAW_AFTER_DAYS)


def _lab_day(ev: Mapping[str, Any]) -> date | None:
    """The day of a lab value: an Observation's, or a derived value's (ANC from WBC and %, which
    names no single Observation); None for anything else."""
    reference = ev.get("reference")
    derived = reference is None and (ev.get("normalised") or {}).get("value") is not None
    if derived or (reference or "").startswith("Observation/"):
        return _earliest_day(ev.get("date"))
    return None


class ReportLayout(TypedDict):
    """What render_report needs of the trial besides results.json: `render_report(doc,
    **layout_of(trial))`."""

    manual: tuple[tuple[str, str], ...]
    automated: tuple[str, ...]
    labs: frozenset[str]


def _is_lab(criterion: Criterion) -> bool:
    parts: Iterable[Criterion] = getattr(criterion, "of", ())  # any_of, all_of
    return criterion.kind in LAB_KINDS or any(_is_lab(p) for p in parts)


def layout_of(trial: Trial) -> ReportLayout:
    """The trial's manual criteria (id, description), automated ids in order, and lab ids."""
    return {
        "manual": tuple((m.id, m.description) for m in trial.manual),
        "automated": tuple(c.id for c in trial.criteria),
        "labs": frozenset(c.id for c in trial.criteria if _is_lab(c)),
    }


# --- values ---------------------------------------------------------------------------------
# adapter/report/values.py formats the numbers, as the CSVs and `explain` show them; these add
# what a page cell needs: value and unit together, a coded value by its code, and "—".


def _cell(shown: tuple[str, str]) -> str:
    value, unit = shown
    return f"{value} {unit}".strip() if value else DASH


def recorded_text(ev: Mapping[str, Any]) -> str:
    """The value as recorded, comparator kept ("<2 IU/L"); a coded one by its code ("C22.0")."""
    rec = ev.get("recorded") or {}
    if rec.get("value") is None:
        return str(rec["code"]).rsplit("|", 1)[-1] if rec.get("code") else DASH
    return _cell(values.recorded_text(rec))


def normalised_text(ev: Mapping[str, Any]) -> str:
    """The normalised value rounded to the recorded precision (122 mg/dL -> 6.77 mmol/L)."""
    return _cell(values.normalised_text(ev.get("recorded"), ev.get("normalised")))


def _when(text: Any) -> str:
    """A dateTime shortened for the page: "2026-06-10 08:30" (the full text is in a tooltip)."""
    if not isinstance(text, str) or not text:
        return DASH
    return f"{text[:10]} {text[11:16]}" if len(text) > 10 and text[10] == "T" else text


# --- the page -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return DASH if value is None or value == "" else str(value)


def _duration(started: Any, finished: Any) -> str:
    try:
        seconds = (
            datetime.fromisoformat(finished) - datetime.fromisoformat(started)
        ).total_seconds()
    except (TypeError, ValueError):
        return DASH
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _evidence_rows(
    criterion: Mapping[str, Any], redraw_before: date | None
) -> list[dict[str, Any]]:
    """One row per evidence; `redraw_before`: a lab criterion's limit (else None)."""
    rows = []
    reason = criterion.get("reason")
    for ev in criterion.get("evidence") or [{}]:
        day = _lab_day(ev) if redraw_before else None
        rows.append(
            {
                "stale": bool(day and redraw_before and day < redraw_before),
                "recorded": recorded_text(ev),
                "normalised": normalised_text(ev),
                "date": _when(ev.get("date")),
                "date_full": _text(ev.get("date")),
                "threshold": _text(ev.get("threshold")),
                "lines": [
                    line
                    for line in (
                        ev.get("reference"),
                        ev.get("note") if ev.get("note") != reason else None,
                        ev.get("uln_source") and f"ULN: {ev['uln_source']}",
                    )
                    if line
                ],
            }
        )
    return rows


@dataclass(frozen=True, slots=True)
class _Layout:
    manual: tuple[tuple[str, str], ...]
    automated: tuple[str, ...]
    labs: Collection[str]
    as_of: date | None


def _patient_view(p: Mapping[str, Any], anchor: str, layout: _Layout) -> dict[str, Any]:
    identity = p.get("identity") or {}
    criteria: Mapping[str, Any] = p.get("criteria") or {}
    manual_ids = {m for m, _ in layout.manual}
    manual_ids |= {c for c, r in criteria.items() if r.get("result") == "manual"}
    order = [c for c in layout.automated if c in criteria]
    order += [c for c in criteria if c not in order and c not in manual_ids]
    as_of = layout.as_of
    stale = stale_labs(p, as_of, layout.labs) if as_of else []
    stale_ids = {s.criterion for s in stale}

    def redraw_before(cid: str) -> date | None:
        return _redraw_before(as_of) if as_of and cid in layout.labs else None

    return {
        "ref": _text(p.get("patient")),
        "anchor": anchor,
        "name": _text(identity.get("name")),
        "mrn": _text(identity.get("mrn")),
        "age": _text(identity.get("age")),
        "sex": _text(identity.get("sex")),
        "birth_date": _text(identity.get("birth_date")),
        "status": _text(p.get("status")),
        "new": p.get("new"),
        "people_status": p.get("people_status"),
        "unknown": [c for c in order if criteria[c].get("result") == "unknown"],
        "stale": stale,
        "criteria": [
            {
                "id": c,
                "result": _text(criteria[c].get("result")),
                "reason": _text(criteria[c].get("reason")),
                "stale": c in stale_ids,
                "evidence": _evidence_rows(criteria[c], redraw_before(c)),
            }
            for c in order
        ],
        "checklist": list(layout.manual) or [(c, c) for c in criteria if c in manual_ids],
    }


def _table_order(view: Mapping[str, Any]) -> tuple[int, int, str, str]:
    """Candidates before potential candidates, the new ones first, then by name."""
    status = FLAGGED.index(view["status"]) if view["status"] in FLAGGED else len(FLAGGED)
    return (status, 0 if view["new"] else 1, view["name"], view["ref"])


def _order_fields(p: Mapping[str, Any]) -> dict[str, Any]:
    """What `_table_order` reads of a view, read from the results.json entry."""
    identity = p.get("identity") or {}
    return {
        "status": _text(p.get("status")),
        "new": p.get("new"),
        "name": _text(identity.get("name")),
        "ref": _text(p.get("patient")),
    }


class _Listed:
    """The listed patients' views in table order, each made when the page reaches it (the page
    goes through them twice: the table, then each patient's section)."""

    def __init__(self, patients: Sequence[dict[str, Any]], order: list[int], layout: _Layout):
        self._patients = patients
        self._order = order
        self._layout = layout

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in self._order:
            yield _patient_view(self._patients[i], f"p{i + 1}", self._layout)

    def __len__(self) -> int:
        return len(self._order)


def _gone_view(entry: Mapping[str, Any], views: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """A patient who no longer qualifies, with the changed criteria as this run found them."""
    now = views.get(entry.get("patient") or "")
    criteria = {c["id"]: c for c in now["criteria"]} if now else {}
    identity = entry.get("identity") or {}
    return {
        "ref": _text(entry.get("patient")),
        "name": _text(identity.get("name") or (now and now["name"])),
        "mrn": _text(identity.get("mrn") or (now and now["mrn"])),
        "previous": _text(entry.get("previous_status")),
        "status": now["status"] if now else "not in this run",
        "changed": [
            {"id": cid, **{k: criteria.get(cid, {}).get(k, DASH) for k in ("result", "reason")}}
            for cid in entry.get("changed") or []
        ],
    }


def _default_automated(doc: Mapping[str, Any], manual_ids: Collection[str]) -> tuple[str, ...]:
    patients = doc.get("patients") or []
    first: Mapping[str, Any] = (patients[0].get("criteria") or {}) if patients else {}
    return tuple(c for c, r in first.items() if c not in manual_ids and r.get("result") != "manual")


def render_report(
    doc: dict[str, Any],
    *,
    manual: Sequence[tuple[str, str]] = (),
    automated: Sequence[str] | None = None,
    labs: Collection[str] = (),
) -> str:
    """report.html of a results.json document, whole (see `report_pieces`)."""
    return "".join(report_pieces(doc, manual=manual, automated=automated, labs=labs))


def report_pieces(
    doc: dict[str, Any],
    *,
    manual: Sequence[tuple[str, str]] = (),
    automated: Sequence[str] | None = None,
    labs: Collection[str] = (),
) -> Iterator[str]:
    """report.html of a results.json document, in the pieces the template renders: written as
    they come, the page of a large sweep (18 MiB for 1,758 hcc patients) is never one string.

    `manual`: the trial's manual criteria (id, description), a checklist on every listed
    patient. `automated`: criterion ids in the trial's order (default: the first patient's,
    manual ones left out). `labs`: criterion ids whose Observations are blood draws, marked
    "redraw at screening" when older than the protocol's window (`layout_of(trial)` gives all
    three).
    """
    manual = tuple(manual)
    if automated is None:
        automated = _default_automated(doc, {m for m, _ in manual})
    as_of = _earliest_day(doc.get("as_of")) if isinstance(doc.get("as_of"), str) else None
    layout = _Layout(manual, tuple(automated), frozenset(labs), as_of)
    patients: Sequence[dict[str, Any]] = doc.get("patients") or []
    gone_refs = {_text(e.get("patient")) for e in doc.get("no_longer_qualifies") or []}
    # Views of the patients the page shows only, and of the listed ones only while the page is
    # written: at 100,000 patients, views of the whole cohort took more memory than the rest of
    # the report, and those of the 990 listed hcc patients 40 MiB (issue 15).
    order: list[tuple[tuple[int, int, str, str], int]] = []
    handled: list[dict[str, Any]] = []
    by_ref: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(patients):
        ref, shown = _text(p.get("patient")), p.get("people_status")
        if shown:
            view = _patient_view(p, f"p{i + 1}", layout)
            handled.append(view)
            by_ref[ref] = view
        else:
            if _text(p.get("status")) in FLAGGED:
                order.append((_table_order(_order_fields(p)), i))
            if ref in gone_refs:
                by_ref[ref] = _patient_view(p, f"p{i + 1}", layout)
    handled.sort(key=lambda v: (v["name"], v["ref"]))
    listed = _Listed(patients, [i for _, i in sorted(order)], layout)

    gone = [_gone_view(e, by_ref) for e in doc.get("no_longer_qualifies") or []]
    bars = attrition(doc, automated)
    stats = doc.get("stats") or {}
    return _ENV.get_template("report.html.j2").generate(
        trial=_text(doc.get("trial")),
        as_of=_text(doc.get("as_of")),
        source=_text(doc.get("source")),
        started=_text(doc.get("started")),
        finished=_text(doc.get("finished")),
        duration=_duration(doc.get("started"), doc.get("finished")),
        run_id=_text(doc.get("run_id")),
        adapter_version=_text(doc.get("adapter_version")),
        counts=dict(doc.get("counts") or {}),
        cohort=len(patients),
        cohort_from=_cohort_from(doc.get("cohort")),
        reads=_reads_line(doc.get("source_reads")),
        unreached=list((doc.get("source_reads") or {}).get("unreached") or []),
        errors=list(doc.get("errors") or []),
        read=dict(stats.get("read") or {}),
        unusable=dict(stats.get("unusable_observations") or {}),
        chart=chart(bars),
        listed=listed,
        handled=handled,
        gone=gone,
        redraw_days=REDRAW_AFTER_DAYS,
        dash=DASH,
    )


def _cohort_from(cohort: object) -> str:
    """Where the cohort came from, in words: the diagnosis search, or a Group's or a file's
    members with what was left out of them (counts only)."""
    if not isinstance(cohort, dict):
        return "the diagnosis search"
    form = str(cohort.get("form") or "search")
    if form == "search":
        return "the diagnosis search"
    what = f"members of {form}"
    counts = [
        f"{cohort[key]} {label}"
        for key, label in (
            ("members", "members"),
            ("inactive", "inactive"),
            ("ended", "ended"),
            ("not_started", "not started"),
            ("outside_cohort", "without a cohort diagnosis"),
        )
        if isinstance(cohort.get(key), int) and cohort[key]
    ]
    return f"{what} ({', '.join(counts)})" if counts else what


def _reads_line(reads: object) -> str:
    """How the server was read, for the summary; empty for a folder."""
    if not isinstance(reads, dict) or reads.get("mode") in (None, "files"):
        return ""
    mode = "one patient at a time" if reads.get("mode") == "per-patient" else "in batches"
    profile = reads.get("profile")
    line = f"{mode}, profile {profile}" if profile else mode
    if reads.get("switched_to_per_patient"):
        line += " (the server refused searches for several patients)"
    return line


def write_report_html(out_dir: Path, html: str | Iterable[str]) -> None:
    """`out_dir/report.html`, owner-only and replaced atomically; OutputError if it cannot be.

    `html` may come in pieces (`report_pieces`), written as they come."""
    data = html.encode() if isinstance(html, str) else (piece.encode() for piece in html)
    try:
        write_private(out_dir / "report.html", data)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise OutputError(f"{out_dir}: report.html could not be written ({why})") from exc
