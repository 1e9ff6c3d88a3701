"""protocol/ stays sans-I/O: no event loop, process, socket, thread, clock or RNG."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipevisor import protocol

FORBIDDEN = frozenset(
    {"anyio", "asyncio", "subprocess", "socket", "threading", "time", "random",
     "pipevisor.supervisor", "pipevisor.kit"}
)
PACKAGE = Path(protocol.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _constant_arg(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Constant):
        value = call.args[0].value
        return value if isinstance(value, str) else None
    return None


def _dynamic_import(node: ast.AST) -> str | None:
    """The module named by ``__import__("x")`` or ``importlib.import_module("x")``."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if (isinstance(func, ast.Name) and func.id == "__import__") or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    ):
        return _constant_arg(node)
    return None


def _root(name: str) -> str:
    """``pipevisor.supervisor`` for ``pipevisor.supervisor.runner``, ``os`` for ``os.path``."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipevisor" else parts[0]


def imported_roots(source: str) -> set[str]:
    """Top-level names of every module a source imports, wherever the import is."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(_root(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(_root(node.module))
        elif (name := _dynamic_import(node)) is not None:
            roots.add(_root(name))
    return roots


def test_the_checker_sees_every_form_of_import() -> None:
    source = (
        "import time\n"
        "import os.path, asyncio.events as ev\n"
        "from anyio import open_process\n"
        "from pipevisor.supervisor.runner import Runner\n"
        "from pipevisor.kit import Plugin\n"
        "from . import codec\n"
        "def f():\n"
        "    import threading\n"
        "    __import__('socket')\n"
        "    importlib.import_module('random')\n"
        "if TYPE_CHECKING:\n"
        "    import subprocess\n"
    )
    assert imported_roots(source) == FORBIDDEN | {"os"}


def test_sources_are_found() -> None:
    names = {path.name for path in SOURCES}
    assert {"framing.py", "codec.py", "peer.py", "handshake.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_module_imports_nothing_forbidden(path: Path) -> None:
    used = imported_roots(path.read_text("utf-8")) & FORBIDDEN
    assert not used, f"{path.name} imports {sorted(used)}"
