"""Accept hooks as plain callables: allow-list claims, rate limit buckets, loading, zlib stream."""

from __future__ import annotations

import zlib

import pytest

from hybridrelay.errors import ConnectionClosedError
from hybridrelay.listener.hooks import (
    Accept,
    AcceptRequest,
    HeaderAllowList,
    RateLimit,
    Reject,
    ZlibCompression,
    ZlibStream,
    load_hook,
    zlib_wrap,
)
from hybridrelay.protocol.messages import RemoteEndpoint


def request(address: str | None = "10.0.0.1", **headers: str) -> AcceptRequest:
    return AcceptRequest(
        hc="hc",
        id="id",
        headers={k.replace("_", "-").lower(): v for k, v in headers.items()},
        remote=RemoteEndpoint(address=address, port=1234) if address is not None else None,
        subprotocols=(),
    )


# -- HeaderAllowList -----------------------------------------------------------------------


def test_allow_list_original_form() -> None:
    hook = HeaderAllowList("X-Device", {"dev-1"})
    assert hook(request(x_device="dev-1")) is None
    assert hook(request(x_device="dev-2")) == Reject(403, "header x-device not allowed")
    assert hook(request()) == Reject(403, "header x-device not allowed")


def test_allow_list_claims_all_must_hold() -> None:
    hook = HeaderAllowList(claims={"X-Device": ["a", "b"], "x-TENANT": ["t1"]})
    assert hook(request(x_device="b", x_tenant="t1")) is None
    assert hook(request(x_device="b")) == Reject(403, "header x-tenant not allowed")
    assert hook(request(x_device="B", x_tenant="t1")) is not None  # values are exact


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, ValueError),
        ({"claims": {"X-Device": "dev-1"}}, TypeError),  # one string, not a list
        ({"claims": {"X-Device": []}}, ValueError),
        ({"claims": {"X-Device": [1]}}, TypeError),
        ({"claims": {"": ["a"]}}, TypeError),
    ],
)
def test_allow_list_refuses_bad_claims(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        HeaderAllowList(**kwargs)  # type: ignore[arg-type] # wrong types on purpose


# -- RateLimit -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_burst_then_refill_per_address() -> None:
    clock = Clock()
    limit = RateLimit(per_address=2.0, burst=3, clock=clock)
    assert [limit(request()) for _ in range(3)] == [None, None, None]
    assert limit(request()) == Reject(429, "rate limit exceeded")
    assert limit(request("10.0.0.2")) is None  # other addresses have their own bucket
    clock.now += 0.25  # half a token
    assert limit(request()) is not None
    clock.now += 0.25
    assert limit(request()) is None
    assert limit(request()) is not None
    assert limit.rejected == 3


def test_rate_limit_unknown_addresses_share_a_bucket() -> None:
    limit = RateLimit(per_address=1.0, burst=1, clock=Clock())
    assert limit(request(None)) is None
    assert limit(request(None)) is not None


def test_rate_limit_forgets_full_buckets_and_caps_the_table() -> None:
    clock = Clock()
    limit = RateLimit(per_address=1.0, burst=2, max_addresses=100, clock=clock)
    for i in range(1000):
        limit(request(f"10.1.{i // 256}.{i % 256}"))
    assert len(limit) == 100  # capped: the least recently used went first
    clock.now += 2.0  # every bucket is full again: nothing worth keeping
    limit(request("10.9.9.9"))
    assert len(limit) == 1


def test_rate_limit_keeps_a_limited_address_while_it_is_limited() -> None:
    clock = Clock()
    limit = RateLimit(per_address=1.0, burst=2, max_addresses=10, clock=clock)
    limit(request("1.1.1.1"))
    limit(request("1.1.1.1"))
    clock.now += 1.0
    limit(request("2.2.2.2"))  # evicts only buckets idle for burst/rate = 2 s
    assert limit(request("1.1.1.1")) is None  # one token refilled, not a fresh bucket of 2
    assert limit(request("1.1.1.1")) is not None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_address": 0, "burst": 1},
        {"per_address": True, "burst": 1},
        {"per_address": 1, "burst": 0},
        {"per_address": 1, "burst": 1.5},
        {"per_address": 1, "burst": 1, "max_addresses": 0},
    ],
)
def test_rate_limit_refuses_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateLimit(**kwargs)  # type: ignore[arg-type] # wrong types on purpose


# -- load_hook -----------------------------------------------------------------------------


def sample_hook(request: AcceptRequest) -> None:
    return None


def test_load_hook_forms() -> None:
    assert load_hook("tests.unit.test_hooks:sample_hook") is sample_hook
    assert isinstance(load_hook("hybridrelay.listener.hooks:ZlibCompression"), ZlibCompression)
    limit = load_hook(
        {"path": "hybridrelay.listener.hooks:RateLimit", "args": {"per_address": 5, "burst": 10}}
    )
    assert isinstance(limit, RateLimit)
    assert (limit.rate, limit.burst) == (5.0, 10)
    assert load_hook({"path": "tests.unit.test_hooks:sample_hook"}) is sample_hook


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "must look like package.module:name"),
        ("hybridrelay.nope:x", "cannot import hybridrelay.nope"),
        ("hybridrelay.listener.hooks:Nope", "has no Nope"),
        ("hybridrelay.listener.hooks:__doc__", "is not callable"),
        ({"path": 3}, "needs path"),
        ({"path": "hybridrelay.listener.hooks:RateLimit", "bogus": 1}, "unknown hook key"),
        ({"path": "hybridrelay.listener.hooks:RateLimit", "args": {"burst": 2}}, "per_address"),
        ({"path": "hybridrelay.listener.hooks:RateLimit", "args": [1]}, "args must be a table"),
        ({"path": "hybridrelay.listener.hooks:HeaderAllowList", "args": {}}, "at least one"),
        ({"path": "hybridrelay.listener.hooks:zlib_wrap", "args": {"stream": 1}}, "returned"),
        (7, "string or a table"),
    ],
)
def test_load_hook_errors_are_value_errors(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_hook(spec)  # type: ignore[arg-type] # wrong types on purpose


def test_zlib_compression_hook_wraps() -> None:
    verdict = ZlibCompression(level=1)(request())
    assert isinstance(verdict, Accept)
    assert verdict.wrap is not None
    with pytest.raises(ValueError, match="level"):
        ZlibCompression(level=10)


# -- ZlibStream ----------------------------------------------------------------------------


class Pipe:
    """A BridgeStream over lists: ``chunks`` to read, ``written`` what was sent."""

    auto_close_echo = False
    close_code: int | None = None
    close_reason = ""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.written: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    async def read(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    async def close_write(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def abort(self) -> None:
        self.closed = (1006, "")


async def test_zlib_stream_each_message_inflates_on_arrival() -> None:
    wire = Pipe([])
    stream = zlib_wrap(wire)
    await stream.write(b"hello " * 100)
    await stream.write(b"")  # nothing to send
    await stream.write(b"world")
    assert len(wire.written) == 2
    inflate = zlib.decompressobj(-15)
    assert inflate.decompress(wire.written[0]) == b"hello " * 100
    assert inflate.decompress(wire.written[1]) == b"world"


async def test_zlib_stream_output_is_bounded_per_read() -> None:
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = deflate.compress(b"\0" * 1_000_000) + deflate.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 2000
    stream = ZlibStream(Pipe([bomb]))
    sizes = []
    while chunk := await stream.read():
        sizes.append(len(chunk))
    assert sum(sizes) == 1_000_000
    assert max(sizes) <= 64 * 1024


async def test_zlib_stream_invalid_data_closes_1007() -> None:
    wire = Pipe([b"\xff\xff\xff\xff"])
    stream = ZlibStream(wire)
    with pytest.raises(ConnectionClosedError) as info:
        await stream.read()
    assert info.value.code == 1007
    assert wire.closed == (1007, "invalid deflate data")
