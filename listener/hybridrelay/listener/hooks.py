"""Accept hooks: inspect each incoming connection, then accept, reject, or wrap its stream.

The plugin interface
--------------------
A hook is any callable ``hook(request: AcceptRequest) -> Reject | Accept | None``,
plain or ``async``. It sees the hybrid connection, the sender's ``connectHeaders``
(names lower-cased), its remote endpoint as the relay saw it, the tracking id and
the offered subprotocols. The listener runs its hooks in order for every accept
(HC §3.1), before it dials the target:

- :class:`Reject` stops there: the listener dials the rejection address, and the
  sender's handshake fails with that status and description (HC §2.5).
- ``None`` or :class:`Accept` means no objection; the next hook runs. An
  ``Accept(wrap=...)`` also registers a :data:`StreamWrapper` for this connection.
  Every hook runs, so a wrapping hook placed first cannot bypass an allow-list.
- A hook that raises, or returns anything else, rejects the connection with 500
  (and the error is logged): a broken policy must not let connections through.

A :data:`StreamWrapper` is a callable ``wrap(stream) -> stream`` around the relayed
stream: it takes an object with the :class:`~hybridrelay.bridge.BridgeStream`
surface (``read``, ``write``, ``close_write``, ``close``, ``abort``,
``close_code``, ``close_reason``, ``auto_close_echo``; see that class for the
contract) and returns one. Wrappers of several hooks nest in hook order (the first
hook's wrapper sits next to the WebSocket). Wrapping applies to connections bridged
to a target (``tcp://``, ``unix://``, ``udp://``); a listener with a Python
``handler=`` rejects wrapped connections with 500. The sender must apply the
inverse transform: a wrapper changes the bytes on the wire.

Loading from a config file: :func:`load_hook` takes ``"package.module:name"`` or
``{"path": "package.module:factory", "args": {...}}``.

Shipped hooks: :class:`HeaderAllowList` (allowed values per header, "claims"),
:class:`RateLimit` (token bucket per remote address, 429) and
:class:`ZlibCompression` (wraps the stream with :func:`zlib_wrap`).
"""

from __future__ import annotations

import importlib
import time
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from hybridrelay.bridge import BridgeStream
from hybridrelay.errors import ConnectionClosedError
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.messages import RemoteEndpoint

__all__ = [
    "Accept",
    "AcceptHook",
    "AcceptRequest",
    "HeaderAllowList",
    "RateLimit",
    "Reject",
    "StreamWrapper",
    "Verdict",
    "ZlibCompression",
    "ZlibStream",
    "load_hook",
    "zlib_wrap",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptRequest:
    hc: str
    id: str
    headers: Mapping[str, str]  # lower-cased names
    remote: RemoteEndpoint | None
    subprotocols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the connection; the sender's handshake fails with ``status`` (HC §2.5)."""

    status: int = 400
    description: str = "Rejected by user code"


StreamWrapper: TypeAlias = Callable[[BridgeStream], BridgeStream]


@dataclass(frozen=True, slots=True)
class Accept:
    """No objection; optionally wrap the relayed stream (see the module docstring)."""

    wrap: StreamWrapper | None = None


Verdict: TypeAlias = Reject | Accept | None
AcceptHook: TypeAlias = Callable[[AcceptRequest], Verdict | Awaitable[Verdict]]


def load_hook(spec: str | Mapping[str, object]) -> AcceptHook:
    """Load a hook named in a config file.

    Args:
        spec: ``"package.module:name"`` names the hook itself, or a class that is
            instantiated without arguments. ``{"path": "package.module:factory",
            "args": {...}}`` calls the factory (a class or function) with ``**args``
            and uses what it returns; without ``args`` it is the same as the string.

    Returns:
        The hook (a callable taking an :class:`AcceptRequest`).

    Raises:
        ValueError: The spec is malformed, cannot be imported, the factory rejected the
            arguments, or the result is not callable; the message says which.
    """
    args: Mapping[str, object] | None = None
    if isinstance(spec, str):
        path = spec
    elif isinstance(spec, Mapping):
        unknown = set(spec) - {"path", "args"}
        if unknown:
            raise ValueError(f"unknown hook key(s) {', '.join(sorted(unknown))} (use path, args)")
        raw_path = spec.get("path")
        if not isinstance(raw_path, str):
            # ValueError throughout: callers turn exactly that into a ConfigError.
            raise ValueError('a hook table needs path = "package.module:name"')  # noqa: TRY004
        path = raw_path
        raw_args = spec.get("args")
        if raw_args is not None:
            if not isinstance(raw_args, Mapping) or not all(isinstance(k, str) for k in raw_args):
                raise ValueError(f"hook {path}: args must be a table")
            args = raw_args
    else:
        raise ValueError(f"a hook is a string or a table, not {type(spec).__name__}")  # noqa: TRY004
    factory = _import(path)
    target: object = factory
    if args is not None or isinstance(factory, type):
        try:
            target = factory(**(args or {}))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"hook {path}: {exc}") from exc
    if not callable(target):
        raise ValueError(f"hook {path}: the factory returned a {type(target).__name__}")  # noqa: TRY004
    # Checked as far as Python can at load time: a callable; its verdicts are checked per call.
    hook: AcceptHook = target
    return hook


def _import(path: str) -> Callable[..., object]:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"hook path {path!r} must look like package.module:name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"hook {path}: cannot import {module_name}: {exc}") from exc
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ValueError(f"hook {path}: {module_name} has no {attr}") from exc
    if not callable(target):
        raise ValueError(f"hook {path} is not callable")  # noqa: TRY004
    return target


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- allow-list ----------------------------------------------------------------------------


class HeaderAllowList:
    """Accept only senders whose ``connectHeaders`` carry allowed values (else 403).

    Each *claim* is a header name (case-insensitive) with its allowed values (exact
    match). Every claim must hold: a sender missing one of the headers, or sending
    another value, is rejected.

    Args:
        name, values: One claim (the original form): ``HeaderAllowList("X-Device", {"a"})``.
        claims: Any number of claims: ``{"X-Device": ["a", "b"], "X-Tenant": ["t1"]}``.

    Raises:
        ValueError: No claim, a claim without values, or values given as one string.
    """

    def __init__(
        self,
        name: str | None = None,
        values: Iterable[str] = (),
        *,
        claims: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        merged: dict[str, frozenset[str]] = {}
        pairs = list((claims or {}).items())
        if name is not None:
            pairs.append((name, values))
        for header, allowed in pairs:
            # Arguments may come from a config file: check the types at run time too.
            if not _is_str(header) or not header:
                raise TypeError("claim names must be non-empty strings")
            if _is_str(allowed):
                raise TypeError(f"claim {header}: give a list of values, not one string")
            allowed_set = frozenset(allowed)
            if not all(_is_str(v) for v in allowed_set):
                raise TypeError(f"claim {header}: values must be strings")
            if not allowed_set:
                raise ValueError(f"claim {header}: needs at least one value")
            key = header.lower()
            merged[key] = merged.get(key, allowed_set) & allowed_set
        if not merged:
            raise ValueError("HeaderAllowList needs at least one claim")
        self.claims: Mapping[str, frozenset[str]] = merged

    def __call__(self, request: AcceptRequest) -> Reject | None:
        for header, allowed in self.claims.items():
            if request.headers.get(header) not in allowed:
                return Reject(403, f"header {header} not allowed")
        return None


# -- rate limit ----------------------------------------------------------------------------


class RateLimit:
    """Token bucket per remote address: at most ``burst`` connects at once, ``per_address``/s.

    Each sender address (``AcceptRequest.remote.address``; connections whose address
    the relay did not report share one bucket) starts with ``burst`` tokens; a
    connect takes one and tokens refill at ``per_address`` per second. Without a
    token the connect is rejected with 429.

    Memory is bounded: a bucket not used for ``burst / per_address`` seconds is full
    again, so it is forgotten; beyond ``max_addresses`` buckets the least recently
    used one is forgotten too (under a flood of distinct addresses that address
    starts over with a full bucket: the table cannot grow without limit).

    Args:
        per_address: Refill rate, connects per second per address (> 0).
        burst: Bucket size (>= 1).
        max_addresses: Most buckets kept.
        clock: Seconds, monotonic (injectable for tests).
    """

    def __init__(
        self,
        per_address: float,
        burst: int,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not _is_number(per_address) or not per_address > 0:
            raise ValueError("per_address must be a positive rate (connects per second)")
        if not _is_int(burst) or burst < 1:
            raise ValueError("burst must be an integer >= 1")
        if max_addresses < 1:
            raise ValueError("max_addresses must be >= 1")
        self.rate = float(per_address)
        self.burst = burst
        self.max_addresses = max_addresses
        self._clock = clock
        self._refill_time = burst / self.rate  # an unused bucket is full after this
        # address -> (tokens, time of last update); least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def __call__(self, request: AcceptRequest) -> Reject | None:
        now = self._clock()
        address = request.remote.address if request.remote is not None else ""
        self._evict(now)
        entry = self._buckets.pop(address, None)
        if entry is None:
            tokens = float(self.burst)
        else:
            tokens, stamp = entry
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[address] = (tokens, now)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        if allowed:
            return None
        self.rejected += 1
        return Reject(429, "rate limit exceeded")

    def _evict(self, now: float) -> None:
        # Least recently used first: stop at the first bucket that may not be full yet.
        buckets = self._buckets
        while buckets:
            _, stamp = next(iter(buckets.values()))
            if now - stamp < self._refill_time:
                break
            buckets.popitem(last=False)


# -- compression wrapper -------------------------------------------------------------------

_INFLATE_CHUNK: Final = 64 * 1024


class ZlibStream:
    """A :class:`~hybridrelay.bridge.BridgeStream` that deflates what it writes and
    inflates what it reads.

    Wire format: one raw deflate stream per direction (RFC 1951, no zlib header),
    flushed with ``Z_SYNC_FLUSH`` at the end of every written message, so each message
    can be inflated completely as soon as it arrives (the sender of the other end
    must do the same: ``zlib.compressobj(wbits=-15)`` and ``flush(zlib.Z_SYNC_FLUSH)``).
    Inflation is bounded: at most 64 KiB of output per :meth:`read`, the rest waits,
    so a small "zip bomb" message cannot make us allocate without limit. Invalid
    deflate data closes the stream with 1007.
    """

    def __init__(self, inner: BridgeStream, level: int = 6) -> None:
        self._inner = inner
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        self._tail = b""
        self._more = False

    @property
    def auto_close_echo(self) -> bool:
        return self._inner.auto_close_echo

    @property
    def close_code(self) -> int | None:
        return self._inner.close_code

    @property
    def close_reason(self) -> str:
        return self._inner.close_reason

    async def read(self) -> bytes:
        while True:
            if self._tail or self._more:
                data = self._tail
            else:
                data = await self._inner.read()
                if not data:
                    return b""
            try:
                out = self._inflate.decompress(data, _INFLATE_CHUNK)
            except zlib.error as exc:
                await self._inner.close(CloseCode.INVALID_DATA, "invalid deflate data")
                raise ConnectionClosedError(
                    CloseCode.INVALID_DATA, f"invalid deflate data: {exc}"
                ) from exc
            self._tail = self._inflate.unconsumed_tail
            # A full chunk may leave output inside zlib even with no input left.
            self._more = len(out) == _INFLATE_CHUNK
            if out:
                return out

    async def write(self, data: bytes) -> None:
        if data:
            out = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
            await self._inner.write(out)

    async def close_write(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        await self._inner.close_write(code, reason)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        await self._inner.close(code, reason)

    def abort(self) -> None:
        self._inner.abort()


def zlib_wrap(stream: BridgeStream) -> BridgeStream:
    """The sample :data:`StreamWrapper`: deflate per message, see :class:`ZlibStream`."""
    return ZlibStream(stream)


class ZlibCompression:
    """Hook that compresses every accepted stream with :class:`ZlibStream`.

    Config: ``hooks = ["hybridrelay.listener.hooks:ZlibCompression"]`` or
    ``{path = "hybridrelay.listener.hooks:ZlibCompression", args = {level = 9}}``.
    """

    def __init__(self, level: int = 6) -> None:
        if not _is_int(level) or not -1 <= level <= 9:
            raise ValueError("level must be an integer from -1 to 9")
        self.level = level

    def __call__(self, request: AcceptRequest) -> Accept:
        return Accept(wrap=self._wrap)

    def _wrap(self, stream: BridgeStream) -> BridgeStream:
        return ZlibStream(stream, self.level)
