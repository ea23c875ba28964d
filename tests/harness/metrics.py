"""The relay's ``/metrics`` as a test reads it: one sample's value by name and exact labels."""

from __future__ import annotations

import asyncio

import aiohttp

from .timing import seconds

__all__ = ["limit_refusals", "metric_value"]


async def metric_value(url: str, name: str, **labels: str) -> float:
    """The value of one sample of the relay's ``/metrics`` (0 when absent).

    ``url`` is the relay's ws:// or http:// URL; the sample's labels must be exactly ``labels``.
    """
    http_url = url.replace("ws://", "http://").replace("wss://", "https://")
    async with (
        aiohttp.ClientSession() as session,
        asyncio.timeout(seconds(10)),
        session.get(http_url + "/metrics") as resp,
    ):
        text = await resp.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, rest = sample.partition("{")
        if metric != name:
            continue
        found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if found == wanted:
            return float(value)
    return 0.0


async def limit_refusals(url: str, limit: str) -> float:
    """``hybridrelay_limit_refusals_total{limit=...}`` of the relay at ``url``."""
    return await metric_value(url, "hybridrelay_limit_refusals_total", limit=limit)
