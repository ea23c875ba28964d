"""What the adversarial suite (tests/security/) measures a relay process with."""

from __future__ import annotations

from pathlib import Path

__all__ = ["rss_kib"]


def rss_kib(pid: int) -> int:
    """Resident set size of a live process in KiB (Linux ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
