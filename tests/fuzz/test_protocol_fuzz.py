"""Each wire parser either returns a value or raises its documented HybridRelayError."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal, TypeVar
from urllib.parse import quote, urlsplit

from hypothesis import given, settings, strategies as st

from hybridrelay.errors import (
    AuthError,
    HybridRelayError,
    InvalidAddressError,
    InvalidMessageError,
    PayloadTooBigError,
)
from hybridrelay.protocol import addresses, messages, sas
from tests.fuzz.profiles import PURE_EXAMPLES

T = TypeVar("T")

FUZZ = settings(max_examples=PURE_EXAMPLES, deadline=None, database=None)

# Characters that make URL and token parsers branch.
URLISH = st.text(alphabet="%+&=?#/$ hcsbHCSB-aA0123456789fF.:;é\x00\x7f", max_size=60)
HC_PATH = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(["/$hc/", "/%24hc/", "/$hc", "/", ""]),
    URLISH,
)
PARAM_NAMES = st.sampled_from(
    [
        "sb-hc-action",
        "SB-HC-ACTION",
        "sb-hc-id",
        "sb-hc-token",
        "sb-hc-statusCode",
        "statusCode",
        "sb-hc-statusDescription",
        "statusdescription",
        "sb-hc-rdv",
        "sb-hc-other",
        "app",
        "",
    ]
)
PARAM_VALUES = st.one_of(
    st.sampled_from(
        ["listen", "connect", "accept", "request", "LISTEN", "400", "599", "99", "%zz"]
    ),
    URLISH,
)
QUERY = st.lists(
    st.builds(
        lambda name, sep, value: name + sep + value,
        PARAM_NAMES,
        st.sampled_from(["=", ""]),
        PARAM_VALUES,
    ),
    max_size=6,
).map("&".join)


def has_relay_pair(query: str) -> bool:
    """An independent spelling of HC §2.8's rule: a key=value pair whose key starts with sb-hc-."""
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        if sep and name[:6].isascii() and name[:6].lower() == "sb-hc-":
            return True
    return False


def returns_or_raises(func: Callable[[], T], allowed: type[HybridRelayError]) -> T | None:
    try:
        return func()
    except allowed:
        return None


# ---------------------------------------------------------------- addresses


@FUZZ
@given(st.text(), st.text())
def test_parse_hc_target_any_text(raw_path: str, raw_query: str) -> None:
    returns_or_raises(lambda: addresses.parse_hc_target(raw_path, raw_query), InvalidAddressError)


@FUZZ
@given(HC_PATH, QUERY)
def test_parse_hc_target_urlish(raw_path: str, raw_query: str) -> None:
    address = returns_or_raises(
        lambda: addresses.parse_hc_target(raw_path, raw_query), InvalidAddressError
    )
    if address is not None:
        assert address.path
        assert not address.path.startswith("/")
        assert address.action in ("listen", "connect", "accept", "request")
        assert address.status_code is None or 100 <= address.status_code <= 599
        # The app query never carries a relay parameter on to the listener.
        assert not has_relay_pair(address.app_query)


@FUZZ
@given(st.one_of(st.text(), QUERY))
def test_strip_relay_params_never_raises(raw_query: str) -> None:
    stripped = addresses.strip_relay_params(raw_query)
    assert not has_relay_pair(stripped)
    assert len(stripped) <= len(raw_query)
    if not has_relay_pair(raw_query.removeprefix("?")):
        assert stripped == raw_query.removeprefix("?")


@FUZZ
@given(st.text(), st.lists(st.text(max_size=8), max_size=6))
def test_match_entity_never_raises(path: str, entities: list[str]) -> None:
    match = addresses.match_entity(path, entities)
    if match is not None:
        entity, suffix = match
        assert entity in entities
        assert suffix == "" or suffix.startswith("/")
        assert len(entity) + len(suffix) == len(path)


SEGMENT = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="/"),
    min_size=1,
    max_size=10,
).filter(
    # Segments a sender could have sent at all: no dot segments, no text that is (or
    # decodes to) an encoded separator (issue 11, addresses.path_escape_reason).
    lambda segment: addresses.path_escape_reason(quote(segment, safe="")) is None
)
VALUE = st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=20)
APP_QUERY = st.lists(
    st.builds(
        lambda k, v: f"x{k}={v}",
        st.text(alphabet="abc", max_size=3),
        st.text(alphabet="az%2B+", max_size=5),
    ),
    max_size=4,
).map("&".join)


@FUZZ
@given(
    st.lists(SEGMENT, min_size=1, max_size=3).map("/".join),
    st.lists(SEGMENT, max_size=3).map(lambda parts: "".join("/" + p for p in parts)),
    APP_QUERY,
    st.sampled_from(["accept", "request"]),
    VALUE,
    VALUE,
)
def test_rendezvous_address_round_trip(
    entity: str,
    suffix: str,
    app_query: str,
    action: Literal["accept", "request"],
    tracking_id: str,
    key: str,
) -> None:
    built = addresses.build_rendezvous_address(
        public_url="wss://relay.example.com:8443",
        entity=entity,
        suffix=suffix,
        app_query=app_query,
        action=action,
        tracking_id=tracking_id,
        rendezvous_key=key,
    )
    parts = urlsplit(built)
    address = addresses.parse_hc_target(parts.path, parts.query)
    assert address.path == entity + suffix
    assert address.action == action
    assert address.tracking_id == tracking_id
    assert address.rendezvous_key == key
    assert address.app_query == app_query
    assert addresses.match_entity(address.path, [entity]) == (entity, suffix)


# ---------------------------------------------------------------- sas

SAS_FIELD = st.builds(
    lambda name, value: f"{name}={value}",
    st.sampled_from(["sr", "sig", "se", "skn", "SR", "x", ""]),
    st.one_of(
        URLISH, st.sampled_from(["1700000000", "bAg706SLufz6OBbSEY2PkOmu5r5xXg7GOF1QI6ivTj0%3D"])
    ),
)
SAS_TEXT = st.builds(
    lambda word, fields: f"{word} " + "&".join(fields),
    st.sampled_from(["SharedAccessSignature", "sharedaccesssignature", "Bearer"]),
    st.lists(SAS_FIELD, max_size=6),
)


@FUZZ
@given(st.one_of(st.text(), SAS_TEXT))
def test_parse_sas_token_returns_or_raises_auth_error(text: str) -> None:
    token = returns_or_raises(lambda: sas.parse_sas_token(text), AuthError)
    if token is not None:
        assert len(token.signature) == 32
        assert sas.token_expiry(text) == token.expiry
    else:
        assert sas.token_expiry(text) is None


@FUZZ
@given(st.text(), st.one_of(st.none(), st.text()), st.text())
def test_resource_covers_never_raises(resource: str, host: str | None, entity: str) -> None:
    assert sas.resource_covers(resource, host=host, entity_path=entity) in (True, False)


@FUZZ
@given(
    st.one_of(
        st.text(),
        st.builds(lambda s, r: s + "://" + r, st.sampled_from(["http", "wss", "sb"]), URLISH),
    )
)
def test_audience_for_returns_or_raises(uri: str) -> None:
    audience = returns_or_raises(lambda: sas.audience_for(uri), InvalidAddressError)
    if audience is not None:
        assert audience.startswith("http://")


@FUZZ
@given(
    st.builds(
        lambda host, path: f"wss://{host}/$hc/{path}",
        st.from_regex(r"[a-z0-9.]{1,12}(:[0-9]{1,5})?", fullmatch=True),
        SEGMENT,
    ),
    st.text(min_size=1, max_size=20),
    st.text(max_size=40),
    st.integers(min_value=0, max_value=10**12),
)
def test_created_tokens_parse_and_verify(uri: str, key_name: str, key: str, expiry: int) -> None:
    text = sas.create_sas_token(uri, key_name, key, expiry)
    token = sas.parse_sas_token(text)
    assert sas.verify_signature(token, key)
    assert token.key_name == key_name
    assert token.expiry == expiry
    assert token.resource == sas.audience_for(uri)


# ---------------------------------------------------------------- messages

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.text(max_size=10),
    st.floats(allow_nan=False),
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(
    [
        "address",
        "id",
        "connectHeaders",
        "remoteEndpoint",
        "requestTarget",
        "method",
        "requestHeaders",
        "body",
        "requestId",
        "statusCode",
        "statusDescription",
        "responseHeaders",
        "token",
        "port",
        "other",
    ]
)
FIELD_VALUES = st.one_of(
    JSON_VALUE,
    st.sampled_from(["200", 200, "x", True, False]),
    st.dictionaries(
        st.sampled_from(["address", "port", "Sec-WebSocket-Key"]), JSON_LEAF, max_size=3
    ),
)
MESSAGE_JSON = st.builds(
    lambda kind, body: json.dumps({kind: body}),
    st.sampled_from(["accept", "request", "response", "renewToken", "ping"]),
    st.dictionaries(FIELD_NAMES, FIELD_VALUES, max_size=8),
)


def _decode_or_none(text: str | bytes) -> messages.Message | None:
    try:
        return messages.decode(text)
    except (InvalidMessageError, PayloadTooBigError):
        return None


def _check_round_trip(message: messages.Message | None) -> None:
    if message is None:
        return
    try:
        text = messages.encode(message)
    except (InvalidMessageError, PayloadTooBigError):
        return  # e.g. an accept without Sec-WebSocket-Key: decodable, but we never send it
    assert messages.decode(text) == message


@FUZZ
@given(st.one_of(st.text(), st.binary(), MESSAGE_JSON))
def test_decode_returns_or_raises(text: str | bytes) -> None:
    _check_round_trip(_decode_or_none(text))


@FUZZ
@given(MESSAGE_JSON)
def test_decode_structured_round_trips(text: str) -> None:
    _check_round_trip(_decode_or_none(text))
    _check_round_trip(_decode_or_none(text.encode()))
