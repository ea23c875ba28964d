"""The client WebSocket's keepalive: when to ping, and when a silent peer is given up.

Only the timing is here. What a ping is (a random 4-byte payload through the sans-I/O
:class:`~hybridrelay.protocol.connection.Connection`), when one is not due (closing, or
reading paused: the peer's data waits on us, so it is alive) and what giving up means
(an abort, 1006) are the connection's: :class:`~hybridrelay.wsclient.WsConnection`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Keepalive"]


class Pinged(Protocol):
    """What :class:`Keepalive` needs of its connection."""

    @property
    def _loop(self) -> asyncio.AbstractEventLoop: ...

    def _closing(self) -> bool: ...

    def _keepalive_ping(self) -> bool:
        """Send a ping if one is due; False when none is."""

    def _keepalive_expired(self, pong_timeout: float) -> None:
        """Nothing arrived within ``pong_timeout`` of the ping."""


class Keepalive:
    """Pings every ``interval`` and aborts the connection when nothing (a pong or any
    data) arrives within ``pong_timeout`` of a ping. Timer callbacks only: a task per
    connection would cost more than the pings."""

    __slots__ = ("_conn", "_interval", "_pong_timeout", "_timer", "awaiting")

    def __init__(self, conn: Pinged, interval: float, pong_timeout: float) -> None:
        self._conn = conn
        self._interval = interval
        self._pong_timeout = pong_timeout
        self.awaiting = False  # a ping is out and nothing arrived since
        self._timer: asyncio.TimerHandle | None = conn._loop.call_later(interval, self._tick)

    def done(self) -> bool:
        return self._timer is None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.awaiting = False

    def alive(self) -> None:
        """Data arrived after a ping: the next ping is one interval from now."""
        self.awaiting = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._conn._loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        conn = self._conn
        if conn._closing():
            self._timer = None
            return
        if conn._keepalive_ping():
            self.awaiting = True
            self._timer = conn._loop.call_later(self._pong_timeout, self._expired)
        else:
            self._timer = conn._loop.call_later(self._interval, self._tick)

    def _expired(self) -> None:
        self._timer = None
        self.awaiting = False
        self._conn._keepalive_expired(self._pong_timeout)
