"""What a plugin may do once it runs: its user and group, no_new_privs, and an optional
Landlock sandbox (file-system paths it may read or write, TCP ports it may bind or
connect to).

A spec asks with :class:`Privileges`; :func:`plan_privileges` turns that into a
:class:`PrivilegePlan` for the containment in use: flags for pvinit, which applies all of
it in the plugin process just before exec (docs/process-containment.md, "Privileges"),
or, without the shim, what ``subprocess`` and ``setpriv`` can do instead. The plan also
says what is actually in effect, for the plugin's status; whatever cannot be applied is
said in one log line per plugin, or refused when the spec says it is required.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import grp
import logging
import os
import pwd
import sys
from dataclasses import dataclass, field
from typing import Any

from pipevisor.supervisor.proc.shim import IS_LINUX, find_tool

__all__ = ["PrivilegeError", "PrivilegePlan", "Privileges", "Sandbox", "landlock_abi",
           "plan_privileges"]

log = logging.getLogger(__name__)

_NR_LANDLOCK_CREATE_RULESET = 444  # the same number on every Linux architecture
_LANDLOCK_CREATE_RULESET_VERSION = 1
NET_ABI = 4
"""The first Landlock ABI with TCP bind/connect rules."""

ALWAYS_WRITABLE = ("/dev/null",)
"""Added to every sandbox's write list: writing there reaches nothing."""


class PrivilegeError(Exception):
    """The plugin cannot be started with the privileges asked for (unknown user, not
    root, a required sandbox the kernel cannot give, a sandbox path that is missing)."""


def _absolute(paths: tuple[str, ...], key: str) -> None:
    for path in paths:
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ValueError(f"sandbox.{key}: {path!r} is not an absolute path")


def _ports(ports: tuple[int, ...], key: str) -> None:
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"sandbox.{key}: {port!r} is not a TCP port (0-65535)")


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A per-plugin Landlock sandbox: everything not listed is denied, per kind.

    Writes are always restricted (to ``write``, plus /dev/null). Reads are restricted
    only when ``read`` is given (then ``write`` paths stay readable too, and the
    plugin's interpreter and libraries must be listed). TCP bind and connect are
    restricted only when ``net_bind`` / ``net_connect`` are given (Landlock ABI 4)."""

    read: tuple[str, ...] | None = None
    """Paths (files or folders, with everything below) the plugin may read and execute;
    None leaves reading unrestricted."""
    write: tuple[str, ...] = ()
    """Paths the plugin may write, create, remove and rename in (and read)."""
    net_bind: tuple[int, ...] | None = None
    """TCP ports the plugin may bind; None leaves binding unrestricted."""
    net_connect: tuple[int, ...] | None = None
    """TCP ports the plugin may connect to; None leaves connecting unrestricted."""
    required: bool = False
    """Refuse to start the plugin when the sandbox cannot be enforced (no Landlock in
    the kernel, an ABI without network rules, no pvinit shim) instead of starting it
    without, with a log line."""

    def __post_init__(self) -> None:
        for key in ("read", "write", "net_bind", "net_connect"):
            value = getattr(self, key)
            if value is not None:
                if isinstance(value, str):
                    raise ValueError(f"sandbox.{key} must be a list")
                object.__setattr__(self, key, tuple(value))
        if self.read is not None:
            _absolute(self.read, "read")
        _absolute(self.write, "write")
        if self.net_bind is not None:
            _ports(self.net_bind, "net_bind")
        if self.net_connect is not None:
            _ports(self.net_connect, "net_connect")

    def to_json(self) -> dict[str, Any]:
        return {"read": None if self.read is None else list(self.read),
                "write": list(self.write),
                "net_bind": None if self.net_bind is None else list(self.net_bind),
                "net_connect": None if self.net_connect is None else list(self.net_connect),
                "required": self.required}


@dataclass(frozen=True, slots=True)
class Privileges:
    """What a plugin spec asks for."""

    user: str | int | None = None
    group: str | int | None = None
    no_new_privs: bool = True
    sandbox: Sandbox | None = None


@functools.cache
def landlock_abi() -> tuple[int, str]:
    """(ABI version, "") where the kernel has Landlock, else (0, why not)."""
    if not IS_LINUX:
        return 0, f"Landlock is Linux-only ({sys.platform})"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        abi = int(libc.syscall(ctypes.c_long(_NR_LANDLOCK_CREATE_RULESET), None,
                               ctypes.c_size_t(0),
                               ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)))
    except (OSError, AttributeError) as exc:
        return 0, f"cannot probe Landlock: {exc}"
    if abi >= 1:
        return abi, ""
    err = ctypes.get_errno()
    if err == errno.EOPNOTSUPP:
        return 0, "Landlock is built into the kernel but disabled at boot (lsm=)"
    if err == errno.ENOSYS:
        return 0, "the kernel has no Landlock (needs Linux 5.13+ with CONFIG_SECURITY_LANDLOCK)"
    return 0, f"Landlock probe failed: {os.strerror(err)}"


@dataclass(frozen=True)
class PrivilegePlan:
    """How a spawn applies :class:`Privileges`, and what will be in effect."""

    uid: int | None = None
    """Switch to this uid (None: keep the supervisor's)."""
    gid: int | None = None
    no_new_privs: bool = False
    setpriv: str | None = None
    """Without the shim: the trusted ``setpriv`` that sets no_new_privs before exec."""
    landlock_flags: tuple[str, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)

    def shim_flags(self) -> list[str]:
        """pvinit options (before ``--``)."""
        flags: list[str] = []
        if self.uid is not None:
            flags += ["--user", str(self.uid)]
        if self.gid is not None:
            flags += ["--group", str(self.gid)]
        if self.no_new_privs:
            flags.append("--nnp")
        return flags + list(self.landlock_flags)

    def spawn_kwargs(self) -> dict[str, Any]:
        """Without the shim: what ``subprocess``/``anyio.open_process`` do between fork
        and exec themselves (setgroups, setregid, setreuid; no preexec_fn)."""
        kwargs: dict[str, Any] = {}
        if self.uid is not None:
            kwargs["user"] = self.uid
        if self.gid is not None:
            kwargs["group"] = self.gid
        if self.uid is not None or self.gid is not None:
            kwargs["extra_groups"] = []
        return kwargs

    def exec_prefix(self) -> list[str]:
        """Without the shim: ``setpriv --no-new-privs --`` when no_new_privs is wanted
        (it execs the plugin in place: same pid)."""
        return [self.setpriv, "--no-new-privs", "--"] if self.setpriv else []

    def describe(self) -> dict[str, Any]:
        return dict(self.status)


_said: set[tuple[str, str]] = set()


def _say_once(name: str, message: str) -> None:
    """One log line per plugin and message, not one per restart."""
    if (name, message) not in _said:
        _said.add((name, message))
        log.warning("plugin %r: %s", name, message)


def _resolve_ids(user: str | int | None, group: str | int | None) -> tuple[int | None,
                                                                             int | None]:
    uid: int | None = None
    gid: int | None = None
    entry: pwd.struct_passwd | None = None
    if user is not None:
        try:
            if isinstance(user, int) or user.isdigit():
                uid = int(user)
                try:
                    entry = pwd.getpwuid(uid)
                except KeyError:
                    entry = None
            else:
                entry = pwd.getpwnam(user)
                uid = entry.pw_uid
        except KeyError:
            raise PrivilegeError(f"unknown user {user!r}") from None
    if group is not None:
        try:
            gid = int(group) if isinstance(group, int) or group.isdigit() else \
                grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"unknown group {group!r}") from None
    elif uid is not None:
        if entry is None:
            raise PrivilegeError(f"user {user!r} has no passwd entry: set group too")
        gid = entry.pw_gid
    return uid, gid


def _sandbox_plan(name: str, sandbox: Sandbox, shim: bool) -> tuple[tuple[str, ...],
                                                                      dict[str, Any]]:
    status: dict[str, Any] = {**sandbox.to_json(), "enforced": False, "net_enforced": False,
                              "landlock_abi": None, "reason": None}
    abi, why = landlock_abi()
    status["landlock_abi"] = abi or None
    if not shim:
        why = "no pvinit shim, which is what applies Landlock"
    if not abi or not shim:
        message = f"sandbox not enforced: {why}; the plugin runs without it"
        if sandbox.required:
            raise PrivilegeError(f"sandbox required but not possible: {why}")
        _say_once(name, message)
        status["reason"] = why
        return (), status
    paths = [*(sandbox.read or ()), *sandbox.write]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise PrivilegeError(f"sandbox paths do not exist: {', '.join(missing)}")
    flags = ["--landlock"]
    if sandbox.read is not None:
        flags += ["--ll-restrict", "read"]
        for path in sandbox.read:
            flags += ["--ll-read", path]
    for path in (*sandbox.write, *(p for p in ALWAYS_WRITABLE if p not in sandbox.write)):
        flags += ["--ll-write", path]
    net = sandbox.net_bind is not None or sandbox.net_connect is not None
    if net and abi < NET_ABI:
        why = f"network rules need Landlock ABI {NET_ABI}, the kernel has {abi}"
        if sandbox.required:
            raise PrivilegeError(f"sandbox required but not possible: {why}")
        _say_once(name, f"sandbox network rules not enforced: {why}; file rules are")
        status["reason"] = why
    elif net:
        for kind, ports in (("bind", sandbox.net_bind), ("connect", sandbox.net_connect)):
            if ports is not None:
                flags += ["--ll-restrict", kind]
                for port in ports:
                    flags += [f"--ll-{kind}", str(port)]
        status["net_enforced"] = True
    status["enforced"] = True
    return tuple(flags), status


def plan_privileges(privileges: Privileges | None, *, shim: bool,
                    name: str = "plugin") -> PrivilegePlan:
    """How to apply ``privileges`` under a containment with (``shim``) or without the
    pvinit shim. Raises :class:`PrivilegeError` when the plugin must not start."""
    privileges = privileges or Privileges()
    euid, egid = os.geteuid(), os.getegid()
    uid, gid = _resolve_ids(privileges.user, privileges.group)
    if euid != 0:
        if (uid is not None and uid != euid) or (gid is not None and gid != egid):
            raise PrivilegeError(
                f"user={privileges.user!r} group={privileges.group!r} needs the supervisor "
                f"to run as root; it runs as uid {euid} gid {egid}")
        uid = gid = None  # already those ids; nothing to drop, nothing we could clear
    status: dict[str, Any] = {
        "uid": euid if uid is None else uid,
        "gid": egid if gid is None else gid,
        "supplementary_groups": "cleared" if uid is not None or gid is not None
        else "inherited",
        "no_new_privs": False,
        "no_new_privs_by": None,
        "sandbox": None,
    }
    setpriv = None
    if privileges.no_new_privs:
        if shim:
            status.update(no_new_privs=True, no_new_privs_by="pvinit")
        elif IS_LINUX and (setpriv := find_tool("setpriv")) is not None:
            status.update(no_new_privs=True, no_new_privs_by="setpriv")
        else:
            _say_once(name, "no_new_privs not set: there is no pvinit shim, and no setpriv "
                            "(util-linux) on PATH to set it before exec")
    flags: tuple[str, ...] = ()
    if privileges.sandbox is not None:
        flags, status["sandbox"] = _sandbox_plan(name, privileges.sandbox, shim)
    if flags and not privileges.no_new_privs:  # PluginSpec refuses this; embedders too
        raise PrivilegeError("a sandbox needs no_new_privs (Landlock requires it)")
    return PrivilegePlan(uid, gid, privileges.no_new_privs and shim, setpriv, flags, status)
