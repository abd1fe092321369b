"""Where results go: a folder of NDJSON, or a FHIR server."""
