"""The Hybrid Connections wire format: addresses, control messages, SAS tokens, framing.

The relay, listener and client take every wire rule from this package; it imports no
asyncio and reads no clock (callers pass ``now``). The names below are the public
import for applications (``from hybridrelay.protocol import SasTokenProvider``, as in
README); hybridrelay's own modules import the submodule that owns a rule, so each
import says which rule it uses.
"""

from hybridrelay.protocol.addresses import (
    RENDEZVOUS_PARAM,
    HcAddress,
    build_rendezvous_address,
    connect_uri,
    listen_uri,
    match_entity,
    parse_hc_target,
    path_escape_reason,
    reject_uri,
    strip_relay_params,
)
from hybridrelay.protocol.codes import (
    CONTROL_MESSAGE_LIMIT,
    INLINE_BODY_LIMIT,
    INLINE_HEADERS_LIMIT,
    MAX_LISTENERS_PER_HC,
    RENDEZVOUS_TIMEOUT_S,
    CloseCode,
    fits_inline,
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
    "connect_uri",
    "create_device_token",
    "create_sas_token",
    "decode",
    "encode",
    "fits_inline",
    "listen_uri",
    "match_entity",
    "parse_hc_target",
    "parse_sas_token",
    "path_escape_reason",
    "reject_uri",
    "resource_covers",
    "strip_relay_params",
    "token_expiry",
    "verify_signature",
]
