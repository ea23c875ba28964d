"""An async client of the relay's management API, ``/$mgmt/v1`` (issue 5).

    async with AdminClient("http://127.0.0.1:8080", key_name="RootManageSharedAccessKey",
                           key=KEY) as admin:
        await admin.put_hybrid_connection("sensors", {"maxListeners": 5})
        async for device in admin.list_devices(page_size=100):
            print(device["deviceId"])
        await admin.set_device_status("dev-1", "disabled", reason="lost")

Authentication is a namespace SAS token of a rule with Manage, sent in the
``Authorization`` header; its audience is ``http://{host}/$mgmt`` (the narrowest
scope the API accepts), or give a ready ``token`` (SAS or JWT bearer) instead.

Every non-2xx answer raises :class:`AdminApiError` with the HTTP status and the
``{"error": {"code", "message"}}`` of the body. Documents are the API's JSON
(camelCase) as plain dicts; nothing is re-modelled here, so fields the relay adds
later pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from hybridrelay.protocol.sas import SasTokenProvider, TokenProvider, audience_for

__all__ = ["AdminApiError", "AdminClient", "Document", "KeyType"]

Document: TypeAlias = dict[str, Any]
KeyType: TypeAlias = Literal["primary", "secondary"]

MGMT_PREFIX: Final = "/$mgmt/v1"
_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
# Characters a device id may hold that are safe unescaped in a path segment; '%', '?',
# '#' and '/' are escaped.
_DEVICE_SAFE: Final = "-._~!$&'()*+,;=:@"


class AdminApiError(Exception):
    """The API answered with an error status.

    Attributes:
        status: The HTTP status.
        code: ``error.code`` of the body (``"HttpError"`` when the body had none).
        message: ``error.message`` of the body, or the HTTP reason.
        tracking_id: ``error.trackingId`` when the relay sent one.
    """

    def __init__(self, status: int, code: str, message: str, tracking_id: str | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.tracking_id = tracking_id


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: Any
    etag: str | None


def _base_url(relay_url: str) -> str:
    parts = urlsplit(relay_url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"relay must be an http(s):// or ws(s):// URL, not {relay_url!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _hc_path(name: str) -> str:
    return "/hybridconnections/" + quote(name.strip("/"), safe="/")


def _rules_path(hc: str | None) -> str:
    return (_hc_path(hc) if hc is not None else "") + "/rules"


def _device_path(device_id: str) -> str:
    return "/devices/" + quote(device_id, safe=_DEVICE_SAFE)


def _strip_etag(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip().removeprefix("W/").strip('"') or None


class AdminClient:
    """Typed calls of ``/$mgmt/v1``; use as ``async with`` or call :meth:`close`.

    Args:
        relay_url: The relay's base URL, ``http(s)://host[:port]`` (``ws(s)://`` is
            mapped to ``http(s)://``).
        key_name: Namespace rule name (a rule with Manage); with ``key``.
        key: The rule's key.
        token: A ready token (SAS or ``Bearer <jwt>``) instead of key_name/key.
        token_provider: Or a provider asked for a token per request.
        ssl_context: TLS settings for https relays.
        timeout: Total seconds per request (streams such as events are not bounded).
        session: An aiohttp session to use (not closed by :meth:`close`).

    Raises:
        ValueError: The URL is not http(s)/ws(s), or credentials are missing or
            given twice.
    """

    def __init__(
        self,
        relay_url: str,
        key_name: str | None = None,
        key: str | None = None,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._base = _base_url(relay_url)
        given = sum(x is not None for x in (token, token_provider, key))
        if given != 1:
            raise ValueError("give exactly one of key (with key_name), token or token_provider")
        if key is not None:
            if not key_name:
                raise ValueError("key needs key_name")
            token_provider = SasTokenProvider(key_name, key)
        self._token = token
        self._provider = token_provider
        netloc = urlsplit(self._base).netloc
        self._audience = audience_for(f"http://{netloc}/$mgmt")
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None

    @property
    def base_url(self) -> str:
        """The relay URL requests go to (``http(s)://host[:port]``)."""
        return self._base

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session this client made (a session passed in stays open)."""
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None if self._owns_session else self._session

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def _auth(self, audience: str | None = None) -> str:
        if self._token is not None:
            return self._token
        if self._provider is None:  # unreachable: __init__ checks
            raise RuntimeError("no credentials")
        return self._provider.token_for(audience or self._audience, time.time())

    def _url(self, path: str, params: Mapping[str, str] | None = None) -> URL:
        url = URL(self._base + MGMT_PREFIX + path, encoded=True)
        return url.update_query(dict(params)) if params else url

    async def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        params: Mapping[str, str] | None = None,
        if_match: str | None = None,
        audience: str | None = None,
    ) -> _Reply:
        headers = {"Authorization": self._auth(audience), "Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if if_match is not None:
            headers["If-Match"] = if_match if if_match == "*" else f'"{_strip_etag(if_match)}"'
        async with self._get_session().request(
            method, self._url(path, params), data=data, headers=headers, ssl=self._ssl or True
        ) as response:
            raw = await response.read()
            doc: Any = None
            if raw.strip():
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = None
            if response.status >= 400:
                raise _error(response.status, response.reason, doc)
            return _Reply(response.status, doc, _strip_etag(response.headers.get("ETag")))

    async def _document(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        if_match: str | None = None,
        audience: str | None = None,
    ) -> Document:
        reply = await self._call(method, path, body, if_match=if_match, audience=audience)
        if not isinstance(reply.body, dict):
            raise AdminApiError(
                reply.status, "BadResponse", "the relay did not answer a JSON object"
            )
        doc: Document = reply.body
        if reply.etag is not None:
            doc.setdefault("etag", reply.etag)
        return doc

    async def _pages(
        self, path: str, page_size: int | None, query: Mapping[str, str] | None = None
    ) -> AsyncIterator[Document]:
        continuation: str | None = None
        while True:
            # The search terms go with every page: a continuation token alone does not carry them.
            params: dict[str, str] = dict(query or {})
            if page_size is not None:
                params["top"] = str(page_size)
            if continuation is not None:
                params["continuationToken"] = continuation
            reply = await self._call("GET", path, params=params)
            body = reply.body if isinstance(reply.body, dict) else {}
            for item in body.get("value") or []:
                yield item
            continuation = body.get("continuationToken") or None
            if continuation is None:
                return

    # --- hybrid connections -------------------------------------------------------------

    def list_hybrid_connections(self, *, page_size: int | None = None) -> AsyncIterator[Document]:
        """Every hybrid connection, fetching pages of ``page_size`` as needed."""
        return self._pages("/hybridconnections", page_size)

    async def hybrid_connection_metrics(self, name: str) -> Document:
        """The hybrid connection's Azure-named counters on the answering node."""
        return await self._document("GET", _hc_path(name) + "/metrics")

    # --- the HTTP inspector (one node's: the one answering) ------------------------------

    async def get_inspector(self, name: str) -> Document:
        """Whether the answering node records the hybrid connection's HTTP requests."""
        return await self._document("GET", _hc_path(name) + "/inspector")

    async def set_inspector(self, name: str, *, enabled: bool) -> Document:
        """Turn the inspector on or off (off forgets what was recorded)."""
        return await self._document("PUT", _hc_path(name) + "/inspector", {"enabled": enabled})

    async def list_inspected_requests(self, name: str) -> list[Document]:
        """The recorded requests, newest first."""
        reply = await self._call("GET", _hc_path(name) + "/inspector/requests")
        body = reply.body if isinstance(reply.body, dict) else {}
        return [item for item in body.get("value") or [] if isinstance(item, dict)]

    async def get_inspected_request(self, name: str, record_id: str) -> Document:
        """One recorded request with its (redacted) headers and capped bodies."""
        path = f"{_hc_path(name)}/inspector/requests/{quote(record_id, safe='')}"
        return await self._document("GET", path)

    async def replay_inspected_request(
        self, name: str, record_id: str, edits: Mapping[str, object] | None = None
    ) -> Document:
        """Send a recorded request again (``edits``: method, target, headers, body).

        The relay sends the replay authorized by this call's own token, as a sender: so this
        one token is signed for the whole namespace (it must cover both ``$mgmt`` and the
        hybrid connection), not for ``$mgmt`` alone as every other call's is.
        """
        path = f"{_hc_path(name)}/inspector/requests/{quote(record_id, safe='')}/replay"
        namespace = audience_for(f"http://{urlsplit(self._base).netloc}/")
        return await self._document("POST", path, dict(edits or {}), audience=namespace)

    # --- the cluster's nodes --------------------------------------------------------------

    async def list_nodes(self) -> Document:
        """``{"value": [node, ...], "self": id}``: the live nodes, the answering one first."""
        return await self._document("GET", "/nodes")

    async def drain_node(self, node_id: str, *, drain: bool = True) -> Document:
        """Drain a node (``drain=False``: take the drain back)."""
        action = "drain" if drain else "undrain"
        return await self._document("POST", f"/nodes/{quote(node_id, safe='')}/{action}")

    async def get_hybrid_connection(self, name: str) -> Document:
        """One hybrid connection (with ``listenerCount`` and ``etag``)."""
        return await self._document("GET", _hc_path(name))

    async def put_hybrid_connection(
        self, name: str, fields: Mapping[str, object] | None = None, *, if_match: str | None = None
    ) -> Document:
        """Create or replace a hybrid connection; fields left out take their defaults."""
        return await self._document("PUT", _hc_path(name), dict(fields or {}), if_match=if_match)

    async def update_hybrid_connection(
        self, name: str, fields: Mapping[str, object], *, if_match: str | None = None
    ) -> Document:
        """Change only ``fields`` (PATCH)."""
        return await self._document("PATCH", _hc_path(name), dict(fields), if_match=if_match)

    async def delete_hybrid_connection(self, name: str, *, if_match: str | None = None) -> None:
        """Delete a hybrid connection (its listeners are closed)."""
        await self._call("DELETE", _hc_path(name), if_match=if_match)

    # --- rules (hc None: namespace rules) -----------------------------------------------

    async def list_rules(self, hc: str | None = None) -> list[Document]:
        """The rules of a hybrid connection or of the namespace (without keys)."""
        reply = await self._call("GET", _rules_path(hc))
        body = reply.body if isinstance(reply.body, dict) else {}
        return list(body.get("value") or [])

    async def get_rule(self, name: str, hc: str | None = None) -> Document:
        """One rule, with its keys."""
        return await self._document("GET", f"{_rules_path(hc)}/{quote(name, safe='')}")

    async def put_rule(self, name: str, rights: list[str], hc: str | None = None) -> Document:
        """Create a rule or change its rights (``["Listen", "Send"]``); answers its keys."""
        path = f"{_rules_path(hc)}/{quote(name, safe='')}"
        return await self._document("PUT", path, {"rights": rights})

    async def delete_rule(self, name: str, hc: str | None = None) -> None:
        """Delete a rule."""
        await self._call("DELETE", f"{_rules_path(hc)}/{quote(name, safe='')}")

    async def regenerate_key(
        self, name: str, key_type: KeyType, hc: str | None = None, *, key: str | None = None
    ) -> Document:
        """Replace a rule's primary or secondary key (``key`` None: a random one)."""
        path = f"{_rules_path(hc)}/{quote(name, safe='')}/regenerate"
        body: dict[str, object] = {"keyType": key_type}
        if key is not None:
            body["key"] = key
        return await self._document("POST", path, body)

    # --- devices ------------------------------------------------------------------------

    def list_devices(self, *, page_size: int | None = None) -> AsyncIterator[Document]:
        """Every device, fetching pages of ``page_size`` as needed."""
        return self._pages("/devices", page_size)

    def search_devices(
        self,
        *,
        prefix: str | None = None,
        contains: str | None = None,
        status: Literal["enabled", "disabled"] | None = None,
        connection_state: Literal["connected", "disconnected"] | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Document]:
        """The devices matching every term given, in deviceId order (the dashboard's search).

        The relay examines at most ``device_search_scan`` devices per page, so a page may
        be short or empty; this follows the continuation tokens to the end.
        """
        terms = {
            "prefix": prefix,
            "contains": contains,
            "status": status,
            "connectionState": connection_state,
        }
        query = {name: value for name, value in terms.items() if value}
        return self._pages("/devices", page_size, query)

    async def regenerate_device_key(
        self, device_id: str, key_type: Literal["primary", "secondary"], *, key: str | None = None
    ) -> Document:
        """Give a SAS device a new primary or secondary key (``key`` None: a random one)."""
        body: dict[str, object] = {"keyType": key_type}
        if key is not None:
            body["key"] = key
        return await self._document("POST", _device_path(device_id) + "/regenerateKey", body)

    async def device_timeline(self, device_id: str) -> Document:
        """The device's connects, disconnects and auth failures seen by the answering node."""
        return await self._document("GET", _device_path(device_id) + "/timeline")

    async def get_device(self, device_id: str) -> Document:
        """One device (its ``etag`` is the one to pass to replace/delete)."""
        return await self._document("GET", _device_path(device_id))

    async def create_device(self, device_id: str, fields: Mapping[str, object]) -> Document:
        """Create a device; 409 when it exists."""
        return await self._document("PUT", _device_path(device_id), dict(fields))

    async def replace_device(
        self, device_id: str, fields: Mapping[str, object], *, if_match: str
    ) -> Document:
        """Replace a device when its etag is still ``if_match`` (``*``: whatever it is)."""
        return await self._document("PUT", _device_path(device_id), dict(fields), if_match=if_match)

    async def update_device(self, device_id: str, changes: Mapping[str, object]) -> Document:
        """Read the device, apply top-level ``changes`` and write it back with If-Match.

        A concurrent change in between makes the write fail with 412.
        """
        current = await self.get_device(device_id)
        etag = str(current.get("etag") or "*")
        merged = {**current, **changes}
        return await self.replace_device(device_id, merged, if_match=etag)

    async def set_device_status(
        self,
        device_id: str,
        status: Literal["enabled", "disabled"],
        *,
        reason: str | None = None,
    ) -> Document:
        """Disable (its live streams are cut) or enable a device."""
        return await self.update_device(device_id, {"status": status, "statusReason": reason})

    async def delete_device(self, device_id: str, *, if_match: str | None = None) -> None:
        """Delete a device; with ``if_match`` only while its etag is that one."""
        await self._call("DELETE", _device_path(device_id), if_match=if_match)

    # --- jobs (bulk import / export of devices) -----------------------------------------

    async def start_import(
        self, path: str | Path, *, progress: Callable[[int, int], None] | None = None
    ) -> Document:
        """Upload a JSON Lines file of device documents; answers the (queued) job.

        ``progress(bytes_sent, total_bytes)`` is called as the file streams out.
        """
        headers = {"Authorization": self._auth(), "Content-Type": "application/x-ndjson"}
        async with self._get_session().post(
            self._url("/jobs/import"),
            data=_file_chunks(Path(path), progress),
            headers=headers,
            ssl=self._ssl or True,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=self._timeout.total),
        ) as response:
            raw = await response.read()
            doc: Any = _loads(raw)
            if response.status >= 400:
                raise _error(response.status, response.reason, doc)
            if not isinstance(doc, dict):
                raise AdminApiError(response.status, "BadResponse", "no job document")
            return doc

    async def start_export(self) -> Document:
        """Start exporting every device; answers the (queued) job."""
        return await self._document("POST", "/jobs/export")

    async def get_job(self, job_id: str) -> Document:
        """One job: ``status`` is enqueued, running, completed or failed."""
        return await self._document("GET", "/jobs/" + quote(job_id, safe=""))

    async def wait_job(self, job_id: str, *, poll: float = 0.2) -> Document:
        """Poll a job until it has completed or failed; answers its last document."""
        while True:
            job = await self.get_job(job_id)
            if job.get("status") in ("completed", "failed"):
                return job
            await asyncio.sleep(poll)

    async def download_export(self, job_id: str, path: str | Path) -> int:
        """Write a completed export job's JSON Lines to ``path``; answers the byte count."""
        headers = {"Authorization": self._auth()}
        url = self._url(f"/jobs/{quote(job_id, safe='')}/output")
        written = 0
        async with self._get_session().get(
            url,
            headers=headers,
            ssl=self._ssl or True,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=self._timeout.total),
        ) as response:
            if response.status >= 400:
                raise _error(response.status, response.reason, _loads(await response.read()))
            f = await asyncio.to_thread(Path(path).open, "wb")
            try:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    await asyncio.to_thread(f.write, chunk)
                    written += len(chunk)
            finally:
                await asyncio.to_thread(f.close)
        return written

    # --- events -------------------------------------------------------------------------

    async def events(
        self, *, last_event_id: str | None = None, since: str | None = None
    ) -> AsyncIterator[Document]:
        """The relay's lifecycle events (Server-Sent Events), as they happen, for ever.

        The relay first replays the events it kept after ``last_event_id`` (a
        sequenceNumber; ``"0"``: all kept) and/or at or after ``since`` (an ISO 8601
        time with a zone), then sends live ones.
        """
        headers = {"Authorization": self._auth(), "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        params = {"since": since} if since is not None else None
        async with self._get_session().get(
            self._url("/events", params),
            headers=headers,
            ssl=self._ssl or True,
            timeout=aiohttp.ClientTimeout(total=None),
        ) as response:
            if response.status >= 400:
                raise _error(response.status, response.reason, _loads(await response.read()))
            data: list[str] = []
            async for raw_line in response.content:
                line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if data:
                        doc = _loads("\n".join(data).encode())
                        data = []
                        if isinstance(doc, dict):
                            yield doc
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))


def _loads(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


_CHUNK: Final = 64 * 1024


async def _file_chunks(
    path: Path, progress: Callable[[int, int], None] | None
) -> AsyncIterator[bytes]:
    total = (await asyncio.to_thread(path.stat)).st_size
    sent = 0
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent, total)
    finally:
        await asyncio.to_thread(f.close)
    if progress is not None and sent == 0:
        progress(0, total)


def _error(status: int, reason: str | None, doc: object) -> AdminApiError:
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        tracking = error.get("trackingId")
        return AdminApiError(
            status,
            str(error.get("code") or "HttpError"),
            str(error.get("message") or reason or ""),
            str(tracking) if tracking is not None else None,
        )
    return AdminApiError(status, "HttpError", reason or f"HTTP {status}")
