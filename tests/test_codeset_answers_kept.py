"""A code set keeps its answers (issue 15: a sweep asks about the same codes for every patient
and criterion): a kept answer is the one a first asking gives, whatever was asked before."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.codes import CodePattern, CodeSet
from adapter.facts.model import Coding

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
PATTERNS = (
    CodePattern(ICD, "C22.0", "icd"),
    CodePattern(ICD, "K70-K77", "icd"),
    CodePattern(SCT, "109841003", "exact"),
)
EXCLUDED = (CodePattern(ICD, "K74.6", "icd"), CodePattern(SCT, "93870000", "exact"))
SHARED = CodeSet("hepatic", PATTERNS, EXCLUDED)

CODES = st.sampled_from(
    ["C22.0", "c22.01", "C220", "K72.90", "K74.60", "K746", "K78", "109841003", "93870000", " "]
)
CODINGS = st.builds(Coding, st.sampled_from([ICD, SCT, "urn:local"]), CODES)


@settings(max_examples=300, deadline=None)
@given(st.lists(CODINGS, min_size=1, max_size=10))
def test_a_kept_answer_is_the_first_askings(codings: list[Coding]) -> None:
    for coding in codings:
        assert SHARED.matches(coding) == CodeSet("hepatic", PATTERNS, EXCLUDED).matches(coding)


def test_the_grammar_still_holds_when_asked_twice() -> None:
    asked = CodeSet("hepatic", PATTERNS, EXCLUDED)
    for _ in range(2):
        assert asked.matches(Coding(ICD, "C22.000x"))
        assert asked.matches(Coding(ICD, "K72.90"))
        assert not asked.matches(Coding(ICD, "K74.60"))  # excluded
        assert not asked.matches(Coding(SCT, "C22.0"))  # another system
        assert asked.matches(Coding(SCT, "109841003"))


def test_kept_answers_change_neither_equality_nor_hash() -> None:
    asked, fresh = CodeSet("hepatic", PATTERNS, EXCLUDED), CodeSet("hepatic", PATTERNS, EXCLUDED)
    asked.matches(Coding(ICD, "C22.0"))
    assert asked == fresh
    assert hash(asked) == hash(fresh)
    assert "_known" not in repr(asked)
