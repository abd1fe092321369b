"""Clinical criteria that combine Conditions with Observations: cardiac function (coronary heart
disease, heart failure with its NYHA class), a lab required only with a Condition (diabetes and
fasting glucose), and pregnancy (sex, age, serum hCG).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from adapter.criteria.context import Context
from adapter.criteria.history import condition_evidence, patient_evidence
from adapter.criteria.kinds import Criterion, LabThreshold, Problem, completed_years
from adapter.criteria.labs import compare, fmt
from adapter.criteria.observed import (
    CodeNumbers,
    analyte_name,
    code_lookup,
    first_coded,
    latest_reading,
    reading_evidence,
    shown,
)
from adapter.criteria.results import CriterionResult, Evidence, Result
from adapter.facts.model import LabValue

if TYPE_CHECKING:
    from adapter.analytes import Analyte
    from adapter.codes import CodeSet
    from adapter.facts.units import Units

ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV"}


def _classes(classes: set[int] | frozenset[int]) -> str:
    return "/".join(ROMAN.get(c, str(c)) for c in sorted(classes))


class CardiacFunction(Criterion):
    """No active coronary heart disease; active heart failure only with NYHA class <= max.

    The NYHA class comes from the heart-failure Conditions' stage.summary and from the latest
    Observation of `nyha_analyte` in `nyha_window_days` whose value is one of the NYHA codes
    (`nyha_classes`: system -> code -> class). The spec says the latest decides, but a stage has
    no date of its own: when the stage and the Observation lead to the same decision it stands,
    when they disagree the result is unknown (we cannot tell which is current).
    """

    kind: Literal["cardiac_function"]
    coronary_codeset: str
    heart_failure_codeset: str
    nyha_analyte: str
    nyha_window_days: int = Field(gt=0, le=3650)
    nyha_classes: CodeNumbers = Field(min_length=1)
    max_nyha_class: int = Field(ge=1)

    def analytes(self) -> frozenset[str]:
        return frozenset({self.nyha_analyte})

    def codesets(self) -> frozenset[str]:
        return frozenset({self.coronary_codeset, self.heart_failure_codeset})

    def _nyha(self, lab: LabValue) -> frozenset[int] | None:
        return frozenset(code_lookup(self.nyha_classes, lab.value_codes)) or None

    def evaluate(self, ctx: Context) -> CriterionResult:
        coronary = list(ctx.conditions_in(self.coronary_codeset, active_only=True))
        if coronary:
            return CriterionResult(
                Result.NOT_MET,
                f"active {self.coronary_codeset} Condition",
                tuple(condition_evidence(ctx, c, self.coronary_codeset) for c in coronary),
            )
        failing = list(ctx.conditions_in(self.heart_failure_codeset, active_only=True))
        if not failing:
            none = f"no active {self.coronary_codeset} or {self.heart_failure_codeset} Condition"
            return CriterionResult(Result.MET, none, (patient_evidence(ctx, none),))
        hf = self.heart_failure_codeset
        ev: list[Evidence] = []
        sources: list[tuple[str, frozenset[int]]] = []
        for cond in failing:
            staged = frozenset(code_lookup(self.nyha_classes, cond.stage_codes))
            note = (
                f"NYHA class {_classes(staged)} in stage (undated)" if staged else "no NYHA stage"
            )
            ev.append(condition_evidence(ctx, cond, hf, note=note))
            if staged:
                sources.append((f"{cond.reference} stage (undated)", staged))
        name = analyte_name(ctx, self.nyha_analyte)
        pick = latest_reading(
            ctx,
            {self.nyha_analyte},
            self.nyha_window_days,
            self._nyha,
            what=name,
            only_readable=True,
        )
        limit = ROMAN.get(self.max_nyha_class, str(self.max_nyha_class))
        threshold = f"NYHA class <= {limit}"
        if pick.lab is not None and pick.value is not None:
            answer = first_coded(self.nyha_classes, pick.lab.value_codes)
            ev.append(reading_evidence(pick.lab, threshold=threshold, answer=answer))
            when = pick.lab.date.text if pick.lab.date else "?"
            sources.append((f"{pick.lab.reference} on {when}", pick.value))
        elif not pick.absent:
            return CriterionResult(
                Result.UNKNOWN, f"active {hf}; NYHA Observation: {pick.problem}", tuple(ev)
            )
        if not sources:
            return CriterionResult(
                Result.UNKNOWN,
                f"active {hf} with no NYHA class (no Condition.stage, and no {name} in the "
                f"{self.nyha_window_days} days before {ctx.as_of.isoformat()})",
                tuple(ev),
            )
        decisions = {c <= self.max_nyha_class for _, classes in sources for c in classes}
        found = "; ".join(f"class {_classes(classes)} ({src})" for src, classes in sources)
        if decisions == {True}:
            return CriterionResult(Result.MET, f"active {hf}, NYHA {found}: {threshold}", tuple(ev))
        if decisions == {False}:
            return CriterionResult(
                Result.NOT_MET, f"active {hf}, NYHA {found}: above class {limit}", tuple(ev)
            )
        return CriterionResult(
            Result.UNKNOWN,
            f"active {hf}, NYHA {found}: they disagree about {threshold} and which is current "
            "is unknown (a stage has no date)",
            tuple(ev),
        )


class ConditionalLab(LabThreshold):
    """With an active Condition in `condition_codeset`, the latest `analyte` in the window decides
    (as lab_threshold); without one the criterion is met."""

    kind: Literal["conditional_lab"]  # type: ignore[assignment]
    condition_codeset: str

    def codesets(self) -> frozenset[str]:
        return frozenset({self.condition_codeset})

    def evaluate(self, ctx: Context) -> CriterionResult:
        conds = list(ctx.conditions_in(self.condition_codeset, active_only=True))
        if not conds:
            none = f"no active {self.condition_codeset} Condition: the lab is not required"
            return CriterionResult(Result.MET, none, (patient_evidence(ctx, none),))
        lab = super().evaluate(ctx)
        ev = tuple(condition_evidence(ctx, c, self.condition_codeset) for c in conds)
        return CriterionResult(
            lab.result, f"active {self.condition_codeset}: {lab.reason}", ev + lab.evidence
        )


class NotPregnant(Criterion):
    """Not pregnant: male is met; anyone else over `max_age_requiring_test` is met; otherwise the
    latest serum hCG in the window decides (negative met, positive not_met, none unknown). For a
    female, an active `pregnancy_codeset` Condition is not_met whatever the age; for a male, sex
    decides and the evidence notes the code (trial-spec v2).

    Sex is the sex-for-clinical-use or birth-sex extension where present, else gender; other,
    unknown, absent or disagreeing is treated as female. A partial birthDate that may be at or
    under the age limit, or none, requires a test. hCG is read from `presence_analyte` (coded
    answers in `positive_codes` / `negative_codes`: system -> codes) or `quantity_analyte`
    (>= positive_at is positive; an interval across it, like `<10`, is unknown).
    """

    kind: Literal["not_pregnant"]
    pregnancy_codeset: str
    presence_analyte: str
    quantity_analyte: str
    unit: str
    positive_at: float = Field(gt=0)
    positive_codes: dict[str, list[str]] = Field(min_length=1)
    negative_codes: dict[str, list[str]] = Field(min_length=1)
    window_days: int = Field(gt=0, le=3650)
    max_age_requiring_test: int = Field(ge=0)

    def analytes(self) -> frozenset[str]:
        return frozenset({self.presence_analyte, self.quantity_analyte})

    def codesets(self) -> frozenset[str]:
        return frozenset({self.pregnancy_codeset})

    def check(
        self, codesets: Mapping[str, CodeSet], analytes: Mapping[str, Analyte], units: Units
    ) -> Problem:
        problem = super().check(codesets, analytes, units)
        if problem is None and analytes[self.quantity_analyte].unit != self.unit:
            return (
                "unit",
                f"threshold unit '{self.unit}' is not the canonical unit "
                f"'{analytes[self.quantity_analyte].unit}' of '{self.quantity_analyte}'",
            )
        if problem is None:
            for system, codes in self.positive_codes.items():
                both = set(codes) & set(self.negative_codes.get(system, ()))
                if both:
                    return ("positive_codes", f"codes both positive and negative: {sorted(both)}")
        return problem

    def _hcg(self, lab: LabValue) -> str | None:
        """'positive', 'negative', 'either' (an interval across positive_at), or None."""
        norm = lab.normalised
        if lab.analyte == self.quantity_analyte and norm is not None:
            return {Result.MET: "positive", Result.NOT_MET: "negative"}.get(
                compare(norm, ">=", self.positive_at), "either"
            )
        positive = first_coded(self.positive_codes, lab.value_codes)
        negative = first_coded(self.negative_codes, lab.value_codes)
        if (positive is None) == (negative is None):
            return None
        return "positive" if positive else "negative"

    def evaluate(self, ctx: Context) -> CriterionResult:
        pregnant = list(ctx.conditions_in(self.pregnancy_codeset, active_only=True))
        p = ctx.facts.patient
        sex = p.sex
        if sex == "male":
            # trial-spec v2: for a male, sex decides; a pregnancy code is noted, not counted.
            note = "sex male" if p.recorded_sex is None else "sex male (sex extension)"
            male = (
                Evidence(reference=p.reference, note=note),
                *(
                    condition_evidence(
                        ctx,
                        c,
                        self.pregnancy_codeset,
                        note="a pregnancy code on a male: not counted",
                    )
                    for c in pregnant
                ),
            )
            reason = "male" + (
                f"; an active {self.pregnancy_codeset} code is recorded and not counted"
                if pregnant
                else ""
            )
            return CriterionResult(Result.MET, reason, male)
        if pregnant:
            return CriterionResult(
                Result.NOT_MET,
                f"active {self.pregnancy_codeset} Condition",
                tuple(condition_evidence(ctx, c, self.pregnancy_codeset) for c in pregnant),
            )
        who = "female" if sex == "female" else f"sex {sex or 'absent'} (as female)"
        limit = self.max_age_requiring_test
        if p.birth_date is None:
            aged = "of unknown age (no birthDate)"
        else:
            youngest = completed_years(p.birth_date.last_day, ctx.as_of)
            oldest = completed_years(p.birth_date.first_day, ctx.as_of)
            aged = f"aged {youngest}" if youngest == oldest else f"aged {youngest} to {oldest}"
            if youngest > limit:
                return CriterionResult(
                    Result.MET,
                    f"{who} {aged}: over {limit}, no pregnancy test required",
                    (Evidence(reference=p.reference, date=p.birth_date.text, note=who),),
                )
        person = Evidence(
            reference=p.reference,
            date=p.birth_date.text if p.birth_date else None,
            note=f"{who} {aged}: a negative serum hCG is required at {limit} or younger",
        )
        pick = latest_reading(
            ctx,
            (self.presence_analyte, self.quantity_analyte),
            self.window_days,
            self._hcg,
            what="serum hCG",
        )
        if pick.lab is None:
            return CriterionResult(Result.UNKNOWN, f"{who} {aged}: {pick.problem}", (person,))
        lab = pick.lab
        answer = first_coded(self.positive_codes, lab.value_codes) or first_coded(
            self.negative_codes, lab.value_codes
        )
        threshold = f"negative; a quantity >= {fmt(self.positive_at)} {self.unit} is positive"
        ev = (person, reading_evidence(lab, threshold=threshold, answer=answer))
        on = lab.date.text if lab.date else "?"
        value = (
            f"{shown(lab.normalised)} {lab.normalised.unit}"
            if lab.normalised is not None and answer is None
            else (answer.code if answer else "")
        )
        if pick.value == "negative":
            return CriterionResult(
                Result.MET, f"{who} {aged}: negative serum hCG ({value}) on {on}", ev
            )
        if pick.value == "positive":
            return CriterionResult(
                Result.NOT_MET, f"{who} {aged}: positive serum hCG ({value}) on {on}", ev
            )
        if pick.value == "either":
            return CriterionResult(
                Result.UNKNOWN,
                f"{who} {aged}: serum hCG {value} on {on} may be on either side of "
                f"{fmt(self.positive_at)} {self.unit}",
                ev,
            )
        return CriterionResult(Result.UNKNOWN, f"{who} {aged}: {pick.problem}", ev)


KINDS: tuple[type[Criterion], ...] = (CardiacFunction, ConditionalLab, NotPregnant)
