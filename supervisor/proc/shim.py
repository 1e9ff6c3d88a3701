"""Where the pvinit shim comes from: built into the wheel, compiled once into a private
cache dir for a checkout, or named by ``PIPEVISOR_SHIM``; and the sealed in-memory copy
that is executed. Detection (containment.py) decides whether it is used.

Nothing is executed unless it passes the one trust rule (:mod:`.trust`: the file and
every folder above it owned by root or us, not writable by anyone else). The verified
file is read once into a sealed memfd and every spawn executes that copy
(``/proc/self/fd/N``), so changing the file on disk afterwards changes nothing that runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipevisor.supervisor.proc.trust import check_trusted

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
"""Real paths of the shim binaries in use (``/memfd:...`` for a sealed copy): what
``/proc/PID/exe`` of a pvinit process reads, so tree walks can tell pvinit apart."""

_COMPILERS = ("cc", "gcc", "clang")


@dataclass(frozen=True)
class ShimFile:
    """A pvinit binary that passed the trust rule."""

    path: str
    """Its real path."""
    source: str
    """``packaged`` (in the wheel), ``cache`` (compiled for a checkout) or ``override``
    (``PIPEVISOR_SHIM=/path``)."""
    why: str
    """How it was found, for ``Containment.detail``."""


def _cache_dir() -> Path:
    explicit = os.environ.get("PIPEVISOR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "pipevisor"


def _private_cache_dir(cache: Path) -> str | None:
    """Create ``cache`` if needed and make sure it is ours alone: a real folder (not a
    symlink) owned by our euid, mode 0700, below folders only root or we can change.
    Returns why not, or None."""
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(cache)
    except OSError as exc:
        return f"cache dir {cache} unusable: {exc}"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"cache dir {cache} is not a folder (a symlink or a file)"
    if st.st_uid != os.geteuid():
        return (f"cache dir {cache} is owned by uid {st.st_uid}, not by us "
                f"(uid {os.geteuid()})")
    if stat.S_IMODE(st.st_mode) != 0o700:
        try:
            os.chmod(cache, 0o700)
        except OSError as exc:
            return f"cache dir {cache} unusable: cannot make it private: {exc}"
    why = check_trusted(cache)
    if why is not None:
        return f"cache dir {cache} refused: {why}"
    return None


def search_path(env_path: str | None = None) -> list[str]:
    """The absolute entries of PATH (``$PATH`` by default). Empty and relative entries
    would be searched in whatever the current directory is, so they are dropped."""
    raw = os.environ.get("PATH", os.defpath) if env_path is None else env_path
    return [entry for entry in raw.split(os.pathsep) if entry and os.path.isabs(entry)]


def find_tool(names: tuple[str, ...] | str, env_path: str | None = None) -> str | None:
    """The first trusted executable of ``names`` on the absolute PATH entries."""
    for name in (names,) if isinstance(names, str) else names:
        for folder in search_path(env_path):
            candidate = os.path.join(folder, name)
            if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
                continue
            why = check_trusted(candidate)
            if why is None:
                return candidate
            log.warning("not running %s: %s", candidate, why)
    return None


def _find_compiler() -> str | None:
    return find_tool(_COMPILERS)


def _packaged_shim(digest: str) -> ShimFile | None:
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
    why = check_trusted(binary)
    if why is not None:
        log.warning("ignoring the packaged pvinit: %s", why)
        return None
    return ShimFile(os.path.realpath(binary), "packaged", "built with the package")


class ShimRefused(Exception):
    """A shim file exists but fails the trust rule: it is not used (no fallback to
    compiling another one over it), and the message says why."""


def _compile(compiler: str, cache: Path, target: Path) -> str | None:
    """Compile pvinit into ``target`` (atomically); returns why not, or None."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pvinit-", dir=cache)
        os.close(fd)
    except OSError as exc:
        return f"cache dir {cache} unusable: {exc}"
    try:
        proc = subprocess.run(
            [compiler, *_CFLAGS, "-o", tmp, str(_SHIM_SOURCE)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=cache,
        )
        if proc.returncode != 0:
            log.debug("compiling pvinit failed: %s", proc.stderr.strip())
            return f"compiling it failed: {proc.stderr.strip()[:200]}"
        os.chmod(tmp, 0o755)
        # Atomic: concurrent supervisors either see no file or a whole one.
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"compiling it failed: {exc}"
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return None


def _build_shim() -> tuple[ShimFile | None, str]:
    """Return (shim, why) so detection can explain a missing or refused shim."""
    override = os.environ.get("PIPEVISOR_SHIM")
    if override == "0":
        return None, "PIPEVISOR_SHIM=0"
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            return None, f"PIPEVISOR_SHIM={override} is not an executable file"
        why = check_trusted(override)
        if why is not None:
            return None, f"PIPEVISOR_SHIM={override} refused: {why}"
        return ShimFile(os.path.realpath(override), "override", f"PIPEVISOR_SHIM={override}"), ""
    if not IS_LINUX:
        return None, f"pvinit is Linux-only ({sys.platform})"
    try:
        source = _SHIM_SOURCE.read_bytes()
    except OSError as exc:
        return None, f"pvinit source missing: {exc}"
    digest = hashlib.sha256(source + " ".join(_CFLAGS).encode()).hexdigest()[:16]
    packaged = _packaged_shim(digest)
    if packaged is not None:
        return packaged, ""
    cache = _cache_dir()
    why = _private_cache_dir(cache)
    if why is not None:
        return None, why
    target = cache / f"pvinit-{digest}"
    if os.path.lexists(target):
        why = check_trusted(target)
        if why is not None:
            return None, f"cached shim refused: {why}"
        if os.access(target, os.X_OK):
            return ShimFile(os.path.realpath(target), "cache", f"cached {target.name}"), ""
    compiler = _find_compiler()
    if compiler is None:
        return None, "no C compiler (cc, gcc or clang) on PATH (absolute entries only)"
    why = _compile(compiler, cache, target)
    if why is not None:
        return None, why
    why = check_trusted(target)
    if why is not None:  # cannot happen in a private folder; checked all the same
        return None, f"compiled shim refused: {why}"
    return ShimFile(os.path.realpath(target), "cache", f"compiled {target.name}"), ""


@functools.cache
def _shim_cached(override: str | None) -> tuple[ShimFile | None, str]:
    shim, why = _build_shim()
    if shim is not None:
        _known_shims.add(shim.path)
    return shim, why


def ensure_shim() -> str | None:
    """The verified pvinit file (compiled once per source version); None means we must
    do without it."""
    shim = _shim_cached(os.environ.get("PIPEVISOR_SHIM"))[0]
    return None if shim is None else shim.path


# --------------------------------------------------------------------------- sealed copy

_MFD_EXEC = 0x0010  # Linux 6.3+: say that this memfd is meant to be executed
_SEALS = ("F_SEAL_WRITE", "F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_SEAL")

_sealed: dict[str, int] = {}
"""sha256 of a verified binary -> read-only fd of its sealed memfd. Never closed: a
Containment may hold the fd number for the life of the process, and closing it would
let that number name another file."""


def _read_verified(path: str) -> bytes:
    """The content of ``path``, read through an fd that is proven to be the very file
    the trust rule accepted (checked before opening, and again after, by inode)."""
    why = check_trusted(path)
    if why is not None:
        raise ShimRefused(why)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        opened = os.fstat(fd)
        why = check_trusted(path)
        now = os.stat(path)
        if why is not None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
            raise ShimRefused(why or f"{path} was replaced while it was being read")
        if not stat.S_ISREG(opened.st_mode):
            raise ShimRefused(f"{path} is not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def sealed_copy(path: str) -> int:
    """A read-only fd of a sealed memfd holding the verified ``path``: its content can
    no longer change, whoever writes the file on disk. Raises :class:`ShimRefused` if
    ``path`` fails the trust rule, OSError if there are no sealed memfds here."""
    import fcntl

    data = _read_verified(path)
    key = hashlib.sha256(data).hexdigest()
    if key in _sealed:
        return _sealed[key]
    if not hasattr(os, "memfd_create") or not all(hasattr(fcntl, s) for s in _SEALS):
        raise OSError("no sealed memfds on this platform")
    name = f"pipevisor-pvinit-{key[:12]}"
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        rw = os.memfd_create(name, flags | _MFD_EXEC)
    except OSError:  # EINVAL before Linux 6.3
        rw = os.memfd_create(name, flags)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(rw, view):]
        seals = 0
        for seal in _SEALS:
            seals |= getattr(fcntl, seal)
        fcntl.fcntl(rw, fcntl.F_ADD_SEALS, seals)
        # a read-only fd: the kernel refuses to exec a file open for writing (ETXTBSY)
        # on some versions, and nothing here should hold a writable one anyway
        ro = os.open(f"/proc/self/fd/{rw}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(rw)
    _sealed[key] = ro
    return ro


def fd_path(fd: int) -> str:
    """What to exec to run the file behind ``fd`` (passed to the child as the same fd)."""
    return f"/proc/self/fd/{fd}"
