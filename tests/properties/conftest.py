"""Hypothesis profiles for the property tests: "ci" is small and repeatable, "dev" searches wider.

CI (`CI=true`) loads "ci" so a red build replays the same examples on a workstation; elsewhere
"dev" runs more examples. `HYPOTHESIS_PROFILE` picks one by name when set.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None)

_default = "ci" if os.environ.get("CI", "").lower() == "true" else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))
