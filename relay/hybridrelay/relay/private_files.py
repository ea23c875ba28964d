"""Files and directories only the relay's user may read: the store, its WAL, job files.

The SQLite store holds every rule key and device credential, export jobs write them out,
and imports spool them in. They are created 0600 in directories 0700 whatever the
process umask (a umask of 0 would otherwise leave them world-readable), and files or
directories left looser by an earlier version are tightened when the relay opens them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Final, Literal

__all__ = ["DIR_MODE", "FILE_MODE", "open_private", "private_dir", "tighten"]

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700

_FLAGS: Final = {
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "r+b": os.O_RDWR | os.O_CREAT,
}


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) and make ``path`` itself 0700.

    Parents are created as usual (they may be shared, like ``/var/lib``); the data
    directory itself is tightened even when it existed.
    """
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
        path.chmod(DIR_MODE)


def open_private(path: Path, mode: Literal["wb", "ab", "r+b"]) -> BinaryIO:
    """Open ``path`` for writing, created 0600 (an existing file is made 0600 too)."""
    fd = os.open(path, _FLAGS[mode] | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        # The mode given to open() is masked by the umask and ignored for an existing file.
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def tighten(path: Path) -> None:
    """Make an existing file 0600 (nothing if it does not exist)."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current != FILE_MODE:
        path.chmod(FILE_MODE)
