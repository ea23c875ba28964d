"""The HTTP inspector's core (relay/inspector.py): redaction and bounds, without I/O."""

from __future__ import annotations

import pytest

from hybridrelay.errors import QuotaExceededError
from hybridrelay.relay.inspector import (
    HEADER_BLOCK_LIMIT,
    REDACTED,
    Capture,
    CapturedBody,
    Inspector,
    Record,
    redact_headers,
    redact_target,
)


@pytest.mark.parametrize(
    ("target", "redacted"),
    [
        ("/hc/a?x=1", "/hc/a?x=1"),
        (
            "/hc/a?sb-hc-token=SharedAccessSignature%20sr%3Dx&y=2",
            f"/hc/a?sb-hc-token={REDACTED}&y=2",
        ),
        ("/hc/a?SB-HC-TOKEN=t", f"/hc/a?SB-HC-TOKEN={REDACTED}"),
        (
            "/hc/a?blob=https%3A%2F%2Fs%2Fb%3Fsv%3D1%26sig%3Dabc%2Bd",
            f"/hc/a?blob=https%3A%2F%2Fs%2Fb%3Fsv%3D1%26sig%3D{REDACTED}",
        ),
        ("/hc/a?sv=1&sig=abc&se=2", f"/hc/a?sv=1&sig={REDACTED}&se=2"),
        ("/hc/design?signal=1", "/hc/design?signal=1"),  # "sig" must be a whole parameter name
    ],
)
def test_targets_lose_tokens_and_signatures(target: str, redacted: str) -> None:
    assert redact_target(target) == redacted


def test_secret_headers_and_signatures_are_redacted() -> None:
    headers = redact_headers(
        [
            ("Authorization", "SharedAccessSignature sr=a&sig=b&se=1&skn=r"),
            ("servicebusauthorization", "x"),
            ("Proxy-Authorization", "Basic eA=="),
            ("Sb-Hc-Token", "t"),
            ("Cookie", "a=b"),
            ("Set-Cookie", "c=d"),
            ("X-Sas", "SharedAccessSignature sr=a&sig=abc%2B&se=1"),
            ("Accept", "*/*"),
        ]
    )
    assert headers == (
        ("Authorization", REDACTED),
        ("servicebusauthorization", REDACTED),
        ("Proxy-Authorization", REDACTED),
        ("Sb-Hc-Token", REDACTED),
        ("Cookie", REDACTED),
        ("Set-Cookie", REDACTED),
        ("X-Sas", f"SharedAccessSignature sr=a&sig={REDACTED}&se=1"),
        ("Accept", "*/*"),
    )


def test_a_header_block_is_cut_at_its_limit() -> None:
    many = [(f"X-H{i}", "v" * 1000) for i in range(100)]
    kept = redact_headers(many)
    assert sum(len(n) + len(v) for n, v in kept[:-1]) <= HEADER_BLOCK_LIMIT
    assert kept[-1][0] == "X-Inspector-Truncated"
    assert len(kept) < len(many)


def test_bodies_keep_their_first_bytes_and_count_the_rest() -> None:
    capture = Capture(body_limit=5)
    capture.request_body_read(b"token sig=SECRET and more")
    assert capture.request_body == CapturedBody(data=b"token", size=25, complete=False)
    for chunk in (b"ab", b"cdef", b"gh"):
        capture.response_chunk(chunk)
    assert capture.response is not None
    assert capture.response.body() == CapturedBody(data=b"abcde", size=8, complete=False)
    whole = Capture(body_limit=100)
    whole.request_body_read(b'{"link": "?sig=SECRET&se=1"}')
    assert whole.request_body is not None
    assert whole.request_body.data == b'{"link": "?sig=[redacted]&se=1"}'
    assert whole.request_body.complete


def _record(n: int, hc: str = "echo") -> Record:
    return Record(
        id=f"r{n}",
        hybrid_connection=hc,
        method="GET",
        target=f"/{hc}/{n}",
        request_headers=(),
        request_body=CapturedBody(),
        status=200,
        response_headers=(),
        response_body=CapturedBody(),
        received_at=float(n),
        answered_at=float(n) + 0.5,
        error=None,
    )


def test_rings_are_bounded_in_length_and_number() -> None:
    inspector = Inspector(capacity=3, body_limit=10, max_rings=2)
    assert not inspector.active
    assert inspector.add(_record(0)) is None  # not inspected: not kept
    inspector.enable("Echo")
    inspector.enable("other")
    with pytest.raises(QuotaExceededError):
        inspector.enable("third")
    for n in range(1000):  # a flood keeps the newest three
        inspector.add(_record(n))
    assert [r.id for r in inspector.recorded("ECHO")] == ["r999", "r998", "r997"]
    assert inspector.find("echo", "r998") is not None
    assert inspector.find("echo", "r0") is None
    inspector.disable("echo")
    assert inspector.recorded("echo") == []
    inspector.enable("third")  # the freed slot


async def test_a_replay_is_linked_only_by_a_nonce_this_node_handed_out() -> None:
    inspector = Inspector(capacity=3, body_limit=10, max_rings=1)
    inspector.enable("echo")
    forged = inspector.add(_record(1), nonce="made-up")
    assert forged is not None
    assert forged.replay_of is None
    nonce, done = inspector.expect_replay(_record(1))
    elsewhere = inspector.add(_record(5, hc="other"), nonce=nonce)  # another entity's
    assert elsewhere is None or elsewhere.replay_of is None
    assert not done.done()
    replay = inspector.add(_record(2), nonce=nonce)
    assert replay is not None
    assert replay.replay_of == "r1"
    assert done.result() is replay
    again = inspector.add(_record(4), nonce=nonce)  # the nonce was used up
    assert again is not None
    assert again.replay_of is None
    inspector.replay_over(nonce)
    late = inspector.add(_record(3), nonce=nonce)
    assert late is not None
    assert late.replay_of is None
