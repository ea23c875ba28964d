"""Child processes of the benches: /proc readings and a child that announces readiness on a line.

Every child is stopped with SIGTERM, then SIGKILL after a grace period, on every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

# Longest child output line read whole. asyncio's default, 64 KiB, is less than what a
# relay under attack may log in one line (aiohttp quotes malformed requests); a reader
# that died on it would stop draining the pipe and the child would block on its log.
OUTPUT_LINE_LIMIT: Final = 1 << 24

__all__ = [
    "LineChild",
    "descendants",
    "proc_cpu_seconds",
    "process_name",
    "rss_kib",
    "stop_process",
]


def proc_cpu_seconds(pid: int | None) -> float | None:
    """user+system CPU time of a process so far (Linux /proc, 10 ms tick), else None."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int | None) -> int | None:
    """VmRSS of a process in KiB (Linux /proc), else None."""
    if pid is None:
        return None
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def process_name(pid: int) -> str:
    """The ``comm`` of a process, or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Pids whose parent chain leads to ``pid`` (a scan of /proc; Linux only)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


async def stop_process(proc: asyncio.subprocess.Process | None, grace_s: float = 15.0) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns once the child is reaped."""
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace_s):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@dataclass
class LineChild:
    """A child process whose output is kept (last 200 lines) and which says when it is ready.

    ``start()`` returns the first match of ``ready`` in its output (stdout and stderr
    merged), or raises ``RuntimeError`` with the output so far if the child exits or
    the wait runs out first.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    process: asyncio.subprocess.Process | None = None
    log_lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _pattern: re.Pattern[str] | None = None
    _ready: asyncio.Future[re.Match[str]] | None = None

    async def start(self, ready: str, wait_s: float = 20.0) -> re.Match[str]:
        self._pattern = re.compile(ready)
        self._ready = asyncio.get_running_loop().create_future()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(self.env) if self.env is not None else None,
            cwd=self.cwd,
            limit=OUTPUT_LINE_LIMIT,
        )
        self._reader = asyncio.create_task(self._read_output())
        try:
            async with asyncio.timeout(wait_s):
                return await self._ready
        except (TimeoutError, RuntimeError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise RuntimeError(
                f"{self.name} not ready ({why}); its output:\n{self.log_tail()}"
            ) from exc

    async def _read_output(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        assert self._ready is not None
        assert self._pattern is not None
        while line := await self.process.stdout.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self.log_lines.append(text)
            del self.log_lines[:-200]
            self._on_line(text)
            if not self._ready.done() and (match := self._pattern.search(text)):
                self._ready.set_result(match)
        if not self._ready.done():
            self._ready.set_exception(RuntimeError(f"{self.name} exited"))

    def _on_line(self, text: str) -> None:
        """Each output line as it comes (for subclasses that watch the output)."""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    def cpu_seconds(self) -> float | None:
        return proc_cpu_seconds(self.pid)

    async def stop(self) -> None:
        await stop_process(self.process)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._reader
            if self._ready is not None and not self._ready.done():
                self._ready.cancel()
            elif self._ready is not None and not self._ready.cancelled():
                self._ready.exception()  # retrieved, so asyncio does not log it

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_lines[-lines:]) or "(it printed nothing)"
