"""The client WebSocket is glue: it keeps no state of its own outside a connection (issue 13)."""

from __future__ import annotations

import importlib

import pytest

# wsclient.py and the modules it is made of, one job each.
MODULES = [
    "hybridrelay.wsclient",
    "hybridrelay.ws_send",
    "hybridrelay.ws_receive",
    "hybridrelay.ws_sink",
    "hybridrelay.ws_handshake",
    "hybridrelay.ws_keepalive",
]


@pytest.mark.parametrize("name", MODULES)
def test_wsclient_keeps_no_module_level_mutable_state(name: str) -> None:
    # The TCP_NODELAY decision was a module-level dict keyed by loop type (_NODELAY_LOOPS).
    mutable = {
        attr
        for attr, value in vars(importlib.import_module(name)).items()
        if not attr.startswith("__") and isinstance(value, dict | list | set | bytearray)
    }
    assert mutable == set()
