"""Virtualenvs for the peers that perf/ measures next to pipevisor (issue #20).

The peers (supervisord, circus, python-lsp-jsonrpc, the MCP Python SDK) are not
dependencies of pipevisor and never will be: each gets a virtualenv of its own,
built from ``perf/peers/requirements-<peer>.txt`` where every package, the
dependencies included, is pinned with ``==``. One command builds them all::

    python -m perf.peers_env install          # every peer (or name some)
    python -m perf.peers_env status           # what is installed, and where
    python -m perf.peers_env path mcp         # one venv's python, for scripts

The venvs live outside the repository, under ``$PIPEVISOR_PERF_VENVS`` or
``$XDG_CACHE_HOME/pipevisor-perf/venvs`` (``~/.cache/...`` by default), each in
``<peer>-<hash>`` where the hash covers the pins and the interpreter's version:
changing a pin names a new venv instead of mutating an old one, and a run can
never measure versions other than the ones the file names.

A venv counts as installed only once ``pip install`` succeeded and the marker
file was written last, so a half-built venv is rebuilt, never measured. The perf
cases call :func:`python_for`; when it returns None they skip, with the command
above in the reason. The peer code itself only ever runs as a subprocess of the
venv's interpreter: nothing here imports it into the harness.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent / "peers"
PEERS: tuple[str, ...] = ("supervisor", "circus", "python-lsp-jsonrpc", "mcp")
MARKER = ".pipevisor-perf-installed"
INSTALL_HINT = "run python -m perf.peers_env install"


def requirements_file(peer: str) -> Path:
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r} (known: {', '.join(PEERS)})")
    return PEERS_DIR / f"requirements-{peer}.txt"


def parse_pins(text: str) -> dict[str, str]:
    """``name==version`` lines -> {normalised name: version}; anything else is an error.

    Comments and blank lines are allowed; ranges, URLs and options are not, so the
    file cannot silently stop pinning.
    """
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        name, version = name.strip(), version.strip()
        bad = not sep or not name or not version or any(c in version for c in "=<>!~*,; ")
        if bad or any(c in name for c in "<>!~=[@ /"):
            raise ValueError(f"line {number}: {raw.strip()!r} is not a name==version pin")
        key = name.lower().replace("_", "-").replace(".", "-")
        if key in pins:
            raise ValueError(f"line {number}: {name} is pinned twice")
        pins[key] = version
    if not pins:
        raise ValueError("no pins")
    return pins


def pins_for(peer: str) -> dict[str, str]:
    return parse_pins(requirements_file(peer).read_text())


def venv_root() -> Path:
    override = os.environ.get("PIPEVISOR_PERF_VENVS")
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "pipevisor-perf" / "venvs"


def venv_key(pins: dict[str, str], python_version: Sequence[int] | None = None) -> str:
    """A short hash of the pins (order and comments ignored) and the interpreter's X.Y."""
    major, minor = tuple(python_version or sys.version_info[:2])[:2]
    canon = "\n".join(f"{k}=={v}" for k, v in sorted(pins.items()))
    return hashlib.sha256(f"python{major}.{minor}\n{canon}\n".encode()).hexdigest()[:12]


def venv_dir(peer: str) -> Path:
    return venv_root() / f"{peer}-{venv_key(pins_for(peer))}"


def python_for(peer: str) -> Path | None:
    """The venv's interpreter when the peer is fully installed at its pins, else None."""
    try:
        venv = venv_dir(peer)
    except (OSError, ValueError):
        return None
    python = venv / "bin" / "python"
    if (venv / MARKER).is_file() and python.exists():
        return python
    return None


def install(peer: str, *, force: bool = False, quiet: bool = True) -> Path:
    """Build (or keep) the peer's venv; returns its python. Raises on failure."""
    req = requirements_file(peer)
    pins_for(peer)  # refuse an unpinned file before touching anything
    venv = venv_dir(peer)
    if not force and python_for(peer) is not None:
        return venv / "bin" / "python"
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Always the interpreter running this command: the hash names its X.Y.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "--require-virtualenv", "-r", str(req)]
    if quiet:
        cmd.insert(4, "-q")
    done = subprocess.run(cmd, capture_output=quiet, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip install for {peer} failed ({done.returncode}):\n"
                           f"{(done.stdout or '')[-2000:]}{(done.stderr or '')[-2000:]}")
    (venv / MARKER).write_text(req.read_text())
    return python


def _cmd_install(peers: Sequence[str], force: bool) -> int:
    failed = 0

    def one(peer: str) -> tuple[str, str | None]:
        try:
            return peer, str(install(peer, force=force))
        except Exception as exc:  # reported per peer; the others still install
            print(f"{peer}: {exc}", file=sys.stderr)
            return peer, None

    # pip spends most of its time waiting on the network: four at once is faster.
    with ThreadPoolExecutor(max_workers=len(peers) or 1) as pool:
        for peer, python in pool.map(one, peers):
            if python is None:
                failed += 1
                print(f"{peer}: FAILED")
            else:
                print(f"{peer}: {python}")
    return 1 if failed else 0


def _cmd_status() -> int:
    print(f"venvs under {venv_root()}")
    for peer in PEERS:
        pins = pins_for(peer)
        top = peer if peer in pins else next(iter(pins))
        state = "installed" if python_for(peer) else "missing"
        pin = f"{top}=={pins.get(top, '?')}"
        print(f"{peer:20} {pin:28} {state:9} {venv_dir(peer)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.peers_env",
                                description="virtualenvs for perf/'s peer cases (issue #20)")
    sub = p.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="create the peer venvs at the pinned versions")
    inst.add_argument("peers", nargs="*", metavar="PEER",
                      help=f"some of {', '.join(PEERS)} (default: all)")
    inst.add_argument("--force", action="store_true", help="rebuild even if installed")
    sub.add_parser("status", help="list the peers, their pins and venvs")
    path = sub.add_parser("path", help="print one installed peer's python (exit 1 if missing)")
    path.add_argument("peer", choices=PEERS)
    args = p.parse_args(argv)
    if args.command == "install":
        unknown = sorted(set(args.peers) - set(PEERS))
        if unknown:
            p.error(f"unknown peer(s) {', '.join(unknown)} (known: {', '.join(PEERS)})")
        return _cmd_install(args.peers or list(PEERS), args.force)
    if args.command == "status":
        return _cmd_status()
    python = python_for(args.peer)
    if python is None:
        print(f"{args.peer} is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
