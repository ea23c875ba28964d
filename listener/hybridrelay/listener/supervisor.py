"""Agent: serves every mapping of an :class:`AgentConfig` and applies config reloads.

Each mapping runs ``connections`` :class:`Listener` instances, each keeping one
control channel, spread round robin over the configured relay URLs (connection
``i`` goes to ``relays[i % len(relays)]`` first, and moves on to the next URL when
that node is unreachable or closes the channel with 1001 (a draining node). HA across
relay nodes therefore needs ``relays = [...]`` or a load balancer in front of the nodes;
one URL whose name resolves to several addresses is dialled like any other.

Listener ids (``sb-hc-id``) are ``{agent_id}-{hc}-{i}``: stable across restarts of
the agent, so a restarted agent replaces its own stale control channels on the
relay at once (relay ``listener_takeover``) instead of waiting out the relay's ping
timeout. Two agents serving the same hybrid connection need different agent ids.

A mapping whose hybrid connection does not exist (404) is ``failed``; the other
mappings keep running, and the next reload retries it. A reload matches mappings
by ``(hc, target)``: removed ones drain and stop, added ones start, a changed key
is handed to the running listeners (no reconnect, no dropped stream), any other
change restarts that mapping's listeners only. An invalid file changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Final, Literal

from hybridrelay.backoff import ReconnectBackoff
from hybridrelay.errors import ConfigError, EntityNotFoundError
from hybridrelay.listener.agent import Listener, ListenerStats
from hybridrelay.listener.config import AgentConfig, HookSpec, MappingConfig
from hybridrelay.listener.hooks import AcceptHook, HeaderAllowList, load_hook
from hybridrelay.listener.http_target import HttpTarget
from hybridrelay.listener.targets import StreamTarget, parse_target
from hybridrelay.logs import LISTENER

__all__ = ["Agent", "AgentBackoff", "AgentStatus", "MappingState", "MappingStatus"]

log = logging.getLogger(LISTENER)

MappingState = Literal["connecting", "online", "failed", "stopped"]
MappingKey = tuple[str, str]

# Beyond its own bounds (drain_timeout, connect_timeout, the WebSocket close timeout)
# a stopping listener gets this long before it is cancelled.
_STOP_GRACE: Final = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingStatus:
    hc: str
    target: str
    state: MappingState
    connections: int  # control channels configured
    connections_online: int
    attempts: int  # control channel connection attempts, ever
    connects: int  # of which succeeded
    reconnects: int  # attempts after each channel's first
    active_streams: int
    accepted: int
    rejected: int
    requests: int
    bytes_up: int
    bytes_down: int
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatus:
    agent_id: str
    ready: bool
    reloads: int
    reload_failures: int
    mappings: tuple[MappingStatus, ...]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


# -- one listener's session boundaries -------------------------------------------------------


@dataclass
class AgentBackoff(ReconnectBackoff):
    """The agent's view of one Listener's sessions, on the listeners' one reconnect policy.

    Delays are core :class:`ReconnectBackoff` (full jitter, cap 30 s, bounded by a share
    of the outage: at most 1.5 s after a short relay restart), the same as a listener
    started from flags or code. The Listener calls ``succeeded`` when a control channel
    opens, ``failed`` when it closes, and ``next_delay``/``at_cap`` once per failed
    attempt and once after each session; the supervisor reads online, connecting and
    quiet from that.
    """

    notify: Callable[[], None] = lambda: None
    up: bool = False
    ended: int = 0  # attempts that have finished, one way or the other
    _after_session: bool = False

    def next_delay(self) -> float:
        if self._after_session:
            self._after_session = False
        else:
            self.ended += 1
        self.notify()
        return super().next_delay()

    def at_cap(self) -> float:
        self.ended += 1
        self.notify()
        return super().at_cap()

    def succeeded(self, now: float) -> None:
        super().succeeded(now)
        self.ended += 1
        self.up = True
        self._after_session = True
        self.notify()

    def failed(self, now: float) -> None:
        super().failed(now)
        self.up = False
        self.notify()


@dataclass
class _Channel:
    listener: Listener
    watch: AgentBackoff
    task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    @property
    def tried(self) -> bool:
        return self.watch.ended > 0 or self.done

    @property
    def quiet(self) -> bool:
        """No control channel open and none being opened (after stop: draining only)."""
        return self.done or (not self.watch.up and self.listener.stats.attempts <= self.watch.ended)


_COUNTERS: Final = ("attempts", "connects", "accepted", "rejected", "requests")
_BYTES: Final = ("bytes_up", "bytes_down")


@dataclass
class _Totals:
    """Counters of listeners that are gone, so a mapping's counters never go backwards."""

    attempts: int = 0
    connects: int = 0
    reconnects: int = 0
    accepted: int = 0
    rejected: int = 0
    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def add(self, stats: ListenerStats) -> None:
        for name in (*_COUNTERS, *_BYTES):
            setattr(self, name, getattr(self, name) + getattr(stats, name))
        self.reconnects += max(stats.attempts - 1, 0)


# -- one mapping ---------------------------------------------------------------------------


class _MappingRun:
    """One generation of a mapping's listeners (a restart makes a new one)."""

    def __init__(
        self,
        mapping: MappingConfig,
        config: AgentConfig,
        hooks: tuple[AcceptHook, ...],
        notify: Callable[[], None],
    ) -> None:
        self.mapping = mapping
        self.stop = asyncio.Event()
        self.error: str | None = None
        self._notify = notify
        self._tokens = mapping.token_provider()
        contexts: dict[str, ssl.SSLContext] = {}
        self.channels: list[_Channel] = []
        for i in range(mapping.connections):
            first = i % len(config.relays)
            relay = config.relays[first]
            # When its node fails or drains, a channel moves on to the next node in turn.
            others = [*config.relays[first + 1 :], *config.relays[:first]]
            context = None
            if config.ca_file and relay.startswith("wss://"):
                context = contexts.setdefault(
                    relay, ssl.create_default_context(cafile=config.ca_file)
                )
            watch = AgentBackoff(notify=notify)
            target, http_handler = _targets(mapping)
            listener = Listener(
                relay,
                mapping.hc,
                token_provider=self._tokens,
                hooks=hooks,
                listener_id=f"{config.agent_id}-{mapping.hc}-{i}",
                ssl_context=context,
                fallback_relays=others,
                rendezvous_hosts=config.rendezvous_hosts,
                max_message_size=config.max_message_size,
                max_bad_control_messages=config.max_bad_control_messages,
                ping_interval=config.ping_interval,
                max_streams=mapping.max_streams,
                connect_timeout=mapping.connect_timeout,
                drain_timeout=config.drain_timeout,
                backoff=watch,
                request_timeout=mapping.request_timeout,
                udp_idle_timeout=mapping.udp_idle_timeout,
                target=target,
                http_handler=http_handler,
            )
            self.channels.append(_Channel(listener, watch))

    def start(self, tg: asyncio.TaskGroup) -> None:
        for channel in self.channels:
            channel.task = tg.create_task(
                self._serve(channel.listener),
                name=f"listener {channel.listener.listener_id}",
            )

    async def _serve(self, listener: Listener) -> None:
        """The top of one listener's task: nothing it raises may end the agent."""
        try:
            await listener.run(self.stop)
        except EntityNotFoundError as exc:
            # Retrying cannot fix a missing hybrid connection; the siblings would hear
            # the same 404, so the whole mapping stops until the next reload.
            self.error = str(exc)
            self.stop.set()
            # An expected outcome with a clear message, not a traceback-worthy error.
            log.error("mapping_failed", extra={"hc": self.mapping.hc, "error": str(exc)})  # noqa: TRY400
        except Exception as exc:  # top of a task: our bug, logged; the mapping fails
            self.error = f"listener crashed: {exc!r}"
            self.stop.set()
            log.exception("listener_crashed", extra={"hc": self.mapping.hc})
        finally:
            self._notify()

    def rekey(self, mapping: MappingConfig) -> None:
        self.mapping = mapping
        self._tokens = mapping.token_provider()
        for channel in self.channels:
            channel.listener.set_token_provider(self._tokens)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return [c.task for c in self.channels if c.task is not None]

    @property
    def finished(self) -> bool:
        return all(c.done for c in self.channels)

    @property
    def settled(self) -> bool:
        """Every channel has tried once (connected, failed, or given up)."""
        return self.error is not None or all(c.tried for c in self.channels)

    @property
    def quiet(self) -> bool:
        return all(c.quiet for c in self.channels)

    @property
    def online(self) -> int:
        return sum(1 for c in self.channels if c.watch.up and not c.done)


def _targets(mapping: MappingConfig) -> tuple[StreamTarget | None, HttpTarget | None]:
    """A fresh target per listener: each listener closes its own HTTP client."""
    parsed = parse_target(mapping.target)  # validated when the config was loaded
    if isinstance(parsed, HttpTarget):
        http = HttpTarget(
            mapping.target,
            timeout=mapping.request_timeout,
            connect_timeout=mapping.connect_timeout,
            limit=mapping.max_target_connections,
        )
        return None, http
    return parsed, None


@dataclass
class _Slot:
    """Everything that ran under one ``(hc, target)``: the current generation, the ones
    still draining, and the counters of finished ones."""

    current: _MappingRun | None
    index: int  # position in the config file, for the status listing
    draining: list[_MappingRun] = field(default_factory=list)
    retired: _Totals = field(default_factory=_Totals)

    def runs(self) -> Iterable[_MappingRun]:
        if self.current is not None:
            yield self.current
        yield from self.draining

    def reap(self) -> None:
        for run in [r for r in self.draining if r.finished]:
            self.draining.remove(run)
            for channel in run.channels:
                self.retired.add(channel.listener.stats)


# -- hooks ---------------------------------------------------------------------------------


def resolve_hook(spec: HookSpec) -> AcceptHook:
    """Load one plugin hook with :func:`hybridrelay.listener.hooks.load_hook`.

    Raises:
        ValueError: the module or attribute does not exist, or the factory failed.
    """
    if spec.args:
        return load_hook({"path": spec.path, "args": spec.kwargs})
    return load_hook(spec.path)


def build_hooks(config: AgentConfig, index: int) -> tuple[AcceptHook, ...]:
    """The accept hooks of ``config.mappings[index]``: header allow-lists, then plugins.

    Raises:
        ConfigError: a plugin could not be loaded.
    """
    mapping = config.mappings[index]
    hooks: list[AcceptHook] = [
        HeaderAllowList(name, set(values)) for name, values in mapping.allow_headers
    ]
    for j, spec in enumerate(mapping.hooks):
        try:
            hooks.append(resolve_hook(spec))
        except Exception as exc:  # a plugin failing to load (any error) is a config error
            reason = str(exc) if isinstance(exc, ValueError) else f"{spec.path}: {exc!r}"
            raise ConfigError(config.source, f"mappings[{index}].hooks[{j}]", reason) from exc
    return tuple(hooks)


# -- the agent -----------------------------------------------------------------------------


class Agent:
    """Runs the mappings of an agent config; ``reload`` re-reads it with ``loader``.

    Args:
        config: The loaded config.
        loader: Loads the config again on reload (raises ConfigError); without it a
            reload request is logged and ignored.
    """

    def __init__(
        self, config: AgentConfig, *, loader: Callable[[], AgentConfig] | None = None
    ) -> None:
        self.config = config
        self._loader = loader
        self._slots: dict[MappingKey, _Slot] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._changed = asyncio.Event()
        self.ready = asyncio.Event()  # every mapping has tried once
        self.reloads = 0
        self.reload_failures = 0
        # Plugins are loaded before anything runs, so a bad path fails the start.
        self._hooks = {m.ident: build_hooks(config, i) for i, m in enumerate(config.mappings)}

    # -- lifecycle -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event, reload: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set, then drain every mapping (bounded) and return.

        Args:
            stop: Set to stop; open streams get ``drain_timeout`` seconds.
            reload: Set to re-read the config (the CLI sets it on SIGHUP); cleared here.
        """
        reload = reload or asyncio.Event()
        log.info(
            "agent_started",
            extra={"agent_id": self.config.agent_id, "mappings": len(self.config.mappings)},
        )
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for i, mapping in enumerate(self.config.mappings):
                self._start(mapping, i, self._hooks.pop(mapping.ident))
            watcher = tg.create_task(self._watch_ready(), name="agent ready")
            try:
                while not stop.is_set():
                    if await _first(stop, reload) is reload:
                        reload.clear()
                        await self._reload()
            finally:
                watcher.cancel()
                await self._stop_all()
        log.info("agent_stopped", extra={"agent_id": self.config.agent_id})

    async def _stop_all(self) -> None:
        runs = [run for slot in self._slots.values() for run in slot.runs()]
        for run in runs:
            run.stop.set()
        tasks = [task for run in runs for task in run.tasks]
        if not tasks:
            return
        bound = (
            self.config.drain_timeout
            + _STOP_GRACE
            + max((run.mapping.connect_timeout for run in runs), default=0.0)
        )
        _, pending = await asyncio.wait(tasks, timeout=bound)
        for task in pending:
            log.warning("listener_stop_overdue", extra={"task": task.get_name()})
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def _notify(self) -> None:
        # Waiters hold the Event they saw; a new one per change loses no wake-up.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait_until(self, predicate: Callable[[], bool], bound: float | None) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                while True:
                    changed = self._changed
                    if predicate():
                        return True
                    await changed.wait()
        return predicate()

    async def _watch_ready(self) -> None:
        await self._wait_until(
            lambda: all(
                slot.current is None or slot.current.settled for slot in self._slots.values()
            ),
            bound=None,
        )
        self.ready.set()
        summary = self.status()
        log.info(
            "agent_ready",
            extra={
                "mappings": len(summary.mappings),
                "online": sum(1 for m in summary.mappings if m.state == "online"),
                "failed": sum(1 for m in summary.mappings if m.state == "failed"),
            },
        )

    def _start(self, mapping: MappingConfig, index: int, hooks: tuple[AcceptHook, ...]) -> None:
        if self._tg is None:
            raise RuntimeError("the agent is not running")
        run = _MappingRun(mapping, self.config, hooks, self._notify)
        slot = self._slots.get(mapping.ident)
        if slot is None:
            self._slots[mapping.ident] = slot = _Slot(run, index)
        else:
            slot.current, slot.index = run, index
        run.start(self._tg)
        log.info(
            "mapping_started",
            extra={
                "hc": mapping.hc,
                "target": mapping.target,
                "connections": mapping.connections,
            },
        )

    # -- reload --------------------------------------------------------------------

    async def _reload(self) -> None:
        if self._loader is None:
            log.warning("config_reload_unsupported")
            return
        try:
            new = self._loader()
            wanted = {m.ident: (i, m) for i, m in enumerate(new.mappings)}
            restart_all = new.listener_settings() != self.config.listener_settings()
            plan: dict[MappingKey, tuple[AcceptHook, ...]] = {}
            for ident, (i, mapping) in wanted.items():
                slot = self._slots.get(ident)
                run = slot.current if slot else None
                if (
                    run is None
                    or restart_all
                    or run.error is not None
                    or not run.mapping.same_but_key(mapping)
                ):
                    plan[ident] = build_hooks(new, i)
        except ConfigError as exc:
            self.reload_failures += 1
            log.error("config_reload_failed", extra={"error": str(exc)})  # noqa: TRY400 - one line
            return
        except Exception:  # a bug in the loader must not take the running mappings down
            self.reload_failures += 1
            log.exception("config_reload_crashed")
            return
        if new.status != self.config.status:
            log.warning("status_address_change_needs_restart")
        old_config, self.config = self.config, new
        self.reloads += 1

        removed = [
            slot.current
            for ident, slot in self._slots.items()
            if ident not in wanted and slot.current is not None
        ]
        restarted: list[tuple[int, MappingConfig, _MappingRun | None]] = []
        rekeyed = 0
        for ident, (i, mapping) in wanted.items():
            slot = self._slots.get(ident)
            run = slot.current if slot else None
            if slot is not None:
                slot.index = i
            if ident in plan:
                restarted.append((i, mapping, run))
            elif run is not None and run.mapping != mapping:
                run.rekey(mapping)
                rekeyed += 1
        stopping = [run for run in (*removed, *(r for _, _, r in restarted)) if run is not None]
        for run in stopping:
            run.stop.set()
            slot = self._slots[run.mapping.ident]
            slot.current = None
            slot.draining.append(run)
        # A restarted mapping reuses its listener ids: let the old generation close its
        # control channels first, or the relay's takeover would hand channels back and forth.
        old = [run for _, _, run in restarted if run is not None]
        if old:
            bound = max(r.mapping.connect_timeout for r in old) + _STOP_GRACE
            if not await self._wait_until(lambda: all(r.quiet for r in old), bound):
                log.warning("old_control_channels_still_open")
        for i, mapping, _ in restarted:
            self._start(mapping, i, plan[mapping.ident])
        for ident in [k for k, s in self._slots.items() if k not in wanted]:
            self._slots[ident].reap()
        log.info(
            "config_reloaded",
            extra={
                "source": new.source,
                "added": sum(1 for _, _, r in restarted if r is None),
                "restarted": sum(1 for _, _, r in restarted if r is not None),
                "removed": len(removed),
                "rekeyed": rekeyed,
                "restart_all": old_config.listener_settings() != new.listener_settings(),
            },
        )

    # -- status --------------------------------------------------------------------

    def status(self) -> AgentStatus:
        """A snapshot of every mapping, in config order; removed ones while they drain."""
        for ident in [k for k, s in self._slots.items() if s.current is None]:
            slot = self._slots[ident]
            slot.reap()
            if not slot.draining:
                del self._slots[ident]
        for slot in self._slots.values():
            slot.reap()
        ordered = sorted(self._slots.items(), key=lambda item: item[1].index)
        return AgentStatus(
            agent_id=self.config.agent_id,
            ready=self.ready.is_set(),
            reloads=self.reloads,
            reload_failures=self.reload_failures,
            mappings=tuple(_mapping_status(ident, slot) for ident, slot in ordered),
        )


def _mapping_status(ident: MappingKey, slot: _Slot) -> MappingStatus:
    totals = _Totals(**asdict(slot.retired))
    active = 0
    for run in slot.runs():
        for channel in run.channels:
            totals.add(channel.listener.stats)
            active += channel.listener.stats.active
    current = slot.current
    state: MappingState
    if current is None:
        state = "stopped"
    elif current.error is not None:
        state = "failed"
    elif current.online:
        state = "online"
    else:
        state = "connecting"
    return MappingStatus(
        hc=ident[0],
        target=ident[1],
        state=state,
        connections=current.mapping.connections if current is not None else 0,
        connections_online=current.online if current is not None else 0,
        attempts=totals.attempts,
        connects=totals.connects,
        reconnects=totals.reconnects,
        active_streams=active,
        accepted=totals.accepted,
        rejected=totals.rejected,
        requests=totals.requests,
        bytes_up=totals.bytes_up,
        bytes_down=totals.bytes_down,
        error=current.error if current is not None else None,
    )


async def _first(*events: asyncio.Event) -> asyncio.Event:
    """Wait until one of ``events`` is set; return it."""
    for event in events:
        if event.is_set():
            return event
    waiters = {asyncio.ensure_future(event.wait()): event for event in events}
    try:
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.wait(waiters)
    return waiters[next(iter(done))]
