"""Device identities end to end (issue 5): device SAS tokens and X.509 client certificates.

Devices are created straight in the relay's store (the management API is separate);
listeners and senders are protocol-level peers. Disabling or deleting a device must cut
its control channels and streams within one second (1008) and refuse its next connect
(401); connectionState follows its live connections.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from tests.conftest import RelayFactory
from tests.harness.device_certs import (
    DeviceCert,
    device_sas_token,
    make_device_ca,
    make_device_cert,
    write_bundle,
)
from tests.harness.http_peers import HttpListener
from tests.harness.peers import RawListener, listen_url, send, token_for
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles

from hybridrelay.errors import ConnectionClosedError, HandshakeError
from hybridrelay.relay.store.base import Store
from hybridrelay.relay.store.models import (
    Authentication,
    ChangeEvent,
    ConnectionState,
    Device,
    Grants,
    SymmetricKey,
    X509Thumbprint,
)
from hybridrelay.wsclient import WsConnection, ws_connect

PRIMARY = base64.b64encode(b"device-primary-key-0123456789abc").decode()
SECONDARY = base64.b64encode(b"device-secondary-key-0123456789a").decode()
WRONG = base64.b64encode(b"not-the-device-key-0123456789abc").decode()
KEYS = SymmetricKey(primary_key=PRIMARY, secondary_key=SECONDARY)


@dataclass
class TokenListener(RawListener):
    """RawListener that authenticates with a given token and/or a TLS client certificate."""

    token: str = ""
    tls: ssl.SSLContext | None = None

    async def start(self) -> TokenListener:
        url = listen_url(self.relay, self.hc, self.listener_id)
        headers = {"ServiceBusAuthorization": self.token} if self.token else {}
        self.control = await ws_connect(url, headers=headers, ssl=self.tls)
        self.control_closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        return self

    async def dial(self, accept: dict[str, object], **options: object) -> WsConnection:
        if self.tls is not None:
            options.setdefault("ssl", self.tls)
        return await super().dial(accept, **options)

    async def renew(self, token: str) -> None:
        assert self.control is not None
        await self.control.send(json.dumps({"renewToken": {"token": token}}))


def host_of(relay: InProcessRelay) -> str:
    return urlsplit(relay.url).netloc


def sas_token(relay: InProcessRelay, device_id: str, key: str = PRIMARY, **options: Any) -> str:
    return device_sas_token(host_of(relay), device_id, key, **options)


async def add_device(
    store: Store,
    device_id: str,
    *,
    listen: tuple[str, ...] = (),
    send_to: tuple[str, ...] = (),
    authentication: Authentication | None = None,
) -> Device:
    return await store.create_device(
        Device(
            device_id=device_id,
            authentication=authentication or Authentication(type="sas", symmetric_key=KEYS),
            grants=Grants(listen=listen, send=send_to),
        )
    )


async def disable(store: Store, device_id: str) -> None:
    current = await store.get_device(device_id)
    assert current is not None
    await store.replace_device(
        dataclasses.replace(current, status="disabled", status_reason="stolen"), if_match="*"
    )


async def wait_state(
    store: Store, device_id: str, want: ConnectionState, *, active: bool = False
) -> Device:
    """Poll the store until the device is ``want`` (and, with ``active``, has activity)."""
    async with asyncio.timeout(seconds(5)):
        while True:
            device = await store.get_device(device_id)
            assert device is not None
            if device.connection_state == want and (
                not active or device.last_activity_time is not None
            ):
                return device
            await asyncio.sleep(0.02)  # polling the store, not synchronisation by delay


async def handshake_status(coro: Any) -> int:
    try:
        ws = await coro
    except HandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


@contextlib.asynccontextmanager
async def listening(listener: RawListener) -> AsyncIterator[RawListener]:
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()


# --- device SAS ---------------------------------------------------------------------------


async def test_device_tokens_listen_and_send_and_drive_connection_state(
    relay: InProcessRelay,
) -> None:
    store = relay.state.store
    await add_device(store, "gateway-1", listen=("echo",))
    await add_device(store, "sensor-1", send_to=("ech?",))
    listener = TokenListener(relay.url, "echo", token=sas_token(relay, "gateway-1"))
    async with listening(listener):
        gateway = await wait_state(store, "gateway-1", "connected", active=True)
        assert gateway.last_activity_time is not None
        assert relay.devices.live_devices() == {"gateway-1": 1}

        # The secondary key, signed as relay rule tokens are (key text), works as well.
        token = sas_token(relay, "sensor-1", SECONDARY, decode_key=False, scheme="sb://")
        sender = await send(relay.url, "echo", token=token)
        await sender.send("hello from a device")
        assert await sender.recv() == "hello from a device"
        sensor = await wait_state(store, "sensor-1", "connected", active=True)
        assert sensor.last_activity_time is not None
        # The stream is the listening gateway's too (issue 11: disabling it cuts the stream).
        assert relay.devices.live_devices() == {"gateway-1": 2, "sensor-1": 1}
        await sender.close()
        assert sender.close_code == 1000
        await wait_state(store, "sensor-1", "disconnected")
        assert (await store.get_device("gateway-1")).connection_state == "connected"  # type: ignore[union-attr]
    await wait_state(store, "gateway-1", "disconnected")
    async with asyncio.timeout(seconds(5)):
        while relay.devices.live_devices():
            await asyncio.sleep(0.02)


async def test_refusals_are_401_or_403(relay: InProcessRelay) -> None:
    store = relay.state.store
    await add_device(store, "sensor-2", send_to=("echo",))
    await add_device(store, "off", send_to=("echo",))
    await disable(store, "off")
    async with listening(RawListener(relay.url, "echo")):
        url = listen_url(relay.url, "echo")

        def connect(device_id: str, hc: str = "echo", **options: Any) -> Any:
            return send(relay.url, hc, token=sas_token(relay, device_id, **options))

        # Not granted: listen, or send to another hybrid connection.
        listen = ws_connect(url, headers={"ServiceBusAuthorization": sas_token(relay, "sensor-2")})
        assert await handshake_status(listen) == 403
        assert await handshake_status(connect("sensor-2", "hc-ws")) == 403
        # Wrong key, unknown device, disabled device, expired token.
        assert await handshake_status(connect("sensor-2", key=WRONG)) == 401
        assert await handshake_status(connect("nobody")) == 401
        assert await handshake_status(connect("off")) == 401
        assert await handshake_status(connect("sensor-2", ttl=-60)) == 401
        # The good token still works.
        assert await handshake_status(connect("sensor-2")) == 101


async def test_disabling_a_device_cuts_its_channel_and_stream_within_a_second(
    relay: InProcessRelay,
) -> None:
    store = relay.state.store
    await add_device(store, "gw", listen=("echo",))
    await add_device(store, "car", send_to=("echo",))
    listener = TokenListener(relay.url, "echo", token=sas_token(relay, "gw"))
    async with listening(listener):
        sender = await send(relay.url, "echo", token=sas_token(relay, "car"))
        await sender.send("ping")
        assert await sender.recv() == "ping"
        await wait_state(store, "car", "connected")

        loop = asyncio.get_running_loop()
        started = loop.time()
        await disable(store, "car")
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(seconds(1)):
                await sender.recv()
        assert closed.value.code == 1008
        assert loop.time() - started < seconds(1)
        await wait_state(store, "car", "disconnected")
        again = send(relay.url, "echo", token=sas_token(relay, "car"))
        assert await handshake_status(again) == 401

        # The listener device: its control channel closes with 1008.
        started = loop.time()
        await disable(store, "gw")
        code, _ = await listener.wait_control_closed(seconds(1))
        assert code == 1008
        assert loop.time() - started < seconds(1)
        await wait_state(store, "gw", "disconnected")
        relisten = ws_connect(
            listen_url(relay.url, "echo"),
            headers={"ServiceBusAuthorization": sas_token(relay, "gw")},
        )
        assert await handshake_status(relisten) == 401


async def test_deleting_a_device_cuts_its_listener_and_its_streams(relay: InProcessRelay) -> None:
    store = relay.state.store
    await add_device(store, "both", listen=("echo",), send_to=("echo",))
    listener = TokenListener(relay.url, "echo", token=sas_token(relay, "both"))
    async with listening(listener):
        sender = await send(relay.url, "echo", token=sas_token(relay, "both"))
        await sender.send(b"\x01")
        assert await sender.recv() == b"\x01"
        await store.delete_device("both", if_match="*")
        code, _ = await listener.wait_control_closed(seconds(1))
        assert code == 1008
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(seconds(1)):
                await sender.recv()
        assert closed.value.code == 1008
        again = send(relay.url, "echo", token=sas_token(relay, "both"))
        assert await handshake_status(again) == 401
    async with asyncio.timeout(seconds(5)):
        while relay.devices.live_devices():
            await asyncio.sleep(0.02)


async def test_revoking_a_grant_cuts_only_what_it_covered(relay: InProcessRelay) -> None:
    store = relay.state.store
    await add_device(store, "multi", listen=("echo", "hyco"))
    echo = TokenListener(relay.url, "echo", token=sas_token(relay, "multi"))
    hyco = TokenListener(relay.url, "hyco", token=sas_token(relay, "multi"))
    async with listening(echo), listening(hyco):
        current = await store.get_device("multi")
        assert current is not None
        await store.replace_device(
            dataclasses.replace(current, grants=Grants(listen=("hyco",))), if_match=current.etag
        )
        code, _ = await echo.wait_control_closed(seconds(1))
        assert code == 1008
        assert hyco.control_closed is not None
        assert not hyco.control_closed.done()
        sender = await send(relay.url, "hyco")  # the hyco listener still serves
        await sender.send("still here")
        assert await sender.recv() == "still here"
        await sender.close()


async def test_close_device_connections_is_callable_directly(relay: InProcessRelay) -> None:
    store = relay.state.store
    await add_device(store, "kiosk", listen=("echo",))
    listener = TokenListener(relay.url, "echo", token=sas_token(relay, "kiosk"))
    async with listening(listener):
        await wait_state(store, "kiosk", "connected")
        closed = await relay.devices.close_device_connections("kiosk", reason="bye")
        assert closed == 1
        code, reason = await listener.wait_control_closed(seconds(1))
        assert (code, reason) == (1008, "bye")
        await wait_state(store, "kiosk", "disconnected")
        assert await relay.devices.close_device_connections("nobody") == 0


async def test_a_device_listener_renews_with_a_device_token(relay: InProcessRelay) -> None:
    store = relay.state.store
    await add_device(store, "renewer", listen=("echo",))
    listener = TokenListener(relay.url, "echo", token=sas_token(relay, "renewer", ttl=60))
    async with listening(listener):
        await listener.renew(sas_token(relay, "renewer", SECONDARY, ttl=3600))
        sender = await send(relay.url, "echo")
        await sender.send("renewed")
        assert await sender.recv() == "renewed"
        await sender.close()
        assert listener.control_closed is not None
        assert not listener.control_closed.done()
        await listener.renew(sas_token(relay, "renewer", WRONG))
        code, reason = await listener.wait_control_closed(seconds(2))
        assert code == 1008
        assert "renewal refused" in reason


async def test_http_requests_with_a_device_token(relay: InProcessRelay) -> None:
    store = relay.state.store
    await add_device(store, "meter", send_to=("echo",))
    await add_device(store, "meter-off", send_to=("echo",))
    await disable(store, "meter-off")
    listener = await HttpListener(relay.url, "echo").start()
    base = relay.http_url
    try:
        async with aiohttp.ClientSession() as session:
            pending = asyncio.create_task(
                session.post(
                    f"{base}/echo/reading",
                    data=b"42",
                    headers={"ServiceBusAuthorization": sas_token(relay, "meter")},
                )
            )
            request = await listener.next_request()
            assert "ServiceBusAuthorization" not in request.headers
            await listener.respond(request.id, 200, body=b"ok")
            async with await pending as response:
                assert response.status == 200
                assert await response.read() == b"ok"
            meter = await store.get_device("meter")
            assert meter is not None
            assert meter.last_activity_time is not None
            assert meter.connection_state == "disconnected"  # HTTP never "connects"
            assert not relay.devices.live_devices()
            for token, status in (
                (sas_token(relay, "meter-off"), 401),
                (sas_token(relay, "meter", WRONG), 401),
                (sas_token(relay, "nobody"), 401),
            ):
                async with session.get(
                    f"{base}/echo", headers={"ServiceBusAuthorization": token}
                ) as refused:
                    assert refused.status == status
            async with session.get(
                f"{base}/hc-ws", headers={"ServiceBusAuthorization": sas_token(relay, "meter")}
            ) as forbidden:
                assert forbidden.status == 403
    finally:
        await listener.stop()


# --- X.509 client certificates ------------------------------------------------------------


@dataclass
class Pki:
    directory: Path
    tls: TlsFiles
    ca_signed: DeviceCert  # cam-1, certificateAuthority, listens on echo
    ca_sender: DeviceCert  # cam-2, certificateAuthority, sends to echo
    wrong_ca: DeviceCert  # cam-3 signed by a CA the relay does not trust
    expired: DeviceCert  # cam-1 again, expired
    self_signed: DeviceCert  # therm-1, selfSigned, its certificate is in client_ca_file
    unlisted: DeviceCert  # therm-1 again, self-signed but not in client_ca_file
    bundle: Path

    def context(self, cert: DeviceCert | None = None) -> ssl.SSLContext:
        if cert is None:
            return ssl.create_default_context(cafile=str(self.tls.ca_cert))
        return cert.client_context(self.tls.ca_cert)


@pytest.fixture
def pki(tls_files: TlsFiles, tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = make_device_ca(directory)
    rogue = make_device_ca(directory, "rogue CA")
    self_signed = make_device_cert(directory, "therm-1")
    return Pki(
        directory=directory,
        tls=tls_files,
        ca_signed=make_device_cert(directory, "cam-1", ca=ca),
        ca_sender=make_device_cert(directory, "cam-2", ca=ca),
        wrong_ca=make_device_cert(directory, "cam-3", ca=rogue),
        expired=make_device_cert(directory, "cam-1", ca=ca, expired=True, file_stem="old"),
        self_signed=self_signed,
        unlisted=make_device_cert(directory, "therm-1", file_stem="unlisted"),
        bundle=write_bundle(directory / "devices.pem", ca.pem, self_signed.cert),
    )


async def tls_relay(factory: RelayFactory, pki: Pki, mode: str) -> InProcessRelay:
    relay = await factory(
        tls=pki.tls, relay_extra=f'client_cert = "{mode}"\nclient_ca_file = "{pki.bundle}"'
    )
    store = relay.state.store
    ca_auth = Authentication(type="certificateAuthority")
    await add_device(store, "cam-1", listen=("echo",), authentication=ca_auth)
    await add_device(store, "cam-2", send_to=("echo",), authentication=ca_auth)
    await add_device(store, "cam-3", send_to=("echo",), authentication=ca_auth)
    thumb = X509Thumbprint(
        primary_thumbprint="00" * 20, secondary_thumbprint=pki.self_signed.sha256
    )
    await add_device(
        store,
        "therm-1",
        send_to=("echo",),
        authentication=Authentication(type="selfSigned", x509_thumbprint=thumb),
    )
    return relay


async def refused_by_tls(url: str, context: ssl.SSLContext) -> None:
    # TLS 1.3: the client may finish its side first and learn of the alert when reading.
    with pytest.raises((OSError, ConnectionClosedError)) as info:
        await ws_connect(url, ssl=context, open_timeout=seconds(5))
    assert not isinstance(info.value, HandshakeError)


async def test_x509_devices_listen_and_send(relay_factory: RelayFactory, pki: Pki) -> None:
    relay = await tls_relay(relay_factory, pki, "optional")
    store = relay.state.store
    listener = TokenListener(relay.url, "echo", tls=pki.context(pki.ca_signed))
    async with listening(listener):
        await wait_state(store, "cam-1", "connected")
        for cert in (pki.ca_sender, pki.self_signed):
            sender = await send(relay.url, "echo", token="", ssl=pki.context(cert))
            await sender.send(f"hello from {cert.device_id}")
            assert await sender.recv() == f"hello from {cert.device_id}"
            await wait_state(store, cert.device_id, "connected")
            await sender.close()
            await wait_state(store, cert.device_id, "disconnected")
        # Certificates are optional: a rule token without one still works, nothing does not.
        sender = await send(relay.url, "echo", ssl=pki.context())
        await sender.close()
        anonymous = send(relay.url, "echo", token="", ssl=pki.context())
        assert await handshake_status(anonymous) == 401
        # The thumbprint device may not listen; cam-2 may not listen either.
        url = listen_url(relay.url, "echo")
        assert await handshake_status(ws_connect(url, ssl=pki.context(pki.ca_sender))) == 403
    await wait_state(store, "cam-1", "disconnected")


async def test_x509_refusals(relay_factory: RelayFactory, pki: Pki) -> None:
    relay = await tls_relay(relay_factory, pki, "optional")
    store = relay.state.store
    url = f"{relay.url}/$hc/echo?sb-hc-action=connect"
    rule_listener = TokenListener(
        relay.url, "echo", token=token_for(listen_url(relay.url, "echo")), tls=pki.context()
    )
    async with listening(rule_listener):
        # Not trusted: the handshake itself fails.
        await refused_by_tls(url, pki.context(pki.wrong_ca))
        await refused_by_tls(url, pki.context(pki.expired))
        await refused_by_tls(url, pki.context(pki.unlisted))
        # Trusted, but the registry says no.
        await disable(store, "cam-2")
        assert await handshake_status(ws_connect(url, ssl=pki.context(pki.ca_sender))) == 401
        current = await store.get_device("therm-1")
        assert current is not None
        other = X509Thumbprint(primary_thumbprint="11" * 32)
        await store.replace_device(
            dataclasses.replace(
                current,
                authentication=Authentication(type="selfSigned", x509_thumbprint=other),
            ),
            if_match="*",
        )
        assert await handshake_status(ws_connect(url, ssl=pki.context(pki.self_signed))) == 401
        # A CA device presenting a self-issued certificate (trusted as a thumbprint one).
        await store.delete_device("therm-1", if_match="*")
        await add_device(
            store,
            "therm-1",
            send_to=("echo",),
            authentication=Authentication(type="certificateAuthority"),
        )
        assert await handshake_status(ws_connect(url, ssl=pki.context(pki.self_signed))) == 401


async def test_disabling_an_x509_listener_cuts_it(relay_factory: RelayFactory, pki: Pki) -> None:
    relay = await tls_relay(relay_factory, pki, "optional")
    store = relay.state.store
    listener = TokenListener(relay.url, "echo", tls=pki.context(pki.ca_signed))
    async with listening(listener):
        await wait_state(store, "cam-1", "connected")
        await disable(store, "cam-1")
        code, _ = await listener.wait_control_closed(seconds(1))
        assert code == 1008
        await wait_state(store, "cam-1", "disconnected")
        relisten = ws_connect(listen_url(relay.url, "echo"), ssl=pki.context(pki.ca_signed))
        assert await handshake_status(relisten) == 401


async def test_required_client_certificates(relay_factory: RelayFactory, pki: Pki) -> None:
    relay = await tls_relay(relay_factory, pki, "required")
    listener = TokenListener(relay.url, "echo", tls=pki.context(pki.ca_signed))
    async with listening(listener):
        sender = await send(relay.url, "echo", token="", ssl=pki.context(pki.ca_sender))
        await sender.send("with a certificate")
        assert await sender.recv() == "with a certificate"
        await sender.close()
        await refused_by_tls(f"{relay.url}/$hc/echo?sb-hc-action=connect", pki.context())


async def test_store_events_revoke_without_reactions_too(relay: InProcessRelay) -> None:
    # An app without reactions.py's hook: the store's own events drive the revocation.
    store = relay.state.store
    await add_device(store, "fallback", listen=("echo",))
    listener = TokenListener(relay.url, "echo", token=sas_token(relay, "fallback"))
    async with listening(listener):
        await wait_state(store, "fallback", "connected")
        event = ChangeEvent(kind="device", op="deleted", name="fallback")
        relay.devices.on_change(event, revoke=False)  # others report deletions
        assert not relay.devices.busy
        relay.devices.on_change(event, revoke=True)
        code, reason = await listener.wait_control_closed(seconds(1))
        assert (code, reason) == (1008, "the device was deleted")
        await wait_state(store, "fallback", "disconnected")


async def test_anonymous_senders_may_carry_any_token(relay: InProcessRelay) -> None:
    async with listening(RawListener(relay.url, "anon")):
        garbled = sas_token(relay, "nobody").replace("sig=", "sig=%21")
        sender = await send(relay.url, "anon", token=garbled)
        await sender.send("anonymous")
        assert await sender.recv() == "anonymous"
        await sender.close()
        assert not relay.devices.live_devices()


async def test_a_device_disabled_during_its_rendezvous_is_cut_at_once(
    relay: InProcessRelay,
) -> None:
    store = relay.state.store
    await add_device(store, "slowpoke", send_to=("echo",))
    listener = RawListener(relay.url, "echo", behaviour=None)
    async with listening(listener):
        connecting = asyncio.create_task(
            send(relay.url, "echo", token=sas_token(relay, "slowpoke"))
        )
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(5))
        await disable(store, "slowpoke")  # authorized already, not yet relaying
        leg = await listener.dial(accept)
        sender = await connecting
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(seconds(1)):
                await sender.recv()
        assert closed.value.code == 1008
        with pytest.raises(ConnectionClosedError):
            async with asyncio.timeout(seconds(1)):
                await leg.recv()
        await leg.close()
        await wait_state(store, "slowpoke", "disconnected")
