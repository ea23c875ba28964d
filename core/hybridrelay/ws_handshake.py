"""The asyncio side of the client's opening handshake (RFC 6455 §4.1).

What the request is and what a valid 101 (or a refusal) looks like is the sans-I/O
:class:`~hybridrelay.protocol.handshake.ClientHandshake`'s. :class:`OpeningHandshake`
only feeds it what arrives before the 101, wakes :func:`~hybridrelay.wsclient.ws_connect`
when there is an outcome, and bounds the wait for a refusal's body. A connection holds
it until the 101 is accepted, then drops it (the event and the outcome are not kept for
the connection's lifetime).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from hybridrelay import errors
from hybridrelay.logs import CLIENT
from hybridrelay.protocol.handshake import Accepted, ClientHandshake

__all__ = ["OpeningHandshake"]

logger = logging.getLogger(CLIENT)

# How long a refusal's body (the reason for a 401/403/404...) gets to arrive.
_ERROR_BODY_TIMEOUT: Final = 1.0


class OpeningHandshake:
    """One client handshake in progress: feed it what arrives, await :meth:`run`."""

    __slots__ = ("_event", "_hs", "_outcome")

    def __init__(self, hs: ClientHandshake) -> None:
        self._hs = hs
        self._outcome: Accepted | Exception | None = None
        self._event = asyncio.Event()

    def receive_data(self, data: bytes) -> Accepted | None:
        """What arrived before the 101; the :class:`Accepted` once the 101 is complete
        (its ``leftover`` is the first bytes of the WebSocket connection)."""
        if self._outcome is not None:
            return None  # refused or broken: ws_connect is raising, nothing more is read
        try:
            accepted = self._hs.receive_data(data)
        except Exception as exc:  # noqa: BLE001 - the handshake's outcome, for ws_connect
            self._outcome = exc
            self._event.set()
            return None
        if accepted is not None:
            self._outcome = accepted
            self._event.set()
        elif self._hs.refused:
            self._event.set()  # run() bounds the wait for the refusal's body
        return accepted

    def connection_lost(self) -> None:
        if self._outcome is None:
            try:
                self._hs.receive_eof()
            except Exception as error:  # noqa: BLE001 - it always raises: the outcome
                self._outcome = error
        self._event.set()

    async def run(self, transport: asyncio.Transport, log_url: str, debug: bool) -> None:
        """Send the request and wait for the 101.

        Raises:
            HandshakeError: The server refused (its status, reason and body).
            ProtocolError: The response is not a valid 101.
            ConnectionClosedError: The connection closed before the 101.
        """
        hs = self._hs
        transport.write(hs.request)
        while self._outcome is None and not hs.refused:
            self._event.clear()
            await self._event.wait()
        if self._outcome is None:  # a refusal: its body gets a short while
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ERROR_BODY_TIMEOUT):
                    while self._outcome is None:
                        self._event.clear()
                        await self._event.wait()
            if self._outcome is None:
                self._outcome = hs.refusal()
        outcome = self._outcome
        if isinstance(outcome, Exception):
            if debug and isinstance(outcome, errors.HandshakeError):
                logger.debug(
                    "! handshake rejected %s: %d %s", log_url, outcome.status, outcome.reason
                )
            raise outcome
