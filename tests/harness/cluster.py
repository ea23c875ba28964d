"""Several relay processes sharing one Redis, for the cluster tests (issue 6).

Every node is a real ``python -m hybridrelay relay serve`` child with the shared test
config plus a ``[cluster]`` table: same Redis and prefix, its own ``node_id``, and its
own public URL (completed from its port), which is where listeners dial rendezvous.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .peers import token_for
from .redis import unique_prefix
from .relay import RelayProcess, write_config

__all__ = ["Cluster", "mgmt_call", "running_cluster"]

# Hybrid connections the cluster tests add to the shared test config.
_EXTRA_ENTITIES = """
[[hybrid_connections]]
name = "capped"
max_listeners = 2

[[hybrid_connections]]
name = "web"
"""


@dataclass
class Cluster:
    nodes: list[RelayProcess]
    redis_url: str
    prefix: str

    def presence_key(self, hc: str) -> str:
        return f"hr:{self.prefix}:ls:{{{hc.lower()}}}"

    def logs(self) -> str:
        return "\n".join(f"--- node {i} ({n.url}) ---\n{n.log()}" for i, n in enumerate(self.nodes))


@contextlib.asynccontextmanager
async def running_cluster(
    directory: Path,
    redis_url: str,
    count: int,
    *,
    presence_ttl: float = 10.0,
    relay_extra: str = "",
    names: Sequence[str] = (),
) -> AsyncIterator[Cluster]:
    """Start ``count`` nodes on ``redis_url`` (fresh key prefix); stop them on exit.

    On failure inside the block every node's log is printed (pytest shows it).
    """
    prefix = unique_prefix()
    nodes: list[RelayProcess] = []
    cluster = Cluster(nodes, redis_url, prefix)
    try:
        for i in range(count):
            node_dir = directory / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            node_id = names[i] if i < len(names) else f"node-{i}"
            section = (
                f'\n[cluster]\nredis_url = "{redis_url}"\nprefix = "{prefix}"\n'
                f'node_id = "{node_id}"\npresence_ttl = {presence_ttl}\n'
            )
            path = write_config(node_dir, extra=_EXTRA_ENTITIES + section, relay_extra=relay_extra)
            node = RelayProcess(path)
            nodes.append(node)
            await node.start()
        yield cluster
    except BaseException:
        print(cluster.logs())  # noqa: T201 - shown by pytest on failure
        raise
    finally:
        for node in reversed(nodes):
            await node.stop()


async def mgmt_call(
    node: RelayProcess,
    method: str,
    path: str,
    body: object | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, object]]:
    """One management API call on ``node`` with the root key; returns (status, JSON body)."""
    url = f"{node.http_url}/$mgmt/v1{path}"
    all_headers = {"Authorization": token_for(url), **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=all_headers) as resp,
    ):
        text = await resp.text()
        doc = json.loads(text) if text else {}
        return resp.status, doc if isinstance(doc, dict) else {}
