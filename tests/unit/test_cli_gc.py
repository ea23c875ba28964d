"""The long-running commands' collector settings (cli._run): rare young collections, and
the objects made at start frozen out of full collections."""

from __future__ import annotations

import asyncio
import gc

from hybridrelay import cli


def test_a_served_component_runs_with_rare_young_collections_and_a_frozen_start() -> None:
    threshold = gc.get_threshold()
    seen: dict[str, object] = {}

    async def component(stop: asyncio.Event) -> None:
        assert not stop.is_set()
        await asyncio.sleep(0)  # its first wait: the freeze runs here
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()

    try:
        cli._run(component)
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
    assert seen["threshold"] == (cli.GC_YOUNG_THRESHOLD, *threshold[1:])
    assert isinstance(seen["frozen"], int)
    assert seen["frozen"] > 0
