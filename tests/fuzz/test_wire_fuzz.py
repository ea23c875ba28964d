"""Hostile bytes over real sockets: every input is accepted or refused as documented (issue 11).

Each target (tests/fuzz/targets.py) runs once per module against one in-process relay,
a bounded and derandomized number of examples (``Target.ci_examples``), and every
property it checks becomes one test here, so a failure names the rule that broke and
shows the first examples that broke it, as sent. ``python -m tests.fuzz`` runs the same
targets for as long as you like against a relay process (its RSS included).

Every property holds: the holes of issue 11 this campaign found are closed, and a
property that breaks again fails here with the first examples that broke it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.campaign import TargetResult, run_target
from tests.fuzz.targets import TARGETS

# Every target reports these too (see campaign.py).
COMMON = ("error_logged", "relay_down", "hang", "harness_error", "relay_leak")


def _props(*names: str) -> list[str]:
    """Test parameters: the target's own property names, then the common ones."""
    return list(dict.fromkeys([*names, *COMMON]))


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
        "unmasked_frame_accepted",
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
        "error_logged",
        "head_response_body",
        "wrong_http_version",
        "relay_leak",
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
        "acted_after_close",
        "no_close_frame",
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
        "relay_answered_500",
        "malformed_response",
        "invalid_answer_forwarded",
        "error_logged",
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
        "agent_dialed_foreign_host",
    ),
)
def test_agent_control_channel(agent_control: TargetResult, prop: str) -> None:
    """A hostile relay sends the agent bad JSON, wrong kinds, bad addresses and rendezvous answers:
    the agent ignores or refuses each, keeps its control channel and keeps answering requests."""
    _check(agent_control, prop)
