"""FHIR dates are parsed as before issue 15, however they are reached: the fast path for the
whole forms, the general parser, or the memo of texts met before."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from adapter.facts import dates
from adapter.facts.dates import _parse, parse_fhir_date

DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=3)
PIECES = st.one_of(
    DIGITS,
    st.sampled_from(["-", "T", ":", ".", "Z", "+", " ", "\n", "٣", "2024", "12", "31", "60"]),
)


@st.composite
def dateish(draw: st.DrawFn) -> str:
    """Texts near the grammar: whole forms with a field changed, cut short or lengthened."""
    year = draw(st.sampled_from(["2024", "0000", "0001", "9999", "2023", "202"]))
    month = draw(st.sampled_from(["01", "02", "12", "13", "00", "1"]))
    day = draw(st.sampled_from(["01", "28", "29", "30", "31", "32", "00"]))
    time = draw(st.sampled_from(["", "T00:00:00", "T23:59:60", "T24:00:00", "T09:22:29", "T09:22"]))
    fraction = draw(st.sampled_from(["", ".1", ".342", ".123456", ".1234567", "."]))
    zone = draw(st.sampled_from(["", "Z", "+00:00", "-05:30", "+14:00", "+24:00", "+23:59"]))
    text = f"{year}-{month}-{day}{time}{fraction}{zone}"
    cut = draw(st.integers(min_value=0, max_value=len(text)))
    extra = draw(st.lists(PIECES, max_size=2))
    return draw(st.sampled_from([text, text[:cut], text + "".join(extra), " " + text]))


@given(dateish())
@example("2011-08-04T09:22:29.342+00:00")
@example("2011-08-04T09:22:29+00:00")
@example("2016-02-29")
@example("2015-02-29")
@example("2024-01-01T23:59:60Z")
@example("2024-01-01T00:00:00+24:00")
def test_whole_forms_parse_as_the_general_parser_does(text: str) -> None:
    dates._MEMO.clear()
    first = parse_fhir_date(text)
    assert first == _parse(text)
    # Met again: the memo's answer is the same.
    assert parse_fhir_date(text) == first


@given(st.lists(PIECES, max_size=8).map("".join))
def test_any_text_parses_as_the_general_parser_does(text: str) -> None:
    dates._MEMO.clear()
    assert parse_fhir_date(text) == _parse(text)


def test_the_memo_stays_bounded() -> None:
    dates._MEMO.clear()
    for n in range(dates.MEMO_SIZE + 10):
        parse_fhir_date(f"{1000 + n}")
    assert len(dates._MEMO) <= dates.MEMO_SIZE
    assert parse_fhir_date("1999") == _parse("1999")


def test_things_that_are_not_text_are_not_dates() -> None:
    assert parse_fhir_date(None) is None
    assert parse_fhir_date(20240101) is None
