"""Where the pvinit shim comes from: built into the wheel, or compiled once into a
cache dir for a checkout. Detection (containment.py) decides whether it is used."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

IS_LINUX = sys.platform.startswith("linux")

_SHIM_SOURCE = Path(__file__).with_name("native") / "pvinit.c"
_CFLAGS = ("-O2", "-Wall", "-Werror")

#: Signals pvinit relays to the whole plugin tree (keep in sync with pvinit.c).
FORWARDED_SIGNALS: frozenset[int] = frozenset(
    {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCONT,
        signal.SIGWINCH,
    }
)

#: Environment variable pvinit sets in the plugin; descendants inherit it, which
#: is how leftover cleanup recognises processes that escaped their session.
TREE_ENV = "PIPEVISOR_TREE"

_known_shims: set[str] = set()


def _cache_dir() -> Path:
    explicit = os.environ.get("PIPEVISOR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "pipevisor"


def _find_compiler() -> str | None:
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _packaged_shim(digest: str) -> str | None:
    """The pvinit built into the wheel (setup.py), if it was built from this source.

    An installed package compiles nothing at run time, and its shim lives where the
    package does (root-owned for a system install), not in a cache dir the plugins'
    user can write. A checkout has none and uses the compiled cache below."""
    binary = _SHIM_SOURCE.with_name("pvinit")
    try:
        built_from = _SHIM_SOURCE.with_name("pvinit.sha256").read_text().strip()
    except OSError:
        return None
    if built_from != digest or not os.access(binary, os.X_OK):
        log.warning("ignoring %s: built from another source or flags (%s, want %s)",
                    binary, built_from, digest)
        return None
    return str(binary)


def _build_shim() -> tuple[str | None, str]:
    """Return (path, why) so detection can explain a missing shim."""
    override = os.environ.get("PIPEVISOR_SHIM")
    if override == "0":
        return None, "PIPEVISOR_SHIM=0"
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return os.path.realpath(override), f"PIPEVISOR_SHIM={override}"
        return None, f"PIPEVISOR_SHIM={override} is not an executable file"
    if not IS_LINUX:
        return None, f"pvinit is Linux-only ({sys.platform})"
    try:
        source = _SHIM_SOURCE.read_bytes()
    except OSError as exc:
        return None, f"pvinit source missing: {exc}"
    digest = hashlib.sha256(source + " ".join(_CFLAGS).encode()).hexdigest()[:16]
    packaged = _packaged_shim(digest)
    if packaged is not None:
        return packaged, "built with the package"
    cache = _cache_dir()
    target = cache / f"pvinit-{digest}"
    if os.access(target, os.X_OK):
        return str(target), f"cached {target.name}"
    compiler = _find_compiler()
    if compiler is None:
        return None, "no C compiler (cc, gcc or clang) on PATH"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pvinit-", dir=cache)
        os.close(fd)
    except OSError as exc:
        return None, f"cache dir {cache} unusable: {exc}"
    try:
        proc = subprocess.run(
            [compiler, *_CFLAGS, "-o", tmp, str(_SHIM_SOURCE)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            log.debug("compiling pvinit failed: %s", proc.stderr.strip())
            return None, f"compiling it failed: {proc.stderr.strip()[:200]}"
        os.chmod(tmp, 0o755)
        # Atomic: concurrent supervisors either see no file or a whole one.
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"compiling it failed: {exc}"
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return str(target), f"compiled {target.name}"


@functools.cache
def _shim_cached(override: str | None) -> tuple[str | None, str]:
    path, why = _build_shim()
    if path is not None:
        _known_shims.add(os.path.realpath(path))
    return path, why


def ensure_shim() -> str | None:
    """Compile pvinit once per source version; None means we must do without it."""
    return _shim_cached(os.environ.get("PIPEVISOR_SHIM"))[0]

