"""Run Microsoft's Node Hybrid Connections clients (hyco-ws, hyco-https) from Python tests.

The driver scripts live in ``tests/e2e/node`` (the header of each script lists its parameters
and events). Each script takes one JSON object as its only argument and prints one JSON object per
line on stdout, every one with an ``"event"`` key; failures end with an ``{"event": "error", ...}``
line and a non-zero exit code.

Typical use::

    if not node_available():
        pytest.skip("node/npm not installed")
    ensure_node_modules()
    async with NodeProcess("hyco_ws_listener.js", {"uri": uri, "keyName": k, "key": s}) as listener:
        await listener.next_event("listening", timeout=10)
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "NODE_DIR",
    "NodeProcess",
    "NodeProcessError",
    "NodeSetupError",
    "ensure_node_modules",
    "hyco_uri",
    "node_available",
    "pattern_bytes",
    "pattern_text",
]

JSONDict = dict[str, Any]

NODE_DIR = Path(__file__).resolve().parent.parent / "e2e" / "node"
"""Directory holding package.json, package-lock.json and the hyco_* driver scripts."""

NPM_CI_TIMEOUT = 600.0
# Linux caps one argv string at 128 KiB; larger parameters go through a file ("@path").
_MAX_ARGV_PARAMS = 100_000
_STDOUT_LINE_LIMIT = 64 * 1024 * 1024  # result lines carry echoed payloads (base64)
_KEEP_STDERR = 256 * 1024


class NodeSetupError(RuntimeError):
    """node/npm missing or ``npm ci`` failed; the message carries npm's output."""


class NodeProcessError(RuntimeError):
    """A driver script failed, exited early, or did not produce the expected event in time."""


@functools.cache
def _node_version() -> tuple[int, ...] | None:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        return None
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        return tuple(int(p) for p in out.lstrip("v").split("."))
    except ValueError:
        return None


def node_available() -> bool:
    """True if ``node`` (>= 18) and ``npm`` are on PATH."""
    version = _node_version()
    return version is not None and version >= (18,)


def _install_marker(node_modules: Path) -> Path:
    # npm writes this "hidden lockfile" at the end of every successful install.
    return node_modules / ".package-lock.json"


def _needs_install(node_modules: Path, lockfile: Path) -> bool:
    marker = _install_marker(node_modules)
    if not marker.is_file():
        return True
    return marker.stat().st_mtime < lockfile.stat().st_mtime


def ensure_node_modules() -> Path:
    """Install the pinned Node dependencies if needed and return the ``node_modules`` path.

    Runs ``npm ci --no-audit --no-fund`` in :data:`NODE_DIR` when ``node_modules`` is missing or
    older than ``package-lock.json``. Concurrent callers (e.g. pytest-xdist workers) are serialised
    with a file lock. Raises :class:`NodeSetupError` (with npm's output) on failure.
    """
    node_modules = NODE_DIR / "node_modules"
    lockfile = NODE_DIR / "package-lock.json"
    if not lockfile.is_file():
        raise NodeSetupError(f"{lockfile} is missing")
    if not _needs_install(node_modules, lockfile):
        return node_modules
    npm = shutil.which("npm")
    if npm is None:
        raise NodeSetupError("npm is not on PATH")
    lock_path = Path(tempfile.gettempdir()) / "hybridrelay-npm-ci.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _needs_install(node_modules, lockfile):  # another worker did it meanwhile
                return node_modules
            try:
                proc = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund"],
                    cwd=NODE_DIR,
                    capture_output=True,
                    text=True,
                    timeout=NPM_CI_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise NodeSetupError(f"npm ci timed out after {NPM_CI_TIMEOUT:.0f} s") from exc
            if proc.returncode != 0 or _needs_install(node_modules, lockfile):
                raise NodeSetupError(
                    f"npm ci failed in {NODE_DIR} (exit {proc.returncode})\n"
                    f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return node_modules


def hyco_uri(base: str, path: str, action: str, query: str | None = None) -> str:
    """Hand-build a hyco-style URI: ``{base}/$hc/{path}?[{query}&]sb-hc-action={action}``.

    ``base`` is ``ws://host:port`` or ``wss://host:port`` (hyco's own helpers force
    ``wss://…:443``). Pass the same string to the script as ``uri``: the scripts derive the token
    audience from it exactly like hyco does.
    """
    q = f"{query}&" if query else ""
    return f"{base.rstrip('/')}/$hc/{path}?{q}sb-hc-action={action}"


def pattern_bytes(n: int, offset: int = 0) -> bytes:
    """The scripts' generated binary payload (``/big/N``, ``"size"``): byte i = (offset+i) % 251."""
    return bytes((offset + i) % 251 for i in range(n))


_TEXT_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def pattern_text(n: int) -> str:
    """The scripts' generated text payload (a ``{"type": "text", "size": N}`` message)."""
    return "".join(_TEXT_ALPHABET[(i % 251) % len(_TEXT_ALPHABET)] for i in range(n))


class NodeProcess:
    """``node <script> '<json params>'`` as an async context manager.

    * ``await next_event(kind, timeout)`` returns the oldest not yet returned event of that kind
      (``kind=None``: of any kind); events of other kinds stay available for later calls. While
      waiting for a kind other than ``"error"``, a fatal ``error`` event raises
      :class:`NodeProcessError` at once, as does the process ending without the event.
    * ``await wait(timeout)`` waits for the exit code (``TimeoutError`` if still running).
    * On exit of the ``async with`` block the process gets SIGTERM, then SIGKILL after ``grace``
      seconds, and is reaped. stdout lines that are not JSON objects are kept in :attr:`noise`;
      stderr is kept for diagnostics (:meth:`diagnostics`).
    """

    def __init__(
        self,
        script: str | os.PathLike[str],
        params: Mapping[str, Any],
        *,
        env: Mapping[str, str | None] | None = None,
        grace: float = 3.0,
    ) -> None:
        path = Path(script)
        self.script = path if path.is_absolute() else NODE_DIR / path
        self.params: JSONDict = dict(params)
        self.env_overrides: dict[str, str | None] = dict(env or {})
        self.grace = grace
        self.events: list[JSONDict] = []
        self.noise: list[str] = []
        self._stderr = bytearray()
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._stdout_done = False
        self._params_file: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("NodeProcess already started")
        node = shutil.which("node")
        if node is None:
            raise NodeSetupError("node is not on PATH")
        arg = json.dumps(self.params)
        if len(arg.encode()) > _MAX_ARGV_PARAMS:
            fd, name = tempfile.mkstemp(prefix="hyco-params-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                f.write(arg)
            self._params_file = Path(name)
            arg = "@" + name
        env = dict(os.environ)
        for key, value in self.env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self._proc = await asyncio.create_subprocess_exec(
            node,
            str(self.script),
            arg,
            cwd=NODE_DIR,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_STDOUT_LINE_LIMIT,
        )
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_stdout(self._proc.stdout)),
            asyncio.create_task(self._read_stderr(self._proc.stderr)),
        ]

    async def stop(self) -> int | None:
        """Terminate (SIGTERM, then SIGKILL after ``grace`` s), reap, and return the exit code."""
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), self.grace)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            await self._finish_readers()
        finally:
            if self._params_file is not None:
                self._params_file.unlink(missing_ok=True)
                self._params_file = None
        return proc.returncode

    async def _finish_readers(self) -> None:
        if not self._readers:
            return
        _done, pending = await asyncio.wait(self._readers, timeout=5.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    # -- reading -----------------------------------------------------------------------------

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    raw = await stream.readline()
                except ValueError:  # line longer than the limit: keep a prefix for diagnostics
                    self.noise.append("<overlong stdout line dropped>")
                    continue
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    obj = None
                if isinstance(obj, dict) and isinstance(obj.get("event"), str):
                    self.events.append(obj)
                else:
                    self.noise.append(line)
                self._changed.set()
        finally:
            self._stdout_done = True
            self._changed.set()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self._stderr += chunk
            if len(self._stderr) > _KEEP_STDERR:
                del self._stderr[: len(self._stderr) - _KEEP_STDERR]

    # -- public API --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    @property
    def stderr(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def events_of(self, kind: str) -> list[JSONDict]:
        """All events of ``kind`` seen so far, returned by :meth:`next_event` or not."""
        return [e for e in self.events if e["event"] == kind]

    def _take(self, kind: str | None) -> JSONDict | None:
        for i, event in enumerate(self.events):
            if i not in self._consumed and (kind is None or event["event"] == kind):
                self._consumed.add(i)
                return event
        return None

    def _fatal_error(self) -> JSONDict | None:
        for i, event in enumerate(self.events):
            if i not in self._consumed and event["event"] == "error" and event.get("fatal", True):
                return event
        return None

    async def next_event(self, kind: str | None = None, timeout: float = 10.0) -> JSONDict:
        """Return the oldest unreturned event of ``kind`` (any if ``None``); wait ``timeout`` s."""
        if self._proc is None:
            raise RuntimeError("NodeProcess not started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            event = self._take(kind)
            if event is not None:
                return event
            if kind != "error" and kind is not None:
                error = self._fatal_error()
                if error is not None:
                    raise NodeProcessError(
                        f"{self.script.name} reported an error while waiting for {kind!r}: "
                        f"{error.get('message')}\n{self.diagnostics()}"
                    )
            if self._stdout_done:
                if self._proc.returncode is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._proc.wait(), 1.0)
                raise NodeProcessError(
                    f"{self.script.name} ended (exit {self._proc.returncode}) without a "
                    f"{kind or 'any'!r} event\n{self.diagnostics()}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NodeProcessError(
                    f"no {kind or 'any'!r} event from {self.script.name} within {timeout} s\n"
                    f"{self.diagnostics()}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit (``TimeoutError`` if it does not); return its exit code."""
        if self._proc is None:
            raise RuntimeError("NodeProcess not started")
        code = await asyncio.wait_for(self._proc.wait(), timeout)
        await self._finish_readers()
        return code

    def diagnostics(self, max_events: int = 30) -> str:
        """Readable state for assertion messages: exit code, events, non-JSON output, stderr."""
        lines = [f"script: {self.script}", f"pid: {self.pid}  exit code: {self.returncode}"]
        recent = self.events[-max_events:]
        lines.append(f"events ({len(self.events)} total, last {len(recent)}):")
        lines.extend("  " + _shorten(json.dumps(e)) for e in recent)
        if self.noise:
            lines.append("non-JSON stdout:")
            lines.extend("  " + _shorten(n) for n in self.noise[-max_events:])
        err = self.stderr.strip()
        lines.append("stderr:" + (("\n" + err[-8000:]) if err else " (empty)"))
        return "\n".join(lines)


def _shorten(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
