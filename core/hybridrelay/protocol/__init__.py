"""The Hybrid Connections wire format: addresses, control messages, SAS tokens, framing.

This package is the only wire-format import the relay, listener and client use.
It imports no asyncio and reads no clock; callers pass ``now``.
"""

from hybridrelay.protocol.addresses import (
    RENDEZVOUS_PARAM,
    HcAddress,
    build_rendezvous_address,
    match_entity,
    parse_hc_target,
    path_escape_reason,
    strip_relay_params,
)
from hybridrelay.protocol.codes import (
    CONTROL_MESSAGE_LIMIT,
    INLINE_BODY_LIMIT,
    INLINE_HEADERS_LIMIT,
    MAX_LISTENERS_PER_HC,
    RENDEZVOUS_TIMEOUT_S,
    CloseCode,
)
from hybridrelay.protocol.device_sas import DeviceTokenProvider, create_device_token
from hybridrelay.protocol.http_response import check_response
from hybridrelay.protocol.messages import (
    Accept,
    Message,
    RemoteEndpoint,
    RenewToken,
    Request,
    Response,
    decode,
    encode,
)
from hybridrelay.protocol.sas import (
    Rights,
    SasToken,
    SasTokenProvider,
    TokenProvider,
    audience_for,
    create_sas_token,
    parse_sas_token,
    resource_covers,
    token_expiry,
    verify_signature,
)

__all__ = [
    "CONTROL_MESSAGE_LIMIT",
    "INLINE_BODY_LIMIT",
    "INLINE_HEADERS_LIMIT",
    "MAX_LISTENERS_PER_HC",
    "RENDEZVOUS_PARAM",
    "RENDEZVOUS_TIMEOUT_S",
    "Accept",
    "CloseCode",
    "DeviceTokenProvider",
    "HcAddress",
    "Message",
    "RemoteEndpoint",
    "RenewToken",
    "Request",
    "Response",
    "Rights",
    "SasToken",
    "SasTokenProvider",
    "TokenProvider",
    "audience_for",
    "build_rendezvous_address",
    "check_response",
    "create_device_token",
    "create_sas_token",
    "decode",
    "encode",
    "match_entity",
    "parse_hc_target",
    "parse_sas_token",
    "path_escape_reason",
    "resource_covers",
    "strip_relay_params",
    "token_expiry",
    "verify_signature",
]
