"""Where the daemon keeps its run-time files (the control socket), shared by server and clients.

One function decides the default so that ``pipevisor run`` and every client
(CLI, :class:`pipevisor.supervisor.client.Client`) agree without configuration.

The ``/tmp/pipevisor-$UID`` fallback lives in a world-writable folder, so its
name can be taken first by someone else: a directory they own, a symlink to a
place of their choosing, or a folder we made once and later widened. A socket
or pid record there could be swapped or read by others, so the folder is only
used when it is ours, a real directory, and closed to group and others;
anything else is refused with the reason, never repaired behind the user's back.
"""

from __future__ import annotations

import os
import stat

from pipevisor.supervisor.errors import ConfigError


class UnsafeRuntimeDir(ConfigError):
    """The runtime directory exists but could be tampered with by someone else."""


def runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/pipevisor`` (per-user, tmpfs, cleaned at logout), else
    ``/tmp/pipevisor-$UID`` for sessions without one (containers, cron, su), created
    0700 if missing and checked to be private (:func:`private_dir`)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return os.path.join(base, "pipevisor")
    return private_dir(f"/tmp/pipevisor-{os.getuid()}")


def default_socket_path() -> str:
    return os.path.join(runtime_dir(), "control.sock")


def private_dir(path: str) -> str:
    """Create ``path`` (mode 0700) unless it exists, then check it is ours: a directory,
    not a symlink, owned by this user, without group/other permissions. Creating first
    and checking after leaves no window for someone to slip a folder in between.
    Raises :class:`UnsafeRuntimeDir` naming the path, the problem and the way out."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeRuntimeDir(f"{path}: cannot create the runtime directory: "
                               f"{exc.strerror or exc}{_WAY_OUT}") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link, not a directory"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "exists and is not a directory"
    elif st.st_uid != os.getuid():
        problem = f"is owned by uid {st.st_uid}, not by us (uid {os.getuid()})"
    elif st.st_mode & 0o077:
        problem = (f"has mode {stat.S_IMODE(st.st_mode):04o}: group or others have access "
                   f"(chmod 700 {path} if it is yours)")
    else:
        return path
    raise UnsafeRuntimeDir(f"{path}: refusing the runtime directory: it {problem}{_WAY_OUT}")


_WAY_OUT = ("; set XDG_RUNTIME_DIR, or give the daemon --socket and supervisor.state_dir "
            "(clients --socket or PIPEVISOR_SOCKET)")
