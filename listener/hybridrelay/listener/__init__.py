"""The on-premises listener agent: serve a hybrid connection from behind a firewall."""

from hybridrelay.listener.agent import (
    Listener,
    ListenerStats,
    StreamHandler,
    Target,
    TcpTarget,
    parse_target,
)
from hybridrelay.listener.hooks import AcceptHook, AcceptRequest, HeaderAllowList, Reject
from hybridrelay.listener.http_target import (
    HttpHandler,
    HttpRequest,
    HttpResponse,
    HttpTarget,
    RequestBody,
)

__all__ = [
    "AcceptHook",
    "AcceptRequest",
    "HeaderAllowList",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "HttpTarget",
    "Listener",
    "ListenerStats",
    "Reject",
    "RequestBody",
    "StreamHandler",
    "Target",
    "TcpTarget",
    "parse_target",
]
