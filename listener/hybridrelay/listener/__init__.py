"""The on-premises listener agent: serve a hybrid connection from behind a firewall."""

from hybridrelay.listener.agent import Listener, ListenerStats, StreamHandler
from hybridrelay.listener.hooks import (
    Accept,
    AcceptHook,
    AcceptRequest,
    HeaderAllowList,
    RateLimit,
    Reject,
    StreamWrapper,
    ZlibCompression,
    load_hook,
    zlib_wrap,
)
from hybridrelay.listener.http_target import (
    HttpHandler,
    HttpRequest,
    HttpResponse,
    HttpTarget,
    RequestBody,
)
from hybridrelay.listener.targets import (
    StreamTarget,
    Target,
    TcpTarget,
    UdpTarget,
    UnixTarget,
    parse_target,
)

__all__ = [
    "Accept",
    "AcceptHook",
    "AcceptRequest",
    "HeaderAllowList",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "HttpTarget",
    "Listener",
    "ListenerStats",
    "RateLimit",
    "Reject",
    "RequestBody",
    "StreamHandler",
    "StreamTarget",
    "StreamWrapper",
    "Target",
    "TcpTarget",
    "UdpTarget",
    "UnixTarget",
    "ZlibCompression",
    "load_hook",
    "parse_target",
    "zlib_wrap",
]
