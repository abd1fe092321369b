"""The first trial's criterion ids as trial-spec.md lists them ("The criteria"), in order."""

AUTOMATED = (
    "alive", "age", "hcc_diagnosis", "early_recurrence", "ecog", "child_pugh", "milan",
    "hemoglobin", "neutrophils", "platelets", "albumin", "bilirubin_total", "alt", "ast", "bun",
    "creatinine", "coagulation", "no_extrahepatic_metastasis", "no_other_malignancy",
    "no_autoimmune_disease", "no_immunodeficiency", "no_organ_transplant", "cardiac_function",
    "blood_pressure_controlled", "diabetes_glucose_controlled", "not_pregnant",
)  # fmt: skip
MANUAL = (
    "pathology_confirmed", "postop_imaging_clear_at_2_months", "expected_survival_over_6_months",
    "no_growth_factors_or_blood_products_2_weeks", "no_conflicting_serious_disease",
    "contraception_agreement", "informed_consent", "no_major_vascular_invasion",
)  # fmt: skip
