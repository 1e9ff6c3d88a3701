"""The daemon's control socket: the same newline-delimited JSON-RPC 2.0, over a Unix socket.

The CLI and :mod:`supervisor.client` speak to a running daemon through this
server. Each client connection gets its own sans-I/O :class:`protocol.Peer`
and its own task group, so that

* many requests on one connection run concurrently, bounded per connection
  (past the bound the server stops reading that connection: back-pressure,
  not an error and not unbounded memory);
* a client that goes away takes its work with it: closing the connection
  cancels its in-flight calls (and the plugin is told, as for any cancelled
  call), and its event subscriptions end;
* a slow event reader cannot grow the daemon's memory: each subscription is
  an :class:`supervisor.events.Subscription` with a fixed size, and losses
  are reported to the client as ``dropped`` events.

On asyncio (what ``pipevisor run`` uses) a connection is driven from its
transport's callbacks (:class:`supervisor.client.TransportLink`) and its
requests are served by worker tasks kept between requests, because anyio's
socket stream and a new task per request were most of the control path's
cost (figures in perf/README.md). Other anyio backends read with a task
(:class:`supervisor.client.StreamLink`); both paths are tested.

Security rests on the file mode: the socket is created 0600 (under a umask,
so it is never briefly wider) in a directory created 0700; whoever can
connect can control every plugin. Methods are listed in protocol/SPEC.md
("Control socket").
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import psutil
from anyio.abc import TaskGroup, TaskStatus

from protocol import (
    CANCEL,
    ErrorCode,
    ErrorObject,
    Notification,
    NotificationReceived,
    Peer,
    Request,
    RequestReceived,
    encode,
    local_error,
)
from protocol.errors import EncodeError
from protocol.messages import RequestId
from supervisor.client import StreamLink, TransportLink, Waiter, asyncio_loop, wrap_socket
from supervisor.config import PluginSpec
from supervisor.errors import CallError, ConfigError, PipevisorError
from supervisor.events import SupervisorEvent
from supervisor.metrics import CONTENT_TYPE
from supervisor.states import SERVING, PluginState
from supervisor.supervisor import Supervisor

log = logging.getLogger("pipevisor.control")

MAX_IN_FLIGHT = 64
"""Requests one client connection may have running at once; past it, reading pauses."""

MAX_CONNECTIONS = 128
"""Client connections served at once; one more is told so and closed (each costs buffers)."""

MAX_SUBSCRIPTIONS = 16
"""Event subscriptions one connection may hold (each owns a bounded buffer)."""

SUBSCRIPTION_BUFFER = 1000
"""Events buffered per subscription for a slow reader before the oldest are dropped."""

MAX_LOG_LINES = 10_000

QUIET_KINDS = frozenset({"stderr"})
"""Kinds a subscription without an explicit ``kinds`` filter does not receive: stderr
lines are for ``logs --follow``, not for the general event stream."""

EVENT = "event"
"""The notification method carrying one supervisor event to a subscriber."""

WRITE_HIGH_WATER = 64 * 1024
"""Bytes buffered for one client (beyond the kernel's socket buffer) before the tasks
writing to it wait for it to read: a slow event reader holds memory here, not more."""

_LINK_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError)


class DaemonHooks(Protocol):
    """What the control server needs from the daemon around the supervisor (daemon.py)."""

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration and apply it; returns what changed."""
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


class _BadParams(Exception):
    pass


# ================================================================ socket set-up


def peer_pid(sock: socket.socket) -> int | None:
    """The pid at the other end of a connected Unix socket (Linux SO_PEERCRED), if known."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    except OSError:
        return None
    pid: int = struct.unpack("3i", raw)[0]
    return pid or None


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


def _bind(path: str) -> socket.socket:
    """Bind with a umask that makes the socket 0600 from its first instant."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
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
    os.chmod(path, 0o600)  # a no-op after the umask; kept so the intent is explicit
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _remove_if_ours(path: str, inode: int) -> None:
    """Remove the socket file unless a successor already replaced it."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


async def serve_control(
    sup: Supervisor,
    socket_path: str,
    hooks: DaemonHooks,
    *,
    max_in_flight: int = MAX_IN_FLIGHT,
    max_connections: int = MAX_CONNECTIONS,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control socket until cancelled; the socket file is removed on exit."""
    sock = _bind(socket_path)
    inode = os.lstat(socket_path).st_ino
    server = _Server(sup, hooks, socket_path, max_in_flight, max_connections)
    try:
        async with anyio.create_task_group() as tg:
            log.info("control socket listening on %s", socket_path)
            task_status.started()
            while True:
                await anyio.wait_readable(sock)
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:  # EMFILE and friends: keep serving the others
                    log.error("control socket %s: accept failed: %s", socket_path, exc)
                    await anyio.sleep(0.1)
                    continue
                tg.start_soon(server.accepted, conn)
    finally:
        sock.close()
        _remove_if_ours(socket_path, inode)


# ================================================================ resources


class _Usage:
    """Memory and CPU of each plugin's process tree, sampled when someone asks.

    CPU percent is over the interval since the previous ``status`` (the first
    time: since the plugin started), summed over the tree, so 200 means two
    cores busy.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, float]] = {}

    def sample(self, pid: int) -> dict[str, Any]:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
            started = root.create_time()
        except psutil.Error:
            return {"memory_rss": None, "cpu_seconds": None, "cpu_percent": None, "processes": 0}
        rss = 0
        cpu = 0.0
        count = 0
        for p in procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu += t.user + t.system
                count += 1
            except psutil.Error:
                continue
        now = time.time()
        prev_time, prev_cpu = self._last.get(pid, (started, 0.0))
        elapsed = now - prev_time
        self._last[pid] = (now, cpu)
        percent = max(0.0, (cpu - prev_cpu) / elapsed * 100) if elapsed > 0 else None
        return {"memory_rss": rss, "cpu_seconds": round(cpu, 3),
                "cpu_percent": round(percent, 1) if percent is not None else None,
                "processes": count}

    def forget_except(self, pids: set[int]) -> None:
        for pid in [p for p in self._last if p not in pids]:
            del self._last[pid]


# ================================================================ the server

Handler = Callable[["_Server", "_Connection", dict[str, Any]], Awaitable[Any]]


class _Server:
    def __init__(self, sup: Supervisor, hooks: DaemonHooks, path: str, max_in_flight: int,
                 max_connections: int) -> None:
        self.max_connections = max_connections
        self.connections = 0
        self.sup = sup
        self.hooks = hooks
        self.path = path
        self.max_in_flight = max_in_flight
        self.usage = _Usage()
        self.started = time.time()

    async def accepted(self, sock: socket.socket) -> None:
        if self.connections >= self.max_connections:
            refusal = control_error(ErrorCode.INTERNAL_ERROR,
                                    f"too many control connections ({self.max_connections})")
            try:
                sock.setblocking(False)
                sock.send(encode({"jsonrpc": "2.0", "id": None, "error": refusal.to_json()}))
            except OSError:
                pass
            sock.close()
            return
        conn = _Connection(self)
        self.connections += 1
        try:
            loop = asyncio_loop()
            if loop is not None:
                await conn.run_transport(loop, sock)
            else:
                await conn.run_stream(sock)
        except Exception:  # a broken client must never take the daemon down
            log.exception("control connection failed")
        finally:
            self.connections -= 1

    # ------------------------------------------------------------ methods

    async def status(self, conn: _Connection, p: dict[str, Any]) -> Any:
        info = {"pid": os.getpid(), "socket": self.path, "started": self.started,
                **self.hooks.info()}
        plugins = self.sup.status()
        pids = {s["pid"] for s in plugins if s.get("pid")}
        samples = await anyio.to_thread.run_sync(
            lambda: {pid: self.usage.sample(pid) for pid in pids})
        self.usage.forget_except(pids)
        for s in plugins:
            usage = samples.get(s.get("pid") or -1)
            for key, value in (usage or {"memory_rss": None, "cpu_seconds": None,
                                         "cpu_percent": None, "processes": 0}).items():
                s.setdefault(key, value)
        return {"daemon": info, "plugins": plugins}

    async def call(self, conn: _Connection, p: dict[str, Any]) -> Any:
        timeout = _opt_number(p, "timeout")
        return await self.sup.call(_name(p), _str(p, "method"), _params(p), timeout=timeout)

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
                      states: frozenset[PluginState]) -> dict[str, Any]:
        runner = self.sup.runner(name)
        if wait is not None:
            try:
                await runner.wait_state(states, wait)
            except TimeoutError:
                raise CallError(local_error(
                    ErrorCode.TIMEOUT, f"plugin {name!r} did not reach "
                    f"{'/'.join(sorted(str(s) for s in states))} within {wait} s "
                    f"(state: {runner.state})", plugin=name)) from None
        return runner.status()

    async def load(self, conn: _Connection, p: dict[str, Any]) -> Any:
        target = _str(p, "plugin")
        wait = _opt_number(p, "wait")
        try:
            spec = self.hooks.resolve_plugin(target)
            runner = await self.sup.load(spec, wait=wait)
        except ConfigError as exc:
            raise _BadParams(str(exc)) from None
        except TimeoutError:
            raise CallError(local_error(
                ErrorCode.TIMEOUT, f"plugin {target!r} was loaded but not ready within {wait} s",
                plugin=target)) from None
        return runner.status()

    async def unload(self, conn: _Connection, p: dict[str, Any]) -> Any:
        name = _name(p)
        await self.sup.unload(name)
        return {"plugin": name, "unloaded": True}

    async def reload(self, conn: _Connection, p: dict[str, Any]) -> Any:
        try:
            return await self.hooks.reload()
        except ConfigError as exc:
            raise _BadParams(f"reload refused, configuration unchanged: {exc}") from None

    async def logs(self, conn: _Connection, p: dict[str, Any]) -> Any:
        name = _name(p)
        lines = p.get("lines", 100)
        if type(lines) is not int or not 0 <= lines <= MAX_LOG_LINES:
            raise _BadParams(f'"lines" must be an integer in 0..{MAX_LOG_LINES}')
        runner = self.sup.runner(name)
        return {"plugin": name, "lines": runner.stderr.last(lines) if lines else [],
                "suppressed": runner.stderr_suppressed}

    async def metrics(self, conn: _Connection, p: dict[str, Any]) -> Any:
        return {"text": self.sup.metrics(), "content_type": CONTENT_TYPE}

    async def subscribe(self, conn: _Connection, p: dict[str, Any]) -> Any:
        plugins = _opt_names(p, "plugins")
        kinds = _opt_names(p, "kinds")
        return await conn.subscribe(plugins, kinds)

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
    scope: anyio.CancelScope
    plugins: frozenset[str] | None
    kinds: frozenset[str] | None

    def wants(self, event: SupervisorEvent) -> bool:
        if self.plugins is not None and event.plugin not in self.plugins:
            return False
        if self.kinds is None:
            return event.kind not in QUIET_KINDS
        return event.kind in self.kinds


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
    """

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.peer = Peer(answer_garbage=True)
        self._max = server.max_in_flight
        self._running: dict[RequestId, anyio.CancelScope] = {}
        self._queued: OrderedDict[RequestId, Request] = OrderedDict()
        self._idle: list[asyncio.Future[_Job] | Waiter[_Job]] = []
        """Workers waiting for a request: a bare future each on asyncio (an anyio Event
        costs a few microseconds more per request, most of it in loop look-ups)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: dict[int, _Subscription] = {}
        self._next_sub = 1
        self._tg: TaskGroup | None = None
        self._link: TransportLink | StreamLink | None = None
        self._closing = False

    async def run_transport(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        """asyncio: requests are read in the transport's callback (:class:`TransportLink`),
        so a call costs four event-loop iterations here, two of them the plugin's."""
        link = TransportLink(loop, self.feed, high_water=WRITE_HIGH_WATER)
        self._link, self._loop = link, loop
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    await loop.connect_accepted_socket(lambda: link, sock)
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
                    while True:
                        try:
                            out = self.feed(await stream.receive())
                            if out:
                                await link.send(out)
                        except (anyio.EndOfStream, *_LINK_ERRORS):
                            break
                        await link.wait_readable()
                finally:
                    # the client is gone (or the server stops): its work goes with it
                    self._closing = True
                    tg.cancel_scope.cancel()
        finally:
            await stream.aclose()

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the client; returns what the protocol obliges us to answer
        at once (parse errors, invalid requests), for the caller to write."""
        if self._closing:  # what a departing client sent still arrives: its work is over
            return b""
        for event in self.peer.receive_data(data):
            if isinstance(event, RequestReceived):
                request = event.request
                if len(self._running) < self._max:
                    self._start(request, anyio.CancelScope())
                else:
                    self._queued[request.id] = request
            elif isinstance(event, NotificationReceived):
                self._on_notification(event.notification)
            # faults: the peer already queued any answer the protocol owes
        if self._queued:  # past the bound: read no more until a slot frees
            assert self._link is not None
            self._link.pause_reading()
        return self.peer.take_output()

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
            idle: asyncio.Future[_Job] | Waiter[_Job]
            idle = loop.create_future() if loop is not None else Waiter()
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
                    answer = await self._answer(method, request.params)
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
            try:
                await self._link.send(data)
            except _LINK_ERRORS:
                pass
        finally:
            self._running.pop(ident, None)

    async def _answer(self, method: str, params: Any) -> Any:
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
            return await handler(self.server, self, params)
        except CallError as exc:
            return exc.error  # the plugin's or pipevisor's error, unchanged
        except (_BadParams, ConfigError) as exc:
            return control_error(ErrorCode.INVALID_PARAMS, str(exc))
        except Exception as exc:
            log.exception("control method %s failed", method)
            return control_error(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------ events

    async def subscribe(self, plugins: frozenset[str] | None,
                        kinds: frozenset[str] | None) -> dict[str, Any]:
        if len(self._subs) >= MAX_SUBSCRIPTIONS:
            raise _BadParams(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
        assert self._tg is not None
        sid = self._next_sub
        self._next_sub += 1
        sub = _Subscription(anyio.CancelScope(), plugins, kinds)
        self._subs[sid] = sub
        # registered with the hub before the answer goes out: no event falls in between
        await self._tg.start(self._forward, sid, sub)
        return {"subscription": sid}

    def unsubscribe(self, sid: int) -> bool:
        sub = self._subs.pop(sid, None)
        if sub is None:
            return False
        sub.scope.cancel()
        return True

    async def _forward(self, sid: int, sub: _Subscription, *,
                       task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        reported = 0
        with sub.scope:
            async with self.server.sup.subscribe(SUBSCRIPTION_BUFFER) as events:
                task_status.started()
                while True:
                    event = await events.next()
                    if events.dropped > reported:
                        lost, reported = events.dropped - reported, events.dropped
                        await self._emit(sid, {"plugin": None, "kind": "dropped",
                                               "time": time.time(), "count": lost})
                    if sub.wants(event):
                        await self._emit(sid, event.to_json())

    async def _emit(self, sid: int, payload: dict[str, Any]) -> None:
        payload["subscription"] = sid
        try:
            data = self.peer.send_notification(EVENT, payload)
        except Exception as exc:  # an event detail that is not JSON: say so, don't die
            data = self.peer.send_notification(EVENT, {
                "subscription": sid, "plugin": payload.get("plugin"), "kind": "unencodable",
                "time": payload.get("time"), "error": str(exc)})
        assert self._link is not None
        try:
            await self._link.send(data)
        except _LINK_ERRORS:
            self.unsubscribe(sid)
