"""README command 1: relay, listener agent and client in one process, showing bytes flow.

A TCP echo service plays the on-premises target. The listener agent dials out
to the relay and bridges to it; the client connects through the relay and
prints each round trip. Everything binds loopback ports chosen by the OS.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time

from hybridrelay.listener import Listener, TcpTarget
from hybridrelay.protocol.sas import SasTokenProvider

__all__ = ["run_demo"]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def run_demo(stop: asyncio.Event, *, messages: int = 5) -> None:
    from hybridrelay.client import connect
    from hybridrelay.relay import run as run_relay
    from hybridrelay.relay.config import DEV_RULE_NAME, development_config

    with tempfile.TemporaryDirectory(prefix="hybridrelay-demo-") as data_dir:
        key = secrets.token_urlsafe(32)
        config = development_config(
            {"HYBRIDRELAY_PORT": "0", "HYBRIDRELAY_DATA_DIR": data_dir, "HYBRIDRELAY_DEV_KEY": key}
        )
        relay_ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        relay_stop = asyncio.Event()
        relay_task = asyncio.create_task(
            run_relay(
                config, relay_stop, on_ready=lambda c: relay_ready.set_result(c.relay.public_url)
            )
        )
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        echo_port = echo.sockets[0].getsockname()[1]
        listener_stop = asyncio.Event()
        listener_task: asyncio.Task[None] | None = None
        try:
            url = await asyncio.wait_for(asyncio.shield(relay_ready), 10)
            print(f"[relay]    listening at {url} (embedded default, rule {DEV_RULE_NAME})")
            print(f"[service]  TCP echo service on 127.0.0.1:{echo_port} (the on-prem target)")
            tokens = SasTokenProvider(DEV_RULE_NAME, key)
            listener = Listener(
                url, "demo", token_provider=tokens, target=TcpTarget("127.0.0.1", echo_port)
            )
            listener_task = asyncio.create_task(listener.run(listener_stop))
            await asyncio.wait_for(listener.connected.wait(), 10)
            print("[listener] control channel open: hybrid connection 'demo' -> tcp echo service")
            async with connect(url, "demo", token_provider=tokens, stream_mode=True) as stream:
                print("[client]   connected through the relay")
                for i in range(messages):
                    if stop.is_set():
                        break
                    payload = f"hello #{i} via the relay".encode()
                    started = time.perf_counter()
                    await stream.write(payload)
                    echoed = b""
                    while len(echoed) < len(payload):
                        chunk = await stream.read()
                        if not chunk:
                            break
                        echoed += chunk
                    ms = (time.perf_counter() - started) * 1000
                    text = echoed.decode()
                    print(f"[client]   sent {len(payload)} B, got back {text!r} in {ms:.2f} ms")
                blob = secrets.token_bytes(1 << 20)
                started = time.perf_counter()
                await stream.write(blob)
                got = 0
                while got < len(blob):
                    chunk = await stream.read()
                    if not chunk:
                        break
                    got += len(chunk)
                secs = time.perf_counter() - started
                rate = 2 * got / secs / 1e6
                print(f"[client]   1 MiB round trip in {secs * 1000:.1f} ms ({rate:.0f} MB/s)")
            # The listener finishes its side of the stream just after the client's close.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await listener.idle.wait()
            st = listener.stats
            print(
                f"[listener] {st.accepted} connection(s) bridged, "
                f"{st.bytes_up} B from the service, {st.bytes_down} B to it"
            )
            print("demo finished: relay, listener and client all on the embedded default")
        finally:
            listener_stop.set()
            if listener_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await listener_task
            echo.close()
            await echo.wait_closed()
            relay_stop.set()
            await relay_task
