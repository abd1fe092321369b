"""The searches that answer a query on a FHIR server, as pure values (no I/O).

A `Search` names its patients (a batch, one, or None for every patient), its code tokens and
its category tokens; `selection()` turns it into parameters. What a search may carry follows
the server profile (adapter/servers.py): a parameter the profile marks single-valued for the type
gets one value per search, and `post_filtered` marks a search carrying a parameter the server
applies after paging, whose `Bundle.total` therefore counts results it never returns.

`plan` gives the searches of batch mode; `Selection` decides codes and categories for both modes
(adapter/sources/per_patient.py makes each patient's searches from it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from itertools import product
from typing import TYPE_CHECKING

from adapter.errors import PatientError
from adapter.servers import GENERIC

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from adapter.facts.model import Coding
    from adapter.servers import ServerProfile, TypeRules
    from adapter.sources.base import Query

# The search parameter that selects by patient, per resource type; `patient=123` (a bare id) is
# valid for reference parameters (R4 search, "reference").
PATIENT_PARAM = {
    "Patient": "_id",
    "Observation": "patient",
    "Condition": "patient",
    "Procedure": "patient",
}

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# R4 search, "Escaping Search Parameters": these are escaped with a backslash inside a value.
_SEARCH_SPECIALS = re.compile(r"([\\,|$])")

CodeGroup = tuple[str, ...] | None

# What adapter/facts/extract.py (and sources.base.patient_id_of) read, as `_elements` names.
# Choice types are named twice: R4 3.1.1.5.9 asks for base names (`effective`), but some servers
# (sekmet-fhir 0.1.1) match only the JSON names (`effectiveDateTime`); each ignores the other
# form. Mandatory elements come back anyway; `meta` carries the versionId the reports cite.
FACT_ELEMENTS: Mapping[str, tuple[str, ...]] = {
    "Patient": (
        *("meta", "identifier", "name", "gender", "birthDate", "extension"),
        *("deceased", "deceasedBoolean", "deceasedDateTime"),
    ),
    "Condition": (
        *("meta", "subject", "code", "clinicalStatus", "verificationStatus"),
        *("onset", "onsetDateTime", "onsetPeriod", "recordedDate", "stage"),
        *("abatement", "abatementDateTime", "abatementPeriod", "abatementAge"),
        *("abatementRange", "abatementString", "abatementBoolean"),
    ),
    "Procedure": (
        *("meta", "subject", "status", "code"),
        *("performed", "performedDateTime", "performedPeriod"),
    ),
    "Observation": (
        *("meta", "subject", "status", "code", "issued"),
        *("effective", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        *("value", "valueQuantity", "valueInteger", "valueCodeableConcept"),
        *("dataAbsentReason", "referenceRange", "component"),
    ),
}


def is_fhir_id(text: str) -> bool:
    """Whether `text` is a valid FHIR resource id (R4 `id` datatype)."""
    return _FHIR_ID.fullmatch(text) is not None


def code_token(coding: Coding) -> str:
    """`system|code`, escaped; just `code` (any system, so never fewer matches) without a system."""
    code = _escape(coding.code)
    return f"{_escape(coding.system)}|{code}" if coding.system else code


def identifier_token(system: str, value: str) -> str:
    """`system|value`, escaped; `|value` without a system (R4 token: an identifier with none)."""
    return f"{_escape(system)}|{_escape(value)}"


def _escape(value: str) -> str:
    return _SEARCH_SPECIALS.sub(r"\\\1", value)


def patient_param(resource_type: str) -> str:
    """The parameter that selects `resource_type` by patient; ValueError for a type not served."""
    param = PATIENT_PARAM.get(resource_type)
    if param is None:
        raise ValueError(f"RestSource cannot search {resource_type!r}")
    return param


def checked_ids(patients: Iterable[str]) -> list[str]:
    """Patient ids sorted, each checked to be a FHIR id before it can reach a URL."""
    ids = sorted(patients)
    for pid in ids:
        if not is_fhir_id(pid):
            # The id stays out of the message (it is patient data), and out of every URL.
            raise PatientError(pid[:64], "not a valid FHIR id; refusing to put it in a search URL")
    return ids


@dataclass(frozen=True, slots=True)
class Search:
    """One search of a query: a batch of patients (None: all), code and category tokens (None:
    any). `post_filtered`: it carries a parameter the server applies after paging. `excluded`:
    code tokens whose resources an earlier search fetched, sent as `code:not` (issue 15)."""

    resource_type: str
    patient_param: str
    patients: tuple[str, ...] | None
    codes: tuple[str, ...] | None
    categories: tuple[str, ...] | None = None
    post_filtered: bool = False
    excluded: tuple[str, ...] = ()

    def selection(self) -> list[tuple[str, str]]:
        """The parameters that choose the resources: patients, codes, exclusions, categories.

        Each excluded token is a `code:not` of its own: repeated parameters are ANDed (R4
        search), so a resource holding any of them is left out whatever a server makes of
        `:not` with a comma-separated list.
        """
        out: list[tuple[str, str]] = []
        if self.patients is not None:
            out.append((self.patient_param, ",".join(self.patients)))
        if self.codes is not None:
            out.append(("code", ",".join(self.codes)))
        out += [("code:not", token) for token in self.excluded]
        if self.categories is not None:
            out.append(("category", ",".join(self.categories)))
        return out

    def halves(self) -> tuple[Search, Search] | None:
        """Two searches that together select the same: by patients, then codes, then categories."""
        if self.patients is not None and len(self.patients) > 1:
            first, second = _halve(self.patients)
            return replace(self, patients=first), replace(self, patients=second)
        if self.codes is not None and len(self.codes) > 1:
            first, second = _halve(self.codes)
            return replace(self, codes=first), replace(self, codes=second)
        if self.categories is not None and len(self.categories) > 1:
            first, second = _halve(self.categories)
            return replace(self, categories=first), replace(self, categories=second)
        return None

    def what(self) -> str:
        """The search in words, for messages: no ids, no codes."""
        word = "identifier" if self.patient_param == "identifier" else "patient"
        who = f"every {word}" if self.patients is None else _plural(len(self.patients), word)
        codes = "any code" if self.codes is None else _plural(len(self.codes), "code")
        text = f"the {self.resource_type} search for {who} and {codes}"
        if self.categories is not None:
            text += f" in {_plural(len(self.categories), 'category')}"
        return text


def _halve(values: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    mid = len(values) // 2
    return values[:mid], values[mid:]


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def carries_post_filter(search: Search, rules: TypeRules) -> bool:
    """Whether `search` sends a parameter the server applies only after paging."""
    return any(name in rules.post_filters for name, _ in search.selection())


def search_for(
    rules: TypeRules,
    kind: str,
    param: str,
    patients: tuple[str, ...] | None,
    codes: CodeGroup = None,
    categories: CodeGroup = None,
    excluded: tuple[str, ...] = (),
) -> Search:
    """A `Search`, marked `post_filtered` when `rules` say the server filters one of its
    parameters after paging."""
    search = Search(kind, param, patients, codes, categories, excluded=excluded)
    return replace(search, post_filtered=carries_post_filter(search, rules))


@dataclass(frozen=True, slots=True)
class Selection:
    """What a query's searches select besides the patient: code and category tokens.

    `by_category`: Observations are searched by category in place of `code` (a per-patient read
    on a server whose `code` is no filter), so what no category names is out of reach.
    `excluded`: code tokens to send as `code:not` (`excluded_tokens`).
    """

    resource_type: str
    codes: tuple[str, ...] | None
    categories: tuple[str, ...] | None
    by_category: bool = False
    excluded: tuple[str, ...] = ()

    def groups(self, rules: TypeRules) -> list[tuple[CodeGroup, CodeGroup]]:
        """(codes, categories) of each search: one value each where the server takes one only."""
        return list(
            product(
                _split(self.codes, "code" in rules.single_valued),
                _split(self.categories, "category" in rules.single_valued),
            )
        )

    def unreached(self, query: Query) -> list[str]:
        """What searches with this selection cannot reach, in words (never patient data)."""
        if self.categories is None:
            return []
        kinds = f"{self.resource_type}s"
        notes = [
            f"{kinds} without one of the searched categories ({', '.join(self.categories)}) "
            "are not reached in this mode"
        ]
        if self.by_category:
            notes += [
                f"analyte {name} names no Observation category: not reached in this mode"
                for name in sorted(query.uncategorised)
            ]
        return notes


def _split(values: tuple[str, ...] | None, single: bool) -> list[CodeGroup]:
    if values is None:
        return [None]
    return [(v,) for v in values] if single else [values]


def select(query: Query, rules: TypeRules, *, per_patient: bool) -> Selection | None:
    """Codes and categories for `query`'s searches; None when nothing can match (no codes).

    Batch mode sends the codes as they are. A per-patient read sends `code` only where the
    server filters by it before paging (`TypeRules.honours`); elsewhere the sweep re-checks
    every code on the client, and Observations are searched by the categories the analyte
    mappings name instead (or the profile's, where it requires one). Categories are never
    added where `code` is sent to Observations: Observations without a category must still be
    found. Other types carry the profile's categories where it requires `category`.
    """
    kind = query.resource_type
    if query.codes is not None and kind == "Patient":
        raise ValueError("a Patient search takes no codes")
    codes = None
    if query.codes is not None:
        if not query.codes:
            return None
        codes = tuple(sorted(code_token(c) for c in query.codes))
    required = tuple(sorted(rules.categories)) if "category" in rules.required else ()
    if per_patient and codes is None and kind == "Observation" and query.categories:
        # Any code (the survey's sample): the categories are what a server that wants a code
        # or a category on every Observation search (Epic) takes.
        return Selection(kind, None, tuple(sorted(query.categories)), by_category=True)
    if per_patient and codes is not None and not rules.honours("code"):
        codes = None
        if kind == "Observation":
            wanted = tuple(sorted(query.categories or ())) or required
            return Selection(kind, None, wanted or None, by_category=bool(wanted))
    if kind == "Observation" and codes is not None:
        required = ()
    return Selection(kind, codes, required or None, excluded=excluded_tokens(query, rules))


def excluded_tokens(query: Query, rules: TypeRules) -> tuple[str, ...]:
    """`query.exclude_codes` as tokens to send as `code:not`, sorted; none unless the profile
    says the server honours `:not` on `code` and filters by `code` before paging, and the
    query names no codes of its own (the cohort's Conditions are left out of the read of every
    Condition of its patients: the caller has them already, and drops any that come again)."""
    if not query.exclude_codes or query.codes is not None:
        return ()
    if not (rules.not_modifier and rules.honours("code")):
        return ()
    return tuple(sorted({code_token(c) for c in query.exclude_codes}))


def unreached(query: Query, profile: ServerProfile, *, per_patient: bool) -> list[str]:
    """What the searches of `query` cannot reach in the mode, in words (never patient data);
    a Patient read by id misses nothing."""
    if query.resource_type == "Patient":
        return []
    chosen = select(query, profile.rules(query.resource_type), per_patient=per_patient)
    return [] if chosen is None else chosen.unreached(query)


def plan(query: Query, *, batch_size: int, profile: ServerProfile = GENERIC) -> list[Search]:
    """The searches of batch mode for `query`, in a reproducible order.

    One per batch of patients (ids sorted), or one over every patient when `patients` is None, and
    per single-valued code or category; none when `patients` or `codes` is an empty set, since
    nothing can match.
    """
    kind = query.resource_type
    param = patient_param(kind)
    rules = profile.rules(kind)
    chosen = select(query, rules, per_patient=False)
    if chosen is None:
        return []
    batches: list[tuple[str, ...] | None]
    if query.patients is None:
        batches = [None]
    else:
        ids = checked_ids(query.patients)
        batches = [tuple(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    out: list[Search] = []
    for batch in batches:
        out += [
            search_for(rules, kind, param, batch, *group, chosen.excluded)
            for group in chosen.groups(rules)
        ]
    return out


def search_params(
    query: Query, *, batch_size: int, page_size: int, profile: ServerProfile = GENERIC
) -> list[list[tuple[str, str]]]:
    """The parameter lists of `plan(query)`, each with `_count`: pure, for tests and logs."""
    return [
        [*search.selection(), ("_count", str(profile.page_size(page_size)))]
        for search in plan(query, batch_size=batch_size, profile=profile)
    ]
