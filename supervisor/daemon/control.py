"""The daemon's control socket: the same newline-delimited JSON-RPC 2.0, over a Unix socket.

The CLI and :mod:`pipevisor.supervisor.client` speak to a running daemon through this
server. Each client connection gets its own sans-I/O :class:`pipevisor.protocol.Peer`
and its own task group, so that

* many requests on one connection run concurrently, bounded per connection
  (past the bound the server stops reading that connection: back-pressure,
  not an error and not unbounded memory);
* a client that goes away takes its work with it: closing the connection
  cancels its in-flight calls (and the plugin is told, as for any cancelled
  call), and its event subscriptions end;
* a slow event reader cannot grow the daemon's memory: a connection's
  subscriptions share one :class:`pipevisor.supervisor.engine.events.Subscription` bounded in
  events and bytes; a client that lets it overflow is sent a last ``lagged``
  event and disconnected;
* no client can make the daemon hold more than its bounds (ControlLimits,
  docs/bounds.md): the line limit and a shared budget for unfinished lines are
  enforced before bytes are buffered, connections are capped (the one idle the
  longest makes room), idle ones are closed, answers never exceed the
  clients' line limit, and running out of descriptors in ``accept`` is
  survived. When the daemon closes a connection on its own it says why first
  (:func:`notice`).

On asyncio (what ``pipevisor run`` uses) a connection is driven from its
transport's callbacks (:class:`pipevisor.supervisor.io.control_link.TransportLink`) and its
requests are served by worker tasks kept between requests, because anyio's
socket stream and a new task per request were most of the control path's
cost (figures in perf/README.md). Other anyio backends read with a task
(:class:`pipevisor.supervisor.io.control_link.StreamLink`); both paths are tested.

Whoever is served controls every plugin, so access is checked twice (#14 item 1): the
socket is created 0600 (under a umask, so it is never briefly wider; 0660 with
``[daemon] socket_group``) in a folder that must be ours and closed to other writers
(:func:`pipevisor.supervisor.paths.secure_dir`), and every connection's peer is checked
with SO_PEERCRED before a byte of it is read (:class:`SocketAccess`): root, the
daemon's own uid and members of ``socket_group`` are served; anyone else, and any
process inside a plugin's process tree or pid namespace, is told ``forbidden`` and
disconnected. Methods are listed in protocol/SPEC.md ("Control socket").
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anyio
import orjson
import psutil
from anyio.abc import TaskGroup, TaskStatus

from pipevisor.protocol import (
    CANCEL,
    ErrorCode,
    ErrorObject,
    Notification,
    NotificationReceived,
    Peer,
    ProtocolFault,
    Request,
    RequestReceived,
    encode,
    local_error,
)
from pipevisor.protocol.codec import FaultKind
from pipevisor.protocol.errors import EncodeError
from pipevisor.protocol.framing import DEFAULT_MAX_LINE_BYTES
from pipevisor.protocol.messages import ErrorResponse, RequestId
from pipevisor.supervisor.engine.config import PluginSpec
from pipevisor.supervisor.engine.events import (
    EventKind,
    Subscription,
    SubscriptionLagged,
    SupervisorEvent,
)
from pipevisor.supervisor.engine.states import SERVING, PluginState
from pipevisor.supervisor.engine.supervisor import Supervisor
from pipevisor.supervisor.errors import CallError, ConfigError, PipevisorError
from pipevisor.supervisor.io.control_link import (
    Loop,
    Pending,
    StreamLink,
    TransportLink,
    asyncio_loop,
    new_pending,
    take_accepted,
    wrap_socket,
)
from pipevisor.supervisor.io.listening import AcceptGuard, RateLimitedLog, accept_forever, refuse
from pipevisor.supervisor.paths import UnsafeRuntimeDir, secure_dir
from pipevisor.supervisor.proc.trust import check_trusted
from pipevisor.supervisor.records import PluginStatus

log = logging.getLogger("pipevisor.control")

MAX_IN_FLIGHT = 64
"""Requests one client connection may have running at once; past it, reading pauses."""

MAX_CONNECTIONS = 128
"""Client connections served at once. One more makes the connection idle the longest
leave (it is told ``evicted``); with none idle it is refused (``busy``)."""

IDLE_TIMEOUT = 60.0
"""Seconds a connection may sit with nothing in flight, no subscription and no complete
request before the daemon closes it (``idle``). Bytes of an unfinished line do not
count as activity (a client dribbling one byte at a time is idle)."""

MAX_SUBSCRIPTIONS = 16
"""Event subscriptions one connection may hold (they share the connection's queue)."""

SUBSCRIPTION_BUFFER = 1000
"""Events queued for one connection's subscriptions while its client is not reading."""

SUBSCRIPTION_BYTES = 4 * 1024 * 1024
"""Estimated bytes (pipevisor.supervisor.engine.events.event_size) queued for one connection's
subscriptions. Past either bound the client is sent a final ``lagged`` event with the
count and disconnected, and the queue is freed at once."""

LAG_CLOSE_GRACE = 10.0
"""Seconds a lagging client gets to read what was already written to it (the ``lagged``
notice is last) before its connection is cut."""

MAX_LINE_BYTES = DEFAULT_MAX_LINE_BYTES
"""Longest request line (16 MiB, the plugin wire's limit, so any call an embedded host
can make can be made through the socket). One byte more and the client is told
``line_too_long`` and disconnected: nothing past the limit is ever held."""

FREE_PARTIAL_BYTES = 64 * 1024
"""Bytes of an unfinished request line every connection may hold on its own."""

PARTIAL_BUDGET = 32 * 1024 * 1024
"""Bytes of unfinished request lines beyond FREE_PARTIAL_BYTES, shared by every
connection: a connection that would go past it is told ``busy`` and closed. So all
connections together hold at most MAX_CONNECTIONS x 64 KiB + 32 MiB of partial lines."""

MAX_ANSWER_BYTES = DEFAULT_MAX_LINE_BYTES
"""No line the daemon writes is longer: the clients' own line limit. A longer answer
is replaced by an error saying so; a longer event by a ``too_large`` event."""

LOGS_ANSWER_BYTES = 4 * 1024 * 1024
"""``logs`` answers at most this many bytes of lines: the newest lines that fit, and
``omitted`` says how many older ones were left out."""

MAX_LOG_LINES = 10_000

KNOWN_KINDS = frozenset(EventKind)
"""What ``subscribe`` may filter on (docs/cli.md lists them)."""

QUIET_KINDS = frozenset({EventKind.STDERR})
"""Kinds a subscription without an explicit ``kinds`` filter does not receive: stderr
lines are for ``logs --follow``, not for the general event stream."""

EVENT = "event"
"""The notification method carrying one supervisor event to a subscriber."""

PROGRESS = "progress"
"""The notification method carrying a call's progress to the client that made the call
with ``"progress": true`` (SPEC section 14)."""

PROGRESS_INTERVAL = 0.05
"""Seconds between two progress notifications for one call: a plugin sending faster is
coalesced to its latest (``skipped`` counts the ones replaced), so a flood costs the
daemon one pending notification per call, never a queue."""

PROGRESS_MESSAGE_CHARS = 1024
"""Characters of a progress ``message`` forwarded; the rest is cut."""

WRITE_HIGH_WATER = 64 * 1024
"""Bytes buffered for one client (beyond the kernel's socket buffer) before the tasks
writing to it wait for it to read: a slow event reader holds memory here, not more."""

_LINK_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError)


class DaemonHooks(Protocol):
    """What the control server needs from the daemon around the supervisor (daemon.py)."""

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration and apply it; returns what changed."""
        ...

    async def preview(self) -> dict[str, Any]:
        """What reload would change, changing nothing."""
        ...

    def resolve_plugin(self, name_or_path: str) -> PluginSpec:
        """A spec for ``pipevisor load``: a configured/discovered name or an executable path.
        Raises ConfigError naming what is wrong."""
        ...

    def info(self) -> dict[str, Any]:
        """Daemon facts for ``status`` (version, config file, start time ...)."""
        ...


def control_error(code: ErrorCode, message: str) -> ErrorObject:
    """An error about the control request itself, told apart from a plugin's
    error with the same code by ``data.origin == "control"``."""
    return ErrorObject(int(code), message, {"origin": "control"})


class ControlSocketError(PipevisorError):
    """The control socket cannot be set up (taken by a live daemon, not a socket, ...)."""


def notice(code: ErrorCode, message: str, reason: str) -> bytes:
    """A line the daemon sends on its own before it closes a connection: an error answer
    with id null (JSON-RPC's "no request to pin it on") and ``data.reason`` (busy,
    evicted, idle, line_too_long, lagged). Keep ``message`` under ~80 characters: a
    client reads such a line from a protocol fault, which keeps its first 200 bytes."""
    error = {"code": int(code), "message": message,
             "data": {"origin": "control", "reason": reason}}
    return encode({"jsonrpc": "2.0", "id": None, "error": error})


class _BadParams(Exception):
    pass


# ================================================================ socket set-up


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The kernel's record of who connected (SO_PEERCRED, taken at ``connect``)."""

    pid: int | None
    """None when the peer lives in a pid namespace we cannot see into (pid 0)."""
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """Who is at the other end of a connected Unix socket (Linux SO_PEERCRED), if known."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid or None, uid, gid)


def peer_pid(sock: socket.socket) -> int | None:
    """The pid at the other end of a connected Unix socket (Linux SO_PEERCRED), if known."""
    creds = peer_credentials(sock)
    return None if creds is None else creds.pid


_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13


def peer_groups(sock: socket.socket, pid: int | None) -> frozenset[int]:
    """The peer's supplementary groups: SO_PEERGROUPS (the kernel's copy taken at
    ``connect``), else the ``Groups:`` line of /proc/PID/status."""
    for size in (1024, 65536):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * size)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue
            break
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    if pid is None:
        return frozenset()
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


@dataclass(frozen=True, slots=True)
class SocketAccess:
    """Who may use the control socket: root, ``uid`` (the daemon's effective uid by
    default) and, when ``gid`` is set (``[daemon] socket_group``), that group's members
    (primary or supplementary group of the connecting process)."""

    uid: int = field(default_factory=os.geteuid)
    gid: int | None = None

    def refusal(self, sock: socket.socket, creds: PeerCredentials | None) -> str | None:
        """None when the peer may be served, else why not (for the log)."""
        if creds is None:
            return ("its credentials cannot be read (SO_PEERCRED)"
                    if hasattr(socket, "SO_PEERCRED") else None)
        if creds.uid in (0, self.uid):
            return None
        if self.gid is not None and (creds.gid == self.gid
                                     or self.gid in peer_groups(sock, creds.pid)):
            return None
        group = "" if self.gid is None else f" nor in group {self.gid}"
        return f"uid {creds.uid} is not root, not the daemon's uid {self.uid}{group}"


def _claim_path(path: str) -> None:
    """Make ``path`` free for binding: refuse a live daemon, remove a stale socket file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(
            f"control socket path {path} exists and is not a socket; "
            "remove it or choose another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale control socket %s (nobody listens on it)", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except OSError as exc:
        raise ControlSocketError(f"control socket {path} is unusable: {exc}") from exc
    else:
        pid = peer_pid(probe)
        who = f" (pid {pid})" if pid else ""
        raise ControlSocketError(
            f"another pipevisor daemon{who} is already listening on {path}; "
            "stop it first or choose another --socket")
    finally:
        probe.close()


def _bind(path: str, access: SocketAccess) -> socket.socket:
    """Bind with a umask that makes the socket 0600 from its first instant, in a folder
    only we can change (created 0700 if missing); with a group, chgrp then 0660."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        secure_dir(directory, what="the control socket's folder")
    except UnsafeRuntimeDir as exc:
        raise ControlSocketError(str(exc)) from None
    _claim_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ControlSocketError(f"cannot bind control socket {path}: {exc}") from exc
    finally:
        os.umask(old)
    try:
        if access.gid is not None:
            os.chown(path, -1, access.gid, follow_symlinks=False)
            os.chmod(path, 0o660)
            _warn_unsearchable(directory, access.gid)
        else:
            os.chmod(path, 0o600)  # a no-op after the umask; kept so the intent is explicit
    except OSError as exc:
        sock.close()
        os.unlink(path)
        raise ControlSocketError(f"cannot give control socket {path} to group "
                                 f"{access.gid}: {exc.strerror or exc} (the daemon must "
                                 "run as root or be a member of socket_group)") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _warn_unsearchable(directory: str, gid: int) -> None:
    """The group can reach the socket only if it may search every folder above it."""
    folder = os.path.realpath(directory)
    while True:
        st = os.stat(folder)
        if not (st.st_mode & 0o001 or (st.st_mode & 0o010 and st.st_gid == gid)):
            log.warning("socket_group: group %d cannot search %s (mode %04o, group %d), so "
                        "its members cannot reach the control socket; put the socket in a "
                        "folder they can reach (docs/cli.md)", gid, folder,
                        stat.S_IMODE(st.st_mode), st.st_gid)
            return
        if folder == "/":
            return
        folder = os.path.dirname(folder)


def _pid_ns(link: str) -> int | None:
    """The inode naming a pid namespace (``/proc/PID/ns/pid``), None if unreadable."""
    try:
        return os.stat(link).st_ino
    except OSError:
        return None


def _remove_if_ours(path: str, inode: int) -> None:
    """Remove the socket file unless a successor already replaced it."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True, slots=True)
class ControlLimits:
    """Every bound of the control socket, with its default (docs/bounds.md)."""

    max_in_flight: int = MAX_IN_FLIGHT
    max_connections: int = MAX_CONNECTIONS
    idle_timeout: float = IDLE_TIMEOUT
    max_line_bytes: int = MAX_LINE_BYTES
    free_partial_bytes: int = FREE_PARTIAL_BYTES
    partial_budget: int = PARTIAL_BUDGET
    max_subscriptions: int = MAX_SUBSCRIPTIONS
    subscription_buffer: int = SUBSCRIPTION_BUFFER
    subscription_bytes: int = SUBSCRIPTION_BYTES
    lag_close_grace: float = LAG_CLOSE_GRACE
    max_answer_bytes: int = MAX_ANSWER_BYTES
    logs_answer_bytes: int = LOGS_ANSWER_BYTES
    progress_interval: float = PROGRESS_INTERVAL
    progress_message_chars: int = PROGRESS_MESSAGE_CHARS


async def serve_control(
    sup: Supervisor,
    socket_path: str,
    hooks: DaemonHooks,
    *,
    max_in_flight: int | None = None,
    max_connections: int | None = None,
    limits: ControlLimits | None = None,
    access: SocketAccess | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control socket until cancelled; the socket file is removed on exit.
    ``max_in_flight`` and ``max_connections`` override the same fields of ``limits``;
    ``access`` says who is served (the daemon's uid and root by default)."""
    access = access or SocketAccess()
    limits = limits or ControlLimits()
    if max_in_flight is not None:
        limits = replace(limits, max_in_flight=max_in_flight)
    if max_connections is not None:
        limits = replace(limits, max_connections=max_connections)
    sock = _bind(socket_path, access)
    inode = os.lstat(socket_path).st_ino
    server = _Server(sup, hooks, socket_path, limits, access)
    guard = AcceptGuard(f"control socket {socket_path}")
    try:
        async with anyio.create_task_group() as tg:
            log.info("control socket listening on %s", socket_path)
            tg.start_soon(server.sweep_idle)
            task_status.started()
            await accept_forever(
                sock, guard, take=lambda conn: tg.start_soon(server.accepted, conn),
                make_room=server.room_for_one, room_made="closed the connection idle the "
                "longest", refusal=lambda exc: notice(
                    ErrorCode.OVER_LIMIT, f"daemon busy: out of file descriptors "
                    f"({exc.strerror}); retry later", "busy"))
    finally:
        guard.close()
        sock.close()
        _remove_if_ours(socket_path, inode)


# ================================================================ resources


# ================================================================ the server

Handler = Callable[["_Server", "_Connection", dict[str, Any]], Awaitable[Any]]


class _Server:
    def __init__(self, sup: Supervisor, hooks: DaemonHooks, path: str,
                 limits: ControlLimits, access: SocketAccess | None = None) -> None:
        self.limits = limits
        self.access = access or SocketAccess()
        self.max_connections = limits.max_connections
        self.max_in_flight = limits.max_in_flight
        self.conns: dict[_Connection, None] = {}
        """Connections served now, oldest first."""
        self.partial_charged = 0
        """Bytes of unfinished lines charged to PARTIAL_BUDGET, all connections."""
        self.sup = sup
        self.hooks = hooks
        self.path = path
        self.started = time.time()
        self._arrived = anyio.Event()
        self._refusals = RateLimitedLog(log)

    @property
    def connections(self) -> int:
        return len(self.conns)

    def plugin_of(self, pid: int | None) -> str | None:
        """The plugin whose process tree or pid namespace the peer runs in, if any (#14
        item 1); ``"?"`` when the peer is gone before it could be checked.

        Plugins run as the daemon's own user, so the socket's mode does not keep them
        out; their tree does. Walks the peer's ancestors (the kernel's view, so a forged
        environment does not help) up to a plugin's root process, and compares the
        peer's pid namespace with each plugin's. A connecting process that exits at
        once (handing its socket to a child) is refused: it can no longer be checked."""
        if pid is None:
            return None
        roots = self.sup.process_roots()
        if not roots:
            return None
        try:
            proc = psutil.Process(pid)
            chain = [pid, *(p.pid for p in proc.parents())]
            if proc.status() == psutil.STATUS_ZOMBIE:
                return "?"
        except psutil.Error:
            return "?"  # gone already: whatever holds its socket now cannot be checked
        except OSError as exc:  # out of descriptors to read /proc: serve, and say so
            self._refusals(logging.WARNING, "control socket %s: could not check whether "
                           "a client runs inside a plugin (%s); served", self.path, exc)
            return None
        found = next((roots[p] for p in chain if p in roots), None)
        if found is not None:
            return found
        ns = _pid_ns(f"/proc/{pid}/ns/pid")
        if ns is None or ns == _pid_ns("/proc/self/ns/pid"):
            return None
        for root, name in roots.items():
            if ns == _pid_ns(f"/proc/{root}/ns/pid_for_children"):
                return name
        return None

    def refusal(self, sock: socket.socket) -> tuple[str, str] | None:
        """(log text, client message) when this peer may not be served."""
        creds = peer_credentials(sock)
        plugin = self.plugin_of(None if creds is None else creds.pid)
        if plugin == "?":
            return ("a client that exited before it could be checked",
                    "the connecting process is gone")
        if plugin is not None:
            return (f"inside plugin {plugin}'s process tree",
                    "plugins may not use the control socket")
        why = self.access.refusal(sock, creds)
        if why is not None:
            return (f"pid {creds.pid if creds else '?'}: {why}",
                    "forbidden: not allowed to use this control socket")
        return None

    async def accepted(self, sock: socket.socket) -> None:
        refused = self.refusal(sock)
        if refused is not None:
            self._refusals(logging.WARNING, "control socket %s: refused a connection from "
                           "%s", self.path, refused[0])
            refuse(sock, notice(ErrorCode.INVALID_REQUEST, refused[1], "forbidden"))
            return
        if len(self.conns) >= self.max_connections and self.evict_idle() is None:
            self._refusals(logging.WARNING, "control socket %s: refused a connection: all %d "
                           "connections are busy (none idle to make room)",
                           self.path, self.max_connections)
            refuse(sock, notice(ErrorCode.OVER_LIMIT,
                                f"daemon busy: all {self.max_connections} control "
                                "connections are in use; retry later", "busy"))
            return
        conn = _Connection(self)
        self.conns[conn] = None
        self._arrived.set()
        try:
            loop = asyncio_loop()
            if loop is not None:
                await conn.run_transport(loop, sock)
            else:
                await conn.run_stream(sock)
        except Exception:  # a broken client must never take the daemon down
            log.exception("control connection failed")
        finally:
            self.conns.pop(conn, None)
            conn.release_partial()
            conn.ended.set()

    def evict_idle(self) -> _Connection | None:
        """Make room: the connection idle the longest leaves, told why. None if none is."""
        idle = [c for c in self.conns if c.idle]
        if not idle:
            return None
        victim = min(idle, key=lambda c: c.last_active)
        self._refusals(logging.WARNING, "control socket %s: closing the connection idle the "
                       "longest (%.0f s) to make room for a new one", self.path,
                       time.monotonic() - victim.last_active)
        victim.shut(notice(ErrorCode.OVER_LIMIT,
                           "closed to make room for another client (idle the longest); "
                           "reconnect", "evicted"), 1.0)
        return victim

    def room_for_one(self) -> anyio.Event | None:
        """Out of descriptors: the connection idle the longest leaves; its end frees one."""
        victim = self.evict_idle()
        return None if victim is None else victim.ended

    async def sweep_idle(self) -> None:
        """Close connections idle for ``idle_timeout``: wakes when the oldest could be
        due (never while there is no connection at all)."""
        timeout = self.limits.idle_timeout
        while True:
            if not self.conns:
                self._arrived = anyio.Event()
                await self._arrived.wait()
                continue
            now = time.monotonic()
            due = now + timeout
            for conn in list(self.conns):
                if not conn.idle:
                    continue
                expires = conn.last_active + timeout
                if expires <= now:
                    conn.shut(notice(ErrorCode.OVER_LIMIT,
                                     f"closed after {timeout:g} s idle; reconnect", "idle"), 1.0)
                else:
                    due = min(due, expires)
            await anyio.sleep(max(0.01, due - now))

    # ------------------------------------------------------------ methods

    async def status(self, conn: _Connection, p: dict[str, Any]) -> Any:
        info = {"pid": os.getpid(), "socket": self.path, "started": self.started,
                **self.hooks.info()}
        return {"daemon": info, "plugins": await self.sup.status_with_usage()}

    async def call(self, conn: _Connection, p: dict[str, Any],
                   ident: RequestId = None) -> Any:
        timeout = _opt_number(p, "timeout")
        name, method, params = _name(p), _str(p, "method"), _params(p)
        want = p.get("progress", False)
        if type(want) is not bool:
            raise _BadParams('"progress" must be true or false')
        if not want or ident is None:
            return await self.sup.call(name, method, params, timeout=timeout)
        return await conn.with_progress(ident, lambda heard: self.sup.call(
            name, method, params, timeout=timeout, on_progress=heard))

    async def notify(self, conn: _Connection, p: dict[str, Any]) -> Any:
        await self.sup.notify(_name(p), _str(p, "method"), _params(p))
        return None

    async def start(self, conn: _Connection, p: dict[str, Any]) -> Any:
        name = _name(p)
        self.sup.start(name)
        return await self._settle(name, _opt_number(p, "wait"), SERVING | {PluginState.FAILED})

    async def stop(self, conn: _Connection, p: dict[str, Any]) -> Any:
        name = _name(p)
        self.sup.stop(name)
        return await self._settle(name, _opt_number(p, "wait"),
                                  frozenset({PluginState.STOPPED, PluginState.FAILED}))

    async def restart(self, conn: _Connection, p: dict[str, Any]) -> Any:
        name = _name(p)
        self.sup.restart(name)  # a serving plugin is STOPPING from here on (runner._end)
        return await self._settle(name, _opt_number(p, "wait"), SERVING | {PluginState.FAILED})

    async def _settle(self, name: str, wait: float | None,
                      states: frozenset[PluginState]) -> PluginStatus:
        self.sup.state_of(name)  # an unknown plugin fails here, not after the wait
        if wait is not None:
            try:
                await self.sup.wait_state(name, states, wait)
            except TimeoutError:
                raise CallError(local_error(
                    ErrorCode.TIMEOUT, f"plugin {name!r} did not reach "
                    f"{'/'.join(sorted(str(s) for s in states))} within {wait:g} s "
                    f"(state: {self.sup.state_of(name)})", plugin=name)) from None
        return self.sup.plugin_status(name)

    async def load(self, conn: _Connection, p: dict[str, Any]) -> Any:
        target = _str(p, "plugin")
        wait = _opt_number(p, "wait")
        if os.sep in target:
            # a path is the caller's, and only an absolute one means the same here
            # (the CLI sends them absolute); it must pass the rule discovery applies
            if not os.path.isabs(target):
                raise _BadParams(f"{target!r} is a relative path: the daemon's working "
                                 "directory is not yours; give an absolute path")
            why = check_trusted(target)
            if why is not None:
                raise _BadParams(f"refusing to load {target}: {why}")
        try:
            spec = self.hooks.resolve_plugin(target)
            await self.sup.load(spec)
            loaded = getattr(self.hooks, "loaded", None)  # the daemon's, optional
            if loaded is not None:
                loaded(spec.name)  # before its first line: what the last run kept
            if wait is not None:
                await self.sup.wait_state(spec.name, SERVING | {PluginState.FAILED}, wait)
        except ConfigError as exc:
            raise _BadParams(str(exc)) from None
        except TimeoutError:
            raise CallError(local_error(
                ErrorCode.TIMEOUT, f"plugin {target!r} was loaded but not ready within "
                f"{wait:g} s", plugin=target)) from None
        return self.sup.plugin_status(spec.name)

    async def unload(self, conn: _Connection, p: dict[str, Any]) -> Any:
        name = _name(p)
        await self.sup.unload(name)
        return {"plugin": name, "unloaded": True}

    async def reload(self, conn: _Connection, p: dict[str, Any]) -> Any:
        try:
            if p.get("dry_run") is True:
                return await self.hooks.preview()
            return await self.hooks.reload()
        except ConfigError as exc:
            raise _BadParams(f"reload refused, configuration unchanged: {exc}") from None

    async def logs(self, conn: _Connection, p: dict[str, Any]) -> Any:
        name = _name(p)
        lines = p.get("lines", 100)
        if type(lines) is not int or not 0 <= lines <= MAX_LOG_LINES:
            raise _BadParams(f'"lines" must be an integer in 0..{MAX_LOG_LINES}')
        _, suppressed = self.sup.logs(name, 0)
        # with the lines a previous daemon run kept (daemon/log_keep.py), marked
        tail = self.sup.log_entries(name, lines)
        kept, omitted = _newest_within([line for _, _, line in tail],
                                       self.limits.logs_answer_bytes)
        carried = self.sup.log_carried(name, len(kept)) if kept else 0
        entries = [{"time": at, "instance": instance, "previous": i < carried}
                   for i, (at, instance, _) in enumerate(tail[len(tail) - len(kept):])]
        return {"plugin": name, "lines": kept, "suppressed": suppressed, "omitted": omitted,
                "entries": entries}

    async def metrics(self, conn: _Connection, p: dict[str, Any]) -> Any:
        return {"text": self.sup.metrics(), "content_type": Supervisor.METRICS_CONTENT_TYPE}

    async def subscribe(self, conn: _Connection, p: dict[str, Any]) -> Any:
        plugins = _opt_names(p, "plugins")
        kinds = _opt_names(p, "kinds")
        unknown = sorted(kinds - KNOWN_KINDS) if kinds else []
        if unknown:  # a misspelt filter would otherwise wait forever for nothing
            raise _BadParams(f"unknown event kind(s) {', '.join(unknown)}; the kinds are "
                             f"{', '.join(sorted(KNOWN_KINDS))}")
        since = p.get("since")
        if since is not None and (type(since) not in (int, float) or since < 0):
            raise _BadParams('"since" must be a wall time in seconds (a number)')
        return await conn.subscribe(plugins, kinds, since)

    async def unsubscribe(self, conn: _Connection, p: dict[str, Any]) -> Any:
        sid = p.get("subscription")
        if type(sid) is not int:
            raise _BadParams('"subscription" must be the integer that subscribe returned')
        return {"unsubscribed": conn.unsubscribe(sid)}


METHODS: dict[str, Handler] = {
    name: getattr(_Server, name)
    for name in ("status", "call", "notify", "start", "stop", "restart", "load", "unload",
                 "reload", "logs", "metrics", "subscribe", "unsubscribe")
}


ENTRY_BYTES = 66
"""What the time, instance and previous flag of one line add to a logs answer, at most
(``{"time":1796301797.123456,"instance":123456,"previous":false},``)."""


def _newest_within(lines: list[str], budget: int, per_line: int = ENTRY_BYTES
                   ) -> tuple[list[str], int]:
    """The newest of ``lines`` whose JSON encoding (plus ``per_line`` bytes of metadata
    each) fits in ``budget`` bytes, and how many older ones were left out. Each line is
    measured as it will be sent (escapes count), newest first, so the cost is bounded
    by the budget, not by the tail."""
    used = 0
    start = len(lines)
    while start > 0:
        cost = len(orjson.dumps(lines[start - 1])) + 1 + per_line
        if used + cost > budget:
            break
        used += cost
        start -= 1
    return lines[start:], start


# ================================================================ parameter checks


def _str(p: dict[str, Any], key: str) -> str:
    value = p.get(key)
    if type(value) is not str or not value:
        raise _BadParams(f'"{key}" must be a non-empty string')
    return value


def _name(p: dict[str, Any]) -> str:
    return _str(p, "plugin")


def _params(p: dict[str, Any]) -> Any:
    value = p.get("params")
    if value is not None and not isinstance(value, dict | list):
        raise _BadParams('"params" must be an object, an array or absent')
    return value


def _opt_number(p: dict[str, Any], key: str) -> float | None:
    value = p.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or value <= 0:
        raise _BadParams(f'"{key}" must be a positive number of seconds')
    return float(value)


def _opt_names(p: dict[str, Any], key: str) -> frozenset[str] | None:
    value = p.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(type(v) is str for v in value):
        raise _BadParams(f'"{key}" must be an array of strings')
    return frozenset(value)


# ================================================================ one connection


@dataclass(slots=True)
class _Subscription:
    plugins: frozenset[str] | None
    kinds: frozenset[str] | None
    start: int
    """Index (in the connection's event queue) of the first event published after it."""

    def wants(self, event: SupervisorEvent) -> bool:
        if self.plugins is not None and event.plugin not in self.plugins:
            return False
        if self.kinds is None:
            return event.kind not in QUIET_KINDS
        return event.kind in self.kinds


def _amount(value: Any) -> bool:
    """A progress figure the client can be sent: a finite number >= 0 (bools, strings,
    and integers JSON encoders refuse are not)."""
    if type(value) is int:
        return 0 <= value < 1 << 63
    return type(value) is float and math.isfinite(value) and value >= 0


def progress_note(params: Any, ident: RequestId, max_chars: int) -> dict[str, Any] | None:
    """What of a plugin's ``pipevisor/progress`` params reaches the client: ``progress``,
    ``total`` and ``message`` (cut to ``max_chars``), under the client's own request id;
    None when ``progress`` is not a usable number. Nothing else the plugin put there
    is copied."""
    if not isinstance(params, dict) or not _amount(params.get("progress")):
        return None
    note: dict[str, Any] = {"id": ident, "progress": params["progress"]}
    if _amount(params.get("total")):
        note["total"] = params["total"]
    message = params.get("message")
    if isinstance(message, str):
        note["message"] = message[:max_chars]
    return note


class _ProgressRelay:
    """One call's progress on its way to the client: only the latest is held."""

    __slots__ = ("_wake", "ident", "latest", "max_chars", "skipped")

    def __init__(self, ident: RequestId, max_chars: int) -> None:
        self.ident = ident
        self.max_chars = max_chars
        self.latest: dict[str, Any] | None = None
        self.skipped = 0
        """Progress heard and replaced by a later one before it could be sent."""
        self._wake = anyio.Event()

    def heard(self, params: Any) -> None:
        """The engine's listener (called in the plugin's reader): never blocks."""
        note = progress_note(params, self.ident, self.max_chars)
        if note is None:
            return
        if self.latest is not None:
            self.skipped += 1
        self.latest = note
        self._wake.set()

    def take(self) -> dict[str, Any] | None:
        note, self.latest = self.latest, None
        if note is not None and self.skipped:
            note["skipped"] = self.skipped
            self.skipped = 0
        return note

    async def run(self, send: Callable[[dict[str, Any]], Awaitable[bool]],
                  interval: float) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            note = self.take()
            if note is None:
                continue
            if not await send(note):  # waits while the client is not reading
                return
            await anyio.sleep(interval)


_Job = tuple[Request, anyio.CancelScope]
"""A request for a worker, and the scope the client's cancel notification cancels."""


class _Connection:
    """One client: its Peer, its requests running or waiting for a slot, its subscriptions.

    Bytes from the client go through :meth:`feed`, which hands each request to
    a worker task of the connection's task group, at most ``max_in_flight`` at
    once. Past that, requests already read wait here in order and the link
    stops reading until the last of them has a slot (back-pressure); with
    every slot taken but none waiting, reading goes on, so a cancel
    notification for a running call is still read. Closing the connection cancels the group: calls
    in flight are cancelled (the plugin is told) and subscriptions end.

    Every subscription of the connection shares one queue in the event hub
    (bounded in events and bytes, filtered before queueing) and one forwarding
    task; a client that lets it overflow is sent ``lagged`` and disconnected.
    """

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.limits = server.limits
        self.peer = Peer(answer_garbage=True, max_line_bytes=server.limits.max_line_bytes)
        self._max = server.max_in_flight
        self._running: dict[RequestId, anyio.CancelScope] = {}
        self._queued: OrderedDict[RequestId, Request] = OrderedDict()
        self._idle: list[Pending[_Job]] = []
        """Workers waiting for a request: a bare future each on asyncio (an anyio Event
        costs a few microseconds more per request, most of it in loop look-ups)."""
        self._loop: Loop | None = None
        self._subs: dict[int, _Subscription] = {}
        self._events: Subscription | None = None
        self._next_sub = 1
        self._tg: TaskGroup | None = None
        self._link: TransportLink | StreamLink | None = None
        self._closing = False
        self.last_active = time.monotonic()
        """When the client last sent a complete message or had a request answered."""
        self.partial = 0
        """Bytes of the unfinished line the peer holds (after the last newline)."""
        self._charge = 0
        """Of those, bytes charged to the server's shared PARTIAL_BUDGET."""
        self.ended = anyio.Event()

    @property
    def idle(self) -> bool:
        """Nothing in flight or waiting, no subscription: closing it loses nothing."""
        return not (self._closing or self._running or self._queued or self._subs)

    def release_partial(self) -> None:
        self.server.partial_charged -= self._charge
        self._charge = 0

    def shut(self, data: bytes, grace: float) -> None:
        """Close on the daemon's initiative: ``data`` (a notice) is written last, the client
        gets ``grace`` seconds to read it, then the connection is cut. Its slot and its
        share of the partial-line budget are free at once; its work ends with it."""
        if self._closing:
            return
        self._closing = True
        self.server.conns.pop(self, None)
        self.release_partial()
        link = self._link
        if isinstance(link, TransportLink):
            link.close_after(data, grace)
        elif link is not None and self._tg is not None:
            self._tg.start_soon(self._shut_stream, link, data, grace)

    async def _shut_stream(self, link: StreamLink, data: bytes, grace: float) -> None:
        with anyio.move_on_after(grace):
            try:
                await link.send(data)
            except _LINK_ERRORS:
                pass
        assert self._tg is not None
        self._tg.cancel_scope.cancel()

    async def run_transport(self, loop: Loop, sock: socket.socket) -> None:
        """asyncio: requests are read in the transport's callback (:class:`TransportLink`),
        so a call costs four event-loop iterations here, two of them the plugin's."""
        link = TransportLink(loop, self.feed, high_water=WRITE_HIGH_WATER)
        self._link, self._loop = link, loop
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    await take_accepted(loop, link, sock)
                    await link.closed
                except OSError:
                    pass  # the client was gone before we could take it on
                finally:
                    # the client is gone (or the server stops): its work goes with it
                    self._closing = True
                    tg.cancel_scope.cancel()
        finally:
            if link.transport is not None:
                link.abort()
            else:
                sock.close()
        if link.failure is not None:
            raise link.failure

    async def run_stream(self, sock: socket.socket) -> None:
        """Other anyio backends: a reader task, paused while every slot is taken."""
        try:
            stream = await wrap_socket(sock)
        except OSError:
            return
        link = StreamLink(stream)
        self._link = link
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    while not self._closing:
                        try:
                            out = self.feed(await stream.receive())
                            if out:
                                await link.send(out)
                        except (anyio.EndOfStream, *_LINK_ERRORS):
                            break
                        await link.wait_readable()
                    if self._closing:  # shut by the daemon: the notice goes out first
                        await anyio.sleep_forever()
                finally:
                    # the client is gone (or the server stops): its work goes with it
                    self._closing = True
                    tg.cancel_scope.cancel()
        finally:
            await stream.aclose()

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the client; returns what the protocol obliges us to answer
        at once (parse errors, invalid requests), for the caller to write.

        The line limit and the shared budget for unfinished lines are checked
        *before* the bytes reach the peer's buffer, so nothing past either is held."""
        if self._closing:  # what a departing client sent still arrives: its work is over
            return b""
        limits = self.limits
        first = data.find(b"\n")
        if first < 0:
            longest = partial = self.partial + len(data)
        else:
            longest = self.partial + first
            partial = len(data) - data.rfind(b"\n") - 1
        if longest > limits.max_line_bytes:
            self._line_too_long()
            return b""
        if partial != self.partial:
            charge = max(0, partial - limits.free_partial_bytes)
            server = self.server
            if charge > self._charge and (
                    server.partial_charged + charge - self._charge > limits.partial_budget):
                server._refusals(logging.WARNING, "control socket %s: closed a connection "
                                 "sending a large request: unfinished request lines already "
                                 "hold the budget of %d bytes", server.path,
                                 limits.partial_budget)
                self.shut(notice(ErrorCode.OVER_LIMIT,
                                 "daemon busy: too many large requests arriving at once; "
                                 "retry later", "busy"), 1.0)
                return b""
            server.partial_charged += charge - self._charge
            self._charge = charge
            self.partial = partial
        events = self.peer.receive_data(data)
        if events:
            self.last_active = time.monotonic()
        for event in events:
            if isinstance(event, RequestReceived):
                request = event.request
                if len(self._running) < self._max:
                    self._start(request, anyio.CancelScope())
                else:
                    self._queued[request.id] = request
            elif isinstance(event, NotificationReceived):
                self._on_notification(event.notification)
            elif (isinstance(event, ProtocolFault)
                  and event.fault.kind is FaultKind.OVERSIZED_LINE):
                self._line_too_long()
                return b""
            # other faults: the peer already queued any answer the protocol owes
        if self._queued:  # past the bound: read no more until a slot frees
            assert self._link is not None
            self._link.pause_reading()
        return self.peer.take_output()

    def _line_too_long(self) -> None:
        limit = self.limits.max_line_bytes
        self.server._refusals(logging.WARNING, "control socket %s: closed a connection that "
                              "sent a line longer than %d bytes", self.server.path, limit)
        self.shut(notice(ErrorCode.PARSE_ERROR, f"request line longer than {limit} bytes; "
                         "closing the connection", "line_too_long"), 1.0)

    def _start(self, request: Request, scope: anyio.CancelScope) -> None:
        """Hand the request to an idle worker, or to a new one."""
        self._running[request.id] = scope
        while self._idle:
            idle = self._idle.pop()
            if not idle.done():  # (a cancelled one belongs to a worker that is ending)
                idle.set_result((request, scope))
                return
        assert self._tg is not None
        self._tg.start_soon(self._worker, request, scope)

    async def _worker(self, request: Request, scope: anyio.CancelScope) -> None:
        """Serve requests until the connection ends; idle in between.

        A worker is kept for the next request because starting an anyio task
        costs about 14 us more than waking one that waits on a future (on the
        2-core reference VM), as much as the rest of the control server's own
        work on a call. There are never more workers than requests that ran
        at once (``max_in_flight``).
        """
        assert self._link is not None
        while True:
            await self._serve(request, scope)
            if self._closing:
                return
            if self._queued and len(self._running) < self._max:
                request = self._queued.popitem(last=False)[1]
                scope = anyio.CancelScope()
                self._running[request.id] = scope
                if not self._queued:
                    self._link.resume_reading()  # the last waiting request got its slot
                continue
            loop = self._loop
            idle: Pending[_Job] = new_pending(loop)
            self._idle.append(idle)
            request, scope = await idle

    def _on_notification(self, n: Notification) -> None:
        if n.method != CANCEL or not isinstance(n.params, dict):
            return
        ident = n.params.get("id")
        if ident is not None and not isinstance(ident, str | int | float):
            return  # not an id any request can have (and maybe not hashable)
        scope = self._running.get(ident)
        if scope is not None:
            scope.cancel()
            return
        waiting = self._queued.pop(ident, None)
        if waiting is not None:  # never started: answered "cancelled" without running
            scope = anyio.CancelScope()
            scope.cancel()
            self._start(waiting, scope)
            if not self._queued:
                assert self._link is not None
                self._link.resume_reading()

    async def _serve(self, request: Request, scope: anyio.CancelScope) -> None:
        """Answer one request; its slot is free again when this returns."""
        assert self._link is not None
        ident, method = request.id, request.method
        try:
            answer: Any
            if scope.cancel_called:
                answer = local_error(ErrorCode.CANCELLED, f"{method} cancelled by the client")
            else:
                with scope:
                    answer = await self._answer(method, request.params, ident)
                if scope.cancelled_caught:
                    answer = local_error(ErrorCode.CANCELLED, f"{method} cancelled by the client")
            try:
                if isinstance(answer, ErrorObject):
                    data = self.peer.send_error(ident, answer)
                else:
                    data = self.peer.send_result(ident, answer)
            except EncodeError as exc:  # e.g. a hook returned something that is not JSON
                log.error("control %s: cannot encode the result: %s", method, exc)
                data = self.peer.send_error(ident, control_error(
                    ErrorCode.INTERNAL_ERROR, f"result not encodable: {exc}"))
            if len(data) > self.limits.max_answer_bytes + 1:  # (+1: the newline)
                # never a line the client cannot read: it would wait for it for ever
                log.warning("control %s: answer of %d bytes is over the limit of %d bytes",
                            method, len(data) - 1, self.limits.max_answer_bytes)
                data = encode(ErrorResponse(ident, control_error(
                    ErrorCode.INTERNAL_ERROR,
                    f"the answer to {method} is {len(data) - 1} bytes, over the control "
                    f"socket's limit of {self.limits.max_answer_bytes} bytes")))
            try:
                await self._link.send(data)
            except _LINK_ERRORS:
                pass
        finally:
            self._running.pop(ident, None)
            self.last_active = time.monotonic()

    async def _answer(self, method: str, params: Any, ident: RequestId = None) -> Any:
        handler = METHODS.get(method)
        if handler is None:
            return control_error(ErrorCode.METHOD_NOT_FOUND,
                                 f"the control socket has no method {method!r}")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return control_error(ErrorCode.INVALID_PARAMS,
                                 "control methods take named params (an object)")
        try:
            if method == "call":  # the one method that also writes before its answer
                return await self.server.call(self, params, ident)
            return await handler(self.server, self, params)
        except CallError as exc:
            return exc.error  # the plugin's or pipevisor's error, unchanged
        except (_BadParams, ConfigError) as exc:
            return control_error(ErrorCode.INVALID_PARAMS, str(exc))
        except Exception as exc:
            log.exception("control method %s failed", method)
            return control_error(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------ progress

    async def with_progress(self, ident: RequestId,
                            call: Callable[[Callable[[Any], None]], Awaitable[Any]]) -> Any:
        """Run ``call`` (given the listener the engine calls with each progress the
        plugin sends), relaying the progress to the client as ``progress``
        notifications while it runs, at most one per ``progress_interval``, coalesced
        to the latest; the last one heard is written before the answer."""
        assert self._tg is not None
        relay = _ProgressRelay(ident, self.limits.progress_message_chars)
        scope = anyio.CancelScope()

        async def pump() -> None:
            with scope:
                await relay.run(self._send_progress, self.limits.progress_interval)

        self._tg.start_soon(pump)
        try:
            result = await call(relay.heard)
        finally:
            scope.cancel()
        last = relay.take()
        if last is not None:
            await self._send_progress(last)
        return result

    async def _send_progress(self, note: dict[str, Any]) -> bool:
        """Write one progress notification; False once the client is gone."""
        assert self._link is not None
        try:
            await self._link.send(self.peer.send_notification(PROGRESS, note))
        except _LINK_ERRORS:
            return False
        return True

    # ------------------------------------------------------------ events

    async def subscribe(self, plugins: frozenset[str] | None,
                        kinds: frozenset[str] | None,
                        since: float | None = None) -> dict[str, Any]:
        if len(self._subs) >= self.limits.max_subscriptions:
            raise _BadParams(f"at most {self.limits.max_subscriptions} subscriptions "
                             "per connection")
        if self._events is None:
            assert self._tg is not None
            # registered with the hub before the answer goes out: no event falls in between
            await self._tg.start(self._forward)
        assert self._events is not None
        sid = self._next_sub
        self._next_sub += 1
        sub = _Subscription(plugins, kinds, self._events.accepted)
        # taken with no await before the subscription is in place: every event is
        # either in this history or sent live, never both, never neither
        history = ([e for e in self.server.sup.events.recent(since) if sub.wants(e)]
                   if since is not None else [])
        self._subs[sid] = sub
        for event in history:  # before the answer: the client queues them (client/wire)
            if not await self._emit(sid, event.to_json()):
                break
        return {"subscription": sid}

    def unsubscribe(self, sid: int) -> bool:
        return self._subs.pop(sid, None) is not None

    def _wants(self, event: SupervisorEvent) -> bool:
        """Queue only what one of the subscriptions will send (filtered before queueing)."""
        return any(sub.wants(event) for sub in self._subs.values())

    async def _forward(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                       ) -> None:
        """The connection's one forwarding task: event queue -> its subscriptions."""
        limits = self.limits
        async with self.server.sup.events.subscribe(
                limits.subscription_buffer, max_bytes=limits.subscription_bytes,
                wants=self._wants, on_lag=self._lagged) as events:
            self._events = events
            task_status.started()
            taken = 0
            while True:
                try:
                    event = await events.next()
                except SubscriptionLagged:
                    return  # _lagged told the client and is closing the connection
                index, taken = taken, taken + 1
                for sid, sub in list(self._subs.items()):
                    if (index >= sub.start and sub.wants(event)
                            and not await self._emit(sid, event.to_json())):
                        return

    def _lagged(self, dropped: int) -> None:
        """The client let its event queue overflow (called while an event is published):
        the queue is already freed; tell the client and disconnect it."""
        try:
            limits = self.limits
            now = time.time()
            lines = [self.peer.send_notification(EVENT, {
                "subscription": sid, "plugin": None, "kind": "lagged", "time": now,
                "count": dropped}) for sid in self._subs]
            self.server._refusals(logging.WARNING, "control socket %s: an event subscriber "
                                  "fell behind (%d events dropped): disconnected",
                                  self.server.path, dropped)
            self.shut(b"".join(lines) + notice(
                ErrorCode.OVER_LIMIT, f"event subscriber fell behind: {dropped} events "
                "dropped; disconnected", "lagged"), limits.lag_close_grace)
        except Exception:  # never into the publisher (a plugin's runner)
            log.exception("control socket: ending a lagging subscriber failed")

    async def _emit(self, sid: int, payload: dict[str, Any]) -> bool:
        """Send one event; False once the client is gone."""
        payload["subscription"] = sid
        try:
            data = self.peer.send_notification(EVENT, payload)
        except Exception as exc:  # an event detail that is not JSON: say so, don't die
            data = self.peer.send_notification(EVENT, {
                "subscription": sid, "plugin": payload.get("plugin"), "kind": "unencodable",
                "time": payload.get("time"), "error": str(exc)})
        if len(data) > self.limits.max_answer_bytes + 1:
            data = self.peer.send_notification(EVENT, {
                "subscription": sid, "plugin": payload.get("plugin"), "kind": "too_large",
                "time": payload.get("time"), "event_kind": payload.get("kind"),
                "size": len(data) - 1, "limit": self.limits.max_answer_bytes})
        assert self._link is not None
        try:
            await self._link.send(data)
        except _LINK_ERRORS:
            return False
        return True
