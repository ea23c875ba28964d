"""NodeLifecycle: a drain can be taken back, a stop cannot."""

from __future__ import annotations

from hybridrelay.relay.lifecycle import NodeLifecycle


def test_a_node_serves_until_drained_and_again_once_undrained() -> None:
    node = NodeLifecycle()
    assert (node.draining, node.stopping) == (False, False)
    assert node.undrain() is False  # serving already: nothing changes
    assert node.drain() is True
    assert node.drain() is False  # draining already: callers do not close twice
    assert node.draining is True
    assert node.undrain() is True
    assert (node.draining, node.stopping) == (False, False)


def test_a_stopping_node_stays_draining() -> None:
    node = NodeLifecycle()
    node.stop()
    assert (node.draining, node.stopping) == (True, True)
    assert node.undrain() is False
    assert node.drain() is False
    assert node.draining is True
