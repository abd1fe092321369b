"""FHIR JSON -> plain typed facts (patients, lab values with units, conditions, procedures)."""
