"""FHIR Bulk Data export (Bulk Data Access IG v2): kick-off, polling, downloads, resume (#14)."""
