"""What the adversarial suite shares: a raw sender spliced to a raw listener leg, quiet logs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.harness.peers import RawListener, connect_url, token_for
from tests.harness.raw_ws import RawWs
from tests.harness.relay import InProcessRelay, RelayProcess
from tests.harness.timing import seconds


@dataclass
class RawPair:
    """Both ends of one relayed stream, each a raw socket the test drives frame by frame."""

    sender: RawWs
    listener: RawWs


@pytest.fixture
def raw_pair_rcvbuf() -> int | None:
    """SO_RCVBUF of both legs of :func:`raw_pair` (None: the kernel's default).

    A module overrides this fixture for peers that must stop taking bytes early.
    """
    return None


@pytest.fixture
async def raw_pair(
    relay: InProcessRelay | RelayProcess, raw_pair_rcvbuf: int | None
) -> AsyncIterator[RawPair]:
    """A raw sender spliced to a raw listener leg on "echo" of the module's ``relay``."""
    control = await RawListener(relay.url, "echo", behaviour=None).start()
    url = connect_url(relay.url, "echo")
    dialling = asyncio.create_task(
        RawWs.open(url, headers={"ServiceBusAuthorization": token_for(url)}, rcvbuf=raw_pair_rcvbuf)
    )
    try:
        accept = await asyncio.wait_for(control.accepts.get(), seconds(10))
        listener = await RawWs.open(str(accept["address"]), rcvbuf=raw_pair_rcvbuf)
        sender = await asyncio.wait_for(dialling, seconds(10))
        assert (sender.status, listener.status) == (101, 101)
        yield RawPair(sender, listener)
        sender.close()
        listener.close()
    finally:
        dialling.cancel()
        await control.stop()


def assert_quiet(relay: RelayProcess) -> None:
    """The relay logged no error and no traceback: hostile input costs a warning at most."""
    log = relay.log()
    assert "level=error" not in log
    assert "Traceback" not in log
