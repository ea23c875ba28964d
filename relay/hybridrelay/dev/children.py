"""One child process with its output kept line by line, awaited by pattern, always stopped.

Every child the dev cluster, the benches and the tests start goes through
:class:`ChildProcess`: stdout and stderr merged into one pipe read by one task, the
last lines kept (bounded), a line awaited by regex with a deadline (never a sleep),
and :meth:`ChildProcess.stop`: the stop signal, SIGKILL after a grace period, reaped
on every path. With ``own_group`` the child gets its own session, so a terminal's
Ctrl-C reaches only the parent and the signals go to the whole group (grandchildren
such as nginx workers included).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "OUTPUT_LINE_LIMIT",
    "ChildExitedError",
    "ChildProcess",
    "free_port",
    "stop_process",
]

# Longest output line read whole. asyncio's default, 64 KiB, is less than what a relay
# under attack may log in one line (aiohttp quotes malformed requests); a reader that
# died on it would stop draining the pipe and the child would block on its log.
OUTPUT_LINE_LIMIT: Final = 1 << 24
_REAP_OUTPUT_S: Final = 5.0  # the pipe ends with the child; bounded anyway


class ChildExitedError(RuntimeError):
    """The child's output ended before it printed the awaited line."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out on ``host`` (for programs that cannot bind 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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


class ChildProcess:
    """One child process whose merged output is kept and which is always stopped.

    Args:
        name: Names it in echoed lines and errors.
        argv: The program and its arguments (no shell).
        env: Its whole environment (default: ours).
        cwd: Its working directory.
        echo: Copy each line to our stderr as ``[name] line``.
        keep_lines: How many of its last lines to keep (None: all).
        own_group: Start it in its own session and signal its whole process group.
        stop_signal: What :meth:`stop` sends first.
        stop_grace: Seconds :meth:`stop` waits before SIGKILL.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        echo: bool = False,
        keep_lines: int | None = 500,
        own_group: bool = False,
        stop_signal: int = signal.SIGTERM,
        stop_grace: float = 5.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.stop_grace = stop_grace
        self.process: asyncio.subprocess.Process | None = None
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._echo = echo
        self._own_group = own_group
        self._stop_signal = stop_signal
        self._lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._received = 0  # lines read so far, kept or not
        self._cursor = 0  # the next line wait_for_line looks at, counted like _received
        self._eof = False
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env,
            cwd=self._cwd,
            start_new_session=self._own_group,
            limit=OUTPUT_LINE_LIMIT,
        )
        self._reader = asyncio.create_task(self._read(self.process))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is None:  # pragma: no cover - start() always asks for a pipe
            return
        try:
            while line := await proc.stdout.readline():
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                self._lines.append(text)
                self._received += 1
                if self._echo:
                    sys.stderr.write(f"[{self.name}] {text}\n")
                    sys.stderr.flush()
                self.on_line(text)
                self._changed.set()
        finally:
            self._eof = True
            self._changed.set()

    def on_line(self, text: str) -> None:
        """Each output line as it comes (for subclasses that watch the output)."""

    # --- state ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def exited(self) -> bool:
        return self.returncode is not None

    @property
    def lines(self) -> list[str]:
        """The kept output lines, oldest first."""
        return list(self._lines)

    def output(self) -> str:
        """The kept output (stdout and stderr interleaved)."""
        return "\n".join(self._lines)

    def tail(self, lines: int = 20) -> str:
        kept = list(self._lines)[-lines:]
        return (
            "\n".join(f"  [{self.name}] {line}" for line in kept) or f"  ({self.name}: no output)"
        )

    def search(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        """The first kept output line matching ``pattern``."""
        for line in self._lines:
            if match := pattern.search(line):
                return match
        return None

    # --- waiting --------------------------------------------------------------------------

    async def wait_for_line(
        self, pattern: str | re.Pattern[str], within: float = 10.0
    ) -> re.Match[str]:
        """Return the match of the first unseen output line that matches ``pattern``.

        Lines are consumed: the search starts after the line the previous call matched,
        so awaiting the same pattern twice finds two different lines.

        Raises:
            TimeoutError: No such line within ``within`` seconds.
            ChildExitedError: The child's output ended without such a line.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        try:
            async with asyncio.timeout(within):
                while True:
                    self._changed.clear()
                    first_kept = self._received - len(self._lines)
                    kept = list(self._lines)
                    for index in range(max(self._cursor, first_kept), self._received):
                        self._cursor = index + 1
                        match = regex.search(kept[index - first_kept])
                        if match is not None:
                            return match
                    if self._eof:
                        raise ChildExitedError(
                            f"{self.name} exited ({self.returncode}) before printing "
                            f"{regex.pattern!r}; output:\n{self.output()}"
                        )
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self.name}: no line matching {regex.pattern!r} within {within}s; "
                f"output:\n{self.output()}"
            ) from None

    async def wait(self, within: float = 10.0) -> int:
        """Wait for the child to exit by itself and for the rest of its output."""
        if self.process is None:
            raise RuntimeError(f"{self.name}: not started")
        try:
            async with asyncio.timeout(within):
                code = await self.process.wait()
                if self._reader is not None:
                    await asyncio.shield(self._reader)
        except TimeoutError:
            raise TimeoutError(
                f"{self.name}: still running after {within}s; output:\n{self.output()}"
            ) from None
        return code

    # --- signals and stop -----------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Signal the child (its whole group with ``own_group``) while it runs."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._own_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    async def kill9(self) -> int:
        """SIGKILL the child and reap it: a crash, no chance to close anything."""
        if self.process is None:
            raise RuntimeError(f"{self.name}: not started")
        self.send_signal(signal.SIGKILL)
        return await self.process.wait()

    async def stop(self, grace: float | None = None) -> int | None:
        """The stop signal, SIGKILL after ``grace`` s (default ``stop_grace``); reap."""
        proc = self.process
        if proc is None:
            return None
        grace = self.stop_grace if grace is None else grace
        if proc.returncode is None:
            self.send_signal(self._stop_signal)
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                self._lines.append(f"no exit {grace:.0f} s after the stop signal: killed")
                self._received += 1
                self.send_signal(signal.SIGKILL)
                await proc.wait()
        if self._own_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind in its group
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_REAP_OUTPUT_S):
                    await asyncio.shield(self._reader)
            self._reader.cancel()
            await asyncio.wait({self._reader})
        return proc.returncode
