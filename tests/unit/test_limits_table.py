"""docs/security.md's limits table against the code, so that neither can drift from the other.

- every ``[relay]`` key that is a limit has a row, with its real default;
- every name the code counts (``limit=``, ``limit_hit(...)``) is a metric label in the table;
- every metric label in the table is counted somewhere in the code (no stale rows).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from hybridrelay.relay.config import RelaySettings

ROOT = Path(__file__).parents[2]
SECURITY_MD = ROOT / "docs" / "security.md"
SOURCES = ("core", "relay", "listener", "client")

# [relay] keys that are not limits on what a peer can make the relay hold or wait for:
# where it listens, who it trusts, what it creates. Every other key needs a table row.
NOT_LIMITS = frozenset(
    {
        "host",
        "port",
        "public_url",
        "tls_cert",
        "tls_key",
        "data_dir",
        "auto_create",
        "check_token_host",
        "public_hosts",
        "listener_takeover",
        "client_cert",
        "client_ca_file",
        "tls_reload_interval",  # how often the relay looks at its own TLS files
        "allow_placeholder_keys",
        "dashboard_viewers",
        "metrics_listen",
        "dashboard_listen",
        "workers",  # how many processes serve (docs/scaling.md), not a bound on peers
        "worker_port",
        "rendezvous_url",  # set by serve.run for a worker, not a config key
    }
)

# How the code names what it counts: limit="x" (an error raised, or a class attribute),
# limit_hit("x") (counted where no error reaches the middleware; also self._limit_hit),
# Refusal("x", ...) and refused("x", ...) (the front door) and LIMIT_X: Final = "x" (a
# name shared by modules).
_COUNTED = (
    re.compile(r'\blimit\s*=\s*"([a-z_.]+)"'),
    re.compile(r'limit_hit\(\s*"([a-z_.]+)"'),
    re.compile(r'\b(?:Refusal|refused)\(\s*"([a-z_.]+)"'),
    re.compile(r'\bLIMIT_[A-Z_]+: Final = "([a-z_.]+)"'),
)
# Groups of rows about the agent and the libraries: no relay metric, other keys.
_NOT_RELAY_GROUPS = ("Listener agent", "Client library")
_LABEL = re.compile(r"^[a-z_][a-z_.]*$")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # a key, a protocol value's name, or a constant described in words
    default: str
    labels: frozenset[str]  # limit="..." labels named in the metric cell
    relay: bool  # a row of the relay's, not of the agent's or a library's


def _rows() -> list[Row]:
    text = SECURITY_MD.read_text("utf-8")
    section = text.split("## Limits and timeouts", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header, *body = lines
    assert header.split("|")[1].strip() == "limit", "the table's first column is the limit"
    rows: list[Row] = []
    relay = True
    for line in body:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 5, f"a row has five cells: {line}"
        first, default, _who, _seen, metric = cells
        if first.startswith("**"):  # a group heading
            relay = not first.strip("*").startswith(_NOT_RELAY_GROUPS)
            continue
        # A key or a named value is the first cell's first code span; a constant described
        # in words ("document fields (constants)") is named by the cell itself.
        spans = re.findall(r"`([^`]+)`", first)
        labels = frozenset(
            span
            for span in re.findall(r"`([^`]+)`", metric)
            if relay and _LABEL.match(span) and not span.startswith("hybridrelay_")
        )
        rows.append(Row(spans[0] if spans else first, default, labels, relay))
    return rows


def _counted_in_code() -> dict[str, set[str]]:
    """Every name the code counts, with the files that count it."""
    found: dict[str, set[str]] = {}
    for root in SOURCES:
        for path in (ROOT / root).rglob("*.py"):
            text = path.read_text("utf-8")
            for pattern in _COUNTED:
                for name in pattern.findall(text):
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


ROWS = _rows()
BY_NAME = {row.name: row for row in ROWS if row.relay}
LABELS = frozenset().union(*(row.labels for row in ROWS))
LIMIT_KEYS = [f.name for f in dataclasses.fields(RelaySettings) if f.name not in NOT_LIMITS]


def test_the_table_was_parsed() -> None:
    assert len(ROWS) > 50
    assert "handshake_timeout" in BY_NAME


@pytest.mark.parametrize("key", LIMIT_KEYS)
def test_every_relay_limit_key_has_a_row_with_its_default(key: str) -> None:
    row = BY_NAME.get(key)
    assert row is not None, f"[relay] {key} has no row in docs/security.md's limits table"
    default = getattr(RelaySettings(), key)
    if isinstance(default, tuple):
        for item in default:
            assert f"`{item}`" in row.default, f"{key}: {item} is not in {row.default!r}"
        return
    number = _NUMBER.search(row.default.replace(",", ""))
    assert number is not None, f"{key}: no number in {row.default!r}"
    assert float(number.group()) == float(default), (
        f"{key}: the table says {row.default!r}, the code's default is {default!r}"
    )


def test_every_name_the_code_counts_is_in_the_table() -> None:
    counted = _counted_in_code()
    missing = {name: sorted(files) for name, files in counted.items() if name not in LABELS}
    assert not missing, f"counted in code but not a metric label in the table: {missing}"


def test_every_label_in_the_table_is_counted_by_the_code() -> None:
    stale = sorted(LABELS - set(_counted_in_code()))
    assert not stale, f"labels in the table that no code counts: {stale}"


def test_a_counted_key_row_is_counted_under_its_own_name() -> None:
    """A [relay] key's row names itself as its label (names = keys), bar the bucket's burst."""
    shared = {"handshake_burst_per_ip": "handshake_rate_per_ip"}
    for key in LIMIT_KEYS:
        row = BY_NAME[key]
        if row.labels:
            assert row.labels == {shared.get(key, key)}, (key, row.labels)
