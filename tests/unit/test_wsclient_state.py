"""wsclient.py is glue: it keeps no state of its own outside a connection (issue 13)."""

from __future__ import annotations

import hybridrelay.wsclient as wsclient


def test_wsclient_keeps_no_module_level_mutable_state() -> None:
    # The TCP_NODELAY decision was a module-level dict keyed by loop type (_NODELAY_LOOPS).
    mutable = {
        name
        for name, value in vars(wsclient).items()
        if not name.startswith("__") and isinstance(value, dict | list | set | bytearray)
    }
    assert mutable == set()
