"""authorize() / check_token(): the HC §7/§8 matrix with real SAS tokens and an injected ``now``."""

from __future__ import annotations

import pytest

from hybridrelay.errors import AuthError, ForbiddenError, TokenExpiredError, TokenLifetimeError
from hybridrelay.protocol.sas import Rights, create_sas_token
from hybridrelay.relay.auth import Principal, authorize, check_lifetime, check_token
from hybridrelay.relay.store.base import HybridConnection, Rule

NOW = 1_700_000_000
LATER = NOW + 3600
NS = "contoso.servicebus.windows.net"
PRIMARY = "primary-key-0123456789abcdef"
SECONDARY = "secondary-key-0123456789abcdef"
OTHER_KEY = "not-the-key-0123456789abcdef"

ROOT = Rule(
    name="RootManageSharedAccessKey",
    primary_key=PRIMARY,
    secondary_key=None,
    rights=Rights.MANAGE | Rights.LISTEN | Rights.SEND,
)
NS_SEND = Rule(name="ns-send", primary_key=PRIMARY, secondary_key=None, rights=Rights.SEND)
LISTEN = Rule(name="listen", primary_key=PRIMARY, secondary_key=SECONDARY, rights=Rights.LISTEN)
SEND = Rule(name="send", primary_key=PRIMARY, secondary_key=None, rights=Rights.SEND)
BOTH = Rule(
    name="both", primary_key=PRIMARY, secondary_key=None, rights=Rights.LISTEN | Rights.SEND
)
MANAGE_ONLY = Rule(name="manage", primary_key=PRIMARY, secondary_key=None, rights=Rights.MANAGE)

NAMESPACE_RULES = (ROOT, NS_SEND)
HC = HybridConnection(name="hc", rules=(LISTEN, SEND, BOTH, MANAGE_ONLY))
OPEN_HC = HybridConnection(name="open", requires_client_authorization=False, rules=(LISTEN,))


def tok(
    entity: str = "hc",
    rule: str = "listen",
    key: str = PRIMARY,
    expiry: int = LATER,
    *,
    uri: str | None = None,
) -> str:
    return create_sas_token(uri or f"https://{NS}/{entity}", rule, key, expiry)


def check(
    token: str,
    right: Rights = Rights.LISTEN,
    *,
    hc: HybridConnection = HC,
    now: float = NOW,
    grace: float = 0.0,
    host: str | None = None,
    path: str | None = None,
) -> Principal:
    return check_token(
        token,
        hc=hc,
        namespace_rules=NAMESPACE_RULES,
        right=right,
        now=now,
        grace=grace,
        host=host,
        path=path,
    )


def auth(
    token: str | None,
    right: Rights = Rights.LISTEN,
    *,
    hc: HybridConnection = HC,
    now: float = NOW,
    host: str | None = None,
    path: str | None = None,
) -> Principal:
    return authorize(
        token, hc=hc, namespace_rules=NAMESPACE_RULES, right=right, now=now, host=host, path=path
    )


def expect_401(exc: pytest.ExceptionInfo[AuthError]) -> None:
    assert type(exc.value) is AuthError
    assert exc.value.http_status == 401


def expect_403(exc: pytest.ExceptionInfo[AuthError]) -> None:
    assert type(exc.value) is ForbiddenError
    assert exc.value.http_status == 403


# --- 401 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
@pytest.mark.parametrize("right", [Rights.LISTEN, Rights.SEND])
def test_missing_token_is_401(token: str | None, right: Rights) -> None:
    with pytest.raises(AuthError) as info:
        auth(token, right)
    expect_401(info)


@pytest.mark.parametrize(
    "token",
    [
        "   ",
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x",
        "SharedAccessSignature sr=x&se=1",
        tok().replace("&se=", "&se=x"),
    ],
)
def test_malformed_token_is_401(token: str) -> None:
    with pytest.raises(AuthError) as info:
        check(token)
    expect_401(info)


def test_unknown_rule_is_401() -> None:
    with pytest.raises(AuthError) as info:
        check(tok(rule="nobody"))
    expect_401(info)


def test_rule_of_another_hybrid_connection_is_unknown_here() -> None:
    other = HybridConnection(name="other", rules=(SEND,))
    token = tok(entity="other", rule="listen")  # "listen" is a rule on HC, not on "other"
    with pytest.raises(AuthError) as info:
        check(token, hc=other)
    expect_401(info)


@pytest.mark.parametrize("rule", ["listen", "RootManageSharedAccessKey"])
def test_bad_signature_is_401(rule: str) -> None:
    with pytest.raises(AuthError) as info:
        check(tok(rule=rule, key=OTHER_KEY))
    expect_401(info)


def test_tampered_expiry_breaks_the_signature() -> None:
    token = tok(expiry=NOW - 10).replace(f"se={NOW - 10}", f"se={LATER}")
    with pytest.raises(AuthError) as info:
        check(token)
    expect_401(info)


def test_bad_signature_wins_over_expiry_and_scope() -> None:
    with pytest.raises(AuthError) as info:
        check(tok(entity="elsewhere", key=OTHER_KEY, expiry=NOW - 100))
    expect_401(info)


def test_secondary_key_is_accepted() -> None:
    principal = check(tok(rule="listen", key=SECONDARY))
    assert principal.rule == "listen"


def test_secondary_key_of_a_rule_without_one_is_refused() -> None:
    with pytest.raises(AuthError) as info:
        check(tok(rule="send", key=SECONDARY), Rights.SEND)
    expect_401(info)


def test_rule_name_lookup_is_case_insensitive() -> None:
    principal = check(tok(rule="LISTEN"))
    assert principal.rule == "listen"


# --- expiry -------------------------------------------------------------------------------


def test_expired_token() -> None:
    with pytest.raises(TokenExpiredError) as info:
        check(tok(expiry=NOW - 1))
    assert info.value.http_status == 401


def test_token_is_valid_up_to_its_expiry() -> None:
    assert check(tok(expiry=NOW)).expires_at == float(NOW)
    with pytest.raises(TokenExpiredError):
        check(tok(expiry=NOW), now=NOW + 0.5)


def test_grace_is_honoured() -> None:
    token = tok(expiry=NOW - 300)
    assert check(token, grace=300).expires_at == float(NOW - 300)
    with pytest.raises(TokenExpiredError):
        check(token, grace=299.5)
    with pytest.raises(TokenExpiredError):
        check(token)


def test_authorize_gives_no_grace() -> None:
    with pytest.raises(TokenExpiredError):
        auth(tok(expiry=NOW - 1))


def test_expired_wins_over_scope_and_rights() -> None:
    with pytest.raises(TokenExpiredError):
        check(tok(entity="elsewhere", rule="send", expiry=NOW - 1), Rights.LISTEN)


# --- 403 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("entity", ["other", "hc2", "h", "hcx/sub", "hc-"])
def test_token_for_another_entity_is_403(entity: str) -> None:
    with pytest.raises(AuthError) as info:
        check(tok(entity=entity))
    expect_403(info)


def test_token_for_another_host_is_403_when_the_host_is_checked() -> None:
    token = tok()
    assert check(token, host=NS) is not None
    assert check(token, host=f"{NS.upper()}:443") is not None
    with pytest.raises(AuthError) as info:
        check(token, host="evil.example.com")
    expect_403(info)


@pytest.mark.parametrize(
    ("rule", "right"),
    [
        ("listen", Rights.SEND),
        ("listen", Rights.MANAGE),
        ("send", Rights.LISTEN),
        ("send", Rights.MANAGE),
        ("both", Rights.MANAGE),
        ("ns-send", Rights.LISTEN),
    ],
)
def test_rule_without_the_right_is_403(rule: str, right: Rights) -> None:
    with pytest.raises(AuthError) as info:
        check(tok(rule=rule), right)
    expect_403(info)
    needed = {Rights.LISTEN: "Listen", Rights.SEND: "Send", Rights.MANAGE: "Manage"}[right]
    assert needed in str(info.value)


# --- rights -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "right", "rights"),
    [
        ("listen", Rights.LISTEN, Rights.LISTEN),
        ("send", Rights.SEND, Rights.SEND),
        ("both", Rights.LISTEN, Rights.LISTEN | Rights.SEND),
        ("both", Rights.SEND, Rights.LISTEN | Rights.SEND),
    ],
)
def test_rule_with_the_right(rule: str, right: Rights, rights: Rights) -> None:
    assert check(tok(rule=rule), right) == Principal(
        rule=rule, rights=rights, expires_at=float(LATER)
    )


@pytest.mark.parametrize("right", [Rights.LISTEN, Rights.SEND, Rights.MANAGE])
def test_manage_implies_listen_and_send(right: Rights) -> None:
    principal = check(tok(rule="manage"), right)
    assert principal.rule == "manage"
    assert principal.rights == Rights.MANAGE
    assert not principal.anonymous


# --- namespace rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "hc",
    [HC, HybridConnection(name="a/b/c"), HybridConnection(name="Deep/Entity")],
    ids=lambda hc: hc.name,
)
@pytest.mark.parametrize("right", [Rights.LISTEN, Rights.SEND])
def test_namespace_rule_with_a_namespace_token_covers_every_entity(
    hc: HybridConnection, right: Rights
) -> None:
    token = tok(rule="RootManageSharedAccessKey", uri=f"http://{NS}/")
    principal = auth(token, right, hc=hc)
    assert principal.rule == "RootManageSharedAccessKey"


def test_namespace_rule_lets_listeners_onto_an_open_hybrid_connection() -> None:
    token = tok(rule="RootManageSharedAccessKey", uri=f"http://{NS}/")
    assert auth(token, Rights.LISTEN, hc=OPEN_HC).rule == "RootManageSharedAccessKey"


def test_namespace_rule_with_an_entity_token() -> None:
    assert check(tok(rule="ns-send"), Rights.SEND, hc=HybridConnection(name="hc")).rule == "ns-send"


def test_entity_rule_with_a_namespace_token_is_fine_on_its_entity() -> None:
    assert check(tok(rule="listen", uri=f"http://{NS}/")).rule == "listen"


# --- anonymous senders --------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "garbage", tok(entity="open", key=OTHER_KEY)])
def test_anonymous_sender_when_client_authorization_is_off(token: str | None) -> None:
    principal = auth(token, Rights.SEND, hc=OPEN_HC)
    assert principal.anonymous
    assert principal.rule is None
    assert principal.rights == Rights.SEND
    assert principal.expires_at is None


@pytest.mark.parametrize("token", [None, ""])
def test_listeners_always_need_a_token(token: str | None) -> None:
    with pytest.raises(AuthError) as info:
        auth(token, Rights.LISTEN, hc=OPEN_HC)
    expect_401(info)
    assert auth(tok(entity="open"), Rights.LISTEN, hc=OPEN_HC).rule == "listen"


def test_senders_need_a_token_when_client_authorization_is_on() -> None:
    with pytest.raises(AuthError) as info:
        auth(None, Rights.SEND)
    expect_401(info)
    assert auth(tok(rule="send"), Rights.SEND).rule == "send"


# --- path with a suffix -------------------------------------------------------------------


def test_token_for_a_suffix_is_valid_for_that_suffix() -> None:
    token = tok(entity="hc/sub")
    assert auth(token, path="hc/sub").rule == "listen"
    assert auth(token, path="hc/sub/deeper").rule == "listen"
    assert auth(token, path="HC/Sub").rule == "listen"


@pytest.mark.parametrize("path", [None, "hc", "hc/", "hc/other", "hc/subway"])
def test_token_for_a_suffix_is_not_valid_for_the_bare_entity(path: str | None) -> None:
    with pytest.raises(AuthError) as info:
        auth(tok(entity="hc/sub"), path=path)
    expect_403(info)


def test_entity_token_covers_any_suffix() -> None:
    assert auth(tok(entity="hc"), path="hc/sub/x").rule == "listen"


# --- client families' sr spellings --------------------------------------------------------


def test_net_style_sr_with_trailing_slash() -> None:
    token = tok(uri=f"sb://{NS}/hc/")
    assert "sr=http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhc%2F&" in token
    assert auth(token).rule == "listen"
    assert auth(token, host=NS).rule == "listen"


def test_hyco_style_sr_with_port_443() -> None:
    token = tok(uri=f"wss://{NS}:443/$hc/hc?sb-hc-action=listen")
    assert "sr=http%3A%2F%2Fcontoso.servicebus.windows.net%3A443%2Fhc&" in token
    assert auth(token).rule == "listen"
    assert auth(token, host=NS).rule == "listen"
    assert auth(token, host=f"{NS}:443").rule == "listen"


def test_hc_section_8_3_vector() -> None:
    hyco = HybridConnection(
        name="hyco",
        rules=(
            Rule(
                name="RootManageSharedAccessKey",
                primary_key="s3cr3t",
                secondary_key=None,
                rights=Rights.MANAGE,
            ),
        ),
    )
    vector = (
        "SharedAccessSignature sr=http%3A%2F%2Fcontoso.servicebus.windows.net%3A443%2Fhyco"
        "&sig=bAg706SLufz6OBbSEY2PkOmu5r5xXg7GOF1QI6ivTj0%3D&se=1700000000"
        "&skn=RootManageSharedAccessKey"
    )
    principal = check_token(
        vector, hc=hyco, namespace_rules=(), right=Rights.SEND, now=1_699_999_000
    )
    assert principal.expires_at == 1_700_000_000.0


# ---------------------------------------------------------------- max_token_lifetime (issue 11)


def test_tokens_expiring_beyond_the_lifetime_cap_are_refused() -> None:
    far = tok(expiry=NOW + 10 * 86_400)
    assert (
        check_token(far, hc=HC, namespace_rules=NAMESPACE_RULES, right=Rights.LISTEN, now=NOW).rule
        == "listen"
    )
    with pytest.raises(TokenLifetimeError) as info:
        check_token(
            far,
            hc=HC,
            namespace_rules=NAMESPACE_RULES,
            right=Rights.LISTEN,
            now=NOW,
            max_lifetime=86_400,
        )
    assert info.value.http_status == 401
    assert info.value.limit == "max_token_lifetime"
    # A forged token is a bad signature, whatever its se says.
    with pytest.raises(AuthError) as forged:
        check_token(
            tok(key=OTHER_KEY, expiry=NOW + 10 * 86_400),
            hc=HC,
            namespace_rules=NAMESPACE_RULES,
            right=Rights.LISTEN,
            now=NOW,
            max_lifetime=86_400,
        )
    assert not isinstance(forged.value, TokenLifetimeError)


@pytest.mark.parametrize(
    ("expiry", "cap", "refused"),
    [(NOW + 100, 100, False), (NOW + 101, 100, True), (NOW + 10**9, 0, False)],
)
def test_check_lifetime_boundaries(expiry: int, cap: float, refused: bool) -> None:
    if refused:
        with pytest.raises(TokenLifetimeError):
            check_lifetime(expiry, now=NOW, max_lifetime=cap)
    else:
        check_lifetime(expiry, now=NOW, max_lifetime=cap)
