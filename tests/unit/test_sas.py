"""SAS tokens: HC §8.3 vectors, parsing quirks of every client family, scope and rights."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

import pytest

from hybridrelay.errors import AuthError, InvalidAddressError
from hybridrelay.protocol import sas
from hybridrelay.protocol.sas import Rights, SasToken, SasTokenProvider, TokenProvider

KEY = "s3cr3t"
RULE = "RootManageSharedAccessKey"
SE = 1700000000

# HC §8.3, byte for byte.
VECTOR_443 = (
    "SharedAccessSignature sr=http%3A%2F%2Fcontoso.servicebus.windows.net%3A443%2Fhyco"
    "&sig=bAg706SLufz6OBbSEY2PkOmu5r5xXg7GOF1QI6ivTj0%3D&se=1700000000&skn=RootManageSharedAccessKey"
)
VECTOR_8443 = (
    "SharedAccessSignature sr=http%3A%2F%2Flocalhost%3A8443%2Fhyco"
    "&sig=AvMYLyNw88V8829fKWtmsyxNA%2FEe91p53mzYW7oBk%2BI%3D&se=1700000000"
    "&skn=RootManageSharedAccessKey"
)
NET_SR = "http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F"
NET_SIG = "FPit9zBWgcRaGqKTaOetgERepdoNB5CUhaVQs7BKzHU="


def sign(raw_sr: str, raw_se: str, key: str = KEY) -> str:
    digest = hmac.new(key.encode(), f"{raw_sr}\n{raw_se}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def token(sr: str, sig: str, se: str = str(SE), skn: str = RULE) -> str:
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn={skn}"


# ---------------------------------------------------------------- creation (HC §8.3)


def test_vector_from_hyco_listen_uri() -> None:
    uri = "wss://contoso.servicebus.windows.net:443/$hc/hyco?sb-hc-action=listen"
    assert sas.create_sas_token(uri, RULE, KEY, SE) == VECTOR_443


@pytest.mark.parametrize(
    "uri",
    ["wss://localhost:8443/$hc/hyco?sb-hc-action=connect", "https://localhost:8443/hyco"],
)
def test_vector_from_localhost_uris(uri: str) -> None:
    assert sas.create_sas_token(uri, RULE, KEY, SE) == VECTOR_8443


def test_vector_net_style_audience() -> None:
    created = sas.create_sas_token("http://contoso.servicebus.windows.net/hyco/", RULE, KEY, SE)
    assert created == token(NET_SR, quote(NET_SIG, safe=""))
    assert sign(NET_SR, str(SE)) == NET_SIG


@pytest.mark.parametrize("vector", [VECTOR_443, VECTOR_8443])
def test_vectors_parse_and_verify(vector: str) -> None:
    parsed = sas.parse_sas_token(vector)
    assert sas.verify_signature(parsed, KEY)
    assert not sas.verify_signature(parsed, KEY + "x")
    assert parsed.expiry == SE
    assert parsed.raw_se == "1700000000"
    assert parsed.key_name == RULE


def test_net_vector_verifies_with_raw_and_encoded_sig() -> None:
    for sig in (quote(NET_SIG, safe=""), NET_SIG):
        assert sas.verify_signature(sas.parse_sas_token(token(NET_SR, sig)), KEY)


def test_key_name_is_encoded_only_when_needed() -> None:
    text = sas.create_sas_token("http://ns/hyco", "a b&c", KEY, SE)
    assert text.endswith("&skn=a%20b%26c")
    assert sas.parse_sas_token(text).key_name == "a b&c"


# ---------------------------------------------------------------- audience (HC §8.2)


@pytest.mark.parametrize(
    ("uri", "audience"),
    [
        (
            "wss://contoso.servicebus.windows.net:443/$hc/hyco?sb-hc-action=listen",
            "http://contoso.servicebus.windows.net:443/hyco",
        ),
        ("wss://localhost:8443/$hc/hyco?sb-hc-action=connect", "http://localhost:8443/hyco"),
        ("https://localhost:8443/hyco", "http://localhost:8443/hyco"),
        ("http://ns", "http://ns/"),
        ("sb://NS.Example.com/hyco/", "http://ns.example.com/hyco/"),
        ("wss://user:pw@host/$hc/x#frag", "http://host/x"),
        ("wss://h/$hc/a/$hc/b", "http://h/a/$hc/b"),
        ("wss://h/pre$hc/x", "http://h/prex"),
    ],
)
def test_audience_for(uri: str, audience: str) -> None:
    assert sas.audience_for(uri) == audience


@pytest.mark.parametrize("uri", ["localhost:8443/hyco", "/just/a/path", "", "http://[::1/x"])
def test_audience_for_rejects_uris_without_host(uri: str) -> None:
    with pytest.raises(InvalidAddressError):
        sas.audience_for(uri)


# ---------------------------------------------------------------- parsing quirks


def test_parse_fields_any_order_and_case() -> None:
    sig = quote(sign(NET_SR, str(SE)), safe="")
    text = f"sharedaccesssignature SE={SE}&Skn={RULE}&SIG={sig}&sR={NET_SR}&extra=1&&"
    parsed = sas.parse_sas_token(text)
    assert parsed.raw_sr == NET_SR
    assert sas.verify_signature(parsed, KEY)


def test_parse_tolerates_surrounding_and_repeated_spaces() -> None:
    parsed = sas.parse_sas_token("  " + VECTOR_443.replace(" ", "   ", 1) + " ")
    assert sas.verify_signature(parsed, KEY)


def test_signature_is_over_the_raw_sr_text() -> None:
    # DOC/.NET Framework samples use lower-case escapes: the signature covers that text.
    lower_sr = NET_SR.lower()
    good = sas.parse_sas_token(token(lower_sr, quote(sign(lower_sr, str(SE)), safe="")))
    assert sas.verify_signature(good, KEY)
    assert good.resource == "http://contoso.servicebus.windows.net/hyco/"
    # The same signature does not cover the upper-case spelling.
    forged = sas.parse_sas_token(token(NET_SR, quote(sign(lower_sr, str(SE)), safe="")))
    assert not sas.verify_signature(forged, KEY)


def test_signature_is_over_the_raw_se_text() -> None:
    parsed = sas.parse_sas_token(
        token(NET_SR, quote(sign(NET_SR, "01700000000"), safe=""), "01700000000")
    )
    assert parsed.expiry == SE
    assert parsed.raw_se == "01700000000"
    assert sas.verify_signature(parsed, KEY)


def test_sig_with_raw_plus_and_slash() -> None:
    raw_sig = "AvMYLyNw88V8829fKWtmsyxNA/Ee91p53mzYW7oBk+I="
    parsed = sas.parse_sas_token(token("http%3A%2F%2Flocalhost%3A8443%2Fhyco", raw_sig))
    assert sas.verify_signature(parsed, KEY)


def test_sig_with_space_for_plus_after_form_decoding() -> None:
    spaced = "AvMYLyNw88V8829fKWtmsyxNA/Ee91p53mzYW7oBk I="
    parsed = sas.parse_sas_token(token("http%3A%2F%2Flocalhost%3A8443%2Fhyco", spaced))
    assert sas.verify_signature(parsed, KEY)


def test_net_sr_plus_means_space_for_scope_but_signs_raw() -> None:
    raw_sr = "http%3A%2F%2Fns%2Fmy+hc%2Bx"
    parsed = sas.parse_sas_token(token(raw_sr, quote(sign(raw_sr, str(SE)), safe="")))
    assert parsed.resource == "http://ns/my hc+x"
    assert sas.verify_signature(parsed, KEY)


def test_skn_is_percent_decoded() -> None:
    parsed = sas.parse_sas_token(token(NET_SR, NET_SIG, skn="my%20rule"))
    assert parsed.key_name == "my rule"


def test_repr_hides_signature() -> None:
    parsed = sas.parse_sas_token(VECTOR_443)
    assert "sig" not in repr(parsed)
    assert "bAg706" not in repr(parsed)


def test_token_is_frozen() -> None:
    parsed = sas.parse_sas_token(VECTOR_443)
    with pytest.raises(AttributeError):
        parsed.expiry = 1  # type: ignore[misc]  # proving the dataclass is frozen


GOOD_SIG = quote(NET_SIG, safe="")
SHORT_SIG = base64.b64encode(b"x" * 31).decode()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "token missing"),
        ("   ", "token missing"),
        ("Bearer abc", "not a SharedAccessSignature"),
        ("eyJhbGciOiJIUzI1NiJ9.e30.sig", "not a SharedAccessSignature"),
        ("SharedAccessSignature", "not a SharedAccessSignature"),
        ("SharedAccessSignatureX sr=a", "not a SharedAccessSignature"),
        (f"SharedAccessSignature sr={NET_SR}", "missing field sig"),
        (f"SharedAccessSignature sr={NET_SR}&sig={GOOD_SIG}&skn=r", "missing field se"),
        (f"SharedAccessSignature sr={NET_SR}&sig={GOOD_SIG}&se=1", "missing field skn"),
        (f"SharedAccessSignature sig={GOOD_SIG}&se=1&skn=r", "missing field sr"),
        (token("", GOOD_SIG), "empty field sr"),
        (token(NET_SR, GOOD_SIG) + "&SR=x", "duplicate field sr"),
        (token(NET_SR, GOOD_SIG) + "&junk", "malformed token field"),
        (token(NET_SR, GOOD_SIG, se="abc"), "se is not an integer"),
        (token(NET_SR, GOOD_SIG, se="-1"), "se is not an integer"),
        (token(NET_SR, GOOD_SIG, se="1.5"), "se is not an integer"),
        (token(NET_SR, GOOD_SIG, se="1e9"), "se is not an integer"),
        (token(NET_SR, GOOD_SIG, se="\u0661\u0667\u0660\u0660"), "se is not an integer"),
        (token(NET_SR, GOOD_SIG, se="9" * 16), "se is not an integer"),
        (token(NET_SR, "%%%"), "sig is not valid base64"),
        (token(NET_SR, "abc"), "sig is not valid base64"),
        (token(NET_SR, "é" * 44), "sig is not valid base64"),
        (token(NET_SR, SHORT_SIG), "sig is not an HMAC-SHA256 signature"),
        (token(NET_SR, GOOD_SIG, skn="r" * 5000), "token longer than 4 KiB"),
        (token(NET_SR, GOOD_SIG, skn="é" * 2100), "token longer than 4 KiB"),
    ],
)
def test_parse_errors(text: str, reason: str) -> None:
    with pytest.raises(AuthError) as info:
        sas.parse_sas_token(text)
    assert str(info.value) == reason
    assert NET_SIG[:10] not in str(info.value)
    assert KEY not in str(info.value)


def test_token_expiry() -> None:
    assert sas.token_expiry(VECTOR_443) == SE
    assert sas.token_expiry("eyJhbGciOiJIUzI1NiJ9.e30.sig") is None


# ---------------------------------------------------------------- scope (HC §8.2)


@pytest.mark.parametrize(
    ("resource", "host", "entity", "covers"),
    [
        # hyco audiences keep the port, which is ignored.
        (
            "http://contoso.servicebus.windows.net:443/hyco",
            "contoso.servicebus.windows.net",
            "hyco",
            True,
        ),
        ("http://localhost:8443/hyco", "localhost:8443", "hyco", True),
        ("http://localhost:8443/hyco", "localhost", "hyco", True),
        ("http://localhost:8443/hyco", "localhost:9999", "hyco", True),
        # NET: trailing slash, no port.
        ("http://ns/hyco/", "ns", "hyco", True),
        ("http://ns/hyco/", "ns", "hyco/sub", True),
        # Namespace-wide.
        ("http://ns/", "ns", "anything/at/all", True),
        ("http://ns", "ns", "hyco", True),
        ("http://ns/$hc/", "ns", "hyco", True),
        ("http://ns/$hc", "ns", "hyco", True),
        # Case-insensitive host and path.
        ("http://NS.example.COM/HyCo", "ns.EXAMPLE.com", "hYcO", True),
        # Any of the known schemes.
        ("https://ns/hyco", "ns", "hyco", True),
        ("sb://ns/hyco", "ns", "hyco", True),
        ("wss://ns/hyco", "ns", "hyco", True),
        ("ws://ns/hyco", "ns", "hyco", True),
        ("ftp://ns/hyco", "ns", "hyco", False),
        ("ns/hyco", "ns", "hyco", False),
        ("http:///hyco", None, "hyco", False),
        # Segment boundaries.
        ("http://ns/a", "ns", "a/b", True),
        ("http://ns/ab", "ns", "a/b", False),
        ("http://ns/a/b", "ns", "a", False),
        ("http://ns/a/b", "ns", "a/b", True),
        ("http://ns/a/b", "ns", "a/bc", False),
        ("http://ns/hyco", "ns", "hycox", False),
        ("http://ns//hyco", "ns", "hyco", False),
        # "$hc/" inside the sr path.
        ("http://ns/$hc/hyco", "ns", "hyco", True),
        ("http://ns/$HC/hyco/", "ns", "hyco", True),
        ("http://ns/$hc/other", "ns", "hyco", False),
        ("http://ns/x/$hc/hyco", "ns", "hyco", False),
        # Host checks.
        ("http://other/hyco", "ns", "hyco", False),
        ("http://other/hyco", None, "hyco", True),
        ("http://ns/hyco", "", "hyco", False),
        ("http://[::1]:8443/hyco", "[::1]", "hyco", True),
        ("http://[::1/hyco", None, "hyco", False),
        ("http://ns/hyco", "[::1", "hyco", False),
        # Query and fragment do not widen or narrow the scope.
        ("http://ns/hyco?x=1#f", "ns", "hyco", True),
        # The resource is not decoded a second time.
        ("http://ns/a%2Fb", "ns", "a/b", False),
        ("http://ns/hyco", "ns", "/hyco/", True),
        ("http://ns/hyco", "ns", "", False),
    ],
)
def test_resource_covers(resource: str, host: str | None, entity: str, covers: bool) -> None:
    assert sas.resource_covers(resource, host=host, entity_path=entity) is covers


@pytest.mark.parametrize(
    ("resource", "covers"),
    [
        ("http://relay.example.com/hyco", True),
        ("https://RELAY-2.example.com:8443/hyco", True),
        ("http://evil.example.com/hyco", False),
        ("http://relay.example.com.evil/hyco", False),
    ],
)
def test_resource_covers_any_of_a_set_of_hosts(resource: str, covers: bool) -> None:
    # RelayState.token_hosts: the relay's public names, lower-case and without ports.
    hosts = frozenset({"relay.example.com", "relay-2.example.com"})
    assert sas.resource_covers(resource, host=hosts, entity_path="hyco") is covers


def test_parsed_vectors_cover_their_entity() -> None:
    for vector, host in (
        (VECTOR_443, "contoso.servicebus.windows.net"),
        (VECTOR_8443, "localhost"),
    ):
        parsed = sas.parse_sas_token(vector)
        assert sas.resource_covers(parsed.resource, host=host, entity_path="hyco")
        assert not sas.resource_covers(parsed.resource, host=host, entity_path="hyco2")


# ---------------------------------------------------------------- rights (HC §8.5)


def test_rights_parse() -> None:
    assert Rights.parse(["Listen"]) == Rights.LISTEN
    assert Rights.parse(["listen", " SEND "]) == Rights.LISTEN | Rights.SEND
    assert Rights.parse(["Manage", "Listen", "Send"]) == Rights.MANAGE | Rights.LISTEN | Rights.SEND
    assert Rights.parse([]) == Rights(0)
    assert Rights.parse("Listen, Send") == Rights.LISTEN | Rights.SEND
    assert Rights.parse("") == Rights(0)


@pytest.mark.parametrize(
    "names", [["Listen", "Recieve"], [""], ["l\u0131\u017ften"], "Listen,,Send"]
)
def test_rights_parse_rejects_unknown(names: list[str] | str) -> None:
    with pytest.raises(ValueError, match="unknown right"):
        Rights.parse(names)


def test_rights_parse_names_the_bad_one() -> None:
    with pytest.raises(ValueError, match="'Recieve'"):
        Rights.parse(["Listen", "Recieve"])


def test_rights_allows_and_effective() -> None:
    assert Rights.MANAGE.effective() == Rights.MANAGE | Rights.LISTEN | Rights.SEND
    assert Rights.LISTEN.effective() == Rights.LISTEN
    assert Rights.MANAGE.allows(Rights.LISTEN)
    assert Rights.MANAGE.allows(Rights.SEND | Rights.LISTEN)
    assert Rights.LISTEN.allows(Rights.LISTEN)
    assert not Rights.LISTEN.allows(Rights.SEND)
    assert not Rights.SEND.allows(Rights.LISTEN)
    assert not (Rights.LISTEN | Rights.SEND).allows(Rights.MANAGE)
    assert Rights.SEND.allows(Rights(0))


# ---------------------------------------------------------------- provider


def test_provider_caches_until_a_quarter_of_ttl_remains() -> None:
    provider = SasTokenProvider(RULE, KEY, ttl=3600)
    audience = "wss://localhost:8443/$hc/hyco?sb-hc-action=listen"
    first = provider.token_for(audience, 1000.7)
    assert sas.token_expiry(first) == 1000 + 3600
    assert provider.token_for(audience, 1000.7 + 2000) == first
    assert provider.token_for(audience, 1000 + 2700) == first  # 900 s = ttl/4 left
    second = provider.token_for(audience, 1000 + 2701)
    assert second != first
    assert sas.token_expiry(second) == 1000 + 2701 + 3600
    parsed = sas.parse_sas_token(second)
    assert sas.verify_signature(parsed, KEY)
    assert parsed.resource == "http://localhost:8443/hyco"


def test_provider_keeps_one_token_per_audience_and_prunes_expired() -> None:
    provider = SasTokenProvider(RULE, KEY, ttl=100)
    a = provider.token_for("http://ns/a", 0)
    b = provider.token_for("http://ns/b", 0)
    assert a != b
    assert provider.token_for("http://ns/a", 10) == a
    provider.token_for("http://ns/c", 500)
    assert set(provider._cache) == {"http://ns/c"}


def test_provider_repr_hides_key_and_satisfies_protocol() -> None:
    provider: TokenProvider = SasTokenProvider(RULE, "very-secret-key", ttl=60)
    assert "very-secret-key" not in repr(provider)
    assert isinstance(provider, SasTokenProvider)
    assert provider.key_name == RULE
    assert provider.ttl == 60


@pytest.mark.parametrize("ttl", [0, -5])
def test_provider_rejects_bad_ttl(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        SasTokenProvider(RULE, KEY, ttl=ttl)


def test_sastoken_can_be_built_directly() -> None:
    built = SasToken(
        raw_sr=NET_SR,
        raw_se=str(SE),
        signature=base64.b64decode(NET_SIG),
        expiry=SE,
        key_name=RULE,
        resource="http://contoso.servicebus.windows.net/hyco/",
    )
    assert sas.verify_signature(built, KEY)
    assert built == sas.parse_sas_token(token(NET_SR, NET_SIG))


def test_field_names_compare_ascii_case_only() -> None:
    # "\u212a" (Kelvin sign) lower-cases to "k"; it must not spell "skn".
    text = f"SharedAccessSignature sr={NET_SR}&sig={GOOD_SIG}&se=1&s\u212an=r"
    with pytest.raises(AuthError, match="missing field skn"):
        sas.parse_sas_token(text)
