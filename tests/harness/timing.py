"""One time unit for tests, scaled by HYBRIDRELAY_TEST_TIMEOUT_FACTOR on slow machines."""

from __future__ import annotations

import os

FACTOR = float(os.environ.get("HYBRIDRELAY_TEST_TIMEOUT_FACTOR", "1"))


def seconds(value: float) -> float:
    return value * FACTOR
