"""The relay package has no import cycle (issue 13 step 3).

Every ``import`` and ``from ... import`` of every module under relay/hybridrelay/relay
counts: at module level, inside functions and under ``if TYPE_CHECKING:`` alike. A
function-level import is how a cycle hides at run time, and a TYPE_CHECKING one is
still an arrow between two modules that need each other, so neither is excused.

``from package import name`` is an arrow to ``package.name`` when that is a module,
else to the package. The parent packages Python runs on the way to a submodule are
not arrows: every module would otherwise depend on ``hybridrelay.relay`` (whose
``__init__`` imports the app), which says nothing about the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGE_DIR = ROOT / "relay" / "hybridrelay" / "relay"
PACKAGE = "hybridrelay.relay"


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([PACKAGE, *parts])] = path
    return modules


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            names = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name in known and name != module)
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imported(name, path, known) for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for root in sorted(graph):
        if colour[root] != white:
            continue
        path = [root]
        colour[root] = grey
        stack = [iter(sorted(graph[root]))]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                colour[path.pop()] = black
                stack.pop()
            elif colour[step] == grey:
                return [*path[path.index(step) :], step]
            elif colour[step] == white:
                colour[step] = grey
                path.append(step)
                stack.append(iter(sorted(graph[step])))
    return None


def test_the_graph_sees_the_relay_modules() -> None:
    graph = _import_graph()
    app = f"{PACKAGE}.app"
    # A walker that found nothing would pass the cycle test vacuously.
    assert len(graph) > 40
    assert {f"{PACKAGE}.state", f"{PACKAGE}.hc_endpoints", f"{PACKAGE}.devices"} <= graph[app]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_a_function_level_import_is_an_arrow(tmp_path: Path) -> None:
    source = tmp_path / "late.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from hybridrelay.relay.state import RelayState\n"
        "def f() -> None:\n"
        "    from hybridrelay.relay import reactions\n"
        "    from . import app\n",
        encoding="utf-8",
    )
    known = {f"{PACKAGE}.state", f"{PACKAGE}.reactions", f"{PACKAGE}.app", f"{PACKAGE}.late"}
    assert _imported(f"{PACKAGE}.late", source, known) == {
        f"{PACKAGE}.state",
        f"{PACKAGE}.reactions",
        f"{PACKAGE}.app",
    }


def test_the_relay_has_no_import_cycle() -> None:
    cycle = _find_cycle(_import_graph())
    shown = " -> ".join(name.removeprefix(f"{PACKAGE}.") for name in cycle or ())
    assert cycle is None, f"import cycle in the relay: {shown}"
