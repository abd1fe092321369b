"""FHIR R4 clinical-trial pre-screening adapter."""

__version__ = "0.1.0"
