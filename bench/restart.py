"""How long after a relay restart are the agents back? ``python -m bench.restart --runs 5``.

The README quickstart as child processes: ``hybridrelay relay serve`` (development
default, data in a temporary directory), a TCP echo target, and two agents on it: one
``hybridrelay listen`` from flags, one ``hybridrelay listen --config``. Each run sends
the relay SIGTERM, starts it again on the same port and directory, and reads from the
logs' timestamps (one clock, one machine) when each agent's control channel is open
again: after the new relay's ``relay_started``, and after the SIGTERM. A measurement
by hand for issue 12's closing note, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

_TS: Final = re.compile(r"ts=(\S+)Z ")
ROOT: Final = "RootManageSharedAccessKey"
# BENCH_RESTART_LOGS=1: the agents log every attempt and their logs are printed at the end.
_LOG_LEVEL: Final = ("--log-level", "debug") if os.environ.get("BENCH_RESTART_LOGS") else ()


def _ts(line: str) -> float:
    match = _TS.search(line)
    if match is None:
        raise ValueError(f"no timestamp in {line!r}")
    stamp = dt.datetime.fromisoformat(match.group(1)).replace(tzinfo=dt.UTC)
    return stamp.timestamp()


class Child:
    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, name: str, *args: str, cwd: Path, env: dict[str, str]) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hybridrelay",
            *args,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(name, proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode("utf-8", "replace").rstrip())
            self._changed.set()
        self._changed.set()

    async def wait_for(self, pattern: str, after: int = 0) -> int:
        """Index of the first line at or after ``after`` matching ``pattern`` (within 60 s)."""
        regex = re.compile(pattern)
        async with asyncio.timeout(60):
            while True:
                self._changed.clear()
                for i in range(after, len(self.lines)):
                    if regex.search(self.lines[i]):
                        return i
                if self._reader.done():
                    raise RuntimeError(f"{self.name} ended:\n" + "\n".join(self.lines))
                await self._changed.wait()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            self._reader.cancel()
            await self._reader


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def measure(runs: int) -> dict[str, list[float]]:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target = f"tcp://127.0.0.1:{echo.sockets[0].getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDRELAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    results: dict[str, list[float]] = {
        "flags_after_ready": [],
        "flags_after_sigterm": [],
        "config_after_ready": [],
        "config_after_sigterm": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        relay = await Child.start("relay", "relay", "serve", "--port", "0", cwd=cwd, env=env)
        i = await relay.wait_for(r"development mode: rule \S+ key (\S+)")
        key = re.search(r"key (\S+)", relay.lines[i]).group(1)  # type: ignore[union-attr]
        i = await relay.wait_for(r"relay ready at ws://")
        # "relay ready at ws://host:port" and, when the dashboard is served, "(dashboard: ...)".
        url = re.search(r"relay ready at (ws://\S+)", relay.lines[i]).group(1)  # type: ignore[union-attr]
        port = url.rsplit(":", 1)[1]
        env_key = {**env, "HYBRIDRELAY_KEY": key}
        (cwd / "agent.toml").write_text(
            f'relay = "{url}"\nagent_id = "bench"\n[[mappings]]\nhc = "config"\n'
            f'target = "{target}"\nkey_name = "{ROOT}"\nkey_env = "HYBRIDRELAY_KEY"\n',
            "utf-8",
        )
        agents: dict[str, Child] = {}
        try:
            for _ in range(runs):
                # Fresh agents each run: back-to-back restarts seconds apart would be a
                # flapping relay to them, which the policy backs off on purpose.
                agents = {
                    "flags": await Child.start(
                        "listen(flags)",
                        *_LOG_LEVEL,
                        "listen",
                        "--relay",
                        url,
                        "--hc",
                        "flags",
                        "--target",
                        target,
                        "--key-name",
                        ROOT,
                        "--key-env",
                        "HYBRIDRELAY_KEY",
                        cwd=cwd,
                        env=env_key,
                    ),
                    "config": await Child.start(
                        "listen(config)",
                        *_LOG_LEVEL,
                        "listen",
                        "--config",
                        "agent.toml",
                        cwd=cwd,
                        env=env_key,
                    ),
                }
                seen = {
                    n: await a.wait_for("event=control_channel_open") for n, a in agents.items()
                }
                sigterm = time.time()
                await relay.stop()
                relay = await Child.start(
                    "relay", "relay", "serve", "--port", port, cwd=cwd, env=env
                )
                started = _ts(relay.lines[await relay.wait_for(r"event=relay_started")])
                for name, agent in agents.items():
                    seen[name] = await agent.wait_for("event=control_channel_open", seen[name] + 1)
                    back = _ts(agent.lines[seen[name]])
                    results[f"{name}_after_ready"].append(back - started)
                    results[f"{name}_after_sigterm"].append(back - sigterm)
                for agent in agents.values():
                    await agent.stop()
                    if "listen_refused" in "\n".join(agent.lines):
                        raise RuntimeError(f"{agent.name}: 401 after the restart")
                    if os.environ.get("BENCH_RESTART_LOGS"):
                        print(f"--- {agent.name}", *agent.lines, sep="\n", file=sys.stderr)
        finally:
            for child in (*agents.values(), relay):
                await child.stop()
            echo.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="relay restarts to measure")
    args = parser.parse_args()
    results = asyncio.run(measure(args.runs))
    summary = {
        name: {
            "runs": [round(v, 3) for v in values],
            "median_s": round(statistics.median(values), 3),
            "max_s": round(max(values), 3),
        }
        for name, values in results.items()
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
