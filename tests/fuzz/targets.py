"""The fuzz targets: each sends one hostile example over real sockets and names every rule it broke.

A target is set up once per campaign against a running relay (:mod:`tests.fuzz.subjects`)
and then checks example after example, reporting violations into :class:`Findings` by
property name (:data:`PROPERTIES`). The campaign (:mod:`tests.fuzz.campaign`) adds the
properties every target shares: nothing logged at error level, the relay still up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from hypothesis.strategies import SearchStrategy

from hybridrelay.backoff import Backoff
from hybridrelay.errors import ConnectionClosedError, HybridRelayError
from hybridrelay.listener import HttpRequest, HttpResponse, Listener, TcpTarget
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.messages import RenewToken, Response, decode
from hybridrelay.protocol.sas import SasTokenProvider
from tests.fuzz import oracles, strategies
from tests.fuzz.strategies import AddressSpec, TokenSpec
from tests.fuzz.subjects import (
    ANSWER_HC,
    CONTROL_HC,
    HTTP_HC,
    OPEN_HC,
    SPLICE_HC,
    Subject,
)
from tests.fuzz.wire import (
    BadAnswerError,
    BadServerFrameError,
    RawSocket,
    ServerFrame,
    client_frame,
    head_status,
    parse_answers,
    parse_server_frames,
)
from tests.harness.http_peers import HttpListener
from tests.harness.listeners import running_listener
from tests.harness.peers import ROOT, RawListener, token_for
from tests.harness.raw_http import http_request, upgrade_request
from tests.harness.raw_ws import CLOSE, PING, PONG, close_payload
from tests.harness.relay import LISTEN_KEY, ROOT_KEY, SEND_KEY
from tests.harness.timing import seconds

__all__ = ["PROPERTIES", "TARGETS", "Findings", "Target"]

# Every property a target can report, and what it means.
PROPERTIES: Final = {
    "error_logged": "the relay logged an error or a traceback",
    "agent_error_logged": "the listener agent logged an error or a traceback",
    "relay_down": "the relay process exited or stopped answering /healthz",
    "hang": "an exchange did not end within its time bound",
    "memory_grew": "relay RSS grew by more than the campaign's bound",
    "relay_leak": "relayed connections, channels or tasks outlived the campaign",
    "harness_error": "the fuzz harness itself failed (a bug in tests/fuzz)",
    "bad_frame_from_relay": "the relay sent a frame RFC 6455 forbids a server to send",
    "no_close_frame": "a connection ended without the close frame RFC 6455 and HC §5 require",
    "undocumented_close_code": "the relay closed with a code its docs do not list for this case",
    "wrong_verdict": "the control channel kept or closed, not as HC §3 and RFC 6455 say",
    "unmasked_frame_accepted": "an unmasked client frame was accepted (RFC 6455 §5.1)",
    "relay_answered_500": "the relay answered 500 to a peer's input",
    "undocumented_status": "the relay answered a status its docs do not list",
    "malformed_response": "the relay's HTTP bytes are not well-formed responses",
    "head_response_body": "a response to HEAD carried a body",
    "wrong_http_version": "a status line named another version than HTTP/1.0 or HTTP/1.1",
    "well_formed_refused": "a well-formed request did not get the listener's answer",
    "body_altered": "the listener did not get exactly the body the sender sent",
    "frames_altered": "the relay did not forward data frames exactly (RFC 6455, HC §5)",
    "pongs_wrong": "pings were not answered with pongs of the same payload, in order",
    "wrong_close": "a close frame did not carry the code/payload the rules require",
    "acted_after_close": "frames after a close or a protocol error were acted on (RFC 6455 §1.4)",
    "invalid_answer_forwarded": "an invalid listener answer reached the sender (not 502)",
    "valid_answer_altered": "a valid listener answer did not reach the sender as sent",
    "agent_dropped_control_channel": "the agent let a hostile message end its control channel",
    "agent_unresponsive": "the agent stopped answering requests after hostile messages",
    "agent_sent_invalid_message": "the agent sent a control message that is not valid HC §3",
    "agent_dialed_foreign_host": "the agent dialled an address on a host that is not its relay",
}

# The agent's bad-message policy may close its control channel (then dials anew): 1002 for a
# body with no request before it, 1008 after max_bad_control_messages bad ones in a row.
POLICY_CLOSES: Final = frozenset({CloseCode.PROTOCOL_ERROR, CloseCode.POLICY_VIOLATION})
EXAMPLE_TIMEOUT: Final = 20.0  # one example, everything included
WS_KEY: Final = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key: the same bytes every run


class Findings:
    """The violations one example caused: (property, detail) pairs."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, prop: str, detail: str) -> None:
        assert prop in PROPERTIES, prop
        self.items.append((prop, detail))


class TargetState(Protocol):
    async def check(self, example: Any, findings: Findings) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    description: str
    strategy: SearchStrategy[Any]
    setup: Callable[[Subject], Coroutine[Any, Any, TargetState]]
    ci_examples: int
    needs_relay: bool = True


# ---------------------------------------------------------------------------------- shared helpers


def _host(subject: Subject) -> str:
    return f"127.0.0.1:{subject.port}"


def _signer(subject: Subject, entity: str) -> Callable[[TokenSpec], str]:
    """Tokens for ``entity`` of the relay; the wrong ones are wrong in one way each."""
    base = f"http://127.0.0.1:{subject.port}"

    def sign(spec: TokenSpec) -> str:
        kind = spec.kind
        if kind == "valid":
            return token_for(f"{base}/{entity}")
        if kind == "listen_rule":
            return token_for(f"{base}/{entity}", key_name="listen-only", key=LISTEN_KEY)
        if kind == "namespace":
            return token_for(f"{base}/")
        if kind == "expired":
            return token_for(f"{base}/{entity}", ttl=-3600)  # past the 300 s grace
        if kind == "other_hc":
            return token_for(f"{base}/{SPLICE_HC}")
        if kind == "send_only":
            return token_for(f"{base}/{entity}", key_name="send-only", key=SEND_KEY)
        # bad_signature: a good token whose signature has its first characters changed.
        good = token_for(f"{base}/{entity}")
        head, _, rest = good.partition("sig=")
        return f"{head}sig={'AAAA' if not rest.startswith('AAAA') else 'BBBB'}{rest[4:]}"

    return sign


async def _read_frames_until(
    sock: RawSocket, stop: Callable[[ServerFrame], bool], timeout: float
) -> tuple[list[ServerFrame], bool]:
    """Server frames up to the first that ``stop`` accepts; (frames, found).

    Raises BadServerFrameError for a malformed frame, TimeoutError past ``timeout``.
    """
    frames: list[ServerFrame] = []
    async with asyncio.timeout(seconds(timeout)):
        while True:
            parsed, rest = parse_server_frames(bytes(sock.received))
            consumed = len(sock.received) - len(rest)
            del sock.received[:consumed]
            for frame in parsed:
                frames.append(frame)
                if stop(frame):
                    return frames, True
            if not await sock.read_some():
                # Whatever is left is an incomplete frame.
                return frames, False


async def _drain_to_eof(sock: RawSocket, timeout: float) -> bool:
    """Read until the peer closes; False if it did not within ``timeout``."""
    try:
        async with asyncio.timeout(seconds(timeout)):
            await sock.read_to_eof()
    except TimeoutError:
        return False
    return True


async def _open_ws(
    subject: Subject, target: str, headers: list[tuple[str, str]]
) -> tuple[RawSocket, int | None]:
    sock = await RawSocket.open("127.0.0.1", subject.port)
    await sock.send(upgrade_request(target, _host(subject), headers, key=WS_KEY))
    async with asyncio.timeout(seconds(10)):
        head = await sock.read_head()
    return sock, head_status(head) if head is not None else None


# -------------------------------------------------------------------- control channel (relay side)


class ControlTarget:
    """A hostile listener: messages and frames on a fresh control channel per example."""

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.count = 0
        self.sign = _signer(subject, CONTROL_HC)

    async def check(self, example: strategies.ControlExample, findings: Findings) -> None:
        self.count += 1
        accepted: set[str] = set()
        signed: dict[str, str] = {}

        def sign(spec: TokenSpec) -> str:
            # One text per kind and example: the verdict must see the token that was sent.
            text = signed.get(spec.kind) or signed.setdefault(spec.kind, self.sign(spec))
            if spec.kind in strategies.ACCEPTED_TOKENS:
                accepted.add(text)
            return text

        query = f"sb-hc-action=listen&sb-hc-id=fuzz-{self.count}"
        url = f"ws://{_host(self.subject)}/$hc/{CONTROL_HC}?{query}"
        sock, status = await _open_ws(
            self.subject,
            f"/$hc/{CONTROL_HC}?{query}",
            [("ServiceBusAuthorization", token_for(url))],
        )
        try:
            if status != 101:
                findings.add("harness_error", f"listen handshake answered {status}")
                return
            stream, expected = oracles.control_frames(example, sign, accepted)
            await sock.send(stream + client_frame(PING, b"fuzz-probe"))
            await self._verdict(sock, example, expected, findings)
        finally:
            sock.abort()

    async def _verdict(
        self,
        sock: RawSocket,
        example: strategies.ControlExample,
        expected: int | None,
        findings: Findings,
    ) -> None:
        def decisive(frame: ServerFrame) -> bool:
            return frame.opcode == CLOSE or (
                frame.opcode == PONG and frame.payload == b"fuzz-probe"
            )

        try:
            frames, found = await _read_frames_until(sock, decisive, 10)
        except BadServerFrameError as exc:
            findings.add("bad_frame_from_relay", str(exc))
            return
        except TimeoutError:
            findings.add("hang", f"no pong and no close within 10 s (expected {expected})")
            return
        if not found:
            findings.add(
                "no_close_frame", f"connection ended without a close (expected {expected})"
            )
            return
        last = frames[-1]
        got = last.close_code
        if got is not None and got not in (1002, 1007, 1008, 1009):
            findings.add("undocumented_close_code", f"closed with {got} {last.payload[2:]!r}")
        # An unmasked frame fails the channel as soon as its header is seen, which may be
        # before earlier frames of the same read were acted on (their own failure, if any,
        # would have been the verdict): either way the channel is failed, with 1002.
        unmasked_first = example.breach == "unmasked" and expected is not None and got == 1002
        if got != expected and not unmasked_first:
            prop = (
                "unmasked_frame_accepted"
                if example.breach == "unmasked" and expected == 1002 and got is None
                else "wrong_verdict"
            )
            findings.add(prop, f"expected {expected or 'open'}, got {got or 'open'}")
        # End the exchange as a polite client: answer (or start) the closing handshake.
        reply = last.payload if got is not None else close_payload(1000)
        await sock.send(client_frame(CLOSE, reply))
        if got is None:
            with contextlib.suppress(TimeoutError, BadServerFrameError):
                await _read_frames_until(sock, lambda f: f.opcode == CLOSE, 5)
        if not await _drain_to_eof(sock, 5):
            findings.add("hang", "relay did not close the control channel's TCP connection")

    async def close(self) -> None:
        return None


# -------------------------------------------------------------------------- HTTP mode (relay side)


async def _echo_handler(request: HttpRequest) -> HttpResponse:
    """The on-premises app of the HTTP target: echoes the body it got."""
    body = await request.read()
    return HttpResponse(
        200,
        headers={"X-Fuzz-Method": request.method, "Content-Type": "application/octet-stream"},
        body=body,
    )


# How a fuzz agent's run may end at teardown without failing the campaign: the properties
# judge the agent while it runs, hostile examples may leave it failed or slow to stop.
AGENT_ENDINGS: Final = (HybridRelayError, TimeoutError)


class HttpTarget:
    """A hostile HTTP sender: raw request heads and bodies; the agent echoes what it gets."""

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.agents = contextlib.AsyncExitStack()

    @classmethod
    async def start(cls, subject: Subject) -> HttpTarget:
        self = cls(subject)
        for hc in (OPEN_HC, HTTP_HC):
            listener = Listener(
                subject.url,
                hc,
                token_provider=SasTokenProvider(ROOT, ROOT_KEY),
                http_handler=_echo_handler,
                connect_timeout=5,
                request_timeout=5,
            )
            await self.agents.enter_async_context(
                running_listener(listener, tolerate=AGENT_ENDINGS)
            )
        return self

    async def check(self, example: strategies.HttpExample, findings: Findings) -> None:
        sign = _signer(self.subject, oracles.entity_of(example))
        data = oracles.render_http(example, sign)
        well_formed = example.well_formed
        expected_answers = 2 if example.trailing.startswith(b"GET ") else 1
        methods = [example.method, "GET"]
        sock = await RawSocket.open("127.0.0.1", self.subject.port)
        try:
            await sock.send(data)
            # A relay that waits for more of a broken request may wait; the sender then
            # goes away (half-close, which aiohttp answers by closing), as attackers do.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds(5.0 if well_formed else 0.25)):
                    while not _complete(sock.received, methods, expected_answers):
                        if not await sock.read_some():
                            break
            sock.half_close()
            if not await _drain_to_eof(sock, 5):
                findings.add("hang", "relay kept the connection open after the sender's EOF")
                return
        finally:
            sock.abort()
        self._judge(example, bytes(sock.received), methods, well_formed, findings)

    @staticmethod
    def _judge(
        example: strategies.HttpExample,
        received: bytes,
        methods: list[str],
        well_formed: bool,
        findings: Findings,
    ) -> None:
        try:
            answers, rest = parse_answers(received, methods)
        except BadAnswerError as exc:
            findings.add("malformed_response", f"{exc} in {received[:300]!r}")
            return
        if rest:
            if answers and example.method == "HEAD" and len(answers) == 1:
                findings.add(
                    "head_response_body",
                    f"{answers[0].status} to HEAD followed by {rest[:120]!r}",
                )
            else:
                findings.add("malformed_response", f"bytes after the responses: {rest[:200]!r}")
        for answer in answers:
            if answer.version not in (b"1.0", b"1.1"):
                findings.add(
                    "wrong_http_version", f"HTTP/{answer.version.decode()} {answer.status}"
                )
            if answer.status == 500:
                findings.add("relay_answered_500", f"{answer.reason!r} {answer.body[:200]!r}")
            elif answer.status not in oracles.DOCUMENTED_HTTP_STATUSES:
                findings.add("undocumented_status", f"{answer.status} {answer.reason!r}")
        if not well_formed:
            return
        finals = [a for a in answers if a.status >= 200]
        if not finals or finals[0].status != 200 or finals[0].header(b"x-fuzz-method") is None:
            status = finals[0].status if finals else None
            body = finals[0].body[:200] if finals else received[:200]
            findings.add("well_formed_refused", f"got {status}: {body!r}")
        elif finals[0].body != example.body:
            findings.add(
                "body_altered",
                f"sent {len(example.body)} bytes, listener got {len(finals[0].body)}",
            )

    async def close(self) -> None:
        await self.agents.aclose()


def _complete(received: bytearray, methods: list[str], wanted: int) -> bool:
    """True once ``wanted`` final answers with self-delimited bodies arrived."""
    try:
        answers, rest = parse_answers(bytes(received), methods)
    except BadAnswerError:
        return False
    finals = [a for a in answers if a.status >= 200]
    if len(finals) < wanted or rest:
        return False
    last = finals[-1]
    delimited = (
        last.header(b"content-length") is not None
        or last.header(b"transfer-encoding") is not None
        or last.status in (204, 304)
    )
    return delimited and not last.aborted


# ----------------------------------------------------------------------------------- splice frames


class SpliceTarget:
    """A hostile peer on one leg of a relayed stream; the other leg is a polite peer."""

    def __init__(self, subject: Subject, control: RawListener) -> None:
        self.subject = subject
        self.control = control  # takes the accepts; the legs are dialled raw

    @classmethod
    async def start(cls, subject: Subject) -> SpliceTarget:
        control = RawListener(subject.url, SPLICE_HC, behaviour=None, listener_id="fuzz-splice")
        return cls(subject, await control.start())

    async def _legs(self, findings: Findings) -> tuple[RawSocket, RawSocket] | None:
        connect = f"/$hc/{SPLICE_HC}?sb-hc-action=connect"
        url = f"ws://{_host(self.subject)}{connect}"
        sender = await RawSocket.open("127.0.0.1", self.subject.port)
        auth = [("ServiceBusAuthorization", token_for(url))]
        await sender.send(upgrade_request(connect, _host(self.subject), auth, key=WS_KEY))
        try:
            async with asyncio.timeout(seconds(10)):
                parts = urlsplit(str((await self.control.accepts.get())["address"]))
                listener = await RawSocket.open("127.0.0.1", self.subject.port)
                target = f"{parts.path}?{parts.query}"
                await listener.send(upgrade_request(target, _host(self.subject), key=WS_KEY))
                heads = [await listener.read_head(), await sender.read_head()]
        except TimeoutError:
            sender.abort()
            findings.add("hang", "the relay did not splice a legitimate sender and listener")
            return None
        statuses = [head_status(h) if h is not None else None for h in heads]
        if statuses != [101, 101]:
            sender.abort()
            listener.abort()
            findings.add("harness_error", f"splice handshakes answered {statuses}")
            return None
        return sender, listener

    async def check(self, example: strategies.SpliceExample, findings: Findings) -> None:
        legs = await self._legs(findings)
        if legs is None:
            return
        sender, listener = legs
        hostile, polite = (sender, listener) if example.side == "sender" else (listener, sender)
        try:
            polite_task = asyncio.create_task(_polite_peer(polite))
            hostile_frames = await self._attack(hostile, example, findings)
            try:
                async with asyncio.timeout(seconds(10)):
                    polite_frames, polite_closed = await polite_task
            except TimeoutError:
                findings.add("hang", "the polite peer got no close within 10 s")
                return
            except BadServerFrameError as exc:
                findings.add("bad_frame_from_relay", f"to the polite peer: {exc}")
                return
            if not polite_closed and not polite.received:
                # Cut on a frame boundary: a close frame could have been sent (a frame cut
                # in the middle can only end with the connection, RFC 6455 §5.4).
                findings.add(
                    "no_close_frame",
                    f"polite {('listener' if example.side == 'sender' else 'sender')} got no close "
                    f"frame before its connection ended (reset={polite.reset})",
                )
            if hostile_frames is not None and example.exact:
                self._judge(example, hostile_frames, polite_frames, findings)
        finally:
            if not polite_task.done():
                polite_task.cancel()
                await asyncio.wait({polite_task})
            sender.abort()
            listener.abort()

    @staticmethod
    async def _attack(
        sock: RawSocket, example: strategies.SpliceExample, findings: Findings
    ) -> list[ServerFrame] | None:
        stream = oracles.splice_stream(example)
        ending = close_payload(example.close_code, example.close_reason)
        if example.ending == "close":
            stream += client_frame(CLOSE, ending, mask=b"\x11\x22\x33\x44")
        await sock.send(stream)
        if example.ending == "abort":
            sock.abort()
            return None
        if example.ending == "eof" or not example.exact:
            # The relay cannot know where a lying stream ends; our EOF tells it.
            sock.half_close()
        try:
            frames, _ = await _read_frames_until(sock, lambda f: False, 10)
        except BadServerFrameError as exc:
            findings.add("bad_frame_from_relay", f"to the hostile peer: {exc}")
            return None
        except TimeoutError:
            findings.add("hang", f"hostile {example.side}: connection not closed within 10 s")
            return None
        return frames

    @staticmethod
    def _judge(
        example: strategies.SpliceExample,
        hostile: list[ServerFrame],
        polite: list[ServerFrame],
        findings: Findings,
    ) -> None:
        ending = (
            close_payload(example.close_code, example.close_reason)
            if example.ending == "close"
            else None
        )
        model = oracles.splice_model(example.frames, ending)
        found = Findings()
        data = tuple((f.fin, f.opcode, f.payload) for f in polite if f.opcode < CLOSE)
        if data != model.forwarded:
            found.add(
                "frames_altered",
                f"expected {_frames_repr(model.forwarded)}, polite peer got {_frames_repr(data)}",
            )
        closes = [f for f in polite if f.opcode == CLOSE]
        if closes:
            want = model.close if model.close is not None else close_payload(1011)
            if (
                closes[0].payload != want
                if model.close is not None
                else closes[0].close_code != 1011
            ):
                found.add(
                    "wrong_close", f"polite peer: expected {want!r}, got {closes[0].payload!r}"
                )
        pongs = tuple(f.payload for f in hostile if f.opcode == PONG)
        if pongs != model.pongs:
            found.add("pongs_wrong", f"expected {model.pongs!r}, got {pongs!r}")
        hostile_closes = [f for f in hostile if f.opcode == CLOSE]
        got = hostile_closes[0].payload if hostile_closes else None
        if model.error is not None:
            if not hostile_closes or hostile_closes[0].close_code != model.error:
                found.add("wrong_close", f"hostile peer: expected {model.error}, got {got!r}")
        elif model.close is not None and got != model.close and example.ending != "eof":
            # The polite peer echoed the close; the relay forwards it back. (Not judged
            # when the hostile peer half-closed TCP after its close: the relay closes a
            # leg on EOF, before the echo can come back.)
            found.add("wrong_close", f"hostile peer: expected echo {model.close!r}, got {got!r}")
        if found.items and model.stopped_early:
            # Frames followed the one that ended the stream: one cause explains these.
            details = "; ".join(f"{prop}: {detail}" for prop, detail in found.items)
            findings.add("acted_after_close", details)
        else:
            findings.items.extend(found.items)

    async def close(self) -> None:
        await self.control.stop()


def _frames_repr(frames: tuple[tuple[bool, int, bytes], ...]) -> str:
    return repr([(fin, op, len(p), p[:8]) for fin, op, p in frames])


async def _polite_peer(sock: RawSocket) -> tuple[list[ServerFrame], bool]:
    """Read frames until a close, echo it (RFC 6455 §5.5.1), then read to EOF."""
    frames, found = await _read_frames_until(sock, lambda f: f.opcode == CLOSE, 10)
    if found:
        await sock.send(client_frame(CLOSE, frames[-1].payload))
        await _drain_to_eof(sock, 5)
    return frames, found


# -------------------------------------------------------------------- listener answers (HTTP mode)


class AnswerTarget:
    """A hostile HTTP-mode listener: its answers to a legitimate sender's requests."""

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.listener: HttpListener | None = None

    @classmethod
    async def start(cls, subject: Subject) -> AnswerTarget:
        self = cls(subject)
        self.listener = await HttpListener(subject.url, ANSWER_HC).start()
        return self

    async def _fresh_listener(self, findings: Findings) -> HttpListener:
        listener = self.listener
        assert listener is not None
        if listener.control_closed is not None and listener.control_closed.done():
            code, reason = listener.control_closed.result()
            if code not in (1002, 1008, 1009):
                findings.add(
                    "undocumented_close_code", f"listener control channel closed {code} {reason!r}"
                )
            await listener.stop()
            listener = self.listener = await HttpListener(self.subject.url, ANSWER_HC).start()
        return listener

    async def check(self, example: strategies.AnswerExample, findings: Findings) -> None:
        listener = await self._fresh_listener(findings)
        url = f"http://{_host(self.subject)}/{ANSWER_HC}"
        body = b"hello" if example.method == "POST" else b""
        headers = {"ServiceBusAuthorization": token_for(url), "Content-Length": str(len(body))}
        head = http_request(example.method, f"/{ANSWER_HC}/x", "fuzz", headers)
        sender = await RawSocket.open("127.0.0.1", self.subject.port)
        try:
            await sender.send(head + body)
            request = await listener.next_request(timeout=10)
            text = oracles.render_answer(example, request.id)
            verdict = oracles.answer_verdict(text)
            await self._answer(listener, request, example, text)
            if not await _drain_to_eof(sender, 10):
                findings.add("hang", "the sender's answer did not end within 10 s")
                return
        finally:
            sender.abort()
        self._judge(example, verdict, bytes(sender.received), findings)
        # Give a closed control channel a moment to report its code before the next example.
        if (
            listener.control_closed is not None
            and not verdict.decodable
            and example.via == "control"
        ):
            with contextlib.suppress(TimeoutError):
                await listener.wait_control_closed(5)

    @staticmethod
    async def _answer(
        listener: HttpListener, request: Any, example: strategies.AnswerExample, text: str
    ) -> None:
        with contextlib.suppress(ConnectionClosedError, OSError):
            if example.via == "control":
                await listener.send_text(text)
                if example.body_bytes is not None:
                    await listener.send_binary(example.body_bytes)
            else:
                ws = await listener.dial(request)
                await ws.send(text)
                if example.body_bytes is not None:
                    await ws.send(example.body_bytes)

    @staticmethod
    def _judge(
        example: strategies.AnswerExample,
        verdict: oracles.AnswerVerdict,
        received: bytes,
        findings: Findings,
    ) -> None:
        try:
            answers, rest = parse_answers(received, [example.method])
        except BadAnswerError as exc:
            findings.add("malformed_response", f"{exc}; sent {received[:300]!r}")
            return
        finals = [a for a in answers if a.status >= 200]
        if rest or len(finals) != 1:
            findings.add(
                "malformed_response",
                f"{len(finals)} answers and {rest[:120]!r} in {received[:300]!r}",
            )
            return
        answer = finals[0]
        if answer.status == 500 and verdict.status != 500:
            findings.add("relay_answered_500", f"{answer.reason!r} {answer.body[:200]!r}")
        consistent = (example.body is True) == (example.body_bytes is not None) and isinstance(
            example.body, bool
        )
        if not verdict.valid or not verdict.decodable:
            if answer.status != 502:
                findings.add(
                    "invalid_answer_forwarded",
                    f"status {verdict.status}, headers {verdict.headers!r} "
                    f"reached the sender as {answer.status}",
                )
            return
        if not consistent:
            return  # a body promised and not sent (or the reverse): 502/504 or the answer
        if answer.status != verdict.status:
            findings.add(
                "valid_answer_altered", f"status {verdict.status} arrived as {answer.status}"
            )
            return
        # Connection-level fields (RFC 9110 §7.6.1) are the relay's to drop or set.
        hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade",
               "via", "te", "trailer", "proxy-authenticate", "proxy-authorization",
               "proxy-connection", "close", "host", "expect", "content-type"}  # fmt: skip
        connection = {
            t.strip().lower()
            for n, v in verdict.headers
            if n.lower() == "connection"
            for t in v.split(",")
        }
        for name, value in verdict.headers:
            if name.lower() in hop or name.lower() in connection:
                continue
            got = [v for k, v in answer.headers if k.lower() == name.lower().encode()]
            if value.strip().encode("utf-8") not in got:
                findings.add(
                    "valid_answer_altered", f"header {name!r}: {value!r} arrived as {got!r}"
                )
        if (
            example.body_bytes is not None
            and example.method != "HEAD"
            and verdict.status not in (204, 304)
            and answer.body != example.body_bytes
        ):
            findings.add(
                "valid_answer_altered",
                f"body of {len(example.body_bytes)} bytes arrived as {len(answer.body)}",
            )

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.stop()


# ----------------------------------------------------------------------- agent (relay -> listener)


@dataclass
class _FakeRelay:
    """A hostile relay for the agent: its control channel and rendezvous addresses."""

    control: web.WebSocketResponse | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    inbox: asyncio.Queue[tuple[WSMsgType, Any]] = field(default_factory=asyncio.Queue)
    answer: strategies.AgentExample | None = None
    render: Callable[[object], str] | None = None
    controls_opened: int = 0
    runner: web.AppRunner | None = None
    port: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        action = request.query.get("sb-hc-action", "")
        if action == "listen":
            return await self._control(request)
        example = self.answer
        answer = example.dial_answer if example is not None else "gone"
        if answer == "gone":
            return web.Response(status=410)
        if answer == "not_found":
            return web.Response(status=404)
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        if answer == "send" and example is not None and self.render is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(self.render(example.rendezvous_text))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.3):  # the agent's answer, if it sends one
                        async for _ in ws:
                            pass
        await ws.close()
        return ws

    async def _control(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.control = ws
        self.controls_opened += 1
        self.connected.set()
        async for message in ws:
            await self.inbox.put((message.type, message.data))
        if self.control is ws:
            self.connected.clear()
        await self.inbox.put((WSMsgType.CLOSED, ws.close_code))
        return ws

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class AgentTarget:
    """A hostile relay: control messages and rendezvous answers sent to a real listener agent."""

    def __init__(self) -> None:
        self.fake = _FakeRelay()
        self.foreign_dials = 0
        self.count = 0
        self._servers: list[asyncio.Server] = []
        self._agent: Listener | None = None
        self._running = contextlib.AsyncExitStack()
        self.foreign_port = 0
        self.closed_port = 1
        self._policy_closes = 0  # channels the agent closed by its bad-message policy, this example
        self._sentinel = ""

    @classmethod
    async def start(cls, subject: Subject) -> AgentTarget:
        self = cls()
        await self.fake.start()
        self.fake.render = self._render

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def foreign(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.foreign_dials += 1
            writer.close()

        echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
        foreign_server = await asyncio.start_server(foreign, "127.0.0.2", 0)
        self._servers = [echo_server, foreign_server]
        self.foreign_port = foreign_server.sockets[0].getsockname()[1]
        listener = Listener(
            f"ws://127.0.0.1:{self.fake.port}",
            "fuzz-agent",
            token_provider=SasTokenProvider(ROOT, ROOT_KEY),
            target=TcpTarget("127.0.0.1", echo_server.sockets[0].getsockname()[1]),
            http_handler=_echo_handler,
            connect_timeout=2,
            request_timeout=2,
            # A channel the agent closes by its bad-message policy is dialled again at once.
            backoff=Backoff(base=0.02, cap=0.2),
        )
        await self._running.enter_async_context(running_listener(listener, tolerate=AGENT_ENDINGS))
        self._agent = listener
        async with asyncio.timeout(seconds(10)):
            await self.fake.connected.wait()
        return self

    def _address(self, spec: AddressSpec) -> str:
        relay = f"127.0.0.1:{self.fake.port}"
        query = f"sb-hc-action={spec.action}&sb-hc-id=fuzz&sb-hc-rdv=key{spec.text}"
        if spec.kind == "relay":
            return f"ws://{relay}/$hc/fuzz-agent?{query}"
        if spec.kind == "wss":
            return f"wss://{relay}/$hc/fuzz-agent?{query}"
        if spec.kind == "foreign":
            return f"ws://127.0.0.2:{self.foreign_port}/$hc/fuzz-agent?{query}"
        if spec.kind == "closed":
            return f"ws://127.0.0.1:{self.closed_port}/$hc/fuzz-agent?{query}"
        return spec.text

    def _render(self, doc: object) -> str:
        value = oracles.materialize(doc, lambda spec: "SharedAccessSignature sr=x", self._address)
        if not isinstance(value, str):
            return json.dumps(value)  # ASCII: lone surrogates travel as JSON escapes
        # A text frame is UTF-8 (RFC 6455 §5.6); invalid text is a different attack (1007).
        return value.encode("utf-8", "replace").decode("utf-8")

    async def check(self, example: strategies.AgentExample, findings: Findings) -> None:
        self.count += 1
        fake = self.fake
        fake.answer = example
        dials_before = self.foreign_dials
        ws = await self._open_control()
        if ws is None:
            findings.add(
                "agent_dropped_control_channel", "no control channel open before this example"
            )
            return
        opened_before = fake.controls_opened
        self._policy_closes = 0
        for message in example.messages:
            with contextlib.suppress(ConnectionError, RuntimeError):
                if message.doc is not None:
                    await ws.send_str(self._render(message.doc))
                elif message.binary:
                    await ws.send_bytes(message.raw)
                else:
                    await ws.send_str(message.raw.decode("utf-8", "replace"))
        sentinel = f"sentinel-{self.count}"
        address = self._address(AddressSpec("relay", "request"))
        request = {"address": address, "id": sentinel, "requestTarget": "/fuzz-agent/s",
                   "method": "GET", "requestHeaders": {}, "body": False}  # fmt: skip
        self._sentinel = json.dumps({"request": request})
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(self._sentinel)
        await self._await_sentinel(sentinel, findings)
        await self._settle()
        if self.foreign_dials != dials_before:
            findings.add(
                "agent_dialed_foreign_host",
                f"{self.foreign_dials - dials_before} dial(s) to 127.0.0.2",
            )
        redials = fake.controls_opened - opened_before
        if redials != self._policy_closes:
            findings.add(
                "agent_dropped_control_channel",
                f"{redials} control channels dialled after {self._policy_closes} policy closes",
            )

    async def _open_control(self) -> web.WebSocketResponse | None:
        """The agent's open control channel, waiting (bounded) for its redial after a close."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds(5)):
                await self.fake.connected.wait()
        ws = self.fake.control
        return ws if ws is not None and not ws.closed else None

    async def _settle(self) -> None:
        """Let the agent finish what this example started (dials end within connect_timeout)."""
        assert self._agent is not None
        streams = self._agent._streams  # accept and request tasks in flight
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds(5)):
                while streams:
                    await asyncio.wait(set(streams))

    async def _await_sentinel(self, sentinel: str, findings: Findings) -> None:
        body_due = False
        sentinel_answered = False
        try:
            async with asyncio.timeout(seconds(5)):
                while True:
                    kind, data = await self.fake.inbox.get()
                    if kind == WSMsgType.BINARY:
                        if not body_due:
                            findings.add(
                                "agent_sent_invalid_message", f"binary message of {len(data)} bytes"
                            )
                        body_due = False
                        if sentinel_answered:
                            return
                        continue
                    if kind == WSMsgType.CLOSED and data in POLICY_CLOSES:
                        # The agent's documented bad-message policy (listener/control_protocol.py):
                        # it closed this channel and dials a new one, where the sentinel goes again.
                        self._policy_closes += 1
                        ws = await self._open_control()
                        if ws is None:
                            findings.add("agent_dropped_control_channel", "no redial after a close")
                            return
                        with contextlib.suppress(ConnectionError, RuntimeError):
                            await ws.send_str(self._sentinel)
                        continue
                    if kind != WSMsgType.TEXT:
                        findings.add(
                            "agent_dropped_control_channel",
                            f"control channel ended ({kind.name}, close code {data})",
                        )
                        return
                    if body_due:
                        findings.add(
                            "agent_sent_invalid_message", "a response promised a body and sent text"
                        )
                    try:
                        message = decode(data)
                    except HybridRelayError as exc:
                        findings.add("agent_sent_invalid_message", f"{exc}: {data[:200]!r}")
                        continue
                    if not isinstance(message, Response | RenewToken):
                        findings.add(
                            "agent_sent_invalid_message", f"a listener sent {data[:100]!r}"
                        )
                        continue
                    if isinstance(message, Response):
                        body_due = message.body
                        if message.request_id == sentinel:
                            if not body_due:
                                return
                            sentinel_answered = True  # its body message follows
        except TimeoutError:
            findings.add("agent_unresponsive", "no answer to a valid request within 5 s")

    async def close(self) -> None:
        await self._running.aclose()
        await self.fake.stop()
        for server in self._servers:
            server.close()
            await server.wait_closed()


# --------------------------------------------------------------------------------------- the table


async def _setup_control(subject: Subject) -> TargetState:
    return ControlTarget(subject)


TARGETS: Final = {
    target.name: target
    for target in (
        Target(
            "relay-control",
            "control-channel messages and frames a hostile listener sends (HC §3, RFC 6455)",
            strategies.CONTROL_EXAMPLES,
            _setup_control,
            ci_examples=150,
        ),
        Target(
            "agent-control",
            "control-channel messages and rendezvous answers a hostile relay sends the agent",
            strategies.AGENT_EXAMPLES,
            AgentTarget.start,
            ci_examples=40,
            needs_relay=False,
        ),
        Target(
            "http-mode",
            "raw HTTP request heads and bodies from a hostile sender (HC §2.6-2.7, RFC 9112)",
            strategies.HTTP_EXAMPLES,
            HttpTarget.start,
            ci_examples=120,
        ),
        Target(
            "splice-frames",
            "frame sequences from a hostile sender or listener on a relayed stream (HC §5)",
            strategies.SPLICE_EXAMPLES,
            SpliceTarget.start,
            ci_examples=120,
        ),
        Target(
            "listener-answers",
            "answers of a hostile HTTP-mode listener to a legitimate sender (HC §3.3, §4)",
            strategies.ANSWER_EXAMPLES,
            AnswerTarget.start,
            ci_examples=30,
        ),
    )
}
