"""nginx as a WebSocket reverse proxy, run by the bench as a foreground child (issue 7, item 2).

The config is written to a temporary directory: ``daemon off``, one worker, pid file,
error log and temp paths inside that directory, ``proxy_buffering off`` and 64 KiB
proxy buffers, HTTP/1.1 to the upstream with the Upgrade/Connection headers passed on,
so that a WebSocket handshake through it reaches the upstream and the upgraded
connection is then copied byte for byte in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.proc import descendants, free_port, proc_cpu_seconds, process_name, stop_process

__all__ = ["NginxError", "NginxProxy", "find_nginx", "free_port", "nginx_version"]

SEARCH: Final = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")

CONFIG: Final = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


class NginxError(Exception):
    """nginx could not be started; the message has the end of its error log."""


def find_nginx() -> str | None:
    """``nginx`` on PATH, else the usual sbin locations (not on a normal user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in SEARCH:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_version(binary: str) -> str:
    """``nginx -v`` says e.g. ``nginx version: nginx/1.22.1`` (on stderr)."""
    try:
        done = subprocess.run(  # our own argv, no shell
            [binary, "-v"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (done.stderr or done.stdout).strip()
    return text.split(":", 1)[1].strip() if ":" in text else text


@dataclass
class NginxProxy:
    """``nginx -p TMP -c TMP/nginx.conf -e TMP/error.log`` in front of ``upstream`` (host:port)."""

    binary: str
    directory: Path
    upstream: str
    port: int = 0
    process: asyncio.subprocess.Process | None = None
    _workers: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    async def start(self, wait_s: float = 10.0, attempts: int = 3) -> str:
        """Start nginx on a free port; a port lost to a race is retried with another."""
        self.directory.mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(attempts):
            self.port = free_port()
            config = self.directory / "nginx.conf"
            config.write_text(
                CONFIG.format(tmp=self.directory, port=self.port, upstream=self.upstream), "utf-8"
            )
            self.process = await asyncio.create_subprocess_exec(
                self.binary,
                "-p",
                str(self.directory),
                "-c",
                str(config),
                "-e",
                str(self.error_log),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            if await self._wait_listening(wait_s):
                self._workers = descendants(self.process.pid)
                return self.url
            last = self.log_tail()
            await self.stop()
            if "Address already in use" not in last:
                break
        raise NginxError(f"nginx did not start:\n{last}")

    async def _wait_listening(self, wait_s: float) -> bool:
        assert self.process is not None
        try:
            async with asyncio.timeout(wait_s):
                while self.process.returncode is None:
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    except OSError:
                        await asyncio.sleep(0.02)  # polling a port nginx has not bound yet
                        continue
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    return True
        except TimeoutError:
            return False
        return False

    def cpu_seconds(self) -> float | None:
        """user+system CPU of the master and its workers (Linux /proc), else None."""
        if self.process is None:
            return None
        total = 0.0
        for pid in [self.process.pid, *self._workers]:
            value = proc_cpu_seconds(pid)
            if value is None:
                return None
            total += value
        return total

    @property
    def pids(self) -> list[int]:
        return [] if self.process is None else [self.process.pid, *self._workers]

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (nginx's fast shutdown), then SIGKILL the master and its workers."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        workers = descendants(proc.pid) or self._workers
        await stop_process(proc, grace_s=grace_s)
        # Workers outlive a killed master; any still running are nginx processes of ours.
        for pid in workers:
            if "nginx" in process_name(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.error_log.read_text("utf-8", "replace")
        except OSError:
            return "(no error log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty error log)"
