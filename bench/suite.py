"""The whole of issue 7's benchmark suite in one command: a table on stdout, JSON to a file.

    python -m bench                          # full run (several minutes), bench-results.json
    python -m bench --quick                  # about a minute, smaller sizes and counts
    python -m bench --only bulk,http         # a subset of the sections
    python -m bench --out r.json --plot docs/img/performance.png

Each unit runs as its own child process (``python -m bench.throughput ...`` and so on) in
a new process group, so a crash or a hang in one cannot leave processes behind: the
child gets SIGTERM (it stops its relay, nginx, agents ...), then its whole group gets
SIGKILL after a grace period; leftovers in the group are killed after every unit too.
The exit status is 1 if a unit failed (crashed, timed out, printed no JSON), 130 or 143
on Ctrl-C / SIGTERM, else 0: a missed target is a figure in the table, not a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

from bench.nginx import find_nginx, nginx_version
from bench.report import rows, summary_line
from bench.ssh import openssh_version
from bench.stats import text_table

__all__ = ["SECTIONS", "UNITS", "main"]

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_OUT: Final = Path("bench-results.json")
SECTIONS: Final = (
    "bulk",
    "nginx",
    "peer",
    "connect",
    "rate",
    "pingpong",
    "memory",
    "http",
    "attack",
    "workers",
)
GRACE_S: Final = 30.0  # a unit's time to clean up after SIGTERM


@dataclass(frozen=True, slots=True)
class Unit:
    """One child-process run; ``sections`` are the names ``--only`` selects it by."""

    key: str
    sections: tuple[str, ...]
    module: str
    full: str  # arguments, split on spaces
    quick: str
    timeout_s: float  # full mode; quick mode gets a quarter (at least 120 s)

    def argv(self, quick: bool, selected: Sequence[str]) -> list[str]:
        args = (self.quick if quick else self.full).split()
        if self.key == "latency":
            parts = [s for s in self.sections if s in selected]  # --parts takes section names
            args += ["--parts", ",".join(parts)]
        return args


UNITS: Final = (
    Unit(
        "bulk_64k",
        ("bulk",),
        "bench.throughput",
        "--paths direct,relay --message-kib 64 --size-mib 1024 --rounds 5 --warmup-mib 64",
        "--paths direct,relay --message-kib 64 --size-mib 128 --rounds 2 --warmup-mib 8",
        900,
    ),
    Unit(
        "bulk_1k",
        ("bulk",),
        "bench.throughput",
        "--paths direct,relay --message-kib 1 --size-mib 128 --rounds 5 --warmup-mib 8",
        "--paths direct,relay --message-kib 1 --size-mib 8 --rounds 2 --warmup-mib 1",
        900,
    ),
    # Issue 16: small-message splicing, where the relay's cost per frame shows most.
    Unit(
        "bulk_128",
        ("bulk",),
        "bench.throughput",
        "--paths direct,relay --message-bytes 128 --size-mib 32 --rounds 5 --warmup-mib 2",
        "--paths direct,relay --message-bytes 128 --size-mib 2 --rounds 2 --warmup-mib 0.25",
        900,
    ),
    Unit(
        "nginx",
        ("nginx",),
        "bench.throughput",
        "--paths direct,nginx,relay --message-kib 64 --size-mib 1024 --rounds 5 --warmup-mib 64",
        "--paths direct,nginx,relay --message-kib 64 --size-mib 128 --rounds 2 --warmup-mib 8",
        900,
    ),
    Unit(
        "peer",
        ("peer",),
        "bench.peer",
        "--size-mib 1024 --rounds 3 --warmup-mib 32",
        "--size-mib 64 --rounds 2 --warmup-mib 4",
        1200,
    ),
    Unit(
        "latency",
        ("connect", "rate", "pingpong"),
        "bench.latency",
        "--connects 2000 --rate-connects 3000 --rate-rounds 3 --rounds 10 --round-trips 2000",
        "--quick --rate-rounds 2",
        600,
    ),
    Unit(
        "http",
        ("http",),
        "bench.http",
        "--rounds 5 --duration-s 5 --warmup-s 1",
        "--rounds 2 --duration-s 1.5 --warmup-s 0.5",
        600,
    ),
    Unit("memory", ("memory",), "bench.memory", "--connections 10000", "--quick", 600),
    # Issue 11: legitimate connects while slow clients, ping flooders and junk handshakes
    # attack (a fresh relay per phase). Quick: baseline and all attacks at once, about 40 s.
    Unit("attack", ("attack",), "bench.attack", "", "--quick", 900),
    # Issue 16: connects/s and bulk through one port with 1 vs 2 workers (a private Redis).
    Unit("workers", ("workers",), "bench.workers", "", "--quick", 900),
)


class TerminatedError(Exception):
    """SIGTERM arrived while the suite ran."""


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise TerminatedError


# ---------------------------------------------------------------------------- children


def _pump(stream: IO[str], tail: list[str]) -> None:
    """Echo a child's stderr (indented) and keep its last 40 lines."""
    for line in stream:
        sys.stderr.write("    " + line)
        sys.stderr.flush()
        tail.append(line.rstrip())
        del tail[:-40]


def _kill_group(pgid: int) -> bool:
    """SIGKILL what is left in a unit's process group; True if anything was."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the unit (it stops its own children), then SIGKILL its whole group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
    _kill_group(proc.pid)


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (not idle or iowait), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in fields]
    busy = sum(ticks[:3]) + sum(ticks[5:8])  # user nice system . . irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_unit(unit: Unit, argv: list[str], out: Path, timeout_s: float) -> dict[str, Any]:
    """Run one unit to completion; its record for the suite's JSON."""
    cmd = [sys.executable, "-m", unit.module, *argv, "--out", str(out)]
    print(f"== {unit.key}: python -m {unit.module} {' '.join(argv)}", file=sys.stderr, flush=True)
    record: dict[str, Any] = {"module": unit.module, "args": argv}
    tail: list[str] = []
    busy0, ours0 = busy_cpu_seconds(), children_cpu_seconds() + time.process_time()
    start = time.monotonic()
    proc = subprocess.Popen(  # our own interpreter and module, no shell
        cmd,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: see _stop()
    )
    assert proc.stderr is not None
    pump = threading.Thread(target=_pump, args=(proc.stderr, tail), daemon=True)
    pump.start()
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        rc = None
    except BaseException:
        _stop(proc)
        raise
    finally:
        if _kill_group(proc.pid):
            record["leftover_processes_killed"] = True
        pump.join(5)
    wall = time.monotonic() - start
    record["duration_s"] = round(wall, 1)
    busy1, ours1 = busy_cpu_seconds(), children_cpu_seconds() + time.process_time()
    if busy0 is not None and busy1 is not None and wall > 0:
        # CPUs kept busy by processes outside this suite during the unit (the unit's own
        # process tree is in RUSAGE_CHILDREN once reaped): how shared the machine was.
        record["other_load_cpus"] = round(max(0.0, (busy1 - busy0) - (ours1 - ours0)) / wall, 2)
    if rc is None:
        return record | {"status": "failed", "reason": f"timed out after {timeout_s:.0f} s"}
    if rc != 0 or not out.exists():
        reason = "\n".join(tail[-15:]) or f"exit status {rc}"
        return record | {"status": "failed", "exit_status": rc, "reason": reason}
    try:
        result = json.loads(out.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        return record | {"status": "failed", "reason": f"unreadable JSON: {exc}"}
    if "skipped" in result:
        return record | {"status": "skipped", "reason": result["skipped"], "result": result}
    return record | {"status": "ok", "result": result}


# ---------------------------------------------------------------------------- the run


def machine() -> dict[str, Any]:
    """What ran the suite: CPU, memory, OS, Python, uvloop, aiohttp, nginx, websocket-tunnel."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(AttributeError):
        info["nproc"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(mem[1]) / 1024**2, 1)
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    for package, key in (
        ("uvloop", "uvloop_version"),
        ("aiohttp", "aiohttp"),
        ("websocket-tunnel", "websocket_tunnel"),
        ("matplotlib", "matplotlib"),
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[key] = importlib.metadata.version(package)
    binary = find_nginx()
    info["nginx"] = f"{nginx_version(binary)} ({binary})" if binary else "not found"
    ssh = shutil.which("ssh")
    info["openssh"] = openssh_version(ssh) if ssh else "not found"
    return info


def _sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(SECTIONS)}"
        )
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Issue 7's benchmark suite: every figure a ratio of two things measured "
        "in the same run, alternating, several rounds, median [min-max].",
    )
    p.add_argument("--quick", action="store_true", help="about a minute: smaller sizes and counts")
    p.add_argument(
        "--only",
        type=_sections,
        metavar="SECTION[,...]",
        help=f"run only these sections: {', '.join(SECTIONS)}",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default {DEFAULT_OUT})"
    )
    p.add_argument(
        "--plot", type=Path, metavar="PNG", help="also draw the figures (needs matplotlib)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    selected = args.only or list(SECTIONS)
    mode = "quick" if args.quick else "full"
    units = [u for u in UNITS if any(s in selected for s in u.sections)]
    results: dict[str, Any] = {
        "suite": "hybridrelay bench (issue 7)",
        "format": 1,
        "mode": mode,
        "sections": selected,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "units": {},
    }
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    start = time.monotonic()
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="hybridrelay-bench-suite-") as tmp:
            for unit in units:
                timeout = unit.timeout_s if mode == "full" else max(120.0, unit.timeout_s / 4)
                results["units"][unit.key] = {"status": "failed", "reason": "interrupted"}
                record = run_unit(
                    unit, unit.argv(args.quick, selected), Path(tmp) / f"{unit.key}.json", timeout
                )
                results["units"][unit.key] = record
                print(
                    f"== {unit.key}: {record['status']} in {record['duration_s']} s"
                    + (
                        f": {record['reason'].splitlines()[-1]}" if record["status"] != "ok" else ""
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        status = 130
    except TerminatedError:
        print("bench: terminated", file=sys.stderr)
        status = 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    results["duration_s"] = round(time.monotonic() - start, 1)
    table = rows(results)
    results["rows"] = [r.to_json() for r in table]
    results["summary"] = summary_line(table)
    if status == 0 and any(u["status"] == "failed" for u in results["units"].values()):
        status = 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    print(text_table(table))
    print(
        f"\n{summary_line(table)}; {mode} run, {results['duration_s']:.0f} s; JSON in {args.out}",
    )
    if args.plot is not None and status == 0:
        from bench.plot import PlotUnavailableError, plot

        try:
            plot(results, args.plot)
        except PlotUnavailableError as exc:
            print(f"bench: no plot: {exc}", file=sys.stderr)
        else:
            print(f"plot in {args.plot}")
    return status
