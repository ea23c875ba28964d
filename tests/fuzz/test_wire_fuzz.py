"""Hostile bytes over real sockets: every input is accepted or refused as documented (issue 11).

Each target (tests/fuzz/targets.py) runs once per module against one in-process relay,
a bounded and derandomized number of examples (``Target.ci_examples``), and every
property it checks becomes one test here, so a failure names the rule that broke and
shows the first examples that broke it, as sent. ``python -m tests.fuzz`` runs the same
targets for as long as you like against a relay process (its RSS included).

Properties marked xfail are holes of issue 11 whose fix belongs to another part of it
(named in the reason); the lead removes the mark when the fix is merged.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.campaign import TargetResult, run_target
from tests.fuzz.targets import TARGETS

# Every target reports these too (see campaign.py).
COMMON = ("error_logged", "relay_down", "hang", "harness_error", "relay_leak")


def _known(area: str, what: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=False, reason=f"issue 11, {area}: {what}")


def _props(*names: str | tuple[str, pytest.MarkDecorator]) -> list[object]:
    """Test parameters: property names, some with their xfail mark."""
    marked = {n[0]: n[1] for n in names if isinstance(n, tuple)}
    plain = [n for n in names if isinstance(n, str)]
    ordered = list(dict.fromkeys([*plain, *COMMON, *marked]))
    return [pytest.param(n, marks=marked[n], id=n) if n in marked else n for n in ordered]


def _campaign(name: str) -> Iterator[TargetResult]:
    result = run_target(name, examples=TARGETS[name].ci_examples)
    assert result.examples >= TARGETS[name].ci_examples // 2, "hypothesis ran too few examples"
    yield result


def _check(result: TargetResult, prop: str) -> None:
    assert not result.violations.get(prop), result.failures(prop)


@pytest.fixture(scope="module")
def relay_control() -> Iterator[TargetResult]:
    yield from _campaign("relay-control")


@pytest.fixture(scope="module")
def http_mode() -> Iterator[TargetResult]:
    yield from _campaign("http-mode")


@pytest.fixture(scope="module")
def splice_frames() -> Iterator[TargetResult]:
    yield from _campaign("splice-frames")


@pytest.fixture(scope="module")
def listener_answers() -> Iterator[TargetResult]:
    yield from _campaign("listener-answers")


@pytest.fixture(scope="module")
def agent_control() -> Iterator[TargetResult]:
    yield from _campaign("agent-control")


@pytest.mark.parametrize(
    "prop",
    _props(
        "wrong_verdict",
        "undocumented_close_code",
        "no_close_frame",
        "bad_frame_from_relay",
        (
            "unmasked_frame_accepted",
            _known(
                "robustness (listen path, closest part: frontdoor)",
                "unmasked client frames are accepted on the control channel",
            ),
        ),
    ),
)
def test_relay_control_channel(relay_control: TargetResult, prop: str) -> None:
    """A hostile listener sends bad JSON, wrong kinds, bad tokens, oversized and broken frames on
    its control channel: the relay keeps it open or closes it with 1002/1007/1008/1009 (HC §3)."""
    _check(relay_control, prop)


@pytest.mark.parametrize(
    "prop",
    _props(
        "relay_answered_500",
        "undocumented_status",
        "malformed_response",
        "well_formed_refused",
        "body_altered",
        "agent_error_logged",
        ("error_logged", _known("frontdoor", "malformed requests log an error-level traceback")),
        ("head_response_body", _known("frontdoor", "aiohttp's 400 answers to HEAD carry a body")),
        (
            "wrong_http_version",
            _known("frontdoor", "a request line with HTTP/2.0 or HTTP/0.9 is answered in kind"),
        ),
        (
            "relay_leak",
            _known(
                "frontdoor (timeouts)",
                "a refused request whose body was not read keeps aiohttp's handler task "
                "(lingering close, 10 s) after the sender went away, past relay shutdown",
            ),
        ),
    ),
)
def test_http_mode_requests(http_mode: TargetResult, prop: str) -> None:
    """A hostile sender writes raw request lines, headers and bodies (lengths, chunks, smuggling
    shapes): each is answered with a documented status, never 500; valid ones reach the listener."""
    _check(http_mode, prop)


@pytest.mark.parametrize(
    "prop",
    _props(
        "frames_altered",
        "pongs_wrong",
        "wrong_close",
        "bad_frame_from_relay",
        (
            "acted_after_close",
            _known(
                "flood (splice)",
                "frames after an invalid close frame in the same read are still relayed",
            ),
        ),
        (
            "no_close_frame",
            _known(
                "flood (splice)",
                "a peer that vanishes after a frame header gets the other peer a TCP reset, "
                "not a close frame (1011)",
            ),
        ),
    ),
)
def test_splice_frames(splice_frames: TargetResult, prop: str) -> None:
    """A hostile sender or listener sends mutated frame sequences on a relayed stream: valid frames
    arrive intact, a broken one closes that leg (1002/1007) and the other with 1011 (HC §5)."""
    _check(splice_frames, prop)


@pytest.mark.parametrize(
    "prop",
    _props(
        "valid_answer_altered",
        "undocumented_close_code",
        ("relay_answered_500", _known("trust", "a header with CR/LF/NUL answers the sender 500")),
        (
            "malformed_response",
            _known("trust", "a 500 with a Content-Length that disagrees with its body; 1xx/101"),
        ),
        (
            "invalid_answer_forwarded",
            _known(
                "trust",
                "status 1xx/600-999 and non-token header names reach the sender; a bad answer "
                "on a rendezvous socket leaves the sender waiting out request_timeout (504)",
            ),
        ),
        (
            "error_logged",
            _known("trust", "a bad listener answer logs internal_error with a traceback"),
        ),
    ),
)
def test_listener_answers(listener_answers: TargetResult, prop: str) -> None:
    """A hostile HTTP-mode listener answers with bad statuses, header names and values, bodies: a
    valid answer reaches the sender as sent, an invalid one as a well-formed 502."""
    _check(listener_answers, prop)


@pytest.mark.parametrize(
    "prop",
    _props(
        "agent_error_logged",
        "agent_dropped_control_channel",
        "agent_unresponsive",
        "agent_sent_invalid_message",
        (
            "agent_dialed_foreign_host",
            _known("trust", "the agent dials any host an accept or request address names"),
        ),
    ),
)
def test_agent_control_channel(agent_control: TargetResult, prop: str) -> None:
    """A hostile relay sends the agent bad JSON, wrong kinds, bad addresses and rendezvous answers:
    the agent ignores or refuses each, keeps its control channel and keeps answering requests."""
    _check(agent_control, prop)
