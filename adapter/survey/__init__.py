"""The code survey (`trial-adapter survey`): the codes and units a site sends, and what reads them.

Stages, one module each: `tally` counts codes and unit spellings of the resources read (keeping no
patient data), `hints` loads the words that suggest an analyte (`mappings/hints.yaml`), `analyse`
judges the tally against the trials' mappings, `outputs` writes the table, `survey.json` and the
draft `site-mappings.yaml`, and `run` ties them to a source.
"""
