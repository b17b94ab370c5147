"""Shared pytest configuration: Hypothesis settings profiles.

Profile selection: `BSVIT_HYPOTHESIS_PROFILE` if set (e.g. "ci" or "dev"); otherwise "ci"
when the `CI` environment variable is set, else "dev". Tests that do not pin
`max_examples` themselves take it from the active profile.
"""
from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=False,
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=30,
    deadline=None,
    derandomize=False,
    print_blob=True,
)

_profile = os.environ.get("BSVIT_HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
settings.load_profile(_profile)
