"""What the fuzz targets attack: a relay (in this process or a child process) and its logs.

One relay serves a whole campaign. Its config is written out here in full, so a finding
can be replayed against exactly this relay (``python -m hybridrelay relay serve --config``).
Every log record at ERROR or above, and every record carrying a traceback, is kept (up to
a cap) and counted, so a property can ask "did anything go wrong while this example ran?".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from hybridrelay.logs import KeyValueFormatter
from tests.harness.attack import rss_kib
from tests.harness.peers import ROOT
from tests.harness.raw_http import http_request, open_raw, read_head
from tests.harness.relay import LISTEN_KEY, ROOT_KEY, SEND_KEY, InProcessRelay, load
from tests.harness.timing import seconds

__all__ = [
    "ErrorLog",
    "InProcessSubject",
    "NoRelay",
    "ProcessSubject",
    "Subject",
    "capture_errors",
    "fuzz_config",
]

# Hybrid connections of the fuzz relay, one per target so that no target's listener gets
# another target's accepts or requests.
CONTROL_HC: Final = "fuzz-control"
HTTP_HC: Final = "fuzz-http"  # requires a token
OPEN_HC: Final = "fuzz-open"  # anonymous senders
SPLICE_HC: Final = "fuzz-splice"
ANSWER_HC: Final = "fuzz-answer"

FUZZ_CONFIG: Final = f"""\
# The relay every fuzz campaign attacks (tests/fuzz/subjects.py).
[relay]
host = "127.0.0.1"
port = 0
data_dir = "{{data_dir}}"
ping_interval = 30
# Short waits: a sender whose listener never answers, or a peer that never completes a
# close, costs the campaign this long.
rendezvous_timeout = 3
request_timeout = 3
close_timeout = 1

[[rules]]
name = "{ROOT}"
key = "{ROOT_KEY}"
rights = ["Manage", "Listen", "Send"]

[[hybrid_connections]]
name = "{CONTROL_HC}"
[[hybrid_connections.rules]]
name = "listen-only"
key = "{LISTEN_KEY}"
rights = ["Listen"]
[[hybrid_connections.rules]]
name = "send-only"
key = "{SEND_KEY}"
rights = ["Send"]

[[hybrid_connections]]
name = "{HTTP_HC}"

[[hybrid_connections]]
name = "{OPEN_HC}"
requires_client_authorization = false

[[hybrid_connections]]
name = "{SPLICE_HC}"

[[hybrid_connections]]
name = "{ANSWER_HC}"
request_timeout = 1  # a listener that breaks HTTP mode costs the sender this long
"""


def fuzz_config(directory: Path) -> Path:
    path = directory / "relay.toml"
    path.write_text(FUZZ_CONFIG.format(data_dir=directory / "data"), "utf-8")
    return path


# -------------------------------------------------------------------------------------------- logs

_LOG_CAP: Final = 2000  # kept entries; the count goes on


@dataclass
class ErrorLog:
    """Error-level and traceback-carrying log entries, counted and (up to a cap) kept."""

    count: int = 0
    entries: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.entries) < _LOG_CAP:
            self.entries.append(text[:3000])

    def since(self, mark: int) -> list[str]:
        return self.entries[mark:] if mark < len(self.entries) else []


class _ErrorHandler(logging.Handler):
    def __init__(self, log: ErrorLog) -> None:
        super().__init__(logging.DEBUG)
        self._log = log
        self.setFormatter(KeyValueFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            try:
                self._log.add(self.format(record))
            except Exception:  # noqa: BLE001 - a record that cannot be formatted still counts
                self._log.add(f"{record.name}: {record.msg!r} (unformattable)")


@contextlib.contextmanager
def capture_errors() -> Iterator[ErrorLog]:
    """Keep every ERROR (or traceback) record logged in this process while the block runs."""
    log = ErrorLog()
    handler = _ErrorHandler(log)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield log
    finally:
        root.removeHandler(handler)


# ---------------------------------------------------------------------------------------- subjects


class Subject(Protocol):
    """A running relay as the targets see it."""

    url: str  # ws://127.0.0.1:PORT
    errors: ErrorLog
    kind: str  # "in-process" or "process"

    @property
    def port(self) -> int: ...

    def rss_kib(self) -> int | None: ...

    def exited(self) -> bool: ...

    async def stop(self) -> None: ...


async def healthy(subject: Subject) -> bool:
    """GET /healthz over a fresh socket answers 200 (always true without a relay)."""
    if subject.exited():
        return False
    if subject.kind == "none":
        return True
    try:
        async with asyncio.timeout(seconds(5)), open_raw(subject.url) as (reader, writer):
            writer.write(http_request("GET", "/healthz", "fuzz"))
            head = await read_head(reader)
    except (OSError, TimeoutError, EOFError, ValueError, asyncio.LimitOverrunError):
        return False  # refused, silent, cut or not HTTP
    return head.status == 200


@dataclass
class InProcessSubject:
    """The relay's ``run()`` on this event loop: fast; RSS is this whole process's."""

    relay: InProcessRelay
    errors: ErrorLog
    url: str = ""
    kind: str = "in-process"

    @classmethod
    async def start(cls, directory: Path, errors: ErrorLog) -> InProcessSubject:
        relay = await InProcessRelay(load(fuzz_config(directory))).start()
        return cls(relay=relay, errors=errors, url=relay.url)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rss_kib(self) -> int | None:
        return rss_kib(os.getpid())

    def exited(self) -> bool:
        task = self.relay._task  # the harness keeps the run() task there
        return task is None or task.done()

    async def stop(self) -> None:
        await self.relay.stop()


@dataclass
class NoRelay:
    """For targets that attack the agent (the hostile relay is the fuzz harness itself)."""

    errors: ErrorLog
    url: str = ""
    kind: str = "none"

    @property
    def port(self) -> int:
        return 0

    def rss_kib(self) -> int | None:
        return rss_kib(os.getpid())

    def exited(self) -> bool:
        return False

    async def stop(self) -> None:
        return None


_READY: Final = re.compile(r"relay ready at (\S+)")
_LINE_CAP: Final = 1 << 20  # a longer log line is judged in pieces of this size
_ERROR_LINE: Final = re.compile(r"level=(error|critical)|\bexc=|^Traceback|Traceback \(most recent")


@dataclass
class ProcessSubject:
    """``python -m hybridrelay relay serve`` as a child: its own RSS, its own log."""

    errors: ErrorLog
    url: str = ""
    kind: str = "process"
    process: asyncio.subprocess.Process | None = None
    tail: list[str] = field(default_factory=list)
    lines: int = 0
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, directory: Path, errors: ErrorLog) -> ProcessSubject:
        subject = cls(errors=errors)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDRELAY_")}
        # Warnings and up: one line per misbehaving peer is what an operator would see.
        env |= {"PYTHONUNBUFFERED": "1", "HYBRIDRELAY_LOG_LEVEL": "warning"}
        config = fuzz_config(directory)
        subject.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hybridrelay", "relay", "serve", "--config", str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        subject._reader = asyncio.create_task(subject._read(ready))
        try:
            async with asyncio.timeout(seconds(30)):
                subject.url = await ready
        except (TimeoutError, RuntimeError) as exc:
            await subject.stop()
            raise RuntimeError("fuzz relay did not start:\n" + "\n".join(subject.tail)) from exc
        return subject

    async def _read(self, ready: asyncio.Future[str]) -> None:
        # Chunks, not readline(): a hostile input can make the relay log a line longer
        # than any StreamReader limit, and a reader that dies on it stops draining the
        # pipe, so the relay blocks on its next log write.
        assert self.process is not None
        assert self.process.stdout is not None
        pending = b""
        while chunk := await self.process.stdout.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            if len(pending) > _LINE_CAP:
                lines.append(pending)
                pending = b""
            for line in lines:
                self._line(line.decode("utf-8", "replace").rstrip(), ready)
        if pending:
            self._line(pending.decode("utf-8", "replace").rstrip(), ready)
        if not ready.done():
            ready.set_exception(RuntimeError("relay exited"))

    def _line(self, text: str, ready: asyncio.Future[str]) -> None:
        self.lines += 1
        self.tail.append(text[:3000])
        del self.tail[:-200]
        if not ready.done() and (match := _READY.search(text)):
            ready.set_result(match.group(1))
        elif _ERROR_LINE.search(text):
            self.errors.add(text)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rss_kib(self) -> int | None:
        if self.process is None or self.process.returncode is not None:
            return None
        return rss_kib(self.process.pid)

    def exited(self) -> bool:
        return self.process is None or self.process.returncode is not None

    async def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(seconds(15)):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._reader
