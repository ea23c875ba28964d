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

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from hybridrelay.dev.children import ChildExitedError, ChildProcess

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
_FORWARDING: Final = re.compile(r"forwarding (?P<host>\S+):(?P<port>\d+) -> ")


ProcessExitedError = ChildExitedError  # the child's output ended before the awaited line


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


class CliProcess(ChildProcess):
    """One ``python -m hybridrelay ARGS`` child with its output captured line by line.

    The harness's :class:`~hybridrelay.dev.children.ChildProcess` with every line kept
    and every wait scaled by the test timeout factor. Use as
    ``async with CliProcess([...]) as proc:``, or call :meth:`start` and :meth:`stop`
    (a :class:`ProcessGroup` does that).
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
        super().__init__(
            name or " ".join(self.args[:2]),
            [sys.executable, "-m", "hybridrelay", *self.args],
            env=_child_env(env or {}),
            cwd=cwd,
            keep_lines=None,
        )

    async def start(self) -> Self:  # type: ignore[override]  # returns itself for chaining
        await super().start()
        return self

    async def stop(self, timeout: float = 10.0) -> int | None:  # type: ignore[override]
        """SIGTERM, then SIGKILL after ``timeout`` seconds (scaled); always reaps the child."""
        return await super().stop(seconds(timeout))

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    async def wait(self, timeout: float = 10.0) -> int:
        """Wait for the child to exit by itself and for the rest of its output."""
        return await super().wait(seconds(timeout))

    async def wait_for_line(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0
    ) -> re.Match[str]:
        """Return the match of the first unseen output line matching ``pattern``.

        Lines are consumed: awaiting the same pattern twice finds two different lines.

        Raises:
            TimeoutError: no such line within ``timeout`` seconds (scaled).
            ProcessExitedError: the child's output ended without such a line.
        """
        return await super().wait_for_line(pattern, seconds(timeout))


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
