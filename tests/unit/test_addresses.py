"""``/$hc/`` addresses: parsing every client's spelling, stripping, entity matching, building."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote, quote_plus, urlsplit

import pytest

from hybridrelay.errors import InvalidAddressError
from hybridrelay.protocol import addresses
from hybridrelay.protocol.addresses import (
    RENDEZVOUS_PARAM,
    HcAddress,
    build_rendezvous_address,
    entity_uri,
    match_entity,
    parse_hc_target,
    parse_http_target,
    path_escape_reason,
    strip_relay_params,
)
from hybridrelay.protocol.codes import fits_inline

TOKEN = (
    "SharedAccessSignature sr=http%3A%2F%2Flocalhost%3A8443%2Fhyco"
    "&sig=AvMYLyNw88V8829fKWtmsyxNA%2FEe91p53mzYW7oBk%2BI%3D&se=1700000000"
    "&skn=RootManageSharedAccessKey"
)


def encode_uri_component(text: str) -> str:
    return quote(text, safe="-_.!~*'()")


# ---------------------------------------------------------------- paths


def test_listen_address() -> None:
    address = parse_hc_target("/$hc/hyco", "sb-hc-action=listen&sb-hc-id=abc")
    assert address == HcAddress(path="hyco", action="listen", tracking_id="abc")


def test_percent_encoded_dollar_prefix() -> None:
    assert parse_hc_target("/%24hc/hyco", "sb-hc-action=listen").path == "hyco"


@pytest.mark.parametrize(
    ("raw_path", "path"),
    [
        ("/$hc/a%20b/c", "a b/c"),
        ("/$hc/hyco/", "hyco/"),
        ("/$hc/hyco/sub/path", "hyco/sub/path"),
        ("/$hc/%C3%A9t%C3%A9", "été"),
        ("/$hc/a%25b", "a%b"),
    ],
)
def test_path_is_decoded_once(raw_path: str, path: str) -> None:
    assert parse_hc_target(raw_path, "").path == path


@pytest.mark.parametrize(
    ("raw_path", "reason"),
    [
        ("/hyco", "path is not under /$hc/"),
        ("/$HC/hyco", "path is not under /$hc/"),
        ("$hc/hyco", "path is not under /$hc/"),
        ("/$hcx/hyco", "path is not under /$hc/"),
        ("", "path is not under /$hc/"),
        ("/$hc", "empty entity path"),
        ("/%24hc", "empty entity path"),
        ("/$hc/", "empty entity path"),
        ("/$hc//hyco", "empty entity path"),
        # Issue 11: an encoded "/" used to decode into a separator the token scope check
        # and the listener's target then read differently; it is refused outright now.
        ("/$hc/%2Fhyco", "encoded '/', '.' or '\\' in path"),
        ("/$hc/hyco?sb-hc-action=listen", "path contains '?' or '#'"),
        ("/$hc/hyco#x", "path contains '?' or '#'"),
        ("/$hc/a%zz", "bad percent-escape in path"),
        ("/$hc/a%2", "bad percent-escape in path"),
        ("/$hc/a%", "bad percent-escape in path"),
        ("/$hc/a%FF", "path is not valid UTF-8 after percent-decoding"),
        ("/$hc/a%00b", "control character in path"),
        ("/$hc/a%0Ab", "control character in path"),
        ("/$hc/a\x7fb", "control character in path"),
        ("/$hc/" + "a" * 8200, "path is longer than 8 KiB"),
    ],
)
def test_bad_paths(raw_path: str, reason: str) -> None:
    with pytest.raises(InvalidAddressError) as info:
        parse_hc_target(raw_path, "sb-hc-action=listen")
    assert str(info.value) == reason


ESCAPING_PATHS = [
    ("/a/../b", "'.' or '..' segment in path"),
    ("/a/./b", "'.' or '..' segment in path"),
    ("/a/..", "'.' or '..' segment in path"),
    ("/a/.", "'.' or '..' segment in path"),
    ("/../a", "'.' or '..' segment in path"),
    ("/a%2Fb", "encoded '/', '.' or '\\' in path"),
    ("/a%2fb", "encoded '/', '.' or '\\' in path"),
    ("/a/%2E%2E/b", "encoded '/', '.' or '\\' in path"),
    ("/a/%2e./b", "encoded '/', '.' or '\\' in path"),
    ("/a/file%2Etxt", "encoded '/', '.' or '\\' in path"),
    ("/a/..%5Cb", "encoded '/', '.' or '\\' in path"),
    ("/a/..%5cb", "encoded '/', '.' or '\\' in path"),
    ("/a/%252E%252E/b", "encoded '/', '.' or '\\' in path"),
    ("/a/%252f", "encoded '/', '.' or '\\' in path"),
    ("/a/..\\b", "backslash in path"),
    ("/a\\b", "backslash in path"),
]


@pytest.mark.parametrize(("raw_path", "reason"), ESCAPING_PATHS)
def test_paths_that_could_walk_out_of_their_scope_are_refused(raw_path: str, reason: str) -> None:
    assert path_escape_reason(raw_path) == reason
    with pytest.raises(InvalidAddressError) as info:
        parse_hc_target("/$hc" + raw_path, "sb-hc-action=connect")
    assert str(info.value) == reason
    with pytest.raises(InvalidAddressError) as info:
        parse_http_target(raw_path, "")
    assert str(info.value) == reason


@pytest.mark.parametrize(
    "raw_path",
    ["/hyco", "/a/b.c/d", "/a/..b/c.", "/a/...", "/a%20b/c", "/a%25b", "/a/%C3%A9t%C3%A9", "/a/"],
)
def test_dots_inside_segments_and_other_escapes_are_fine(raw_path: str) -> None:
    assert path_escape_reason(raw_path) is None
    parse_hc_target("/$hc" + raw_path, "sb-hc-action=connect")
    parse_http_target(raw_path, "")


def test_query_over_8_kib() -> None:
    with pytest.raises(InvalidAddressError, match="query is longer than 8 KiB"):
        parse_hc_target("/$hc/hyco", "a=" + "x" * 8200)


def test_path_and_query_at_8_kib_are_fine() -> None:
    raw_path = "/$hc/" + "a" * (8192 - 5)
    address = parse_hc_target(raw_path, "a=" + "x" * 8190)
    assert len(address.path) == 8192 - 5


# ---------------------------------------------------------------- action


@pytest.mark.parametrize("query", ["", "?", "a=1", "sb-hc-id=1", "sb-hc-action"])
def test_missing_action_means_connect(query: str) -> None:
    assert parse_hc_target("/$hc/hyco", query).action == "connect"


@pytest.mark.parametrize(
    ("query", "action"),
    [
        ("sb-hc-action=listen", "listen"),
        ("SB-HC-ACTION=LISTEN", "listen"),
        ("Sb-Hc-Action=Accept", "accept"),
        ("sb-hc-action=request", "request"),
        ("sb-hc-action=connect", "connect"),
        ("sb-hc-action=%6Cisten", "listen"),
        ("?sb-hc-action=listen", "listen"),
    ],
)
def test_action_names_and_values_ignore_case(query: str, action: str) -> None:
    assert parse_hc_target("/$hc/hyco", query).action == action


@pytest.mark.parametrize(
    "query",
    ["sb-hc-action=", "sb-hc-action=send", "sb-hc-action=l%C4%B0sten", "sb-hc-action=x" * 3],
)
def test_unknown_action(query: str) -> None:
    with pytest.raises(InvalidAddressError, match="unknown sb-hc-action"):
        parse_hc_target("/$hc/hyco", query)


def test_long_unknown_action_is_cut_in_the_message() -> None:
    with pytest.raises(InvalidAddressError) as info:
        parse_hc_target("/$hc/hyco", "sb-hc-action=" + "x" * 500)
    assert len(str(info.value)) < 80


def test_duplicate_action_same_value_is_fine() -> None:
    address = parse_hc_target("/$hc/hyco", "sb-hc-action=listen&SB-HC-ACTION=Listen")
    assert address.action == "listen"


@pytest.mark.parametrize(
    "query",
    [
        "sb-hc-action=listen&sb-hc-action=connect",
        "sb-hc-id=1&sb-hc-id=2",
        "sb-hc-token=a&sb-hc-token=b",
        f"{RENDEZVOUS_PARAM}=a&{RENDEZVOUS_PARAM}=b",
        "sb-hc-statusCode=400&statusCode=401",
        "sb-hc-statusDescription=a&statusDescription=b",
    ],
)
def test_repeated_parameter_with_different_values(query: str) -> None:
    with pytest.raises(InvalidAddressError, match="given twice with different values"):
        parse_hc_target("/$hc/hyco", query)


# ---------------------------------------------------------------- reject parameters


@pytest.mark.parametrize(
    "code_name",
    [
        "sb-hc-statusCode",
        "sb-hc-statuscode",
        "SB-HC-STATUSCODE",
        "statusCode",
        "StatusCode",
        "STATUSCODE",
    ],
)
@pytest.mark.parametrize(
    "text_name",
    [
        "sb-hc-statusDescription",
        "SB-HC-STATUSDESCRIPTION",
        "statusDescription",
        "statusdescription",
    ],
)
def test_reject_spellings(code_name: str, text_name: str) -> None:
    address = parse_hc_target(
        "/$hc/hyco",
        f"sb-hc-action=accept&sb-hc-id=7&{code_name}=401&{text_name}=Go+away%21&keep=1",
    )
    assert address.action == "accept"
    assert address.status_code == 401
    assert address.status_description == "Go away!"
    assert address.app_query == "keep=1"


def test_both_reject_spellings_with_the_same_value() -> None:
    address = parse_hc_target(
        "/$hc/hyco",
        "statusCode=403&sb-hc-statusCode=403&statusDescription=x&sb-hc-statusDescription=x",
    )
    assert (address.status_code, address.status_description) == (403, "x")


def test_reject_description_encodings() -> None:
    # NET WebUtility.UrlEncode (space -> "+") and hyco encodeURIComponent ("%20", "+" -> "%2B").
    net = parse_hc_target(
        "/$hc/h", "sb-hc-statusCode=400&sb-hc-statusDescription=Rejected+by+user+code"
    )
    hyco = parse_hc_target(
        "/$hc/h", "statusCode=400&statusDescription=" + encode_uri_component("1+1 = 2")
    )
    assert net.status_description == "Rejected by user code"
    assert hyco.status_description == "1+1 = 2"


def test_status_code_without_description() -> None:
    address = parse_hc_target("/$hc/h", "sb-hc-action=accept&sb-hc-statusCode=599")
    assert (address.status_code, address.status_description) == (599, None)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("abc", "not an integer"),
        ("", "not an integer"),
        ("+400", "not an integer"),
        ("%20400", "not an integer"),
        ("40.0", "not an integer"),
        ("\u0664\u0660\u0660", "not an integer"),
        ("1234567", "not an integer"),
        ("99", "not in 100..599"),
        ("600", "not in 100..599"),
        ("000", "not in 100..599"),
        ("123456", "not in 100..599"),
    ],
)
def test_bad_status_code(value: str, reason: str) -> None:
    with pytest.raises(InvalidAddressError, match=reason):
        parse_hc_target("/$hc/hyco", f"sb-hc-action=accept&sb-hc-statusCode={value}")


@pytest.mark.parametrize(
    "query",
    [
        "sb-hc-statusDescription=a%0D%0ASet-Cookie:x",
        "statusDescription=%00",
        "sb-hc-id=a%0Ab",
        f"{RENDEZVOUS_PARAM}=%7F",
    ],
)
def test_control_characters_in_parameters(query: str) -> None:
    with pytest.raises(InvalidAddressError, match="control character"):
        parse_hc_target("/$hc/hyco", query)


@pytest.mark.parametrize("query", ["sb-hc-id=%zz", "sb-hc-token=%", "sb-hc-statusDescription=%2"])
def test_bad_escapes_in_parameters(query: str) -> None:
    with pytest.raises(InvalidAddressError, match="bad percent-escape"):
        parse_hc_target("/$hc/hyco", query)


def test_invalid_utf8_in_parameter() -> None:
    with pytest.raises(InvalidAddressError, match="not valid UTF-8"):
        parse_hc_target("/$hc/hyco", "sb-hc-id=%C3")


# ---------------------------------------------------------------- token


def test_token_encoded_by_hyco() -> None:
    address = parse_hc_target(
        "/$hc/hyco", "sb-hc-action=connect&sb-hc-token=" + encode_uri_component(TOKEN)
    )
    assert address.token == TOKEN


def test_token_encoded_by_net() -> None:
    # WebUtility.UrlEncode: the space after the scheme word becomes "+".
    encoded = quote_plus(TOKEN)
    assert encoded.startswith("SharedAccessSignature+sr%3D")
    assert parse_hc_target("/$hc/hyco", "sb-hc-token=" + encoded).token == TOKEN


def test_token_plus_elsewhere_stays_plus() -> None:
    raw = "SharedAccessSignature sr=http%3a%2f%2fns%2fmy+hc&sig=a%2Bb&se=1&skn=r"
    # Encoded once by a client that leaves "+" alone except for the scheme separator.
    query = "sb-hc-token=SharedAccessSignature+" + quote(raw.split(" ", 1)[1], safe="+")
    assert parse_hc_target("/$hc/hyco", query).token == raw


def test_token_lower_case_scheme_word_and_non_sas_tokens() -> None:
    lower = parse_hc_target("/$hc/h", "sb-hc-token=sharedaccesssignature+sr%3Dx")
    assert lower.token == "sharedaccesssignature sr=x"
    assert parse_hc_target("/$hc/h", "sb-hc-token=abc+def").token == "abc+def"
    assert parse_hc_target("/$hc/h", "sb-hc-token=eyJ0.e30.x").token == "eyJ0.e30.x"


def test_token_is_decoded_exactly_once() -> None:
    assert parse_hc_target("/$hc/h", "sb-hc-token=a%252Bb").token == "a%2Bb"


@pytest.mark.parametrize(
    "name", ["sb-hc-token", "sb-hc-id", RENDEZVOUS_PARAM, "sb-hc-statusDescription"]
)
def test_empty_values_are_none(name: str) -> None:
    address = parse_hc_target("/$hc/h", f"{name}=")
    assert address.token is None
    assert address.tracking_id is None
    assert address.rendezvous_key is None
    assert address.status_description is None


# ---------------------------------------------------------------- other parameters and app query


def test_rendezvous_key() -> None:
    assert RENDEZVOUS_PARAM == "sb-hc-rdv"
    address = parse_hc_target("/$hc/h", "sb-hc-action=accept&SB-HC-RDV=k%2Fey&sb-hc-id=i")
    assert address.rendezvous_key == "k/ey"
    assert address.tracking_id == "i"


@pytest.mark.parametrize(
    ("query", "app_query"),
    [
        ("a=1&sb-hc-action=connect&a=2", "a=1&a=2"),
        ("&&&", "&&&"),
        ("?&&&", "&&&"),
        ("sb-hc-id=1&custom=value", "custom=value"),
        ("%2B", "%2B"),
        ("x=%2B+y", "x=%2B+y"),
        ("sb-hc-undefined", "sb-hc-undefined"),
        ("sb-hc-unknown=1&b=2", "b=2"),
        ("SB-HC-SAS-KEY=secret&b=2", "b=2"),
        ("statusCode=400&b=2", "b=2"),
        ("b=2&statusDescription=x", "b=2"),
        ("statusCode&b", "statusCode&b"),
        ("sb-hc-é=1&b=2", "b=2"),
        ("\u017fb-hc-id=1", "\u017fb-hc-id=1"),
        ("statusCodé=1", "statusCodé=1"),
        ("=1&x=", "=1&x="),
        ("sb%2Dhc%2Did=1", "sb%2Dhc%2Did=1"),
    ],
)
def test_app_query(query: str, app_query: str) -> None:
    assert parse_hc_target("/$hc/hyco", query).app_query == app_query


def test_address_is_frozen_with_defaults() -> None:
    address = HcAddress(path="x")
    assert address.action == "connect"
    assert address.app_query == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        address.path = "y"  # type: ignore[misc]  # proving the dataclass is frozen


# ---------------------------------------------------------------- strip_relay_params (HC §2.10)


@pytest.mark.parametrize(
    ("query", "stripped"),
    [
        ("?a=1&a=2", "a=1&a=2"),
        ("?&&&", "&&&"),
        ("?sb-hc-id=1&custom=value", "custom=value"),
        ("?%2B", "%2B"),
        ("sb-hc-undefined", "sb-hc-undefined"),
        ("?sb-hc-undefined&x=1", "sb-hc-undefined&x=1"),
        ("SB-HC-TOKEN=x&b=2", "b=2"),
        ("Sb-Hc-Action=listen&sb-hc-rdv=1&x=1&sb-hc-id=2", "x=1"),
        ("", ""),
        ("?", ""),
        ("statusCode=1&statusDescription=x", "statusCode=1&statusDescription=x"),
        ("sb-hc-=1&x", "x"),
        ("é=1&sb-hc-x=2", "é=1"),
        ("sb-hc", "sb-hc"),
        ("sb-h=1", "sb-h=1"),
        ("a=sb-hc-id=1", "a=sb-hc-id=1"),
        ("??a=1", "?a=1"),
    ],
)
def test_strip_relay_params(query: str, stripped: str) -> None:
    assert strip_relay_params(query) == stripped


# ---------------------------------------------------------------- match_entity


ENTITIES = ["hyco", "a", "a/b", "Mixed/Case"]


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("hyco", ("hyco", "")),
        ("hyco/", ("hyco", "/")),
        ("hyco/sub/path", ("hyco", "/sub/path")),
        ("HYCO/Sub", ("hyco", "/Sub")),
        ("a", ("a", "")),
        ("a/b", ("a/b", "")),
        ("a/b/c", ("a/b", "/c")),
        ("a/bc", ("a", "/bc")),
        ("a/c", ("a", "/c")),
        ("ab", None),
        ("hycox", None),
        ("mixed/case/x", ("Mixed/Case", "/x")),
        ("mixed", None),
        ("", None),
        ("other", None),
    ],
)
def test_match_entity(path: str, match: tuple[str, str] | None) -> None:
    assert match_entity(path, ENTITIES) == match
    assert match_entity(path, reversed(ENTITIES)) == match


def test_match_entity_boundary_without_shorter_entity() -> None:
    assert match_entity("a/bc", ["a/b"]) is None
    assert match_entity("a/b/c", ["a/b"]) == ("a/b", "/c")


def test_match_entity_ties_and_empty_names() -> None:
    assert match_entity("hyco/x", ["HYCO", "hyco"]) == ("HYCO", "/x")
    assert match_entity("hyco", ["", "hyco"]) == ("hyco", "")
    assert match_entity("x", [""]) is None
    assert match_entity("x", iter(["x"])) == ("x", "")


def test_match_entity_case_mapping_cannot_shift_the_boundary() -> None:
    # "ß".casefold() is "ss": comparing equal-length slices keeps the boundary honest.
    assert match_entity("ss/x", ["ß"]) is None
    assert match_entity("SS/x", ["ss"]) == ("ss", "/x")


# ---------------------------------------------------------------- build_rendezvous_address


def test_build_accept_address() -> None:
    built = build_rendezvous_address(
        public_url="wss://relay.example.com",
        entity="hyco",
        suffix="/sub",
        app_query="a=1&b=%2B",
        action="accept",
        tracking_id="id_G1",
        rendezvous_key="k",
    )
    assert built == (
        "wss://relay.example.com/$hc/hyco/sub?a=1&b=%2B&sb-hc-action=accept&sb-hc-id=id_G1&sb-hc-rdv=k"
    )


def test_build_request_address_without_app_query_and_with_base_path() -> None:
    built = build_rendezvous_address(
        public_url="ws://127.0.0.1:8080/base/",
        entity="a b/c",
        suffix="",
        app_query="",
        action="request",
        tracking_id="x&y=z",
        rendezvous_key="k/+=",
    )
    assert built == (
        "ws://127.0.0.1:8080/base/$hc/a%20b/c?sb-hc-action=request&sb-hc-id=x%26y%3Dz&sb-hc-rdv=k%2F%2B%3D"
    )


@pytest.mark.parametrize(
    ("entity", "suffix", "app_query"),
    [
        ("hyco", "", ""),
        ("a/b", "/x y/%z?#", "q=1&q=2&&"),
        ("été", "/ü", "x=%2B"),
        ("$weird!", "/", "=&"),
    ],
)
def test_built_address_parses_back(entity: str, suffix: str, app_query: str) -> None:
    built = build_rendezvous_address(
        public_url="wss://relay:8443",
        entity=entity,
        suffix=suffix,
        app_query=app_query,
        action="accept",
        tracking_id="GUID_G12 +",
        rendezvous_key="r+/=",
    )
    parts = urlsplit(built)
    assert (parts.scheme, parts.netloc, parts.fragment) == ("wss", "relay:8443", "")
    address = parse_hc_target(parts.path, parts.query)
    assert address == HcAddress(
        path=entity + suffix,
        action="accept",
        tracking_id="GUID_G12 +",
        rendezvous_key="r+/=",
        app_query=app_query,
    )
    assert match_entity(address.path, [entity]) == (entity, suffix)


# ---------------------------------------------------------------- entity_uri


def test_entity_uri() -> None:
    assert entity_uri("localhost:8443", "hyco") == "http://localhost:8443/hyco"
    assert entity_uri("ns", "a/b") == "http://ns/a/b"


def test_exports() -> None:
    for name in addresses.__all__:
        assert hasattr(addresses, name), name


def test_built_address_encodes_what_would_change_the_url() -> None:
    # A raw "#" made the relay's own parameters a fragment (issue 11); escapes, "+" and a
    # stray "%" stay as the sender wrote them.
    built = build_rendezvous_address(
        public_url="ws://relay",
        entity="e",
        suffix="",
        app_query='a=1#f&b=[x] "y"&c=é\x7f&d=%41+%zz',
        action="accept",
        tracking_id="t",
        rendezvous_key="k",
    )
    assert built == (
        "ws://relay/$hc/e?a=1%23f&b=%5Bx%5D%20%22y%22&c=%C3%A9%7F&d=%41+%zz"
        "&sb-hc-action=accept&sb-hc-id=t&sb-hc-rdv=k"
    )


def test_built_address_refuses_a_query_that_is_not_utf8() -> None:
    with pytest.raises(InvalidAddressError):
        build_rendezvous_address(
            public_url="ws://relay",
            entity="e",
            suffix="",
            app_query="a=\ud800",
            action="accept",
            tracking_id="t",
            rendezvous_key="k",
        )


def test_dial_uris_are_spelt_in_one_place() -> None:
    relay = "wss://relay.example.com:8443/"
    assert (
        addresses.listen_uri(relay, "/team a/hc#1/", "id&x=1")
        == "wss://relay.example.com:8443/$hc/team%20a/hc%231?sb-hc-action=listen&sb-hc-id=id%26x%3D1"
    )
    assert (
        addresses.listen_uri(relay, "hc")
        == "wss://relay.example.com:8443/$hc/hc?sb-hc-action=listen"
    )
    assert (
        addresses.connect_uri(relay, "hc")
        == "wss://relay.example.com:8443/$hc/hc?sb-hc-action=connect"
    )
    assert addresses.connect_uri(relay, "hc", "t 1").endswith(
        "?sb-hc-action=connect&sb-hc-id=t%201"
    )
    accept = "wss://r/$hc/hc?sb-hc-action=accept&sb-hc-id=7&sb-hc-rdv=k"
    assert addresses.reject_uri(accept, 403, "no & never") == (
        f"{accept}&sb-hc-statusCode=403&sb-hc-statusDescription=no%20%26%20never"
    )
    # What the relay parses back is what was meant.
    parsed = addresses.parse_hc_target(
        "/$hc/team%20a/hc%231", "sb-hc-action=listen&sb-hc-id=id%26x%3D1"
    )
    assert (parsed.path, parsed.action, parsed.tracking_id) == ("team a/hc#1", "listen", "id&x=1")


def test_the_inline_rule_is_64_kib_of_known_size() -> None:
    assert fits_inline(0)
    assert fits_inline(64 * 1024)
    assert not fits_inline(64 * 1024 + 1)
    assert not fits_inline(None)  # chunked or streamed: over rendezvous
