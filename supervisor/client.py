"""Clients of a running daemon's control socket, for host applications and the CLI.

``Client`` is blocking; ``AsyncClient`` is anyio. Both give the same call
semantics as the embedded :class:`supervisor.Supervisor`: ``call`` returns the
plugin's result or raises the same :class:`supervisor.errors.CallError`
subclass the embedded supervisor would have raised (the daemon passes error
objects through unchanged, and :func:`error_from_object` maps them back).

    with Client() as daemon:
        print(daemon.call("echo", "echo", {"text": "hi"}, timeout=5))

The socket is the ``socket_path`` argument, else ``$PIPEVISOR_SOCKET``, else
:func:`supervisor.paths.default_socket_path` (where ``pipevisor run`` listens
by default).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc

from protocol import (
    ErrorObject,
    NotificationReceived,
    Peer,
    ResponseReceived,
)
from protocol.messages import ErrorResponse, RequestId
from supervisor.errors import CallError, PipevisorError, error_from_object
from supervisor.paths import default_socket_path

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


class ControlError(CallError):
    """The daemon refused a control request itself (bad params, unknown method, bad reload)."""


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
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise DaemonNotRunning(path, "the socket does not exist") from None
    except ConnectionRefusedError:
        sock.close()
        raise DaemonNotRunning(path, "connection refused (stale socket file?)") from None
    except OSError as exc:
        sock.close()
        raise DaemonNotRunning(path, str(exc) or type(exc).__name__) from None
    return sock


# ================================================================ blocking


class Client:
    """Blocking client over one connection.

    Thread-safe: a lock lets one request at a time use the connection, so
    threads sharing a client are serialised; give each thread its own client
    for concurrent calls. ``events`` opens a connection of its own.
    """

    def __init__(self, socket_path: str | None = None, *, connect_timeout: float = 5.0) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._sock = self._connect()
        self._peer = Peer()

    def _connect(self) -> socket.socket:
        sock = _blocking_connect(self.socket_path, self._connect_timeout)
        sock.settimeout(None)
        return sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One control request (see protocol/SPEC.md, "Control socket")."""
        with self._lock:
            ident, data = self._peer.send_request(method, params)
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise DaemonConnectionLost(self.socket_path, str(exc)) from None
            try:
                while True:
                    for event in self._receive(self._sock, self._peer):
                        if isinstance(event, ResponseReceived) and event.response.id == ident:
                            return _settle(method, event)
            except (KeyboardInterrupt, SystemExit):
                # interrupted while waiting: tell the daemon, which cancels the work
                try:
                    self._sock.sendall(self._peer.cancel(ident))
                except OSError:
                    pass
                raise

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
        entered are all delivered (or counted in a ``dropped`` event)."""
        sock = self._connect()
        peer = Peer()
        try:
            ident, data = peer.send_request("subscribe", _filters(plugins, kinds))
            sock.sendall(data)
            pending: deque[dict[str, Any]] = deque()
            while not self._absorb(self._receive(sock, peer), ident, pending):
                pass

            def iterate() -> Iterator[dict[str, Any]]:
                while True:
                    while pending:
                        yield pending.popleft()
                    self._absorb(self._receive(sock, peer), ident, pending)

            yield iterate()
        finally:
            sock.close()

    @staticmethod
    def _absorb(events: list[Any], ident: RequestId, pending: deque[dict[str, Any]]) -> bool:
        return _absorb(events, ident, pending)

    def events(self, plugins: list[str] | None = None,
               kinds: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Live events until the generator is closed. Subscribes on first ``next``;
        use :meth:`subscribe` to be sure of events caused right after the call."""
        with self.subscribe(plugins, kinds) as events:
            yield from events


def _absorb(events: list[Any], ident: RequestId, pending: deque[dict[str, Any]]) -> bool:
    """Queue event notifications; True once the subscribe answer was among ``events``."""
    subscribed = False
    for event in events:
        if isinstance(event, ResponseReceived) and event.response.id == ident:
            _settle("subscribe", event)
            subscribed = True
        elif isinstance(event, NotificationReceived) and (
            event.notification.method == EVENT and isinstance(event.notification.params, dict)
        ):
            pending.append(event.notification.params)
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

    Used by the daemon's server (``supervisor.control``) and by
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
        if self.transport is not None:
            self.transport.abort()


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
    """

    def __init__(self, socket_path: str | None = None, *, connect_timeout: float = 5.0) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self._connect_timeout = connect_timeout
        self._peer = Peer()
        self._link: TransportLink | StreamLink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._waiting: dict[RequestId, asyncio.Future[ResponseReceived | None]
                           | Waiter[ResponseReceived | None]] = {}
        self._lost: str | None = None

    async def _connect_socket(self) -> socket.socket:
        # connected blocking in a worker thread: instant for a local socket
        return await anyio.to_thread.run_sync(
            _blocking_connect, self.socket_path, self._connect_timeout)

    async def _connect(self) -> anyio.abc.SocketStream:
        return await wrap_socket(await self._connect_socket())

    async def __aenter__(self) -> AsyncClient:
        sock = await self._connect_socket()
        loop = asyncio_loop()
        if loop is not None:
            link = TransportLink(loop, self._on_data, self._on_lost)
            try:
                await loop.create_unix_connection(lambda: link, sock=sock)
            except BaseException:
                sock.close()
                raise
            self._loop, self._link = loop, link
            return self
        stream = await wrap_socket(sock)
        self._link = StreamLink(stream)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._read, stream)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        link = self._link
        assert link is not None
        self._on_lost("the client was closed")
        if isinstance(link, TransportLink):
            link.abort()
            return None
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            await link.stream.aclose()

    def _on_data(self, data: bytes) -> bytes:
        waiting = self._waiting
        for event in self._peer.receive_data(data):
            if isinstance(event, ResponseReceived):
                waiter = waiting.get(event.response.id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
        return b""

    def _on_lost(self, reason: str = "the daemon closed the connection") -> None:
        """Every caller still waiting learns at once that no answer will come."""
        if self._lost is None:
            failure = self._link.failure if isinstance(self._link, TransportLink) else None
            self._lost = reason if failure is None else f"client error: {failure!r}"
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_result(None)

    async def _read(self, stream: anyio.abc.SocketStream) -> None:
        try:
            while True:
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    break
                self._on_data(data)
        finally:
            self._on_lost("the daemon closed the connection")

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        link = self._link
        if link is None:
            raise RuntimeError("use AsyncClient as 'async with AsyncClient(...) as client'")
        if self._lost is not None:
            raise DaemonConnectionLost(self.socket_path, self._lost)
        ident, data = self._peer.send_request(method, params)
        loop = self._loop
        waiter: asyncio.Future[ResponseReceived | None] | Waiter[ResponseReceived | None]
        waiter = loop.create_future() if loop is not None else Waiter()
        self._waiting[ident] = waiter
        try:
            try:
                await link.send(data)
            except _LINK_ERRORS as e:
                raise DaemonConnectionLost(self.socket_path, str(e) or "send failed") from None
            try:
                event = await waiter
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    cancel = self._peer.cancel(ident)
                    if cancel and self._lost is None:
                        try:
                            await link.send(cancel)
                        except _LINK_ERRORS:
                            pass
                raise
        finally:
            del self._waiting[ident]
        if event is None:
            raise DaemonConnectionLost(self.socket_path, self._lost or "no answer")
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
        answer = await self.request("logs", {"plugin": plugin, "lines": lines})
        result: list[str] = answer["lines"]
        return result

    @asynccontextmanager
    async def subscribe(self, plugins: list[str] | None = None, kinds: list[str] | None = None
                        ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Subscribe on a connection of its own; events published after the
        ``async with`` is entered are all delivered (or counted in a ``dropped`` event)."""
        stream = await self._connect()
        peer = Peer()
        try:
            ident, data = peer.send_request("subscribe", _filters(plugins, kinds))
            await stream.send(data)
            pending: deque[dict[str, Any]] = deque()
            while not _absorb(await self._receive(stream, peer), ident, pending):
                pass

            async def iterate() -> AsyncIterator[dict[str, Any]]:
                while True:
                    while pending:
                        yield pending.popleft()
                    _absorb(await self._receive(stream, peer), ident, pending)

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


__all__ = [
    "AsyncClient",
    "Client",
    "ControlError",
    "DaemonConnectionLost",
    "DaemonNotRunning",
    "resolve_socket_path",
]
