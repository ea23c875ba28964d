"""In-process store seeded from the config; auto-created entities persist as JSON in data_dir."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hybridrelay.logs import RELAY
from hybridrelay.relay.config import RelayConfig, RuleConfig
from hybridrelay.relay.private_files import open_private, private_dir
from hybridrelay.relay.store.base import HybridConnection, Rule

__all__ = ["MemoryStore"]

log = logging.getLogger(RELAY)
_STATE_FILE = "hybrid_connections.json"


def _rule(rc: RuleConfig) -> Rule:
    return Rule(
        name=rc.name,
        primary_key=rc.key.value,
        secondary_key=rc.secondary_key.value if rc.secondary_key else None,
        rights=rc.rights,
    )


class MemoryStore:
    """Dict-backed :class:`~hybridrelay.relay.store.base.Store`."""

    def __init__(self, config: RelayConfig, *, persist_dir: Path | None = None) -> None:
        self._namespace_rules = tuple(_rule(r) for r in config.rules)
        self._by_name: dict[str, HybridConnection] = {}
        self._persist = persist_dir / _STATE_FILE if persist_dir is not None else None
        self._max_listeners = config.relay.max_listeners_per_hc
        for hc in config.hybrid_connections:
            self._by_name[hc.name.lower()] = HybridConnection(
                name=hc.name,
                requires_client_authorization=hc.requires_client_authorization,
                http=hc.http,
                max_listeners=hc.max_listeners,
                request_timeout=hc.request_timeout,
                rules=tuple(_rule(r) for r in hc.rules),
                config_owned=True,
            )
        self._load()

    def _load(self) -> None:
        if self._persist is None or not self._persist.exists():
            return
        try:
            names = json.loads(self._persist.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            log.warning(
                "state_file_unreadable", extra={"path": str(self._persist), "error": str(exc)}
            )
            return
        if not isinstance(names, list):
            return
        for name in names:
            if isinstance(name, str) and name.lower() not in self._by_name:
                self._by_name[name.lower()] = HybridConnection(
                    name=name, max_listeners=self._max_listeners
                )

    def _save(self) -> None:
        if self._persist is None:
            return
        names = sorted(hc.name for hc in self._by_name.values() if not hc.config_owned)
        private_dir(self._persist.parent)
        tmp = self._persist.with_suffix(".tmp")
        with open_private(tmp, "wb") as f:
            f.write(json.dumps(names).encode("utf-8"))
        tmp.replace(self._persist)

    async def resolve(self, path: str) -> tuple[HybridConnection, str] | None:
        # Longest match first: "a/b/c" tries "a/b/c", "a/b", "a" (HC §2.1).
        lowered = path.lower()
        end = len(lowered)
        while end > 0:
            hc = self._by_name.get(lowered[:end])
            if hc is not None:
                return hc, path[end:]
            end = lowered.rfind("/", 0, end)
        return None

    async def get(self, name: str) -> HybridConnection | None:
        return self._by_name.get(name.lower())

    async def create(self, hc: HybridConnection) -> HybridConnection:
        existing = self._by_name.get(hc.name.lower())
        if existing is not None:
            return existing
        self._by_name[hc.name.lower()] = hc
        try:
            self._save()
        except OSError as exc:
            log.warning("state_file_unwritable", extra={"error": str(exc)})
        log.info("hybrid_connection_created", extra={"hc": hc.name})
        return hc

    async def namespace_rules(self) -> tuple[Rule, ...]:
        return self._namespace_rules

    async def close(self) -> None:
        return None
