"""Who may import whom inside pipevisor: the layer rules of docs/architecture.md, read
from the sources themselves.

A module's layer is its folder under ``supervisor/`` (``proc``, ``io``, ``engine``,
``tools``, ``client``, ``daemon``, ``cli``); ``errors.py`` and ``paths.py`` at the top
are the base every layer may use, and the package's ``__init__``/``__main__`` are its
front door. ``protocol/`` has its own, stricter test (tests/protocol/test_layering.py).

Rules that the code breaks today are listed in ``KNOWN_BREAKS`` and run as strict
xfails: fixing one turns its test into an unexpected pass, which fails until the entry
is removed, so the table can only shrink.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUPERVISOR = REPO / "supervisor"
PKG = "pipevisor.supervisor"

LAYERS = ("base", "proc", "io", "engine", "tools", "client", "daemon", "cli", "front")

MAY_IMPORT: dict[str, frozenset[str]] = {
    "base": frozenset({"base"}),
    "proc": frozenset({"base", "io", "proc"}),
    "io": frozenset({"base", "io"}),
    "engine": frozenset({"base", "proc", "io", "engine"}),
    "tools": frozenset({"base", "proc", "io", "engine", "tools"}),
    "client": frozenset({"base", "io", "client"}),
    "daemon": frozenset({"base", "proc", "io", "engine", "tools", "daemon"}),
    "cli": frozenset({"base", "client", "cli", "tools", "daemon", "proc"}),
    "front": frozenset({"base", "engine", "cli"}),
}
"""Within ``pipevisor.supervisor``: the layers each layer may import from."""

LAZY_ONLY: dict[str, frozenset[str]] = {
    "cli": frozenset({"tools", "daemon", "proc"}),
    "front": frozenset({"engine"}),
}
"""Layers that may be imported only inside a function (or under TYPE_CHECKING): a
control command must not pay for the engine, the checker or the daemon at start-up."""

ENGINE_INTERNALS = frozenset({"runner", "connection", "sampler", "plugin_log", "metrics",
                              "plugin_output", "host_calls", "call_gate", "ending", "status",
                              "method_calls", "health", "many_calls"})
"""Engine modules that are not its public API: other layers go through ``Supervisor``."""

ASYNCIO_LAYERS = frozenset({"io"})
"""The only layer that may import asyncio itself (everything else uses anyio)."""

ASYNCIO_PRIVATE = frozenset({"_transport", "_buffer", "_stream", "feed_data", "_protocol"})
"""Attributes of asyncio objects that are not public API: only io/ may name them."""

KNOWN_BREAKS: dict[tuple[str, str], str] = {
}
"""(module, rule) -> why it is broken today. Each is a strict xfail."""


@dataclass(frozen=True)
class Import:
    module: str
    lazy: bool  # inside a function body or under ``if TYPE_CHECKING:``


def layer_of(relpath: str) -> str:
    parts = relpath.split("/")
    if len(parts) > 1:
        return parts[0]
    return "front" if parts[0] in ("__init__.py", "__main__.py") else "base"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_module(dotted: str) -> bool:
    if not dotted.startswith(PKG + "."):
        return False
    path = SUPERVISOR.joinpath(*dotted[len(PKG) + 1:].split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imports_of(source: str) -> list[Import]:
    """Every absolute import, with whether it runs at import time of the module."""
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) or (
                isinstance(child, ast.If) and _is_type_checking(child))
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # ``from pipevisor.supervisor.proc import containment`` names a module
                modules = [alias.name for alias in child.names
                           if _is_module(f"{child.module}.{alias.name}")]
                found.extend(Import(f"{child.module}.{name}", lazy) for name in modules)
                if len(modules) < len(child.names):
                    found.append(Import(child.module, lazy))
            elif isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and (
                    child.func.attr == "import_module" and child.args
                    and isinstance(child.args[0], ast.Constant)
                    and isinstance(child.args[0].value, str)):
                found.append(Import(child.args[0].value, True))
            visit(child, nested)

    visit(ast.parse(source), False)
    return found


def target_layer(module: str) -> tuple[str, str] | None:
    """(layer, module-in-layer) of a ``pipevisor.supervisor`` module, None for others.
    A name that is not a module of the package (``from pipevisor.supervisor.errors
    import local``) is resolved to the module it comes from."""
    if not (module == PKG or module.startswith(PKG + ".")):
        return None
    parts = module[len(PKG) + 1:].split(".") if module != PKG else []
    if not parts:
        return ("front", "")
    if (SUPERVISOR / parts[0]).is_dir():
        return (parts[0], parts[1] if len(parts) > 1 else "")
    if (SUPERVISOR / f"{parts[0]}.py").exists():
        return (layer_of(f"{parts[0]}.py"), parts[0])
    return None


SOURCES = sorted(p.relative_to(SUPERVISOR).as_posix() for p in SUPERVISOR.rglob("*.py"))


def _case(relpath: str, rule: str) -> object:
    why = KNOWN_BREAKS.get((relpath, rule))
    marks = [pytest.mark.xfail(reason=why, strict=True)] if why else []
    return pytest.param(relpath, id=relpath, marks=marks)


def _imports(relpath: str) -> list[Import]:
    return imports_of((SUPERVISOR / relpath).read_text("utf-8"))


# ---------------------------------------------------------------- the checker itself


def test_the_checker_reads_every_form_of_import() -> None:
    source = (
        "import asyncio\n"
        "from pipevisor.supervisor.engine.runner import PluginRunner\n"
        "from pipevisor.supervisor.proc import containment\n"
        "if TYPE_CHECKING:\n"
        "    from pipevisor.supervisor.tools.checker import check\n"
        "def f():\n"
        "    from pipevisor.supervisor.daemon import service\n"
        "    importlib.import_module('pipevisor.supervisor.cli.main')\n"
    )
    got = {(i.module, i.lazy) for i in imports_of(source)}
    assert got >= {
        ("asyncio", False),
        ("pipevisor.supervisor.engine.runner", False),
        ("pipevisor.supervisor.proc.containment", False),
        ("pipevisor.supervisor.tools.checker", True),
        ("pipevisor.supervisor.daemon.service", True),
        ("pipevisor.supervisor.cli.main", True),
    }
    assert target_layer("pipevisor.supervisor.engine.runner") == ("engine", "runner")
    assert target_layer("pipevisor.supervisor.errors") == ("base", "errors")
    assert target_layer("pipevisor.supervisor") == ("front", "")


def test_every_module_has_a_known_layer_and_the_table_names_real_files() -> None:
    assert {layer_of(p) for p in SOURCES} <= set(LAYERS)
    assert {"proc", "io", "engine", "tools", "client", "daemon", "cli"} <= {
        layer_of(p) for p in SOURCES}
    for relpath, _ in KNOWN_BREAKS:
        assert relpath in SOURCES, f"KNOWN_BREAKS names {relpath}, which does not exist"


# ---------------------------------------------------------------- the rules


@pytest.mark.parametrize("relpath", [_case(p, "layer") for p in SOURCES])
def test_module_imports_only_layers_below_it(relpath: str) -> None:
    layer = layer_of(relpath)
    wrong = []
    for imp in _imports(relpath):
        target = target_layer(imp.module)
        if target is None:
            continue
        if target[0] not in MAY_IMPORT[layer]:
            wrong.append(f"{imp.module} ({target[0]})")
        elif target[0] in LAZY_ONLY.get(layer, ()) and not imp.lazy:
            wrong.append(f"{imp.module} at import time (only inside a function)")
    assert not wrong, f"{relpath} ({layer}) imports {wrong}"


@pytest.mark.parametrize("relpath", [_case(p, "internals") for p in SOURCES
                                     if layer_of(p) not in ("engine",)])
def test_outside_the_engine_only_its_public_modules_are_used(relpath: str) -> None:
    used = sorted({imp.module for imp in _imports(relpath)
                   if (t := target_layer(imp.module)) and t[0] == "engine"
                   and t[1] in ENGINE_INTERNALS})
    assert not used, f"{relpath} reaches into the engine: {used}"


RUNNER_ATTRIBUTES = frozenset({"runner", "runners"})
"""How code outside the engine would reach a PluginRunner through a Supervisor."""


@pytest.mark.parametrize("relpath", [_case(p, "runner") for p in SOURCES
                                     if layer_of(p) in ("daemon", "cli", "tools", "client")])
def test_outside_the_engine_no_runner_is_reached_through_the_supervisor(relpath: str) -> None:
    """The daemon, CLI, tools and client use Supervisor's public methods (``names``,
    ``plugin_status``, ``wait_state``, ``logs``, ``process_roots`` ...), never
    ``sup.runner(name)`` or ``sup.runners``: PluginRunner is the engine's to change."""
    tree = ast.parse((SUPERVISOR / relpath).read_text("utf-8"))
    used = sorted({node.attr for node in ast.walk(tree)
                   if isinstance(node, ast.Attribute) and node.attr in RUNNER_ATTRIBUTES})
    assert not used, f"{relpath} reaches runners through {used}"


@pytest.mark.parametrize("relpath", [_case(p, "asyncio") for p in SOURCES
                                     if layer_of(p) not in ASYNCIO_LAYERS])
def test_only_io_imports_asyncio(relpath: str) -> None:
    used = [imp.module for imp in _imports(relpath) if imp.module.split(".")[0] == "asyncio"]
    assert not used, f"{relpath} imports {used}"


@pytest.mark.parametrize("relpath", [_case(p, "asyncio-private") for p in SOURCES
                                     if layer_of(p) not in ASYNCIO_LAYERS])
def test_only_io_names_asyncio_internals(relpath: str) -> None:
    tree = ast.parse((SUPERVISOR / relpath).read_text("utf-8"))
    named = sorted({node.attr for node in ast.walk(tree)
                    if isinstance(node, ast.Attribute) and node.attr in ASYNCIO_PRIVATE})
    assert not named, f"{relpath} names asyncio internals {named}"


@pytest.mark.parametrize("folder", ["plugin_kit", "protocol"])
def test_kit_and_protocol_never_load_the_supervisor(folder: str) -> None:
    for path in sorted((REPO / folder).rglob("*.py")):
        bad = [i.module for i in imports_of(path.read_text("utf-8"))
               if i.module.startswith(PKG)]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


# ---------------------------------------------------------------- what loads at start


@pytest.mark.parametrize("module", [
    "pipevisor.supervisor.cli",
    "pipevisor.supervisor.client",
    "pipevisor.kit",
])
def test_importing_loads_no_heavy_dependency(module: str) -> None:
    """The CLI's control commands and a plugin built on the kit start in tens of
    milliseconds; anyio, jsonschema, psutil or the engine would triple that."""
    probe = (
        "import sys, importlib\n"
        f"importlib.import_module({module!r})\n"
        "heavy = {'anyio', 'jsonschema', 'psutil', 'asyncio'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "             or m.startswith('pipevisor.supervisor.engine')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    allowed = "['asyncio']" if module == "pipevisor.kit" else "[]"
    assert out in ("[]", allowed), f"importing {module} loads {out}"
