"""Run a :class:`hybridrelay.listener.Listener` for the length of a ``with`` block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from hybridrelay.errors import EntityNotFoundError
from hybridrelay.listener import Listener

from .timing import seconds

__all__ = ["running_listener"]


@contextlib.asynccontextmanager
async def running_listener(
    listener: Listener, *, tolerate: tuple[type[Exception], ...] = (EntityNotFoundError,)
) -> AsyncIterator[asyncio.Event]:
    """Start ``listener``, wait until its control channel is open, stop it on exit.

    Yields the stop event (set it to stop early). A listener that fails before it
    connects raises here; one that ends on the way out with one of ``tolerate`` (by
    default 404) is fine, ``TimeoutError`` there meaning it did not stop within 20 s.
    """
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        connected = asyncio.ensure_future(listener.connected.wait())
        done, _ = await asyncio.wait(
            {task, connected}, timeout=seconds(10), return_when=asyncio.FIRST_COMPLETED
        )
        connected.cancel()
        if task in done:
            task.result()
        assert listener.connected.is_set()
        yield stop
    finally:
        stop.set()
        with contextlib.suppress(*tolerate):
            async with asyncio.timeout(seconds(20)):
                await task
