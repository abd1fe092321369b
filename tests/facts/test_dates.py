"""FHIR date, dateTime and instant text -> spans of calendar days (adapter.facts.dates)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from adapter.facts.dates import parse_fhir_date


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [
        ("2026", date(2026, 1, 1), date(2026, 12, 31)),
        ("2024-02", date(2024, 2, 1), date(2024, 2, 29)),
        ("2026-06-15", date(2026, 6, 15), date(2026, 6, 15)),
        ("0001", date(1, 1, 1), date(1, 12, 31)),
        ("9999-12", date(9999, 12, 1), date(9999, 12, 31)),
        ("2026-06-15T23:30:00-14:00", date(2026, 6, 15), date(2026, 6, 15)),
        ("2026-06-15T00:30:00+14:00", date(2026, 6, 15), date(2026, 6, 15)),
    ],
)
def test_a_date_stands_for_its_calendar_days_in_its_own_offset(
    text: str, first: date, last: date
) -> None:
    parsed = parse_fhir_date(text)
    assert parsed is not None
    assert (parsed.first_day, parsed.last_day) == (first, last)


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:60Z"]
)
def test_timestamps_at_the_edges_of_the_calendar_sort_without_overflow(text: str) -> None:
    """Issue 11: sort_key converted to UTC, and 0001-01-01T00:00+14:00 is in year 0 in UTC
    (OverflowError). Aware datetimes compare as instants without conversion."""
    parsed = parse_fhir_date(text)
    assert parsed is not None
    parsed.sort_key()


def test_sort_key_orders_by_instant_across_offsets() -> None:
    early = parse_fhir_date("2026-06-15T09:00:00+08:00")  # 01:00 UTC
    late = parse_fhir_date("2026-06-15T02:00:00Z")
    assert early is not None
    assert late is not None
    assert early.sort_key() < late.sort_key()


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("2016-12-31T23:59:60Z", date(2016, 12, 31)),
        ("2015-06-30T23:59:60.5+00:00", date(2015, 6, 30)),
        ("2017-01-01T08:59:60+09:00", date(2017, 1, 1)),
    ],
)
def test_a_leap_second_is_read_as_the_end_of_its_minute(text: str, day: date) -> None:
    """FHIR allows second 60; Python's datetime does not. It was unreadable (the whole date
    lost); it is now the last microsecond of its minute, on its own day and after :59."""
    parsed = parse_fhir_date(text)
    assert parsed is not None
    assert parsed.first_day == day
    assert parsed.instant is not None
    assert (parsed.instant.second, parsed.instant.microsecond) == (59, 999_999)


def test_a_leap_second_is_after_the_second_before_it() -> None:
    before = parse_fhir_date("2016-12-31T23:59:59.5Z")
    leap = parse_fhir_date("2016-12-31T23:59:60Z")
    assert before is not None
    assert leap is not None
    assert before.sort_key() < leap.sort_key()


def test_fractional_seconds_are_kept_to_the_microsecond() -> None:
    parsed = parse_fhir_date("2026-06-15T08:00:00.123456789+05:30")
    assert parsed is not None
    tz = timezone(timedelta(hours=5, minutes=30))
    assert parsed.instant == datetime(2026, 6, 15, 8, 0, 0, 123456, tzinfo=tz)
    utc = parse_fhir_date("2026-06-15T08:00:00Z")
    assert utc is not None
    assert utc.instant == datetime(2026, 6, 15, 8, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2021-02-30",
        "2023-04-31",
        "2021-13",
        "2021-00-10",
        "0000",
        "0000-01-01",
        "2026-06-15T24:00:00Z",
        "2026-06-15T10:60:00Z",
        "2026-06-15T10:00:61Z",
        "2026-06-15T25:00",  # no offset: the day was kept whatever the time said
        "2026-06-15T10:00:00+99:99",
        "\uff12\uff10\uff12\uff16-06-15",  # fullwidth digits
        "\u0662\u0660\u0662\u0666",  # Arabic-Indic digits
        "",
        "2026-6-1",
    ],
)
def test_text_that_is_not_a_fhir_date_is_unreadable(text: str) -> None:
    """Impossible days and times, and digits that are not [0-9] (FHIR's grammar), are no date."""
    assert parse_fhir_date(text) is None


@pytest.mark.parametrize("value", [None, 20260615, 2026.0, True, ["2026"], {"start": "2026"}])
def test_a_date_field_of_another_type_is_unreadable(value: object) -> None:
    assert parse_fhir_date(value) is None
