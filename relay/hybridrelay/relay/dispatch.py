"""Choose a listener and hand it a control message, trying another if the first just left.

Between choosing a listener and writing to its control channel the channel may
close (an agent draining on SIGTERM, a takeover). The sender should not pay for
that race: the message goes to the next eligible listener instead (issue 4:
"stop one agent, traffic continues on the other with no failed new connections").
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from hybridrelay.errors import ConnectionClosedError, NoListenerError
from hybridrelay.protocol.messages import Accept, Request
from hybridrelay.relay.cluster.base import ClusterState, ListenerHandle

__all__ = ["deliver_to_listener"]

_ATTEMPTS = 3


async def deliver_to_listener(
    cluster: ClusterState,
    hc_name: str,
    message: Accept | Request,
    body: bytes | None = None,
    *,
    allowed: Collection[str] | None = None,
    disallowed: Collection[str] | None = None,
    on_chosen: Callable[[ListenerHandle], None] | None = None,
) -> ListenerHandle:
    """Deliver ``message`` (and ``body``) to one listener of ``hc_name``; returns it.

    Raises:
        NoListenerError: no eligible listener is connected, or every try failed.
    """
    failed: set[str] = set()
    for _ in range(_ATTEMPTS):
        excluded = set(disallowed or ()) | failed
        handle = await cluster.pick(hc_name, allowed=allowed, disallowed=excluded or None)
        if handle is None:
            break
        if on_chosen is not None:
            on_chosen(handle)
        try:
            await cluster.deliver(handle, message, body)
        except ConnectionClosedError:
            failed.add(handle.listener_id.lower())
            continue
        return handle
    if failed:
        raise NoListenerError("the chosen listeners went away")
    raise NoListenerError("no listener is connected to this hybrid connection")
