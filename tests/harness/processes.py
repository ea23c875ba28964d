"""``python -m hybridrelay ...`` as child processes, for the e2e tests.

Each :class:`CliProcess` keeps the child's combined stdout/stderr as lines,
lets a test await a line matching a regex (never a sleep), and on exit
terminates, kills if it must, and reaps the child. A :class:`ProcessGroup`
owns several and closes them in reverse order; its log is for printing when a
test fails.

SAS keys never appear on a command line (``ps`` shows those): they are passed in
the ``HYBRIDRELAY_KEY`` environment variable and named with ``--key-env``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from .timing import seconds

__all__ = [
    "KEY_ENV",
    "CliProcess",
    "ProcessExitedError",
    "ProcessGroup",
    "forward_args",
    "forwarded_port",
    "listen_args",
]

KEY_ENV: Final = "HYBRIDRELAY_KEY"
# Longest output line read whole (asyncio's default is 64 KiB): see relay.OUTPUT_LINE_LIMIT.
OUTPUT_LINE_LIMIT: Final = 1 << 24
_FORWARDING: Final = re.compile(r"forwarding (?P<host>\S+):(?P<port>\d+) -> ")


class ProcessExitedError(AssertionError):
    """The child exited (or closed its output) before printing the awaited line."""


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    # The developer's own HYBRIDRELAY_* settings (a port, a log level) must not leak into
    # tests; the timeout factor is the one we keep.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HYBRIDRELAY_") or k.startswith("HYBRIDRELAY_TEST_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class CliProcess:
    """One ``python -m hybridrelay ARGS`` child with its output captured line by line.

    Use as ``async with CliProcess([...]) as proc:``, or call :meth:`start` and
    :meth:`stop` (a :class:`ProcessGroup` does that).
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.args = list(args)
        self.name = name or " ".join(self.args[:2])
        self._env = _child_env(env or {})
        self._cwd = cwd
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lines: list[str] = []
        self._cursor = 0
        self._eof = False
        self._changed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> Self:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hybridrelay",
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env,
            cwd=self._cwd,
            limit=OUTPUT_LINE_LIMIT,
        )
        self._reader = asyncio.create_task(self._read_output(self._proc))
        return self

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                self._lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
                self._changed.set()
        finally:
            self._eof = True
            self._changed.set()

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; always reaps the child."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(seconds(timeout)):
                    await proc.wait()
            except TimeoutError:
                self._lines.append(f"[harness] no exit {timeout}s after SIGTERM; killed")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            # The pipe ends with the child (its only writer); bounded anyway.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds(5)):
                    await asyncio.shield(self._reader)
            self._reader.cancel()
            await asyncio.wait({self._reader})
        return proc.returncode

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- state -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def output(self) -> str:
        """Everything the child printed so far (stdout and stderr interleaved)."""
        return "\n".join(self._lines)

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    def send_signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(sig)

    async def kill9(self) -> int:
        """SIGKILL the child and reap it: a crash, no chance to close anything."""
        assert self._proc is not None, "not started"
        self.send_signal(signal.SIGKILL)
        return await self._proc.wait()

    async def wait(self, timeout: float = 10.0) -> int:
        """Wait for the child to exit by itself and for the rest of its output."""
        assert self._proc is not None, "not started"
        try:
            async with asyncio.timeout(seconds(timeout)):
                code = await self._proc.wait()
                if self._reader is not None:
                    await asyncio.shield(self._reader)
        except TimeoutError:
            raise TimeoutError(
                f"{self.name}: still running after {timeout}s; output:\n{self.output()}"
            ) from None
        return code

    # -- output ----------------------------------------------------------------------

    async def wait_for_line(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0
    ) -> re.Match[str]:
        """Return the match of the first unseen output line that matches ``pattern``.

        Lines are consumed: the search starts after the line the previous call matched,
        so awaiting the same pattern twice finds two different lines.

        Raises:
            TimeoutError: no such line within ``timeout`` seconds (scaled).
            ProcessExitedError: the child's output ended without such a line.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        try:
            async with asyncio.timeout(seconds(timeout)):
                while True:
                    self._changed.clear()
                    while self._cursor < len(self._lines):
                        line = self._lines[self._cursor]
                        self._cursor += 1
                        match = regex.search(line)
                        if match is not None:
                            return match
                    if self._eof:
                        raise ProcessExitedError(
                            f"{self.name} exited ({self.returncode}) before printing "
                            f"{regex.pattern!r}; output:\n{self.output()}"
                        )
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self.name}: no line matching {regex.pattern!r} within {timeout}s; "
                f"output:\n{self.output()}"
            ) from None


class ProcessGroup:
    """Starts CLI children and closes them in reverse order on exit."""

    def __init__(self) -> None:
        self.processes: list[CliProcess] = []

    async def start(
        self,
        *args: str,
        key: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> CliProcess:
        """Start ``python -m hybridrelay ARGS``; ``key`` goes into ``$HYBRIDRELAY_KEY``."""
        child_env = dict(env or {})
        if key is not None:
            child_env[KEY_ENV] = key
        proc = CliProcess(args, env=child_env, cwd=cwd, name=name)
        self.processes.append(proc)
        return await proc.start()

    async def close(self) -> None:
        for proc in reversed(self.processes):
            await proc.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def log(self) -> str:
        parts = [
            f"--- {proc.name} (pid {proc.pid}, exit {proc.returncode}) ---\n{proc.output()}"
            for proc in self.processes
        ]
        return "\n".join(parts)


def listen_args(relay: str, hc: str, target: str, *, key_name: str) -> list[str]:
    """``listen`` arguments; the key itself comes from ``$HYBRIDRELAY_KEY``."""
    return [
        "listen",
        "--relay", relay,
        "--hc", hc,
        "--target", target,
        "--key-name", key_name,
        "--key-env", KEY_ENV,
    ]  # fmt: skip


def forward_args(relay: str, hc: str, *, key_name: str, local: str = "127.0.0.1:0") -> list[str]:
    """``forward`` arguments; port 0 lets the OS pick, see :func:`forwarded_port`."""
    return [
        "forward",
        "--relay", relay,
        "--hc", hc,
        "--local", local,
        "--key-name", key_name,
        "--key-env", KEY_ENV,
    ]  # fmt: skip


async def forwarded_port(proc: CliProcess, timeout: float = 10.0) -> int:
    """Wait for the forwarder's ``forwarding HOST:PORT -> hc`` line; return PORT."""
    match = await proc.wait_for_line(_FORWARDING, timeout)
    return int(match.group("port"))
