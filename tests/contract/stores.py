"""What the store contract tests share: the config they open stores with, a settable clock."""

from __future__ import annotations

from typing import Protocol

from hybridrelay.config import Secret
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.config import HybridConnectionConfig, RelayConfig, RuleConfig
from hybridrelay.relay.store.base import Store

__all__ = [
    "CONFIG_HC",
    "CONFIG_HC_RULE",
    "ROOT_KEY",
    "ROOT_RULE",
    "Clock",
    "StoreFactory",
    "make_config",
]

ROOT_RULE = "RootManageSharedAccessKey"
ROOT_KEY = "root-key-0123456789abcdef"
CONFIG_HC = "cfg/hc"
CONFIG_HC_RULE = "cfg-listen"


class Clock:
    """A settable clock; stores take it as ``now``."""

    def __init__(self, start: float = 1_700_000_000.25) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t


class StoreFactory(Protocol):
    kind: str

    async def __call__(self, config: RelayConfig | None = None) -> Store: ...


def make_config(
    *,
    root_key: str = ROOT_KEY,
    hybrid_connections: tuple[HybridConnectionConfig, ...] | None = None,
) -> RelayConfig:
    if hybrid_connections is None:
        hybrid_connections = (
            HybridConnectionConfig(
                name=CONFIG_HC,
                rules=(
                    RuleConfig(
                        name=CONFIG_HC_RULE,
                        key=Secret("cfg-listen-key-0123456789"),
                        rights=Rights.LISTEN,
                    ),
                ),
            ),
        )
    return RelayConfig(
        rules=(
            RuleConfig(
                name=ROOT_RULE,
                key=Secret(root_key),
                rights=Rights.LISTEN | Rights.SEND | Rights.MANAGE,
            ),
        ),
        hybrid_connections=hybrid_connections,
    )
