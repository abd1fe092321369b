"""Talking to FHIR servers: the HTTP client seam, error classification, paging."""
