"""HTTP-mode exchanges: each ``request`` (HC §2.6, §3.2-3.3, §4) answered by the handler.

A request arrives inline on the control channel (its body, if any, right after it) or
as an announcement whose request and body wait on a rendezvous socket. The
:data:`~hybridrelay.listener.http_messages.HttpHandler` answers it; the response goes
back inline when small and allowed
(:func:`~hybridrelay.listener.control_protocol.inline_response`), else over the
rendezvous socket. Every send on the control channel holds the
listener's control lock, so a response header and its body message are always
adjacent (HC §4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from hybridrelay.deadlines import Deadlines
from hybridrelay.errors import ConnectionClosedError, HybridRelayError, InvalidMessageError
from hybridrelay.listener.control_protocol import inline_response
from hybridrelay.listener.http_messages import (
    HttpHandler,
    HttpRequest,
    HttpResponse,
    build_request,
    close_body,
    error_response,
    response_header_map,
)
from hybridrelay.listener.rendezvous import Dialer
from hybridrelay.listener.stats import ListenerStats
from hybridrelay.logs import LISTENER, ConnectionLogger
from hybridrelay.protocol.addresses import path_escape_reason
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.http_response import check_response
from hybridrelay.protocol.messages import Request, Response, decode, encode
from hybridrelay.wsclient import WsConnection

__all__ = ["HttpExchanges"]

log = logging.getLogger(LISTENER)

# Bodies of known size are sent in frames of this size over a rendezvous socket.
_FRAGMENT: Final = 64 * 1024
_INVALID_RESPONSE_BODY: Final = (
    b'{"error":{"code":"InternalServerError","message":"invalid response"}}'
)


class HttpExchanges:
    """The HTTP-mode requests of one listener, from arrival to the last response byte.

    Args:
        hc: The hybrid connection's name.
        handler: Answers the requests (None: each is answered 501).
        dial: How rendezvous addresses are dialled.
        stats: The listener's counters (requests, responses, failures).
        control_lock: Held for every send on the control channel (HC §4 adjacency).
        at_capacity: Whether the listener has more tasks than it may (503 then).
        request_timeout: Longest the handler may take to return its response.
        connect_timeout: Bound on reading the request off its rendezvous socket.
        logger: The listener's own logger (its hc and id on every line).
    """

    def __init__(
        self,
        hc: str,
        *,
        handler: HttpHandler | None,
        dial: Dialer,
        stats: ListenerStats,
        control_lock: asyncio.Lock,
        at_capacity: Callable[[], bool],
        request_timeout: float,
        connect_timeout: float,
        logger: ConnectionLogger,
    ) -> None:
        self.hc = hc
        self._http_handler = handler
        self._dial = dial
        self.stats = stats
        self._control_lock = control_lock
        self._at_capacity = at_capacity
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._exchanges: set[_Exchange] = set()  # requests in flight
        self._deadlines = Deadlines()  # request_timeout of each handler call
        self._log = logger

    def _request_log(self, request_id: str) -> ConnectionLogger:
        return ConnectionLogger(log, {"hc": self.hc, "request": request_id})

    async def _receive_request(self, ws: WsConnection, announced: Request) -> Request:
        """The full request on a rendezvous socket of a rendezvous-only request (HC §3.2)."""
        async with asyncio.timeout(self._connect_timeout):
            text = await ws.recv()
        if not isinstance(text, str):
            raise InvalidMessageError("expected the request message on the rendezvous socket")
        message = decode(text)
        if not isinstance(message, Request) or not message.inline:
            raise InvalidMessageError("expected an inline-form request on the rendezvous socket")
        if message.id != announced.id:
            self._log.warning(
                "request_id_mismatch", extra={"announced": announced.id, "got": message.id}
            )
        return message

    async def handle(self, control: WsConnection, request: Request, body: bytes | None) -> None:
        """Serve one HTTP-mode request; the top of its task."""
        rid = request.id  # its logger is made only for a line to log (most log none)
        self.stats.requests += 1
        exchange = _Exchange(request)
        self._exchanges.add(exchange)
        try:
            if request.inline:
                full = request
                source: bytes | AsyncIterator[bytes] | None = body
            else:
                self.stats.requests_rendezvous += 1
                rendezvous = exchange.rendezvous = await self._dial.request(request.address)
                full = await self._receive_request(rendezvous, request)
                source = _body_frames(rendezvous, exchange) if full.body else None
            escape = path_escape_reason((full.request_target or "/").partition("?")[0])
            if escape is not None:
                # The relay refuses these already; a relay that does not (compromised,
                # older) must still not walk a handler or the target out of its base path.
                self._request_log(rid).warning("request_target_refused", extra={"reason": escape})
                response: HttpResponse | None = error_response(400, "BadRequest", escape)
            else:
                http_request = build_request(self.hc, full, source)
                response = await self._call_http_handler(http_request, rid, exchange)
            if response is None:
                self.stats.request_failures += 1
                return
            await self._send_response(control, exchange, full, response, rid)
        except (OSError, TimeoutError, HybridRelayError) as exc:
            self.stats.request_failures += 1
            self._request_log(rid).warning(
                "request_failed", extra={"error": str(exc) or type(exc).__name__}
            )
        except Exception:  # noqa: BLE001 - top of a request task: our bug, logged
            self.stats.request_failures += 1
            self._request_log(rid).exception("request_crashed")
        finally:
            self._exchanges.discard(exchange)
            exchange.finished = True
            if exchange.rendezvous is not None:
                await exchange.rendezvous.close()

    async def answer_broken(self, control: WsConnection, request: Request) -> None:
        """Answer 400 to an inline request whose body message never came."""
        rid = request.id
        response = error_response(400, "BadRequest", "request body message missing")
        exchange = _Exchange(request)
        try:
            await self._send_response(control, exchange, request, response, rid)
        except (OSError, TimeoutError, HybridRelayError) as exc:
            self._request_log(rid).warning(
                "request_failed", extra={"error": str(exc) or type(exc).__name__}
            )
        finally:
            exchange.finished = True
            if exchange.rendezvous is not None:
                await exchange.rendezvous.close()

    async def _call_http_handler(
        self, request: HttpRequest, rid: str, exchange: _Exchange | None = None
    ) -> HttpResponse | None:
        """The handler's response, an error response, or None when it took too long or the
        request's body was lost (no one is left to answer)."""
        if self._http_handler is None:
            return error_response(501, "NotImplemented", "this listener serves no HTTP requests")
        if self._at_capacity():
            return error_response(503, "ListenerAtCapacity", "listener at capacity")
        # asyncio.timeout()'s rules (the task is cancelled at the deadline; that is a
        # timeout unless someone else cancelled it too) on a timer shared by all requests.
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - called from the request's task
        cancelling = task.cancelling()
        deadline = self._deadlines.arm(self._request_timeout, _cancel, task)
        timed_out = False
        try:
            try:
                # object: apps without type checking may return anything.
                response: object = await self._http_handler(request)
            finally:
                self._deadlines.disarm(deadline)
                # Our cancel request, if the deadline made one, is taken back.
                timed_out = deadline.expired and task.uncancel() <= cancelling
        except (asyncio.CancelledError, TimeoutError) as exc:
            # A TimeoutError of the handler's own is its failure, unless ours came first.
            if not (timed_out if isinstance(exc, asyncio.CancelledError) else deadline.expired):
                raise
            self._request_log(rid).warning(
                "http_handler_timeout", extra={"timeout_s": self._request_timeout}
            )
            return None
        except Exception:  # noqa: BLE001 - the app's handler failed; the sender gets a 500
            if exchange is not None and exchange.body_lost is not None:
                # The sender or the relay went away mid-body and the handler stumbled on
                # it: a peer going away, not the app's bug.
                self._request_log(rid).info(
                    "request_body_lost", extra={"error": str(exchange.body_lost)}
                )
                return None
            self._request_log(rid).exception("http_handler_crashed")
            return error_response(500, "InternalServerError", "the listener's handler failed")
        if not isinstance(response, HttpResponse):
            self._request_log(rid).error(
                "http_handler_bad_result", extra={"type": type(response).__name__}
            )
            return error_response(500, "InternalServerError", "the listener's handler failed")
        return response

    def _response_header(
        self, request: Request, response: HttpResponse, has_body: bool, rid: str
    ) -> str | None:
        try:
            message = Response(
                request_id=request.id,
                status_code=response.status,
                status_description=response.reason,
                response_headers=response_header_map(response.headers),
                body=has_body,
            )
            check_response(message)  # what the relay would refuse with a 502
            return encode(message)
        except HybridRelayError as exc:  # a 1xx or 600+ status, headers over 64 KiB
            self._request_log(rid).error("http_response_invalid", extra={"error": str(exc)})
            return None

    async def _send_response(
        self,
        control: WsConnection,
        exchange: _Exchange,
        request: Request,
        response: HttpResponse,
        rid: str,
    ) -> None:
        """Send ``response`` inline when small and allowed, else over rendezvous (HC §4).

        Inline needs a body of known size up to 64 KiB and a request that came inline
        (a rendezvous-only request is answered on its own socket). The exchange's
        rendezvous socket, once there is one, is closed by the request's task.
        """
        body = response.body
        try:
            if request.method == "HEAD" or response.status in (204, 304) or response.status < 200:
                await close_body(body)
                body = b""
            data: bytes | None = None
            source: bytes | AsyncIterable[bytes]
            if isinstance(body, bytes | bytearray | memoryview):
                source = data = bytes(body)
            else:
                source = body
            has_body = data is None or bool(data)
            header = self._response_header(request, response, has_body, rid)
            if header is None:
                await close_body(body)
                body = source = data = _INVALID_RESPONSE_BODY
                has_body = True
                header = encode(
                    Response(
                        request_id=request.id,
                        status_code=500,
                        response_headers={"Content-Type": "application/json"},
                        body=True,
                    )
                )
            # The request as announced on the control channel: a rendezvous-only one
            # is answered on its own socket (``request`` is then the inline form read
            # off that socket).
            inline = inline_response(exchange.request, header, data)
            if (
                inline is not None
                and exchange.rendezvous is None
                and await self._send_inline(control, exchange, inline)
            ):
                self.stats.responses_inline += 1
                if log.isEnabledFor(logging.DEBUG):
                    self._request_log(rid).debug(
                        "response_sent", extra={"status": response.status, "via": "control"}
                    )
                return
            ws = await self._answer_socket(exchange)
            await ws.send(header)
            if has_body:
                await ws.send_fragments(_fragments(source))
            await ws.close(CloseCode.NORMAL)  # HC §4: single use
            self.stats.responses_rendezvous += 1
            if log.isEnabledFor(logging.DEBUG):
                self._request_log(rid).debug(
                    "response_sent", extra={"status": response.status, "via": "rendezvous"}
                )
        finally:
            if not isinstance(body, bytes):  # bytes have nothing to close: no coroutine
                await close_body(body)

    async def _send_inline(
        self, control: WsConnection, exchange: _Exchange, messages: Sequence[str | bytes]
    ) -> bool:
        """Header and body on the control channel, adjacent.

        Returns False, having sent nothing, when the channel is closed or a stopping
        listener opened a rendezvous socket for the exchange meanwhile.
        """
        async with self._control_lock:
            if exchange.rendezvous is not None:
                return False
            exchange.responding = True
            try:
                # Adjacent (HC §4), and written with the loop turn's other responses in
                # one system call; or, when that would mean waiting, with a wait.
                if not control.send_soon(messages):
                    await control.send_many(messages)
            except ConnectionClosedError:
                # Nothing went out: the relay may still take the answer over rendezvous.
                exchange.responding = False
                return False
        return True

    async def _answer_socket(self, exchange: _Exchange) -> WsConnection:
        """The exchange's rendezvous socket: the one it has, the one being dialled, or new."""
        if exchange.rendezvous is not None:
            return exchange.rendezvous
        predial = exchange.predial
        if predial is not None:
            await asyncio.wait({predial})  # not `await predial`: its cancellation is not ours
            if not predial.cancelled() and predial.exception() is None:
                exchange.rendezvous = predial.result()
                return exchange.rendezvous
        exchange.rendezvous = await self._dial.request(exchange.request.address)
        return exchange.rendezvous

    async def secure(self) -> None:
        """Before a deliberate close of the control channel: give every request still to
        be answered its rendezvous socket (the address stays valid, HC §3.2, §4)."""
        waiting = [
            exchange
            for exchange in self._exchanges
            if exchange.rendezvous is None and exchange.predial is None and not exchange.responding
        ]
        if not waiting:
            return
        self._log.info("securing_requests", extra={"count": len(waiting)})
        dials: dict[asyncio.Task[WsConnection], _Exchange] = {}
        for exchange in waiting:
            task = asyncio.create_task(self._dial.request(exchange.request.address))
            exchange.predial = task
            dials[task] = exchange
        try:
            await asyncio.wait(dials, timeout=self._connect_timeout)
        finally:
            for task in dials:
                task.cancel()
            await asyncio.wait(dials)
            for task, exchange in dials.items():
                await self._claim(task, exchange)

    async def _claim(self, task: asyncio.Task[WsConnection], exchange: _Exchange) -> None:
        if task.cancelled():
            return
        if (error := task.exception()) is not None:
            self._log.warning("request_rendezvous_failed", extra={"error": str(error)})
            return
        ws = task.result()
        if exchange.rendezvous is ws:
            return  # the request's task took it already
        if exchange.rendezvous is None and not exchange.finished and not exchange.responding:
            exchange.rendezvous = ws  # closed by the request's task
        else:
            await ws.close()


@dataclass(eq=False)
class _Exchange:
    """One HTTP-mode request in flight and its rendezvous socket (owned by its task)."""

    request: Request
    rendezvous: WsConnection | None = None
    predial: asyncio.Task[WsConnection] | None = None  # dialled by a stopping listener
    responding: bool = False  # the answer is going out on the control channel
    finished: bool = False
    body_lost: HybridRelayError | None = None  # why the body stream ended early, if it did


def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()


async def _body_frames(ws: WsConnection, exchange: _Exchange) -> AsyncIterator[bytes]:
    """The body message on a rendezvous socket, as it arrives (HC §4): streamed in pieces,
    never assembled, so a body (or one frame of it) of any size holds no more memory.

    Why the body ended early is kept on the exchange: the handler's error that follows
    is then the peer's doing, not the app's.
    """
    try:
        async for fragment in ws.recv_stream():
            if isinstance(fragment, str):
                raise InvalidMessageError("a request body must be a binary message")
            if fragment:
                yield fragment
    except HybridRelayError as exc:
        exchange.body_lost = exc
        raise


def _chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), _FRAGMENT):
        yield bytes(view[start : start + _FRAGMENT])


async def _fragments(body: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """One body message's fragments; at least one, since ``body: true`` promises a message."""
    if isinstance(body, bytes):
        for chunk in _chunks(body):
            yield chunk
        return
    sent = False
    async for chunk in body:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"response body chunks must be bytes, not {type(chunk).__name__}")
        if chunk:
            sent = True
            yield bytes(chunk)
    if not sent:
        yield b""
