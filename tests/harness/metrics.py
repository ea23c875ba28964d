"""The relay's ``/metrics`` as a test reads it: one sample's value by name and exact labels,
or every sample, parsed by prometheus_client's text parser."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .timing import seconds

__all__ = ["Samples", "limit_refusals", "metric_value", "parse_exposition", "sample", "scrape"]


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


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels, read by
    prometheus_client's own parser (which raises on anything malformed)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"sample {key} exposed twice"
            samples[key] = sample.value
    return samples


async def scrape(http_url: str) -> Samples:
    """GET ``{http_url}/metrics`` over a real socket and parse it (200, the text format)."""
    async with (
        aiohttp.ClientSession() as session,
        asyncio.timeout(seconds(10)),
        session.get(http_url + "/metrics") as resp,
    ):
        assert resp.status == 200, resp.status
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        return parse_exposition(await resp.text())


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value (None when absent)."""
    return samples.get((name, frozenset(labels.items())))
