"""No module-level mutable state in relay/, core/, listener/ or client/ (issue 13 step 3).

State lives in objects with an owner (a relay service under its ``AppKey``, a
connection, a listener), never in a module: a module-level table outlives the app that
filled it, is shared by every app in the process (tests run many) and is invisible
to whoever reads the constructor.

The rule, checked on the ``ast`` of every module: a name bound at module level (also
inside a module-level ``if``/``try``) to a mutable container or a stateful iterator
(a list, dict or set display or comprehension; ``dict()``, ``defaultdict()``,
``deque()``, ``WeakKeyDictionary()``, ``itertools.count()`` and the like) must be
annotated ``Final`` and never be mutated in its module (no mutating method call, item
assignment, item deletion or augmented item assignment on it). Constant tables stay
as they are, written ``Final``. And no function rebinds a module global (``global``).
``__all__`` is exempt: it is a list by convention and read by tools only.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGES = ("relay", "core", "listener", "client")

_MUTABLE_CALLS = frozenset(
    {
        "dict",
        "list",
        "set",
        "bytearray",
        "defaultdict",
        "OrderedDict",
        "Counter",
        "ChainMap",
        "deque",
        "WeakKeyDictionary",
        "WeakValueDictionary",
        "WeakSet",
        "count",  # itertools.count: an iterator that keeps its position
        "cycle",
        "Queue",
        "Lock",
        "Event",
    }
)
_MUTATORS = frozenset(
    {
        "append",
        "appendleft",
        "add",
        "clear",
        "discard",
        "extend",
        "insert",
        "move_to_end",
        "pop",
        "popitem",
        "popleft",
        "put_nowait",
        "remove",
        "reverse",
        "setdefault",
        "sort",
        "update",
        "__setitem__",
        "__delitem__",
    }
)


def _is_mutable(value: ast.expr) -> bool:
    if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        return name in _MUTABLE_CALLS
    return False


def _is_final(annotation: ast.expr | None) -> bool:
    return annotation is not None and ast.unparse(annotation).startswith(("Final", "typing.Final"))


def _module_bindings(body: list[ast.stmt]) -> dict[str, tuple[int, bool]]:
    """Module-level names bound to mutable values: name -> (line, annotated Final)."""
    found: dict[str, tuple[int, bool]] = {}
    for statement in body:
        if isinstance(statement, ast.If):
            found |= _module_bindings(statement.body) | _module_bindings(statement.orelse)
        elif isinstance(statement, ast.Try):
            found |= _module_bindings(statement.body) | _module_bindings(statement.orelse)
            found |= _module_bindings(statement.finalbody)
            for handler in statement.handlers:
                found |= _module_bindings(handler.body)
        elif isinstance(statement, ast.Assign) and _is_mutable(statement.value):
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = (statement.lineno, False)
        elif (
            isinstance(statement, ast.AnnAssign)
            and statement.value is not None
            and isinstance(statement.target, ast.Name)
            and _is_mutable(statement.value)
        ):
            found[statement.target.id] = (statement.lineno, _is_final(statement.annotation))
    found.pop("__all__", None)
    return found


def _mutated_names(tree: ast.Module) -> set[str]:
    mutated: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.attr in _MUTATORS
        ):
            mutated.add(node.func.value.id)
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                mutated.add(target.value.id)
    return mutated


def module_state(source: str, where: str = "<module>") -> list[str]:
    """What in ``source`` breaks the rule of the module docstring, one line per finding."""
    tree = ast.parse(source, where)
    problems: list[str] = []
    mutated = _mutated_names(tree)
    for name, (line, final) in sorted(_module_bindings(tree.body).items()):
        if name in mutated:
            problems.append(f"{where}:{line}: module-level {name} is mutated")
        elif not final:
            problems.append(f"{where}:{line}: module-level {name} is mutable and not Final")
    problems.extend(
        f"{where}:{node.lineno}: global {', '.join(node.names)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Global)
    )
    return problems


def test_the_scan_finds_hidden_tables() -> None:
    source = (
        "import itertools, weakref\n"
        "from typing import Final\n"
        "__all__ = ['f']\n"
        "_VIA: dict[str, str] = {}\n"
        "_REGISTRIES: Final = weakref.WeakKeyDictionary()\n"
        "_ids = itertools.count()\n"
        "_TABLE: Final = {'a': 1}\n"
        "_ORDER: Final = ('a', 'b')\n"
        "_flag = None\n"
        "def f(state: object) -> None:\n"
        "    global _flag\n"
        "    _VIA['x'] = 'y'\n"
        "    _REGISTRIES.setdefault(state, 1)\n"
        "    _flag = next(_ids)\n"
        "    print(_TABLE['a'])\n"
    )
    assert module_state(source) == [
        "<module>:5: module-level _REGISTRIES is mutated",
        "<module>:4: module-level _VIA is mutated",
        "<module>:6: module-level _ids is mutable and not Final",
        "<module>:11: global _flag",
    ]


def test_no_module_level_mutable_state() -> None:
    problems: list[str] = []
    scanned = 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ".venv" in path.parts:
                continue
            scanned += 1
            where = str(path.relative_to(ROOT))
            problems += module_state(path.read_text(encoding="utf-8"), where)
    assert scanned > 100  # the packages were found
    assert not problems, "module-level mutable state:\n" + "\n".join(problems)
