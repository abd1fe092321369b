"""Where resources come from: a folder of files, or a FHIR server's search API."""
