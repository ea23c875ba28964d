"""Tracking ids the relay makes up: for senders that bring no ``sb-hc-id`` and for every
HTTP-mode request (HC §3.1-3.2).

GUID-shaped (version 4, RFC 4122 variant), 74 random bits per process plus a counter:
unique, and no getrandom() system call per connect or request. Not a secret (the
rendezvous key is), so a counter is as good as fresh randomness here.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Final

__all__ = ["new_tracking_id"]

_ID_RANDOM: Final = uuid.uuid4().hex
_ID_HEAD: Final = f"{_ID_RANDOM[:8]}-{_ID_RANDOM[8:12]}-4{_ID_RANDOM[13:16]}-"
_ID_VARIANT: Final = "89ab"[int(_ID_RANDOM[16], 16) & 3] + _ID_RANDOM[17:20]
_ids = itertools.count(int(_ID_RANDOM[20:], 16) & 0xFFFFFFFF)


def new_tracking_id() -> str:
    """A new GUID-shaped id, unique in this process."""
    return f"{_ID_HEAD}{_ID_VARIANT}-{next(_ids) & 0xFFFFFFFFFFFF:012x}"
