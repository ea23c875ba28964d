"""``hybridrelay --help`` is complete: every command, option and argument explains itself,
and every environment variable the code reads is listed.

Both tests walk what exists (the argparse tree, the source), so an option or a variable
added later without its line fails here by name.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from hybridrelay.cli import ENVIRONMENT, _parser, ready_line
from hybridrelay.relay.config import _ENV_TYPES as RELAY_KEYS, RelayConfig, RelaySettings
from hybridrelay.relay.dashboard import dashboard_url

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("core", "relay", "listener", "client")
# Names the docs use for a variable of the user's choosing (--key-env VAR), not read by us.
EXAMPLE_NAMES = {"HYBRIDRELAY_KEY", "HYBRIDRELAY_SEND_KEY"}


def _undocumented(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if name not in helped:
                    yield f"{path} {name}: the command has no help= (add_parser(..., help=...))"
                yield from _undocumented(sub, f"{path} {name}")
        elif isinstance(action, argparse._HelpAction):
            continue
        elif not action.help or action.help == argparse.SUPPRESS:
            shown = "/".join(action.option_strings) or f"positional {action.metavar or action.dest}"
            yield f"{path}: {shown} has no help="


def test_every_command_option_and_argument_has_help() -> None:
    missing = list(_undocumented(_parser(), "hybridrelay"))
    assert not missing, "options without help:\n" + "\n".join(missing)


def test_the_walker_names_an_option_without_help() -> None:
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers()
    leaf = sub.add_parser("leaf", help="a command")
    leaf.add_argument("--quiet", action="store_true")
    leaf.add_argument("thing")
    sub.add_parser("bare")
    assert list(_undocumented(parser, "x")) == [
        "x leaf: --quiet has no help=",
        "x leaf: positional thing has no help=",
        "x bare: the command has no help= (add_parser(..., help=...))",
    ]


def _variables_in_source() -> set[str]:
    found: set[str] = set()
    for root in SOURCES:
        for path in (REPO / root).rglob("*.py"):
            found |= set(re.findall(r"\bHYBRIDRELAY_[A-Z0-9_]*[A-Z0-9]\b", path.read_text("utf-8")))
    return found


def test_every_environment_variable_is_in_the_help() -> None:
    listed = {name for name, _ in ENVIRONMENT}
    relay_overrides = {f"HYBRIDRELAY_{key.upper()}" for key in RELAY_KEYS}
    found = _variables_in_source()
    assert "HYBRIDRELAY_ADMIN_KEY" in found  # the scan sees what it should
    missing = sorted(found - listed - relay_overrides - EXAMPLE_NAMES)
    assert not missing, f"add these to ENVIRONMENT in core/hybridrelay/cli.py: {missing}"
    assert "HYBRIDRELAY_<KEY>" in listed  # ... which covers the [relay] overrides
    help_text = _parser().format_help()
    for name, what in ENVIRONMENT:
        assert name in help_text
        assert what in help_text


def test_ready_line_links_the_dashboard_where_it_is_served() -> None:
    assert (
        ready_line("ws://127.0.0.1:8080", None) == "hybridrelay relay ready at ws://127.0.0.1:8080"
    )
    assert ready_line("wss://relay.example.com", "http://127.0.0.1:41234/$dashboard/") == (
        "hybridrelay relay ready at wss://relay.example.com"
        " (dashboard: http://127.0.0.1:41234/$dashboard/)"
    )


def test_dashboard_url_follows_dashboard_listen() -> None:
    def url(where: tuple[str, int] | Literal["public", "off"], public: str) -> str | None:
        relay = RelaySettings(dashboard_listen=where, public_url=public)
        return dashboard_url(RelayConfig(relay=relay))

    assert (
        url(("127.0.0.1", 9190), "wss://relay.example.com") == "http://127.0.0.1:9190/$dashboard/"
    )
    assert url(("::1", 9190), "ws://x:1") == "http://[::1]:9190/$dashboard/"
    assert url(("0.0.0.0", 9190), "ws://x:1") == "http://127.0.0.1:9190/$dashboard/"
    assert url("public", "wss://relay.example.com/") == "https://relay.example.com/$dashboard/"
    assert url("off", "ws://x:1") is None
