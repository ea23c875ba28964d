"""``[relay] metrics_listen``: /metrics (and the probes) on an address of its own, as an
operator runs it: ``python -m hybridrelay relay serve`` as a child process, real sockets.

With the option, ``/metrics`` is served only there (the public port answers 404, as for
any unknown path); ``/healthz`` and ``/readyz`` answer on both (balancers probe the public
port, scrapers and orchestrators may use the metrics one).
"""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest
from tests.harness.metrics import sample, scrape
from tests.harness.relay import RelayProcess, write_config

pytestmark = pytest.mark.e2e

_METRICS_URL = re.compile(r"event=metrics_listening url=(http://\S+)/metrics")


def _metrics_base(relay: RelayProcess) -> str:
    """The metrics address the relay logged (port 0 in the config: the OS chose it)."""
    found = [m.group(1) for line in relay.log_lines if (m := _METRICS_URL.search(line))]
    assert len(found) == 1, relay.log()
    return found[0]


async def _status(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        await resp.read()
        return resp.status


async def _check_split(relay: RelayProcess) -> None:
    base = _metrics_base(relay)
    assert base.startswith("http://127.0.0.1:")
    assert base != relay.http_url
    samples = await scrape(base)
    assert sample(samples, "hybridrelay_listeners") == 0
    assert [key for key in samples if key[0] == "hybridrelay_build_info"]
    for path in ("/healthz", "/readyz"):
        assert await _status(base + path) == 200
        assert await _status(relay.http_url + path) == 200
    # Not on the public port any more: the relay's counters are for its operator.
    assert await _status(relay.http_url + "/metrics") == 404


async def test_metrics_listen_in_the_config_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, relay_extra='metrics_listen = "127.0.0.1:0"')
    relay = RelayProcess(path)
    try:
        await relay.start()
        await _check_split(relay)
    finally:
        assert await relay.stop() == 0, relay.log()


async def test_metrics_listen_from_the_environment_with_the_development_default(
    tmp_path: Path,
) -> None:
    """``HYBRIDRELAY_METRICS_LISTEN`` (what a container sets), no config file at all."""
    env = {
        "HYBRIDRELAY_METRICS_LISTEN": "127.0.0.1:0",
        "HYBRIDRELAY_PORT": "0",
        "HYBRIDRELAY_DATA_DIR": str(tmp_path / "data"),
    }
    relay = RelayProcess(None, env=env)
    try:
        await relay.start()
        await _check_split(relay)
    finally:
        assert await relay.stop() == 0, relay.log()
