"""Per-frame cost of the sans-I/O Connection against today's frame paths (issue 13).

    python -m bench.ws_frames                  # 128 B, 1 KiB, 64 KiB frames
    python -m bench.ws_frames --quick --out r.json

Not a test and not part of ``python -m bench``: a CPU micro-benchmark with no sockets, so
that the next step of issue 13 (driving splice.py, http_mode.py, control.py and
wsclient.py through protocol/connection.py) can show it does not get slower. Each path
gets the same bytes, cut into 64 KiB reads as a socket would deliver them, and the
figure is the best of ``--repeat`` runs in CPU nanoseconds per frame (and MB/s of payload).

Paths:

* ``splice_today``: ``relay/splice.py`` as it is: a ``Leg``'s ``data_received`` (its
  :class:`~hybridrelay.protocol.frames.FrameParser`, masked) writing each frame to the
  other leg's transport, here one that keeps the buffers in a list.
* ``splice_conn``: the same through :class:`~hybridrelay.protocol.connection.Connection`:
  a streaming server connection's events forwarded to another, then ``data_to_send``.
* ``splice_direct``: the same with :meth:`Connection.splice_to`: frames go from one
  connection's parser straight into the other's output, no event per frame.
* ``recv_today``: ``wsclient.WsConnection.data_received`` then ``await recv()`` for every
  message (unmasked frames, as a client receives them).
* ``recv_conn``: a client Connection in messages mode: ``receive_data`` to message events.
  The asyncio delivery to a ``recv()`` caller is not in this figure (that glue is next
  session's); ``recv_today`` includes its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridrelay import wsclient
from hybridrelay.protocol.connection import Connection, Frame, Role
from hybridrelay.protocol.frames import encode_frame
from hybridrelay.relay.splice import Splice, SpliceSettings

_READ = 64 * 1024
_LOOP = asyncio.new_event_loop()  # one for the run: not a loop's start per measurement
_MASK = b"\x11\x22\x33\x44"


def _reads(frame: bytes, count: int) -> list[bytes]:
    stream = frame * count
    return [stream[i : i + _READ] for i in range(0, len(stream), _READ)]


class _ListTransport(asyncio.Transport):
    """Keeps what is written, as a socket transport whose peer reads at once."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[Any] = []

    def write(self, data: Any) -> None:
        self.written.append(data)

    def writelines(self, list_of_data: Any) -> None:
        self.written.extend(list_of_data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


def splice_today(reads: list[bytes]) -> None:
    """relay/splice.py itself: a Leg's data_received, its frames written to the other leg."""

    async def run() -> None:
        splice = Splice(SpliceSettings(close_timeout=1.0))
        splice.sender.transport = _ListTransport()
        out = _ListTransport()
        splice.listener.transport = out
        feed = splice.sender.data_received
        for data in reads:
            feed(data)
            out.written.clear()

    _LOOP.run_until_complete(run())


def splice_conn(reads: list[bytes]) -> None:
    leg = Connection(Role.SERVER, streaming=True, validate_utf8=False)
    peer = Connection(Role.SERVER, streaming=True, validate_utf8=False)
    forward = peer.forward
    for data in reads:
        for event in leg.receive_data(data):
            if type(event) is Frame:
                forward(event)
        peer.data_to_send()


def splice_direct(reads: list[bytes]) -> None:
    leg = Connection(Role.SERVER, streaming=True, validate_utf8=False)
    peer = Connection(Role.SERVER, streaming=True, validate_utf8=False)
    leg.splice_to(peer)
    for data in reads:
        leg.receive_data(data)
        peer.data_to_send()


def recv_conn(reads: list[bytes]) -> None:
    conn = Connection(Role.CLIENT, max_message_size=None)
    for data in reads:
        conn.receive_data(data)


class _NullTransport(asyncio.Transport):
    def write(self, data: Any) -> None:
        return None

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


def recv_today(reads: list[bytes], frames: int) -> None:
    async def run() -> None:
        conn = wsclient.WsConnection(read_limit=1 << 30, max_size=None)
        conn.connection_made(_NullTransport())
        recv = conn.recv
        got = 0
        for data in reads:
            conn.data_received(data)
            while conn._rx and got < frames:
                # A message whose last chunk has not arrived would wait: only whole ones.
                if not any(chunk.message_end for chunk in conn._rx):
                    break
                await recv()
                got += 1

    _LOOP.run_until_complete(run())


def _best(paths: dict[str, Callable[[], None]], repeat: int) -> dict[str, float]:
    """Best CPU time of each path (process time: on a shared machine, wall time also
    counts the time other processes had the core). The paths take turns."""
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(repeat):
        for name, fn in paths.items():
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
    return best


def measure(size: int, frames: int, repeat: int) -> dict[str, Any]:
    payload = bytes(range(256)) * (size // 256) or b"x" * size
    masked = _reads(encode_frame(fin=True, opcode=2, payload=payload, mask=_MASK), frames)
    plain = _reads(encode_frame(fin=True, opcode=2, payload=payload), frames)
    timings = _best(
        {
            "splice_today": lambda: splice_today(masked),
            "splice_conn": lambda: splice_conn(masked),
            "splice_direct": lambda: splice_direct(masked),
            "recv_today": lambda: recv_today(plain, frames),
            "recv_conn": lambda: recv_conn(plain),
        },
        repeat,
    )
    result: dict[str, Any] = {"frame_bytes": size, "frames": frames}
    for name, seconds in timings.items():
        result[name] = {
            "ns_per_frame": round(seconds / frames * 1e9),
            "mb_per_s": round(size * frames / seconds / 1e6, 1),
        }
    result["splice_ratio"] = round(timings["splice_conn"] / timings["splice_today"], 3)
    result["splice_direct_ratio"] = round(timings["splice_direct"] / timings["splice_today"], 3)
    result["recv_ratio"] = round(timings["recv_conn"] / timings["recv_today"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ws_frames", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer frames and repeats")
    p.add_argument("--repeat", type=int, default=None, help="runs per path (best is kept)")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 7)
    plan = [(128, 20_000), (1024, 20_000), (64 * 1024, 1_000)]
    if args.quick:
        plan = [(size, count // 5) for size, count in plan]
    rows = [measure(size, count, repeat) for size, count in plan]
    header = f"{'frame':>7} {'path':<13} {'ns/frame':>9} {'MB/s':>8}"
    print(header, file=sys.stderr)
    for row in rows:
        for name in ("splice_today", "splice_conn", "splice_direct", "recv_today", "recv_conn"):
            cell = row[name]
            size, ns, mbs = row["frame_bytes"], cell["ns_per_frame"], cell["mb_per_s"]
            print(f"{size:>7} {name:<13} {ns:>9} {mbs:>8}", file=sys.stderr)
        print(
            f"{'':>7} conn/today: splice {row['splice_ratio']}, "
            f"splice_direct {row['splice_direct_ratio']}, recv {row['recv_ratio']}",
            file=sys.stderr,
        )
    text = json.dumps({"bench": "ws_frames", "repeat": repeat, "rows": rows}, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
