"""Device SAS tokens as the shipped clients make them (issue 12), checked by the one parser
(``protocol/sas.py``), the relay's verifier (``relay/device_auth.py``) and against an IoT
Hub SDK-style signer.
"""

from __future__ import annotations

import base64

import pytest
from tests.harness.device_certs import device_sas_token

from hybridrelay.errors import AuthError, InvalidAddressError
from hybridrelay.protocol import DeviceTokenProvider, create_device_token
from hybridrelay.protocol.sas import Rights, parse_device_token, parse_sas_token, token_expiry
from hybridrelay.relay.device_auth import verify_device_token
from hybridrelay.relay.store.models import Authentication, Device, Grants, SymmetricKey

NOW = 1_700_000_000
PRIMARY = base64.b64encode(b"p" * 32).decode()
SECONDARY = base64.b64encode(b"s" * 32).decode()
WRONG = base64.b64encode(b"w" * 32).decode()


def device(device_id: str = "dev-1", status: str = "enabled") -> Device:
    keys = SymmetricKey(primary_key=PRIMARY, secondary_key=SECONDARY)
    return Device(
        device_id=device_id,
        status=status,  # type: ignore[arg-type]
        authentication=Authentication(type="sas", symmetric_key=keys),
        grants=Grants(listen=("echo",), send=("echo",)),
    )


def verify(token: str, dev: Device, *, host: str | set[str] | None = "relay.example.com") -> Device:
    parsed = parse_device_token(token)
    assert parsed is not None, "the relay does not see a device token"
    verified, rights = verify_device_token(
        parsed, dev, hc_name="echo", right=Rights.LISTEN, now=NOW, host=host
    )
    assert rights.allows(Rights.LISTEN | Rights.SEND)
    return verified


def test_token_has_the_iot_hub_shape_and_the_relay_accepts_it() -> None:
    token = create_device_token("relay.example.com", "dev-1", PRIMARY, NOW + 3600)
    assert token.startswith("SharedAccessSignature sr=relay.example.com%2Fdevices%2Fdev-1&sig=")
    assert token.endswith(f"&se={NOW + 3600}")
    assert "skn=" not in token
    assert verify(token, device()).device_id == "dev-1"
    # Byte for byte what an IoT Hub SDK-style signer (base64-decoded key) makes.
    reference = device_sas_token("relay.example.com", "dev-1", PRIMARY, expiry=NOW + 3600)
    assert token == reference


def test_signed_with_the_decoded_key_not_its_text() -> None:
    token = create_device_token("relay.example.com", "dev-1", PRIMARY, NOW + 60)
    text_signed = device_sas_token(
        "relay.example.com", "dev-1", PRIMARY, expiry=NOW + 60, decode_key=False
    )
    assert token != text_signed


def test_secondary_key_works_and_a_wrong_key_or_disabled_device_is_refused() -> None:
    secondary = create_device_token("relay.example.com", "dev-1", SECONDARY, NOW + 60)
    assert verify(secondary, device()).device_id == "dev-1"
    with pytest.raises(AuthError, match="signature does not match"):
        verify(create_device_token("relay.example.com", "dev-1", WRONG, NOW + 60), device())
    with pytest.raises(AuthError, match="disabled"):
        verify(
            create_device_token("relay.example.com", "dev-1", PRIMARY, NOW + 60),
            device(status="disabled"),
        )


@pytest.mark.parametrize("device_id", ["dev+1", "a%41b", "x#y?z", "o'k(1),:=@$!*", "d.e_v"])
def test_every_device_id_character_survives_the_relay_parser(device_id: str) -> None:
    token = create_device_token("relay.example.com", device_id, PRIMARY, NOW + 60)
    parsed = parse_device_token(token)
    assert parsed is not None
    assert parsed.candidate_ids[0] == device_id
    assert verify(token, device(device_id)).device_id == device_id


@pytest.mark.parametrize(
    ("audience", "host"),
    [
        ("http://Relay.Example.com:8443/echo", "relay.example.com"),
        ("wss://relay.example.com/$hc/echo?sb-hc-action=listen", "relay.example.com"),
        ("http://127.0.0.1:61234/echo", "127.0.0.1"),
        ("http://[::1]:61234/echo", "[::1]"),
    ],
)
def test_provider_signs_for_the_audience_host(audience: str, host: str) -> None:
    provider = DeviceTokenProvider("dev-1", PRIMARY)
    token = provider.token_for(audience, NOW)
    parsed = parse_device_token(token)
    assert parsed is not None
    assert parsed.host == host
    bare = host.strip("[]")
    assert verify(token, device(), host={bare}).device_id == "dev-1"


def test_provider_with_a_fixed_host_ignores_the_audience() -> None:
    provider = DeviceTokenProvider("dev-1", PRIMARY, host="wss://relay.example.com:443")
    token = provider.token_for("http://10.0.0.7:8080/echo", NOW)
    assert verify(token, device()).device_id == "dev-1"


def test_provider_reuses_a_token_until_a_quarter_of_its_life_is_left() -> None:
    provider = DeviceTokenProvider("dev-1", PRIMARY, ttl=400)
    first = provider.token_for("http://relay.example.com/echo", NOW)
    assert provider.token_for("http://relay.example.com/other", NOW + 300) == first
    renewed = provider.token_for("http://relay.example.com/echo", NOW + 301)
    assert renewed != first
    parsed = parse_device_token(renewed)
    assert parsed is not None
    assert parsed.expiry == NOW + 301 + 400


def test_provider_refuses_bad_input_without_showing_the_key() -> None:
    secret = "not base64 at all!"
    with pytest.raises(ValueError, match="must be base64") as caught:
        DeviceTokenProvider("dev-1", secret)
    assert secret not in str(caught.value)
    with pytest.raises(ValueError, match="16 to 64 bytes"):
        DeviceTokenProvider("dev-1", base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="'/' is not allowed"):
        DeviceTokenProvider("dev/1", PRIMARY)
    with pytest.raises(ValueError, match="must not be empty"):
        DeviceTokenProvider("", PRIMARY)
    with pytest.raises(ValueError, match="ttl"):
        DeviceTokenProvider("dev-1", PRIMARY, ttl=0)
    with pytest.raises(InvalidAddressError):
        DeviceTokenProvider("dev-1", PRIMARY).token_for("http:///echo", NOW)
    provider = DeviceTokenProvider("dev-1", PRIMARY)
    assert PRIMARY not in repr(provider)
    assert "dev-1" in repr(provider)


def test_token_expiry_reads_device_tokens_so_listeners_renew_them() -> None:
    token = create_device_token("relay.example.com", "dev-1", PRIMARY, NOW + 3600)
    assert token_expiry(token) == NOW + 3600
    assert token_expiry(DeviceTokenProvider("dev-1", PRIMARY).token_for("http://h/x", NOW)) == (
        NOW + 3600
    )
    # Still None for what is neither a rule's nor a device's token.
    assert token_expiry("SharedAccessSignature sr=h%2Fhc&sig=x&se=1") is None
    assert token_expiry(token.replace("&se=", "&se=x")) is None
    assert token_expiry("Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig") is None


def test_the_4_kib_cap_counts_bytes_for_device_and_rule_tokens_alike() -> None:
    """One reader of the token's shape: a token of 4 KiB characters but more bytes is
    refused by both (the device parser once counted characters, the rule parser bytes)."""
    token = create_device_token("relay.example.com", "dev-1", PRIMARY, NOW + 60)
    padding = "&x=" + "é" * (4096 - len(token) - 3)  # é: two bytes in UTF-8
    oversized = token + padding
    assert len(oversized) <= 4096 < len(oversized.encode())
    assert parse_device_token(token + padding[: len(padding) // 4]) is not None
    assert parse_device_token(oversized) is None  # not a device token: the rule parser says why
    with pytest.raises(AuthError) as refused:
        parse_sas_token(oversized)
    assert refused.value.limit == "sas_token_size"
    assert token_expiry(oversized) is None
