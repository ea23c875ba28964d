"""Log injection: peer-chosen text with control characters must never reach a log line raw.

An anonymous peer chooses the request path, and the relay logs it when it refuses the
request. Percent-decoded, ``/%0D%0Aevent=forged`` is a CR LF and a forged record; ESC and
C1 controls rewrite the operator's terminal. Both log formats escape them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest

from hybridrelay.logs import JsonFormatter, KeyValueFormatter
from tests.harness.raw_http import exchange, http_request
from tests.harness.relay import RelayProcess, write_config
from tests.harness.timing import seconds

# Percent-encoded paths; each decodes to text with control characters in it.
HOSTILE_PATHS = (
    "/%0D%0Aevent=forged%20level=error",  # CR LF: a forged record (aiohttp's router 404s it)
    "/x%0Dts=2000-01-01T00:00:00Z",  # a lone CR: the terminal overwrites the line
    "/%1B%5B2J%1B%5D0;pwned%07",  # ESC [2J clears the screen, OSC sets the title
    "/%C2%9B31mred",  # U+009B: the one-character CSI of C1
    "/del%7Fete",  # DEL
    "/$hc/%1B%5B31mred?sb-hc-action=connect",  # refused by the /$hc parser, logged too
)
_RAW_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # tab aside: nothing raw


async def _attack(relay: RelayProcess) -> list[str]:
    for path in HOSTILE_PATHS:
        answer = await exchange(relay.url, http_request("GET", path, "relay"))
        assert (answer.version, answer.status // 100) in {("HTTP/1.1", 4), ("HTTP/1.1", 5)}, answer
    # A last, harmless request marks the end: once it is logged, every earlier line is.
    await exchange(relay.url, http_request("GET", "/end-of-attack-marker", "relay"))
    async with asyncio.timeout(seconds(10)):
        while not any("end-of-attack-marker" in line for line in relay.log_lines):
            await asyncio.sleep(0.02)  # the log reader task appends lines as they arrive
    return list(relay.log_lines)


async def _relay(tmp_path: Path, log_format: str) -> RelayProcess:
    directory = tmp_path / log_format
    directory.mkdir()
    relay = RelayProcess(write_config(directory), env={"HYBRIDRELAY_LOG_FORMAT": log_format})
    return await relay.start()


def _assert_clean(lines: list[str]) -> None:
    for line in lines:
        assert not _RAW_CONTROL.search(line), f"raw control character in a log line: {line!r}"
        assert not line.startswith(("event=forged", "ts=2000")), f"forged log line: {line!r}"


async def test_control_characters_in_a_path_are_escaped_in_key_value_logs(tmp_path: Path) -> None:
    """Attacker requests paths with CR, LF, ESC, C1, DEL: each kv log line stays one, escaped."""
    relay = await _relay(tmp_path, "kv")
    try:
        lines = await _attack(relay)
    finally:
        await relay.stop()
    _assert_clean(lines)
    logged = "\n".join(line for line in lines if "request_refused" in line)
    assert 'path="/x\\rts=2000-01-01T00:00:00Z"' in logged
    assert 'path="/\\u001b[2J\\u001b]0;pwned\\u0007"' in logged
    assert 'path="/del\\u007fete"' in logged


async def test_control_characters_in_a_path_are_escaped_in_json_logs(tmp_path: Path) -> None:
    """Attacker requests paths with CR, LF, ESC, C1, DEL: each JSON log line parses, escaped."""
    relay = await _relay(tmp_path, "json")
    try:
        lines = await _attack(relay)
    finally:
        await relay.stop()
    _assert_clean(lines)
    paths = []
    for line in lines:
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "request_refused":
                paths.append(record.get("path", ""))
    assert "/del\x7fete" in paths  # escaped on the line, intact once parsed
    assert "/\x1b[2J\x1b]0;pwned\x07" in paths


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_formatters_escape_every_control_character(fmt: str) -> None:
    """A message and extra fields holding every C0, DEL and C1 character render none raw."""
    every = "".join(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))
    record = logging.LogRecord("hybridrelay.relay", logging.INFO, "", 0, "evt%s", (every,), None)
    record.__dict__["field"] = every
    record.__dict__["odd\nkey"] = "v"
    formatter = JsonFormatter() if fmt == "json" else KeyValueFormatter()
    line = formatter.format(record)
    assert not re.search("[\x00-\x1f\x7f-\x9f]", line), repr(line)
