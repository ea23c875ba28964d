"""WebSocket close codes are spelled ``CloseCode.X``, never as bare integers (issue 13).

``hybridrelay.protocol.codes.CloseCode`` names every code with its meaning in HC §7;
a bare ``1008`` says neither which rule closed the connection nor whether two places
that must agree do. The ``ast`` of every module of relay/, core/, listener/ and client/
is scanned for an integer from 1000 to 1015 (RFC 6455's registered codes; 3000-4999
are private use and have no names) where a close code goes: the code of a
close call (``close``, ``close_write``, ``send_close``, ``fail``, ``shutdown``,
``abandon``, ``stop``, ``FrameError``, ``ConnectionClosedError``,
``encode_close_payload``), a default or an assignment of a name with ``code`` in it,
and a comparison with such a name.

Not scanned, for now:
- core/hybridrelay/errors.py: it sits below the protocol package (every protocol
  module imports it), so importing ``CloseCode`` there would be an import cycle through
  the ``hybridrelay.protocol`` facade; its ``close_code`` class attributes stay ints.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGES = ("relay", "core", "listener", "client")
NOT_SCANNED = frozenset(
    {
        "core/hybridrelay/errors.py",
    }
)
_CLOSERS = frozenset(
    {
        "close",
        "close_write",
        "send_close",
        "fail",
        "_fail",
        "shutdown",
        "abandon",
        "stop",
        "FrameError",
        "ConnectionClosedError",
        "encode_close_payload",
    }
)


def _is_code(node: ast.expr | None) -> bool:
    if isinstance(node, ast.Tuple):
        return any(_is_code(element) for element in node.elts)
    return isinstance(node, ast.Constant) and type(node.value) is int and 1000 <= node.value <= 1015


def _names_a_code(node: ast.expr) -> bool:
    return "code" in ast.unparse(node).lower()


def bare_close_codes(source: str, where: str = "<module>") -> list[str]:
    """Where ``source`` writes a close code as an integer, one line per finding."""
    found: list[int] = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in _CLOSERS and (
                (node.args and _is_code(node.args[0]))
                or any(k.arg == "code" and _is_code(k.value) for k in node.keywords)
            ):
                found.append(node.lineno)
        elif isinstance(node, ast.Assign):
            if _is_code(node.value) and any(_names_a_code(t) for t in node.targets):
                found.append(node.lineno)
        elif isinstance(node, ast.AnnAssign):
            if _is_code(node.value) and _names_a_code(node.target):
                found.append(node.lineno)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_code(s) for s in sides) and any(_names_a_code(s) for s in sides):
                found.append(node.lineno)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = [
                *zip(
                    positional[len(positional) - len(args.defaults) :], args.defaults, strict=True
                ),
                *zip(args.kwonlyargs, args.kw_defaults, strict=True),
            ]
            if any("code" in arg.arg and _is_code(default) for arg, default in pairs):
                found.append(node.lineno)
    return [f"{where}:{line}: a bare close code (use CloseCode)" for line in sorted(found)]


def test_the_scan_finds_bare_codes() -> None:
    source = (
        "async def f(ws, code: int = 1000, limit: int = 1000) -> None:\n"
        "    await ws.close(1008, 'token expired')\n"
        "    await ws.close(code=1011)\n"
        "    close_code = 1002\n"
        "    code, reason = 1000, b''\n"
        "    moved = exc.code in (1001, 1006)\n"
        "    await ws.close(CloseCode.NORMAL)\n"
        "    queue_size = 1000\n"
        "    if n > 1000: pass\n"
    )
    assert [line.split(":")[1] for line in bare_close_codes(source)] == [
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
    ]


def test_close_codes_are_named() -> None:
    problems: list[str] = []
    scanned = 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = str(path.relative_to(ROOT))
            if ".venv" in path.parts or where in NOT_SCANNED:
                continue
            scanned += 1
            problems += bare_close_codes(path.read_text(encoding="utf-8"), where)
    assert scanned > 100  # the packages were found
    assert not problems, "\n".join(problems)
