"""Fixtures the end-to-end tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.harness.processes import ProcessGroup


@pytest.fixture
async def procs(request: pytest.FixtureRequest) -> AsyncIterator[ProcessGroup]:
    """CLI child processes started by a test, stopped after it; their logs are printed
    only when the test failed (``rep_call`` is set by tests/conftest.py's report hook)."""
    group = ProcessGroup()
    try:
        yield group
    finally:
        await group.close()
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            print(group.log())  # noqa: T201 - child logs, shown only for a failed test
