"""Child processes of the benches: /proc readings and a child that announces readiness on a line.

The children themselves are :class:`hybridrelay.dev.children.ChildProcess` (shared with
the dev cluster and the tests).

Every child is stopped with SIGTERM, then SIGKILL after a grace period, on every path.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from hybridrelay.dev.children import (
    OUTPUT_LINE_LIMIT,
    ChildExitedError,
    ChildProcess,
    free_port,
    stop_process,
)

__all__ = [
    "OUTPUT_LINE_LIMIT",
    "LineChild",
    "descendants",
    "free_port",
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


class LineChild(ChildProcess):
    """A child process whose output is kept (last 200 lines) and which says when it is ready.

    ``start()`` returns the first match of ``ready`` in its output (stdout and stderr
    merged), or raises ``RuntimeError`` with the output so far if the child exits or
    the wait runs out first.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        super().__init__(name, argv, env=env, cwd=cwd, keep_lines=200, stop_grace=15.0)

    async def start(self, ready: str, wait_s: float = 20.0) -> re.Match[str]:  # type: ignore[override]
        await super().start()
        try:
            return await self.wait_for_line(ready, wait_s)
        except (TimeoutError, ChildExitedError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else f"{self.name} exited"
            raise RuntimeError(
                f"{self.name} not ready ({why}); its output:\n{self.log_tail()}"
            ) from exc

    @property
    def log_lines(self) -> list[str]:
        return self.lines

    def cpu_seconds(self) -> float | None:
        return proc_cpu_seconds(self.pid)

    async def stop(self, grace: float | None = None) -> int | None:
        return await super().stop(grace)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines[-lines:]) or "(it printed nothing)"
