"""The node's lifecycle: serving, draining, stopping (one service).

Three paths close a node to new work: ``POST /$mgmt/v1/nodes/{id}/drain`` (nodes.py),
SIGTERM (serve.py) and the application's shutdown (app.py). All of them go through this
object, which then answers for every reader: ``hc_endpoints`` refuses new listeners and
senders (503), ``/readyz`` answers 503 and the node's summary shows it draining. A drain
on request can be taken back (``undrain``); a stop cannot, so a stopping node stays
closed whatever an operator asks.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

__all__ = ["LIFECYCLE", "NodeLifecycle"]


class NodeLifecycle:
    """Whether this node takes new work; it starts serving."""

    __slots__ = ("_draining", "_stopping")

    def __init__(self) -> None:
        self._draining = False
        self._stopping = False

    @property
    def draining(self) -> bool:
        """New listeners and senders are refused (read on every listen and connect)."""
        return self._draining

    @property
    def stopping(self) -> bool:
        """The process is shutting down: draining, for good."""
        return self._stopping

    def drain(self) -> bool:
        """Refuse new work from now on; False if this node was draining already."""
        if self._draining:
            return False
        self._draining = True
        return True

    def undrain(self) -> bool:
        """Take new work again; False (nothing changes) unless draining and not stopping."""
        if not self._draining or self._stopping:
            return False
        self._draining = False
        return True

    def stop(self) -> None:
        """The process is shutting down (SIGTERM, app shutdown): drain, never to undrain."""
        self._stopping = self._draining = True


LIFECYCLE: Final = web.AppKey("hybridrelay_lifecycle", NodeLifecycle)
