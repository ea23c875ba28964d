"""The on-premises listener agent: serve a hybrid connection from behind a firewall."""

from hybridrelay.listener.agent import (
    Listener,
    ListenerStats,
    StreamHandler,
    TcpTarget,
    parse_target,
)
from hybridrelay.listener.hooks import AcceptHook, AcceptRequest, HeaderAllowList, Reject

__all__ = [
    "AcceptHook",
    "AcceptRequest",
    "HeaderAllowList",
    "Listener",
    "ListenerStats",
    "Reject",
    "StreamHandler",
    "TcpTarget",
    "parse_target",
]
