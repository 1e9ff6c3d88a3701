"""Where the daemon keeps its run-time files (the control socket, the state dir), shared
by server and clients, and the one rule every such folder must pass (#14 item 3).

One function decides the default so that ``pipevisor run`` and every client
(CLI, :class:`pipevisor.supervisor.client.Client`) agree without configuration.

A run-time folder holds what decides who controls the daemon (the socket) and what it
kills at start-up (``children.json``), so whoever can change it can steer the daemon.
It is used only when it is ours (owned by our effective uid), a real directory (never
a symbolic link: ``lstat``), and neither group nor others may write it; every folder
above it must belong to root or to us and be closed to writers other than its owner,
unless it is sticky (``/tmp``: nobody may move another's entry there). A folder we
create is made 0700. Anything else is refused with the path and the reason, never
repaired behind the user's back. This catches root started with another user's
``$XDG_RUNTIME_DIR`` (``sudo -E``, ``su`` without ``-``), a symlinked folder, and a
``--socket`` in a shared folder such as ``/tmp``.

The ``/tmp/pipevisor-$UID`` fallback lives in a world-writable folder, so its name can
be taken first by someone else: it is stricter still (no group or other access at all).
"""

from __future__ import annotations

import os
import stat

from pipevisor.supervisor.errors import ConfigError

__all__ = ["UnsafeRuntimeDir", "default_socket_path", "open_private", "private_dir",
           "runtime_dir", "secure_dir"]


class UnsafeRuntimeDir(ConfigError):
    """A run-time directory or file exists but could be tampered with by someone else."""


def runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/pipevisor`` (per-user, tmpfs, cleaned at logout), else
    ``/tmp/pipevisor-$UID`` for sessions without one (containers, cron, su), created
    0700 if missing and checked (:func:`private_dir`). ``$XDG_RUNTIME_DIR`` is checked
    when it exists (:func:`secure_dir`: ours, a real folder, closed to other writers),
    so root started with another user's value is refused here, client and daemon alike;
    the ``pipevisor`` folder in it is checked (and made) by whoever creates files there
    (the daemon: the socket's folder and the state dir)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        if os.path.lexists(base):
            secure_dir(base, what="$XDG_RUNTIME_DIR", create=False)
        return os.path.join(os.path.abspath(base), "pipevisor")
    return private_dir(f"/tmp/pipevisor-{os.getuid()}")


def default_socket_path() -> str:
    return os.path.join(runtime_dir(), "control.sock")


def _me() -> int:
    return os.geteuid()


def _refuse(path: str, what: str, problem: str) -> UnsafeRuntimeDir:
    return UnsafeRuntimeDir(f"{path}: refusing {what}: it {problem}{_WAY_OUT}")


def _problem_with_dir(st: os.stat_result, path: str, *, private: bool) -> str | None:
    """Why ``st`` (from lstat) is not an acceptable run-time folder, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link, not a directory"
    if not stat.S_ISDIR(st.st_mode):
        return "exists and is not a directory"
    if st.st_uid != _me():
        return f"is owned by uid {st.st_uid}, not by us (uid {_me()})"
    mask = 0o077 if private else 0o022
    if st.st_mode & mask:
        who = "group or others have access" if private else "group or others may write it"
        return (f"has mode {stat.S_IMODE(st.st_mode):04o}: {who} "
                f"(chmod 700 {path} if it is yours)")
    return None


def _problem_above(path: str) -> str | None:
    """Why a folder above ``path`` lets someone else swap it, or None. Symlinks above are
    resolved and the real folders checked (``/var/run`` -> ``/run`` is fine)."""
    folder = os.path.realpath(os.path.dirname(path))
    while True:
        try:
            st = os.stat(folder)
        except OSError as exc:
            return f"is below {folder}, which cannot be read: {exc.strerror or exc}"
        if st.st_uid not in (0, _me()):
            return f"is below {folder}, owned by uid {st.st_uid} (not root, not us)"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return (f"is below {folder} (mode {stat.S_IMODE(st.st_mode):04o}), which others "
                    "may write: they could replace it")
        if folder == "/":
            return None
        folder = os.path.dirname(folder)


def secure_dir(path: str, *, what: str = "the runtime directory", create: bool = True,
               private: bool = False) -> str:
    """Check (creating it 0700 first if missing and ``create``) that ``path`` is a folder
    only we can change: ours, a real directory, not writable by group or others
    (``private``: no group/other access at all), below folders owned by root or us that
    nobody else may write (sticky ones excepted). Returns ``path`` (absolute); raises
    :class:`UnsafeRuntimeDir` naming the path, ``what`` it is for and the problem.

    Missing parents are created 0700 too. Creating first and checking after leaves no
    window for someone to slip a folder in between."""
    path = os.path.abspath(path)
    if create:
        missing: list[str] = []
        probe = path
        while not os.path.lexists(probe) and probe != os.path.dirname(probe):
            missing.append(probe)
            probe = os.path.dirname(probe)
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:
                pass
            except OSError as exc:
                raise UnsafeRuntimeDir(f"{folder}: cannot create {what}: "
                                       f"{exc.strerror or exc}{_WAY_OUT}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise _refuse(path, what, "does not exist") from None
    except OSError as exc:
        raise _refuse(path, what, f"cannot be read ({exc.strerror or exc})") from None
    problem = _problem_with_dir(st, path, private=private) or _problem_above(path)
    if problem is not None:
        raise _refuse(path, what, problem)
    return path


def private_dir(path: str) -> str:
    """Create ``path`` (mode 0700) unless it exists, then check it is ours: a directory,
    not a symlink, owned by this user, without group/other permissions (for a folder in
    a world-writable one such as ``/tmp``). Raises :class:`UnsafeRuntimeDir` naming the
    path, the problem and the way out."""
    return secure_dir(path, private=True)


def open_private(path: str, flags: int, *, what: str, mode: int = 0o600) -> int:
    """``os.open`` with ``O_NOFOLLOW`` (a symlink planted at ``path`` is refused, not
    followed), then check the file is a regular file of ours that group and others
    cannot write. Returns the fd; raises :class:`UnsafeRuntimeDir` (FileNotFoundError
    passes through, for callers that treat a missing file as empty)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        why = ("is a symbolic link" if exc.errno == 40  # ELOOP
               else f"cannot be opened ({exc.strerror or exc})")
        raise UnsafeRuntimeDir(f"{path}: refusing {what}: it {why}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != _me():
        problem = f"is owned by uid {st.st_uid}, not by us (uid {_me()})"
    elif st.st_mode & 0o022:
        problem = f"has mode {stat.S_IMODE(st.st_mode):04o}: group or others may write it"
    if problem is not None:
        os.close(fd)
        raise UnsafeRuntimeDir(f"{path}: refusing {what}: it {problem}")
    return fd


_WAY_OUT = ("; set XDG_RUNTIME_DIR, or give the daemon --socket and supervisor.state_dir "
            "in folders of your own (clients --socket or PIPEVISOR_SOCKET)")
