"""Choose a listener and hand it a control message, trying another if the first just left.

Between choosing a listener and writing to its control channel the channel may
close (an agent draining on SIGTERM, a takeover, a node that died). The sender
should not pay for that race: the message goes to the next eligible listener
instead (issue 4: "stop one agent, traffic continues on the other with no failed
new connections").
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from hybridrelay.errors import ConnectionClosedError, NoListenerError
from hybridrelay.protocol.messages import Accept, Request
from hybridrelay.relay.cluster.base import ClusterState, ListenerHandle

__all__ = ["Compose", "deliver_to_listener", "fixed"]

_ATTEMPTS = 3

# What to send to a chosen listener: the message may depend on where it lives (an HTTP
# request goes inline to a listener on this node, rendezvous-only to one elsewhere).
Compose = Callable[[ListenerHandle], tuple[Accept | Request, bytes | None]]


async def deliver_to_listener(
    cluster: ClusterState,
    hc_name: str,
    message: Accept | Request | None = None,
    body: bytes | None = None,
    *,
    compose: Compose | None = None,
    allowed: Collection[str] | None = None,
    disallowed: Collection[str] | None = None,
    on_chosen: Callable[[ListenerHandle], None] | None = None,
) -> ListenerHandle:
    """Deliver ``message`` (and ``body``), or ``compose(listener)``, to one listener.

    ``on_chosen`` hears of every listener chosen, before the message goes out.

    Raises:
        NoListenerError: no eligible listener is connected, or every try failed.
        UnavailableError: the cluster cannot reach a listener right now (Redis down).
    """
    if compose is None:
        if message is None:
            raise TypeError("deliver_to_listener needs a message or compose")
        compose = fixed(message, body)
    failed: set[str] = set()
    for _ in range(_ATTEMPTS):
        excluded = set(disallowed or ()) | failed if disallowed or failed else None
        handle = await cluster.pick(hc_name, allowed=allowed, disallowed=excluded or None)
        if handle is None:
            break
        if on_chosen is not None:
            on_chosen(handle)
        outgoing, outgoing_body = compose(handle)
        try:
            await cluster.deliver(handle, outgoing, outgoing_body)
        except ConnectionClosedError:
            failed.add(handle.listener_id.lower())
            continue
        return handle
    if failed:
        raise NoListenerError("the chosen listeners went away")
    raise NoListenerError("no listener is connected to this hybrid connection")


def fixed(message: Accept | Request, body: bytes | None = None) -> Compose:
    """A :data:`Compose` that sends the same message to whichever listener is chosen."""
    return lambda _handle: (message, body)
