"""Clients of a running daemon's control socket, for host applications and the CLI.

``Client`` is blocking; ``AsyncClient`` is anyio. Both give the same call
semantics as the embedded :class:`pipevisor.supervisor.Supervisor`: ``call`` returns the
plugin's result or raises the same :class:`pipevisor.supervisor.errors.CallError`
subclass the embedded supervisor would have raised (the daemon passes error
objects through unchanged, and :func:`error_from_object` maps them back).

    with Client() as daemon:
        print(daemon.call("echo", "echo", {"text": "hi"}, timeout=5))

The socket is the ``socket_path`` argument, else ``$PIPEVISOR_SOCKET``, else
:func:`pipevisor.supervisor.paths.default_socket_path` (where ``pipevisor run`` listens
by default).

What the daemon can say on its own (docs/bounds.md) is turned into exceptions
the caller can act on: :class:`DaemonBusy` (refused for lack of room: retry),
:class:`BadAnswer` (an answer over the line limit or not JSON: that request
fails, and every waiting one if the stream cannot be trusted any more),
:class:`EventsLagged` (a subscriber fell behind and was disconnected). A
connection the daemon closed because it was idle is reopened on the next
request, so a client kept for hours between calls keeps working.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
import orjson

from pipevisor.protocol import (
    DEFAULT_MAX_LINE_BYTES,
    ErrorObject,
    Fault,
    FaultKind,
    NotificationReceived,
    Peer,
    ProtocolFault,
    ResponseReceived,
)
from pipevisor.protocol.messages import ErrorResponse, RequestId
from pipevisor.supervisor.errors import CallError, PipevisorError, error_from_object
from pipevisor.supervisor.paths import default_socket_path

T = TypeVar("T")

SOCKET_ENV = "PIPEVISOR_SOCKET"
EVENT = "event"


class DaemonNotRunning(PipevisorError):
    """Nothing answers on the control socket; the message names the socket."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(f"no pipevisor daemon on {socket_path}: {reason}")
        self.socket_path = socket_path


class DaemonConnectionLost(DaemonNotRunning):
    """The daemon closed the connection before answering (it stopped or crashed)."""


class DaemonBusy(PipevisorError):
    """The daemon runs but refused the connection or the request for lack of room (every
    connection in use, out of file descriptors, too many large requests at once, its
    listen backlog full). Nothing was done; retrying later may succeed."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(f"the pipevisor daemon on {socket_path} is busy: {reason}")
        self.socket_path = socket_path


class BadAnswer(PipevisorError):
    """An answer from the daemon could not be read: longer than the client's line limit,
    or not JSON. The request it answered failed with this; when the stream could not be
    trusted any more, every request waiting on the connection failed and it was closed
    (the next request opens a new one)."""


class EventsLagged(PipevisorError):
    """The subscriber read events more slowly than they came: the daemon dropped
    ``dropped`` (at least) and ended the subscription. Subscribe again to go on."""

    def __init__(self, dropped: int) -> None:
        super().__init__(f"the event subscriber fell behind: {dropped} events dropped, "
                         "the daemon ended the subscription")
        self.dropped = dropped


class ControlError(CallError):
    """The daemon refused a control request itself (bad params, unknown method, bad reload)."""


class _Unread(Exception):
    """The daemon closed an idle connection before reading our request: safe to resend."""


_REOPEN = frozenset({"idle", "evicted"})
"""Notices after which the request was never read, and a new connection is the remedy."""

_GARBLED = frozenset({FaultKind.INVALID_JSON, FaultKind.INVALID_UTF8,
                      FaultKind.TRUNCATED_MESSAGE})

_ID_IN_HEAD = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')
_REASON = re.compile(rb'"reason"\s*:\s*"(\w+)"')
_MESSAGE = re.compile(rb'"message"\s*:\s*"((?:[^"\\]|\\.)*)')


def resolve_socket_path(socket_path: str | None = None) -> str:
    return socket_path or os.environ.get(SOCKET_ENV) or default_socket_path()


def _raise_for(method: str, error: ErrorObject) -> None:
    """The exception for an error answer: call errors as the embedded supervisor raises them."""
    data = error.data
    if isinstance(data, dict) and data.get("origin") == "control":
        raise ControlError(error)
    raise error_from_object(error)


def _settle(method: str, event: ResponseReceived) -> Any:
    msg = event.response
    if isinstance(msg, ErrorResponse):
        _raise_for(method, msg.error)
    return msg.result  # type: ignore[union-attr]


def _notice(fault: Fault) -> tuple[str, str] | None:
    """(reason, message) when ``fault`` is a notice the daemon sends before it closes a
    connection on its own (an error answer with id null, pipevisor.supervisor.control.notice)."""
    if fault.kind is not FaultKind.UNEXPECTED_RESPONSE or fault.id is not None:
        return None
    raw = fault.raw  # the line's first 200 bytes: read what is there, even if cut
    reason = _REASON.search(raw)
    message = _MESSAGE.search(raw)
    text = message.group(1).decode("utf-8", "replace") if message else ""
    return (reason.group(1).decode() if reason else "unknown",
            text.replace('\\"', '"') or "the daemon closed the connection")


def _answer_id(fault: Fault) -> RequestId:
    """The id an oversized answer was for, read from the line's first bytes (None if not)."""
    found = _ID_IN_HEAD.search(fault.raw)
    if found is None:
        return None
    try:
        ident: RequestId = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return None
    return ident


def _call_params(plugin: str, method: str, params: Any, timeout: float | None) -> dict[str, Any]:
    p: dict[str, Any] = {"plugin": plugin, "method": method}
    if params is not None:
        p["params"] = params
    if timeout is not None:
        p["timeout"] = timeout
    return p


def _filters(plugins: list[str] | None, kinds: list[str] | None) -> dict[str, Any]:
    p: dict[str, Any] = {}
    if plugins:
        p["plugins"] = list(plugins)
    if kinds:
        p["kinds"] = list(kinds)
    return p


def _opt(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _blocking_connect(path: str, timeout: float) -> socket.socket:
    """Connect; a full listen backlog (EAGAIN) is retried until ``timeout``, then reported
    as :class:`DaemonBusy`, not as a missing daemon."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            sock.connect(path)
        except FileNotFoundError:
            sock.close()
            raise DaemonNotRunning(path, "the socket does not exist") from None
        except ConnectionRefusedError:
            sock.close()
            raise DaemonNotRunning(path, "connection refused (stale socket file?)") from None
        except (BlockingIOError, TimeoutError) as exc:
            sock.close()
            if time.monotonic() + pause >= deadline:
                why = ("its listen backlog stayed full" if isinstance(exc, BlockingIOError)
                       else "it did not take the connection")
                raise DaemonBusy(path, f"{why} for {timeout:g} s; retry later") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
            continue
        except OSError as exc:
            sock.close()
            raise DaemonNotRunning(path, str(exc) or type(exc).__name__) from None
        return sock


def _failure(path: str, reason: str, message: str) -> PipevisorError:
    """The exception for a notice the daemon sent before closing the connection."""
    if reason == "busy":
        return DaemonBusy(path, message)
    if reason == "closed":  # no notice: the end of the stream was all it said
        return DaemonConnectionLost(path, message)
    return DaemonConnectionLost(path, f"the daemon closed the connection: {message}")


# ================================================================ blocking


class Client:
    """Blocking client over one connection.

    Thread-safe: a lock lets one request at a time use the connection, so
    threads sharing a client are serialised; give each thread its own client
    for concurrent calls. ``events`` opens a connection of its own.

    ``max_answer_bytes`` is the longest answer line read (the daemon never
    writes a longer one); a longer or garbled answer raises :class:`BadAnswer`.
    """

    def __init__(self, socket_path: str | None = None, *, connect_timeout: float = 5.0,
                 max_answer_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self._connect_timeout = connect_timeout
        self._max_answer = max_answer_bytes
        self._lock = threading.Lock()
        self._sock: socket.socket | None = self._connect()
        self._peer = self._new_peer()
        self._lost: str | None = None
        """Why the daemon closed this connection (None while it is open)."""
        self._reopen = False
        """Whether a new connection is the remedy (idle close, garbled stream)."""
        self._lost_reason = "closed"
        """The daemon's reason in its notice (busy, idle, evicted ...), if it sent one."""

    def _new_peer(self) -> Peer:
        return Peer(max_line_bytes=self._max_answer)

    def _connect(self) -> socket.socket:
        sock = _blocking_connect(self.socket_path, self._connect_timeout)
        sock.settimeout(None)
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _drop(self, reason: str, reopen: bool) -> None:
        """Stop using this connection; the next request opens a new one if ``reopen``."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._lost, self._reopen = reason, reopen

    def _ready_socket(self) -> socket.socket:
        """The connection to use: the current one unless the daemon closed it meanwhile
        (then a new one if that is the remedy; else the reason why not)."""
        sock = self._sock
        if sock is not None:
            self._take_pending(sock)
            sock = self._sock
        if sock is None:
            if not self._reopen:
                raise _failure(self.socket_path, self._lost_reason,
                               self._lost or "the connection was closed")
            sock = self._sock = self._connect()
            self._peer = self._new_peer()
            self._lost, self._reopen, self._lost_reason = None, False, "closed"
        return sock

    def _take_pending(self, sock: socket.socket) -> None:
        """Read, without waiting, what the daemon sent while we were not asking (a notice
        that it closed the connection, the end of the stream)."""
        poller = select.poll()  # (poll, not select: any fd number, and not the socket's
        poller.register(sock, select.POLLIN)  # timeout, which recv would wait out first)
        while poller.poll(0):
            try:
                data = sock.recv(65536)
            except OSError as exc:
                self._drop(str(exc) or "the daemon closed the connection", False)
                return
            if not data:
                if self._lost is None:
                    self._drop("the daemon closed the connection", False)
                else:
                    self._drop(self._lost, self._reopen)
                return
            for event in self._peer.receive_data(data):
                if isinstance(event, ProtocolFault):
                    note = _notice(event.fault)
                    if note is not None:
                        self._lost_reason = note[0]
                        self._lost, self._reopen = note[1], note[0] in _REOPEN

    def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One control request (see protocol/SPEC.md, "Control socket")."""
        with self._lock:
            for attempt in (1, 2):
                sock = self._ready_socket()
                try:
                    return self._exchange(sock, method, params)
                except _Unread:
                    if attempt == 2:
                        raise DaemonConnectionLost(self.socket_path, self._lost
                                                   or "closed before our request") from None
            raise AssertionError("unreachable")

    def _exchange(self, sock: socket.socket, method: str, params: dict[str, Any] | None) -> Any:
        ident, data = self._peer.send_request(method, params)
        try:
            sock.sendall(data)
        except OSError as exc:
            # the daemon may have refused or closed us: a notice before it says why
            self._take_pending(sock)
            if self._lost is not None:
                if self._reopen:
                    raise _Unread from None
                raise _failure(self.socket_path, self._lost_reason, self._lost) from None
            raise DaemonConnectionLost(self.socket_path, str(exc)) from None
        try:
            while True:
                for event in self._receive(sock, self._peer):
                    if isinstance(event, ResponseReceived):
                        if event.response.id == ident:
                            return _settle(method, event)
                    elif isinstance(event, ProtocolFault):
                        self._on_fault(event.fault, ident, method)
        except (KeyboardInterrupt, SystemExit):
            # interrupted while waiting: tell the daemon, which cancels the work
            try:
                sock.sendall(self._peer.cancel(ident))
            except OSError:
                pass
            raise

    def _on_fault(self, fault: Fault, ident: RequestId, method: str) -> None:
        """A line that is not the answer we wait for: raise if it means there will be none."""
        note = _notice(fault)
        if note is not None:
            reason, message = note
            self._lost_reason = reason
            self._drop(message, reason in _REOPEN)
            if reason in _REOPEN:
                raise _Unread
            raise _failure(self.socket_path, reason, message)
        if fault.kind is FaultKind.OVERSIZED_LINE:
            answered = _answer_id(fault)
            if answered in (ident, None):  # ours (one request at a time), or unreadable
                self._peer.cancel(ident, notify=False)
                raise BadAnswer(f"the answer to {method} could not be read: {fault.detail} "
                                "(the client's line limit)")
        elif fault.kind in _GARBLED:
            self._drop(f"garbled answer: {fault.detail}", True)
            raise BadAnswer(f"the answer to {method} could not be read ({fault.detail}); "
                            "the connection was closed")

    def _receive(self, sock: socket.socket, peer: Peer) -> list[Any]:
        try:
            data = sock.recv(65536)
        except OSError as exc:
            raise DaemonConnectionLost(self.socket_path, str(exc)) from None
        if not data:
            raise DaemonConnectionLost(self.socket_path, "the daemon closed the connection")
        return peer.receive_data(data)

    # -------------------------------------------------------- the API

    def call(self, plugin: str, method: str, params: Any = None, *,
             timeout: float | None = None) -> Any:
        """Call ``method`` on ``plugin``: its result, or the CallError the embedded
        supervisor would raise. Interrupting it (Ctrl-C) closes the connection, which
        cancels the call in the daemon."""
        return self.request("call", _call_params(plugin, method, params, timeout))

    def notify(self, plugin: str, method: str, params: Any = None) -> None:
        self.request("notify", _call_params(plugin, method, params, None))

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("status")
        return result

    def start(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("start", _opt(plugin=plugin, wait=wait))
        return result

    def stop(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("stop", _opt(plugin=plugin, wait=wait))
        return result

    def restart(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("restart", _opt(plugin=plugin, wait=wait))
        return result

    def load(self, name_or_path: str, *, wait: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("load", _opt(plugin=name_or_path, wait=wait))
        return result

    def unload(self, plugin: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("unload", {"plugin": plugin})
        return result

    def reload(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("reload")
        return result

    def logs(self, plugin: str, lines: int = 100) -> list[str]:
        """The newest ``lines`` stderr lines (fewer if they would make the answer larger
        than the daemon's cap; ``request("logs", ...)["omitted"]`` says how many)."""
        result: list[str] = self.request("logs", {"plugin": plugin, "lines": lines})["lines"]
        return result

    def metrics(self) -> str:
        """Every plugin's figures in the Prometheus text format (docs/metrics.md)."""
        text: str = self.request("metrics")["text"]
        return text

    @contextmanager
    def subscribe(self, plugins: list[str] | None = None,
                  kinds: list[str] | None = None) -> Iterator[Iterator[dict[str, Any]]]:
        """Subscribe on a connection of its own; events published after ``with`` is
        entered are all delivered until the iterator raises :class:`EventsLagged` (the
        reader fell behind and the daemon ended the subscription)."""
        sock = self._connect()
        peer = self._new_peer()
        try:
            ident, data = peer.send_request("subscribe", _filters(plugins, kinds))
            try:
                sock.sendall(data)
            except OSError as exc:
                raise DaemonConnectionLost(self.socket_path, str(exc)) from None
            pending: deque[dict[str, Any]] = deque()
            while not self._absorb(self._receive(sock, peer), ident, pending):
                pass

            def iterate() -> Iterator[dict[str, Any]]:
                while True:
                    while pending:
                        yield _event_or_raise(pending.popleft())
                    self._absorb(self._receive(sock, peer), ident, pending)

            yield iterate()
        finally:
            sock.close()

    def _absorb(self, events: list[Any], ident: RequestId,
                pending: deque[dict[str, Any]]) -> bool:
        return _absorb(events, ident, pending, self.socket_path)

    def events(self, plugins: list[str] | None = None,
               kinds: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Live events until the generator is closed. Subscribes on first ``next``;
        use :meth:`subscribe` to be sure of events caused right after the call."""
        with self.subscribe(plugins, kinds) as events:
            yield from events


def _event_or_raise(event: dict[str, Any]) -> dict[str, Any]:
    """An event for the subscriber, or :class:`EventsLagged` for the daemon's last one."""
    if event.get("kind") == "lagged" and event.get("plugin") is None:
        raise EventsLagged(int(event.get("count") or 0))
    return event


def _absorb(events: list[Any], ident: RequestId, pending: deque[dict[str, Any]],
            socket_path: str) -> bool:
    """Queue event notifications; True once the subscribe answer was among ``events``.
    A notice or a garbled line raises (after the events before it are queued, the
    ``lagged`` one included)."""
    subscribed = False
    for event in events:
        if isinstance(event, ResponseReceived) and event.response.id == ident:
            _settle("subscribe", event)
            subscribed = True
        elif isinstance(event, NotificationReceived) and (
            event.notification.method == EVENT and isinstance(event.notification.params, dict)
        ):
            pending.append(event.notification.params)
        elif isinstance(event, ProtocolFault):
            note = _notice(event.fault)
            if note is not None:
                if note[0] == "lagged":  # its "lagged" event is queued: that one says it
                    continue
                raise _failure(socket_path, *note)
            if event.fault.kind in _GARBLED or event.fault.kind is FaultKind.OVERSIZED_LINE:
                raise BadAnswer(f"an event from the daemon could not be read: "
                                f"{event.fault.detail}")
    return subscribed


# ================================================================ links (both ends)


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under another anyio backend (the portable path)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_LINK_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError)
"""What a link's ``send`` raises once the other end is gone."""


class TransportLink(asyncio.Protocol):
    """One end of a control connection on asyncio, driven from the transport's callbacks.

    Used by the daemon's server (``pipevisor.supervisor.control``) and by
    :class:`AsyncClient`. anyio's socket stream costs several event-loop
    iterations per message (a reader task woken for each chunk, the socket
    registered with epoll again for each read, a checkpoint in each send and
    lock); here bytes are handed to ``received`` where they arrive, and a
    message is one synchronous ``transport.write`` (or joined to the one
    before it in the same loop iteration). The transport's flow control takes
    the place of locks: writers wait only while the other end is not reading.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, received: Callable[[bytes], bytes],
                 lost: Callable[[], None] | None = None, *,
                 high_water: int = 64 * 1024) -> None:
        self._received = received
        self._lost = lost
        self._high_water = high_water
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.failure: Exception | None = None
        """An exception ``received`` raised; the connection was aborted because of it."""
        self._writable = asyncio.Event()
        self._writable.set()
        self._loop = loop
        self._corked: list[bytes] | None = None
        """Messages written since this iteration's first one (see ``_write``)."""
        self._corked_bytes = 0
        self._lost_seen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(self._high_water)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            out = self._received(data)
        except Exception as exc:  # a bug: the owner re-raises it from a task, not here
            self.failure = exc
            self.transport.abort()
            return
        if out:
            self._write(self.transport, out)

    def eof_received(self) -> bool:
        return False  # the other end is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost_seen = True
        if not self.closed.done():
            self.closed.set_result(None)
        self._writable.set()  # blocked writers wake up and find the transport closed
        if self._lost is not None:
            self._lost()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def send(self, data: bytes) -> None:
        """Write whole messages; waits while the other end is not reading.
        Raises anyio.BrokenResourceError once the connection is closed."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise anyio.BrokenResourceError
        self._write(transport, data)
        if not self._writable.is_set():
            await self._writable.wait()
            if transport.is_closing():
                raise anyio.BrokenResourceError

    def _write(self, transport: asyncio.Transport, data: bytes) -> None:
        """The first message of a loop iteration goes out at once (no latency added to a
        lone call); later ones in the same iteration are joined into one write at the
        start of the next. With many calls in flight their answers tend to arrive
        together, so this saves a send() per message, about a sixth of the daemon's
        CPU per call when pipelining."""
        corked = self._corked
        if corked is not None:
            corked.append(data)
            self._corked_bytes += len(data)
            if self._corked_bytes > self._high_water:
                # past the flow-control mark: hand it over now, so that a reader
                # that falls behind makes writers wait (pause_writing) as usual
                self._uncork()
                self._corked = []
            return
        transport.write(data)
        self._corked = []
        self._loop.call_soon(self._uncork)

    def _uncork(self) -> None:
        corked, self._corked = self._corked, None
        self._corked_bytes = 0
        transport = self.transport
        if corked and transport is not None and not transport.is_closing():
            transport.write(b"".join(corked))

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def abort(self) -> None:
        # not once the connection is lost: after a close() that had to flush first,
        # asyncio's transport.abort() would fail (its loop is already gone)
        if self.transport is not None and not self._lost_seen:
            self.transport.abort()

    def close_after(self, data: bytes, grace: float) -> None:
        """Write ``data`` after everything already written, close once the other end has
        read it all, and cut the connection if it has not within ``grace`` seconds (a
        peer that does not read must not keep the buffer)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        corked, self._corked = self._corked, None
        self._corked_bytes = 0
        if corked:
            transport.write(b"".join(corked))
        if data:
            transport.write(data)
        transport.close()
        self._loop.call_later(grace, self.abort)  # (a no-op once it is closed)


class StreamLink:
    """The portable path (anyio backends other than asyncio): an anyio socket stream,
    read by a task of its owner; ``wait_readable`` is where that task pauses."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self._lock = anyio.Lock()
        self._room: anyio.Event | None = None

    async def send(self, data: bytes) -> None:
        async with self._lock:
            await self.stream.send(data)

    def pause_reading(self) -> None:
        if self._room is None:
            self._room = anyio.Event()

    def resume_reading(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            room.set()

    async def wait_readable(self) -> None:
        room = self._room
        if room is not None:
            await room.wait()


async def wrap_socket(sock: socket.socket) -> anyio.abc.SocketStream:
    """A connected socket as a transport-based anyio stream (the portable path).

    Not anyio's raw UNIXSocketStream, which can hit an InvalidStateError when a
    read is cancelled just as the other end hangs up. Closes ``sock`` on failure.
    """
    try:
        return await anyio.abc.SocketStream.from_socket(sock)
    except BaseException:
        sock.close()
        raise


class Waiter(Generic[T]):
    """The portable stand-in for an asyncio future: ``done``, ``set_result``, await."""

    __slots__ = ("_event", "_result")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._result: T | None = None

    def done(self) -> bool:
        return self._event.is_set()

    def result(self) -> T:
        return self._result  # type: ignore[return-value]  # only asked once done

    def set_result(self, result: T) -> None:
        self._result = result
        self._event.set()

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()

    async def _wait(self) -> T:
        await self._event.wait()
        return self._result  # type: ignore[return-value]  # set before the event


# ================================================================ async


class AsyncClient:
    """anyio client; many concurrent requests share one connection.

        async with AsyncClient() as daemon:
            await daemon.call("echo", "echo", {"text": "hi"})

    Cancelling a ``call`` (a timeout scope, task group cancel) tells the daemon,
    which cancels the plugin call.

    On asyncio the connection is driven from the transport's callbacks: an
    answer settles its caller's future where it arrives, so a call costs two
    event-loop iterations on this side (the write, the wake-up). Other
    backends read with a task.

    An answer longer than ``max_answer_bytes`` fails its own request with
    :class:`BadAnswer`; a garbled line fails every waiting request and the
    connection is replaced on the next request, as is one the daemon closed
    because it was idle.
    """

    def __init__(self, socket_path: str | None = None, *, connect_timeout: float = 5.0,
                 max_answer_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self._connect_timeout = connect_timeout
        self._max_answer = max_answer_bytes
        self._peer = Peer(max_line_bytes=max_answer_bytes)
        self._link: TransportLink | StreamLink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._waiting: dict[RequestId, asyncio.Future[_Settled] | Waiter[_Settled]] = {}
        self._lost: str | None = None
        """Why the current connection is unusable (None while it is fine)."""
        self._reopen = False
        """Whether a new connection is the remedy (the daemon closed an idle one, or we
        dropped a garbled one); never after ``__aexit__`` or a daemon that went away."""
        self._reopening: anyio.Lock | None = None

    async def _connect_socket(self) -> socket.socket:
        # connected blocking in a worker thread: instant for a local socket
        return await anyio.to_thread.run_sync(
            _blocking_connect, self.socket_path, self._connect_timeout)

    async def _connect(self) -> anyio.abc.SocketStream:
        return await wrap_socket(await self._connect_socket())

    async def __aenter__(self) -> AsyncClient:
        await self._open()
        return self

    async def _open(self) -> None:
        """Connect and start driving the connection (a new Peer: a new id space)."""
        sock = await self._connect_socket()
        peer = Peer(max_line_bytes=self._max_answer)
        loop = asyncio_loop()
        if loop is not None:
            box: list[TransportLink] = []

            def received(data: bytes) -> bytes:
                if self._link is box[0]:
                    self._on_data(data)
                return b""

            def lost() -> None:
                if self._link is box[0]:
                    self._on_lost("the daemon closed the connection")

            link = TransportLink(loop, received, lost)
            box.append(link)
            self._peer, self._link, self._loop = peer, link, loop
            try:
                await loop.create_unix_connection(lambda: link, sock=sock)
            except BaseException:
                sock.close()
                raise
        else:
            stream = await wrap_socket(sock)
            stream_link = StreamLink(stream)
            self._peer, self._link = peer, stream_link
            if self._tg is None:
                self._tg = anyio.create_task_group()
                await self._tg.__aenter__()
            self._tg.start_soon(self._read, stream_link)
        self._lost, self._reopen = None, False

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        link = self._link
        assert link is not None
        self._on_lost("the client was closed")
        self._reopen = False
        if isinstance(link, TransportLink):
            link.abort()
        if self._tg is None:
            return None
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            if isinstance(link, StreamLink):
                await link.stream.aclose()

    def _on_data(self, data: bytes) -> None:
        waiting = self._waiting
        for event in self._peer.receive_data(data):
            if isinstance(event, ResponseReceived):
                waiter = waiting.get(event.response.id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
            elif isinstance(event, ProtocolFault):
                self._on_fault(event.fault)

    def _on_fault(self, fault: Fault) -> None:
        """A line that is not an answer: a notice (the daemon is closing the connection),
        an answer over the line limit, or garbage (the stream cannot be trusted)."""
        note = _notice(fault)
        if note is not None:
            reason, message = note
            self._lost, self._reopen = message, reason in _REOPEN
            # idle or evicted: nothing waiting was read, so it may be sent again
            self._settle_all(_Unread() if self._reopen
                             else _failure(self.socket_path, reason, message))
            return
        if fault.kind is FaultKind.OVERSIZED_LINE:
            ident = _answer_id(fault)
            waiter = self._waiting.get(ident) if ident is not None else None
            if waiter is not None:
                self._peer.cancel(ident, notify=False)
                if not waiter.done():
                    waiter.set_result(BadAnswer(
                        f"an answer could not be read: {fault.detail} (the client's "
                        "line limit)"))
                return
            self._drop(f"an answer could not be read: {fault.detail}")
        elif fault.kind in _GARBLED:
            self._drop(f"an answer could not be read ({fault.detail}); the connection "
                       "was closed")

    def _drop(self, why: str) -> None:
        """The stream cannot be trusted: every waiting request fails with BadAnswer and
        the connection is closed (the next request opens a new one)."""
        self._lost, self._reopen = why, True
        self._settle_all(BadAnswer(why))
        link = self._link
        if isinstance(link, TransportLink):
            link.abort()
        # StreamLink: its reader sees _lost and stops after this chunk

    def _settle_all(self, outcome: _Settled) -> None:
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_result(outcome)

    def _on_lost(self, reason: str = "the daemon closed the connection") -> None:
        """Every caller still waiting learns at once that no answer will come."""
        if self._lost is None:
            failure = self._link.failure if isinstance(self._link, TransportLink) else None
            self._lost = reason if failure is None else f"client error: {failure!r}"
        self._settle_all(None)

    async def _read(self, link: StreamLink) -> None:
        stream = link.stream
        try:
            while self._link is link and (self._lost is None or not self._reopen):
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                        ConnectionError):
                    break
                if self._link is link:
                    self._on_data(data)
        finally:
            if self._link is link:
                self._on_lost("the daemon closed the connection")
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _reconnect(self) -> None:
        if self._reopening is None:
            self._reopening = anyio.Lock()
        async with self._reopening:
            if self._lost is None:
                return  # another request already opened a new connection
            old = self._link
            if isinstance(old, TransportLink):
                old.abort()
            await self._open()

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if self._link is None:
            raise RuntimeError("use AsyncClient as 'async with AsyncClient(...) as client'")
        for attempt in (1, 2):
            if self._lost is not None:
                if not self._reopen:
                    raise DaemonConnectionLost(self.socket_path, self._lost)
                await self._reconnect()
            try:
                return await self._request_once(method, params)
            except _Unread:
                if attempt == 2:
                    raise DaemonConnectionLost(self.socket_path, self._lost
                                               or "closed before our request") from None
        raise AssertionError("unreachable")

    async def _request_once(self, method: str, params: dict[str, Any] | None) -> Any:
        link = self._link
        assert link is not None
        peer = self._peer
        ident, data = peer.send_request(method, params)
        loop = self._loop
        waiter: asyncio.Future[_Settled] | Waiter[_Settled]
        waiter = loop.create_future() if loop is not None else Waiter()
        waiting = self._waiting
        waiting[ident] = waiter
        try:
            try:
                await link.send(data)
            except _LINK_ERRORS as e:
                said = waiter.result() if waiter.done() else None
                if isinstance(said, BaseException):
                    raise said from None  # the daemon said why before it closed
                raise DaemonConnectionLost(self.socket_path, str(e) or "send failed") from None
            try:
                event = await waiter
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    cancel = peer.cancel(ident)
                    if cancel and self._lost is None and self._link is link:
                        try:
                            await link.send(cancel)
                        except _LINK_ERRORS:
                            pass
                raise
        finally:
            if waiting.get(ident) is waiter:
                del waiting[ident]
        if event is None:
            raise DaemonConnectionLost(self.socket_path, self._lost or "no answer")
        if isinstance(event, BaseException):
            raise event
        return _settle(method, event)

    # -------------------------------------------------------- the API

    async def call(self, plugin: str, method: str, params: Any = None, *,
                   timeout: float | None = None) -> Any:
        return await self.request("call", _call_params(plugin, method, params, timeout))

    async def notify(self, plugin: str, method: str, params: Any = None) -> None:
        await self.request("notify", _call_params(plugin, method, params, None))

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("status")
        return result

    async def metrics(self) -> str:
        """Every plugin's figures in the Prometheus text format (docs/metrics.md)."""
        text: str = (await self.request("metrics"))["text"]
        return text

    async def start(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("start", _opt(plugin=plugin, wait=wait))
        return result

    async def stop(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("stop", _opt(plugin=plugin, wait=wait))
        return result

    async def restart(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("restart", _opt(plugin=plugin, wait=wait))
        return result

    async def load(self, name_or_path: str, *, wait: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("load", _opt(plugin=name_or_path, wait=wait))
        return result

    async def unload(self, plugin: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("unload", {"plugin": plugin})
        return result

    async def reload(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("reload")
        return result

    async def logs(self, plugin: str, lines: int = 100) -> list[str]:
        """The newest ``lines`` stderr lines (fewer if they would make the answer larger
        than the daemon's cap; ``request("logs", ...)["omitted"]`` says how many)."""
        answer = await self.request("logs", {"plugin": plugin, "lines": lines})
        result: list[str] = answer["lines"]
        return result

    @asynccontextmanager
    async def subscribe(self, plugins: list[str] | None = None, kinds: list[str] | None = None
                        ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Subscribe on a connection of its own; events published after the ``async with``
        is entered are all delivered until the iterator raises :class:`EventsLagged`
        (the reader fell behind and the daemon ended the subscription)."""
        stream = await self._connect()
        peer = Peer(max_line_bytes=self._max_answer)
        try:
            ident, data = peer.send_request("subscribe", _filters(plugins, kinds))
            try:
                await stream.send(data)
            except _LINK_ERRORS as exc:
                raise DaemonConnectionLost(self.socket_path, str(exc) or "send failed") from None
            pending: deque[dict[str, Any]] = deque()
            while not _absorb(await self._receive(stream, peer), ident, pending,
                              self.socket_path):
                pass

            async def iterate() -> AsyncIterator[dict[str, Any]]:
                while True:
                    while pending:
                        yield _event_or_raise(pending.popleft())
                    _absorb(await self._receive(stream, peer), ident, pending, self.socket_path)

            yield iterate()
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _receive(self, stream: anyio.abc.SocketStream, peer: Peer) -> list[Any]:
        try:
            chunk = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            raise DaemonConnectionLost(self.socket_path,
                                       "the daemon closed the connection") from None
        return peer.receive_data(chunk)

    async def events(self, plugins: list[str] | None = None,
                     kinds: list[str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Live events until the iterator is closed. Subscribes on first ``anext``;
        use :meth:`subscribe` to be sure of events caused right after the call."""
        async with self.subscribe(plugins, kinds) as events:
            async for event in events:
                yield event


_Settled = ResponseReceived | BaseException | None
"""What a waiting request is settled with: its answer, why it failed, or None (lost)."""


__all__ = [
    "AsyncClient",
    "BadAnswer",
    "Client",
    "ControlError",
    "DaemonBusy",
    "DaemonConnectionLost",
    "DaemonNotRunning",
    "EventsLagged",
    "resolve_socket_path",
]
