"""An unmodified MQTT client through the relay: paho -> ``hybridrelay forward`` -> relay ->
``hybridrelay listen`` -> a real broker.

The broker is Mosquitto on 127.0.0.1:1883 when one answers there, else an amqtt broker
started in this process on a loopback port chosen by the OS (set
``HYBRIDRELAY_TEST_MQTT_BROKER=amqtt`` to force that). paho's network loop runs in its
own thread; its callbacks reach the test through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.harness.processes import ProcessGroup, forward_args, forwarded_port, listen_args
from tests.harness.relay import ROOT_KEY, RelayProcess
from tests.harness.timing import seconds

pytestmark = pytest.mark.e2e

ROOT = "RootManageSharedAccessKey"
MOSQUITTO: Final = ("127.0.0.1", 1883)
COUNT: Final = 200
ProcessFactory = Callable[..., Awaitable[RelayProcess]]


async def _reachable(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(seconds(1)):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@pytest.fixture
async def mqtt_broker() -> AsyncIterator[tuple[str, int]]:
    if os.environ.get("HYBRIDRELAY_TEST_MQTT_BROKER") != "amqtt" and await _reachable(*MOSQUITTO):
        yield MOSQUITTO
        return
    try:
        from amqtt.broker import Broker
    except ImportError:
        pytest.skip("no MQTT broker: nothing on 127.0.0.1:1883 and amqtt is not installed")
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        # amqtt does not report the port it bound; its asyncio.Server does.
        port = broker._servers["default"].instance.sockets[0].getsockname()[1]
        yield "127.0.0.1", port
    finally:
        async with asyncio.timeout(seconds(10)):
            await broker.shutdown()


class PahoClient:
    """A paho client whose network loop runs in paho's thread; events arrive on asyncio."""

    def __init__(self, client_id: str) -> None:
        self._loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[Any] = self._loop.create_future()
        self.subscribed: asyncio.Future[list[Any]] = self._loop.create_future()
        self.disconnected: asyncio.Future[Any] = self._loop.create_future()
        self.messages: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue(maxsize=COUNT * 2)
        self.acks: asyncio.Queue[int] = asyncio.Queue(maxsize=COUNT * 2)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect

    # -- paho's thread -----------------------------------------------------------------

    def _resolve(self, future: asyncio.Future[Any], value: object) -> None:
        def resolve() -> None:
            if not future.done():
                future.set_result(value)

        self._loop.call_soon_threadsafe(resolve)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: Any, props: object
    ) -> None:
        self._resolve(self.connected, reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: Any, props: object
    ) -> None:
        self._resolve(self.subscribed, list(reasons))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._loop.call_soon_threadsafe(self.messages.put_nowait, message)

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: Any, props: object
    ) -> None:
        self._loop.call_soon_threadsafe(self.acks.put_nowait, mid)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: Any, props: object
    ) -> None:
        self._resolve(self.disconnected, reason)

    # -- asyncio side --------------------------------------------------------------------

    async def connect(self, host: str, port: int) -> None:
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()
        async with asyncio.timeout(seconds(10)):
            reason = await self.connected
        assert not reason.is_failure, f"CONNACK: {reason}"

    async def close(self) -> None:
        if self.connected.done() and not self.disconnected.done():
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds(5)):
                    await self.disconnected
        # loop_stop() joins paho's thread; keep the event loop free meanwhile.
        await asyncio.to_thread(self.client.loop_stop)

    async def next(self, queue: asyncio.Queue[Any], what: str) -> Any:
        """The next item from one of our queues; fails fast if the connection dropped."""
        getter = asyncio.ensure_future(queue.get())
        try:
            async with asyncio.timeout(seconds(10)):
                await asyncio.wait({getter, self.disconnected}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise AssertionError(f"no {what} within {seconds(10)}s") from None
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        raise AssertionError(f"disconnected while waiting for {what}: {self.disconnected.result()}")


async def test_mqtt_qos1_messages_arrive_in_order_through_the_relay(
    relay_process_factory: ProcessFactory,
    mqtt_broker: tuple[str, int],
    procs: ProcessGroup,
) -> None:
    relay = await relay_process_factory()
    host, port = mqtt_broker
    listener = await procs.start(
        *listen_args(relay.url, "mqtt", f"tcp://{host}:{port}", key_name=ROOT),
        key=ROOT_KEY,
        name="listen",
    )
    await listener.wait_for_line(r"event=control_channel_open")
    forwarder = await procs.start(
        *forward_args(relay.url, "mqtt", key_name=ROOT), key=ROOT_KEY, name="forward"
    )
    local = await forwarded_port(forwarder)

    topic = f"hybridrelay/e2e/{uuid.uuid4()}"
    expected = [f"message {i:03d}".encode() for i in range(COUNT)]
    async with contextlib.AsyncExitStack() as stack:
        # Both clients go through the relay: two relayed streams at once.
        subscriber = PahoClient(f"hr-sub-{uuid.uuid4().hex[:12]}")
        stack.push_async_callback(subscriber.close)
        await subscriber.connect("127.0.0.1", local)
        subscriber.client.subscribe(topic, qos=1)
        async with asyncio.timeout(seconds(10)):
            granted = await subscriber.subscribed
        assert [int(r.value) for r in granted] == [1], granted

        publisher = PahoClient(f"hr-pub-{uuid.uuid4().hex[:12]}")
        stack.push_async_callback(publisher.close)
        await publisher.connect("127.0.0.1", local)
        mids = []
        for payload in expected:
            info = publisher.client.publish(topic, payload, qos=1)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
            mids.append(info.mid)

        acked = {
            await publisher.next(publisher.acks, f"PUBACK {n + 1}/{COUNT}") for n in range(COUNT)
        }
        assert acked == set(mids)
        received = []
        for n in range(COUNT):
            message = await subscriber.next(subscriber.messages, f"message {n + 1}/{COUNT}")
            assert message.topic == topic
            assert message.qos == 1
            received.append(message.payload)
        assert received == expected
        assert subscriber.messages.empty()  # and nothing twice

    assert listener.returncode is None
    assert forwarder.returncode is None
