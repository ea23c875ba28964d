"""``hybridrelay demo`` opens a browser only for a person at a desktop (never CI or tests)."""

from __future__ import annotations

import pytest

from hybridrelay.demo import browser_wanted

DESKTOP = {"DISPLAY": ":0"}


def test_a_desktop_terminal_gets_a_browser() -> None:
    assert browser_wanted(DESKTOP, interactive=True, platform="linux")
    assert browser_wanted({"WAYLAND_DISPLAY": "wayland-0"}, interactive=True, platform="linux")
    assert browser_wanted({}, interactive=True, platform="darwin")
    assert browser_wanted({}, interactive=True, platform="win32")


@pytest.mark.parametrize(
    "name", ["CI", "GITHUB_ACTIONS", "GITLAB_CI", "PYTEST_CURRENT_TEST", "HYBRIDRELAY_NO_BROWSER"]
)
def test_ci_tests_and_the_opt_out_get_none(name: str) -> None:
    assert not browser_wanted({**DESKTOP, name: "1"}, interactive=True, platform="linux")
    assert not browser_wanted({name: "true"}, interactive=True, platform="darwin")


def test_no_terminal_or_no_display_gets_none() -> None:
    assert not browser_wanted(DESKTOP, interactive=False, platform="linux")
    assert not browser_wanted({}, interactive=False, platform="darwin")
    # A server over SSH: Python would pick a text browser that takes over the terminal.
    assert not browser_wanted({}, interactive=True, platform="linux")
    assert not browser_wanted({"DISPLAY": ""}, interactive=True, platform="freebsd")
