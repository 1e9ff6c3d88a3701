"""``python -m perf --compiled``: the call path compiled with mypyc, measured in place.

Why: with a task per call, asyncio's own floor (``asyncio-floor-*`` in
cases/host_bound.py) leaves pipevisor little room, and what is left of a call's host
CPU is Python spread thin over the protocol, the connection and the gate (perf/README.md,
"Issue 20 in one run"). mypyc, which ships with mypy and compiles type-annotated
modules to C extensions (black and mypy itself ship that way), is the cheapest way to
know what compiling that path would buy before anyone changes how pipevisor is built.
Nothing here changes the package: a copy of the sources is compiled into perf's cache
outside the checkout, and the run is re-executed with that copy first on
``PYTHONPATH``. The JSON records which modules were compiled.

Needs mypy (the ``test`` extra) and a C compiler.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from perf.harness import private_cache_dir

REPO = Path(__file__).resolve().parent.parent

MODULES = (
    "protocol/peer.py",
    "protocol/codec.py",
    "protocol/framing.py",
    "supervisor/engine/connection.py",
    "supervisor/engine/many_calls.py",
    "supervisor/engine/call_gate.py",
    "supervisor/io/pipes.py",
)
"""The hot path of a call that mypyc compiles as the code stands. Not in it: the
protocol's messages and events (their fast constructors assign through slot
descriptors, which mypyc refuses), and runner.py and supervisor.py (an async generator,
``continue`` in ``try/finally``: both unimplemented in mypyc)."""

_TREES = {"protocol": "protocol", "supervisor": "supervisor", "kit": "plugin_kit"}
ROOT_ENV = "PERF_COMPILED_ROOT"
"""Set in the re-executed run: where the compiled copy is."""


def _key() -> str:
    digest = hashlib.sha256()
    import mypy.version

    digest.update(mypy.version.__version__.encode())
    digest.update(sys.version.encode())
    for tree in _TREES.values():
        for path in sorted((REPO / tree).rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    digest.update(" ".join(MODULES).encode())
    return digest.hexdigest()[:16]


def build() -> Path:
    """The compiled copy (built once per content of the sources and mypy version)."""
    cache = private_cache_dir()
    root = cache / f"compiled-{_key()}"
    if (root / ".done").exists():
        return root
    tmp = cache / f"{root.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pkg = tmp / "pipevisor"
    pkg.mkdir(parents=True)
    for name, tree in _TREES.items():
        shutil.copytree(REPO / tree, pkg / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    (tmp / "mypy.ini").write_text(
        "[mypy]\npython_version = 3.11\nexplicit_package_bases = True\n"
        "ignore_missing_imports = True\n")
    files = [f"pipevisor/{_installed(m)}" for m in MODULES]
    proc = subprocess.run([sys.executable, "-m", "mypyc", *files], cwd=tmp,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"mypyc failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    shutil.rmtree(tmp / "build", ignore_errors=True)
    (tmp / ".done").write_text("\n".join(MODULES) + "\n")
    for old in cache.glob("compiled-*"):  # copies of older sources
        if old.suffix != ".tmp":
            shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, root)
    return root


def _installed(module: str) -> str:
    top, _, rest = module.partition("/")
    return f"{'kit' if top == 'plugin_kit' else top}/{rest}"


def reexec(argv: list[str]) -> None:
    """Build, then run ``python -m perf`` again on the compiled copy (never returns)."""
    try:
        import mypy  # noqa: F401
    except ImportError:
        raise SystemExit("--compiled needs mypy (pip install -e '.[test]')") from None
    print("building the mypyc copy of the call path (once per source change) ...",
          flush=True)
    root = build()
    env = dict(os.environ)
    env[ROOT_ENV] = str(root)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    # from the copy's folder: ``-m`` puts the working directory first on sys.path, and
    # the checkout's own pipevisor/ would come before the compiled one
    os.chdir(root)
    os.execve(sys.executable, [sys.executable, "-m", "perf", *argv], env)


def compiled_modules() -> list[str]:
    """In the re-executed run: the modules that really load compiled (checked, not
    assumed: a stale path would otherwise measure plain Python under this name)."""
    import importlib

    found = []
    for module in MODULES:
        name = "pipevisor." + _installed(module).removesuffix(".py").replace("/", ".")
        loaded = importlib.import_module(name)
        if not str(getattr(loaded, "__file__", "")).endswith(".so"):
            raise RuntimeError(f"{name} did not load compiled: {loaded.__file__}")
        found.append(name)
    return found
