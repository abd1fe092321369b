"""FHIR date, dateTime and instant values, partial ones included, as spans of calendar days."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$",
    re.ASCII,  # FHIR's grammar is [0-9]: `\d` alone would read Arabic-Indic or fullwidth digits
)
#: FHIR allows 60 seconds (a leap second, `23:59:60Z`); Python's datetime does not, so one is
#: read as the last microsecond of its minute: the same calendar day, and still after :59.
_LEAP_SECOND = 60
# A strict part of _DATE_RE: whole dates, and timestamps with seconds and an offset.
_FULL_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:\d{2}))?",
    re.ASCII,
)
#: texts remembered by `parse_fhir_date` before the memo is emptied (and offsets, at most)
MEMO_SIZE = 4096
_MEMO: dict[str, FhirDate | None] = {}
_OFFSETS: dict[str, timezone] = {}


@dataclass(frozen=True, slots=True, order=False)
class FhirDate:
    """A point in time as FHIR recorded it, with the calendar days it may stand for.

    `first_day`..`last_day` is the span of a partial date (`2026-06` spans June); a full date or
    timestamp has first_day == last_day, the calendar date in the timestamp's own offset (the spec's
    window rule). `instant` orders timestamps of the same day; it is None for dates without a time,
    and for times without an offset (FHIR requires one; we keep the day and do not guess the zone).
    """

    text: str
    first_day: date
    last_day: date
    instant: datetime | None = None

    @property
    def is_exact_day(self) -> bool:
        return self.first_day == self.last_day

    def sort_key(self) -> tuple[date, datetime]:
        """Key for 'latest': the last day it may be, then its instant within that day.

        Aware datetimes compare as instants whatever their offsets; converting them to UTC would
        overflow at the calendar's edges (`0001-01-01T00:00:00+14:00` is in year 0 in UTC).
        """
        moment = self.instant or datetime.combine(self.last_day, datetime.min.time(), UTC)
        return (self.last_day, moment)


def parse_fhir_date(text: object) -> FhirDate | None:
    """Parse a FHIR date/dateTime/instant string; None when it is absent or malformed.

    Answers are remembered (`_MEMO`): the resources of one encounter share their timestamps, so
    nine in ten texts of an export were met a moment before, and parsing one costs about 6 us.
    A FhirDate is immutable, so handing out the same one twice is safe.
    """
    if not isinstance(text, str):
        return None
    if text in _MEMO:
        return _MEMO[text]
    full = _FULL_RE.fullmatch(text)
    parsed = _parse_full(text, full) if full is not None else _parse(text)
    if len(_MEMO) >= MEMO_SIZE:
        # Bounded memory; the texts of the resources being read come back at once.
        _MEMO.clear()
    _MEMO[text] = parsed
    return parsed


def _parse_full(text: str, m: re.Match[str]) -> FhirDate | None:
    """The common whole forms (`2011-08-04`, `2011-08-04T09:22:29.342+00:00`, `_FULL_RE`),
    parsed as `_parse` parses them, with fewer steps."""
    year, month, day_text, hour, minute, second_text, fraction, zone = m.groups()
    try:
        day = date(int(year), int(month), int(day_text))
        if hour is None:
            return FhirDate(text, day, day)
        second = int(second_text)
        micro = int(fraction.ljust(6, "0")) if fraction else 0
        if second == _LEAP_SECOND:
            second, micro = 59, 999_999
        tz = UTC if zone == "Z" else _offset(zone)
        moment = datetime(day.year, day.month, day.day, int(hour), int(minute), second, micro, tz)
        return FhirDate(text, day, day, moment)
    except ValueError:
        return None


def _parse(text: str) -> FhirDate | None:
    """`parse_fhir_date` without the memo, for every form."""
    m = _DATE_RE.match(text.strip())
    if m is None:
        return None
    try:
        year = int(m["y"])
        if m["m"] is None:
            return FhirDate(text, date(year, 1, 1), date(year, 12, 31))
        month = int(m["m"])
        if m["d"] is None:
            last = calendar.monthrange(year, month)[1]
            return FhirDate(text, date(year, month, 1), date(year, month, last))
        day = date(year, month, int(m["d"]))
        if m["H"] is None:
            return FhirDate(text, day, day)
        second = int(m["S"] or 0)
        micro = int((m["f"] or "0")[:6].ljust(6, "0"))
        if second == _LEAP_SECOND:
            second, micro = 59, 999_999
        # Built even without an offset, so that an impossible time (25:00) is unreadable too.
        moment = datetime(year, month, day.day, int(m["H"]), int(m["M"]), second, micro)
        if m["tz"] is None:
            return FhirDate(text, day, day)
        tz = UTC if m["tz"] == "Z" else _offset(m["tz"])
        return FhirDate(text, day, day, moment.replace(tzinfo=tz))
    except ValueError:
        return None


def _offset(text: str) -> timezone:
    tz = _OFFSETS.get(text)
    if tz is None:
        sign = 1 if text[0] == "+" else -1
        hours, minutes = int(text[1:3]), int(text[4:6])
        # ValueError past 24 hours, as before: never remembered.
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        if len(_OFFSETS) < MEMO_SIZE:
            _OFFSETS[text] = tz
    return tz
