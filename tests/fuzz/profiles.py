"""Hypothesis settings for the fuzz tests: bounded in CI, long in ``python -m tests.fuzz``.

The whole of tests/fuzz must stay well under 30 s in CI (2 shared CPUs), so each test
names its number of examples; the profiles set everything else.
"""

from __future__ import annotations

from typing import Final

from hypothesis import HealthCheck, Phase, settings

__all__ = ["CAMPAIGN", "CI", "PURE_EXAMPLES"]

# CI, wire targets: the same inputs on every run, no example database, no shrinking
# (failures are reported with the inputs as sent), no complaints about slow generation.
CI: Final = settings(
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)
# The long campaign: the same, with fresh random inputs on every run.
CAMPAIGN: Final = settings(CI, derandomize=False)

# Examples per test of the sans-I/O parser properties (test_protocol_fuzz.py): random
# inputs each run, so CI explores a little more every time.
PURE_EXAMPLES: Final = 150

settings.register_profile("hybridrelay-fuzz-ci", CI)
settings.register_profile("hybridrelay-fuzz-campaign", CAMPAIGN)
