"""The anyio client: many concurrent requests share one connection."""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from pipevisor.protocol import (
    DEFAULT_MAX_LINE_BYTES,
    Fault,
    FaultKind,
    NotificationReceived,
    Peer,
    ProtocolFault,
    ResponseReceived,
)
from pipevisor.protocol.messages import RequestId
from pipevisor.supervisor.client import requests
from pipevisor.supervisor.client.errors import BadAnswer, DaemonConnectionLost
from pipevisor.supervisor.client.requests import ProgressListener, R
from pipevisor.supervisor.client.wire import (
    _GARBLED,
    _REOPEN,
    _absorb,
    _answer_id,
    _blocking_connect,
    _event_or_raise,
    _failure,
    _notice,
    _progress_of,
    _settle,
    _Unread,
    expected_daemon_uid,
    resolve_socket_path,
)
from pipevisor.supervisor.io.control_link import (
    _LINK_ERRORS,
    Loop,
    Pending,
    StreamLink,
    TransportLink,
    asyncio_loop,
    new_pending,
    take_connected,
    wrap_socket,
)


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

    Before anything is sent, the socket's server must be root, our own uid or
    ``daemon_uid`` (default ``$PIPEVISOR_DAEMON_UID``, a uid or user name), else
    :class:`pipevisor.supervisor.client.wire.UntrustedDaemon` (a planted socket never
    sees a request).
    """

    def __init__(self, socket_path: str | None = None, *, connect_timeout: float = 5.0,
                 max_answer_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 daemon_uid: int | str | None = None) -> None:
        self.socket_path = resolve_socket_path(socket_path)
        self._daemon_uid = expected_daemon_uid(daemon_uid, self.socket_path)
        """Who may serve the socket besides root and us (``PIPEVISOR_DAEMON_UID``)."""
        self._connect_timeout = connect_timeout
        self._max_answer = max_answer_bytes
        self._peer = Peer(max_line_bytes=max_answer_bytes)
        self._link: TransportLink | StreamLink | None = None
        self._loop: Loop | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._waiting: dict[RequestId, Pending[_Settled]] = {}
        self._listeners: dict[RequestId, ProgressListener] = {}
        """Progress listeners of the calls waiting here, by request id."""
        self._lost: str | None = None
        """Why the current connection is unusable (None while it is fine)."""
        self._reopen = False
        """Whether a new connection is the remedy (the daemon closed an idle one, or we
        dropped a garbled one); never after ``__aexit__`` or a daemon that went away."""
        self._reopening: anyio.Lock | None = None

    async def _connect_socket(self) -> socket.socket:
        # connected blocking in a worker thread: instant for a local socket
        return await anyio.to_thread.run_sync(
            _blocking_connect, self.socket_path, self._connect_timeout, self._daemon_uid)

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
                await take_connected(loop, link, sock)
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
            elif self._listeners and isinstance(event, NotificationReceived):
                self._tell(event)

    def _tell(self, event: NotificationReceived) -> None:
        """Hand a progress notification to its call's listener; one that raises ends its
        call with that exception (and the daemon is told to cancel it)."""
        note = _progress_of(event)
        if note is None:
            return
        ident = note.get("id")
        listener = self._listeners.get(ident) if type(ident) in (int, str) else None
        if listener is None:
            return
        try:
            listener(note)
        except Exception as exc:
            del self._listeners[ident]
            waiter = self._waiting.get(ident)
            if waiter is not None and not waiter.done():
                waiter.set_result(_ListenerFailed(exc))

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

    async def _tell_cancel(self, link: TransportLink | StreamLink, cancel: bytes) -> None:
        """Send a request's cancel on ``link`` if that connection is still the live one;
        a connection that broke meanwhile has forgotten the request anyway."""
        if cancel and self._lost is None and self._link is link:
            try:
                await link.send(cancel)
            except _LINK_ERRORS:
                pass

    async def request(self, method: str, params: dict[str, Any] | None = None, *,
                      on_progress: ProgressListener | None = None) -> Any:
        """One control request (see protocol/SPEC.md, "Control socket");
        ``on_progress`` hears the ``progress`` notifications sent for it."""
        if self._link is None:
            raise RuntimeError("use AsyncClient as 'async with AsyncClient(...) as client'")
        for attempt in (1, 2):
            if self._lost is not None:
                if not self._reopen:
                    raise DaemonConnectionLost(self.socket_path, self._lost)
                await self._reconnect()
            try:
                return await self._request_once(method, params, on_progress)
            except _Unread:
                if attempt == 2:
                    raise DaemonConnectionLost(self.socket_path, self._lost
                                               or "closed before our request") from None
        raise AssertionError("unreachable")

    async def _request_once(self, method: str, params: dict[str, Any] | None,
                            on_progress: ProgressListener | None = None) -> Any:
        link = self._link
        assert link is not None
        peer = self._peer
        ident, data = peer.send_request(method, params)
        loop = self._loop
        waiter: Pending[_Settled] = new_pending(loop)
        waiting = self._waiting
        waiting[ident] = waiter
        if on_progress is not None:
            self._listeners[ident] = on_progress
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
                    await self._tell_cancel(link, peer.cancel(ident))
                raise
        finally:
            if waiting.get(ident) is waiter:
                del waiting[ident]
            if on_progress is not None:
                self._listeners.pop(ident, None)
        if isinstance(event, _ListenerFailed):
            await self._tell_cancel(link, peer.cancel(ident))
            raise event.error
        if event is None:
            raise DaemonConnectionLost(self.socket_path, self._lost or "no answer")
        if isinstance(event, BaseException):
            raise event
        return _settle(method, event)

    # -------------------------------------------------------- the API

    async def _do(self, request: requests.Request[R],
                  on_progress: ProgressListener | None = None) -> R:
        return request.read(await self.request(request.method, request.params,
                                               on_progress=on_progress))

    async def call(self, plugin: str, method: str, params: Any = None, *,
                   timeout: float | None = None,
                   on_progress: ProgressListener | None = None) -> Any:
        """As :meth:`Client.call`; ``on_progress`` is called on the event loop (it must
        not block), and one that raises ends the call with its exception."""
        return await self._do(requests.call(plugin, method, params, timeout,
                                            on_progress is not None), on_progress)

    async def notify(self, plugin: str, method: str, params: Any = None) -> None:
        await self._do(requests.notify(plugin, method, params))

    async def status(self) -> dict[str, Any]:
        return await self._do(requests.status())

    async def metrics(self) -> str:
        """Every plugin's figures in the Prometheus text format (docs/metrics.md)."""
        return await self._do(requests.metrics())

    async def start(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        return await self._do(requests.lifecycle("start", plugin, wait))

    async def stop(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        return await self._do(requests.lifecycle("stop", plugin, wait))

    async def restart(self, plugin: str, *, wait: float | None = None) -> dict[str, Any]:
        return await self._do(requests.lifecycle("restart", plugin, wait))

    async def load(self, name_or_path: str, *, wait: float | None = None) -> dict[str, Any]:
        return await self._do(requests.lifecycle("load", name_or_path, wait))

    async def unload(self, plugin: str) -> dict[str, Any]:
        return await self._do(requests.unload(plugin))

    async def reload(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Re-read the daemon's configuration and apply it; ``dry_run``: only say what
        would change."""
        return await self._do(requests.reload(dry_run))

    async def logs(self, plugin: str, lines: int = 100) -> list[str]:
        """The newest ``lines`` stderr lines (fewer if they would make the answer larger
        than the daemon's cap; ``request("logs", ...)["omitted"]`` says how many)."""
        return await self._do(requests.logs(plugin, lines))

    @asynccontextmanager
    async def subscribe(self, plugins: list[str] | None = None, kinds: list[str] | None = None,
                        *, since: float | None = None
                        ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Subscribe on a connection of its own; events published after the ``async with``
        is entered are all delivered until the iterator raises :class:`EventsLagged`
        (the reader fell behind and the daemon ended the subscription)."""
        stream = await self._connect()
        peer = Peer(max_line_bytes=self._max_answer)
        try:
            ident, data = peer.send_request("subscribe",
                                            requests.filters(plugins, kinds, since))
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



class _ListenerFailed:
    """A call's progress listener raised: the call ends with ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


_Settled = ResponseReceived | BaseException | _ListenerFailed | None
"""What a waiting request is settled with: its answer, why it failed, or None (lost)."""


