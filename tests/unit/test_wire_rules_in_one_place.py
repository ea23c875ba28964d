"""Wire rules that used to be written in several places are written once (issue 13).

The ``sb-hc-*`` parameters of a dial are spelt only in protocol/addresses.py, and the
64 KiB inline-vs-rendezvous limit is read only by protocol/codes.py's ``fits_inline``:
a copy elsewhere is how the relay and the listener came to decide the same thing in four
places.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PRODUCT = [
    path
    for part in ("core", "relay", "listener", "client")
    for path in sorted((ROOT / part / "hybridrelay").rglob("*.py"))
]
ADDRESSES = ROOT / "core/hybridrelay/protocol/addresses.py"
CODES = ROOT / "core/hybridrelay/protocol/codes.py"
DIAL_PARAMS = ("sb-hc-action=", "sb-hc-statusCode=", "sb-hc-statusDescription=")


def _code_strings(tree: ast.AST) -> list[str]:
    """String constants that are code, not docstrings (f-string parts included)."""
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_the_product_sources_were_found() -> None:
    assert ADDRESSES in PRODUCT
    assert len(PRODUCT) > 50


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_dial_uris_are_built_only_by_protocol_addresses(path: Path) -> None:
    if path == ADDRESSES:
        return
    tree = ast.parse(path.read_text(), str(path))
    spelt = [s for s in _code_strings(tree) if any(param in s for param in DIAL_PARAMS)]
    assert not spelt, f"{path.name} builds a dial URI by hand: {spelt}; use protocol.addresses"


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_inline_limit_is_decided_only_by_fits_inline(path: Path) -> None:
    if path in (CODES, ROOT / "core/hybridrelay/protocol/__init__.py"):
        return
    tree = ast.parse(path.read_text(), str(path))
    uses = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and node.id == "INLINE_BODY_LIMIT"
    ]
    assert not uses, f"{path.name}:{uses} compares against INLINE_BODY_LIMIT; call fits_inline"
