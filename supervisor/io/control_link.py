"""One end of a control-socket connection on asyncio (the daemon's and the async
client's), plus the portable anyio twin used under other backends."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar, Union

import anyio
import anyio.abc

T = TypeVar("T")


Loop = asyncio.AbstractEventLoop
"""The event loop a :class:`TransportLink` runs on (only this module names asyncio)."""


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

    Used by the daemon's server (``pipevisor.supervisor.daemon.control``) and by
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


Pending = Union["asyncio.Future[T]", "Waiter[T]"]
"""Where one request waits: a bare future on asyncio, a :class:`Waiter` elsewhere."""


def new_pending(loop: Loop | None) -> Pending[T]:
    """A bare future on ``loop`` (one wake-up when settled), or a portable
    :class:`Waiter` when the connection runs on another backend (``loop`` None)."""
    return loop.create_future() if loop is not None else Waiter()


async def take_accepted(loop: Loop, link: TransportLink, sock: socket.socket) -> None:
    """Drive an accepted connection with ``link`` (the server's side)."""
    await loop.connect_accepted_socket(lambda: link, sock)


async def take_connected(loop: Loop, link: TransportLink, sock: socket.socket) -> None:
    """Drive a connected socket with ``link`` (the client's side)."""
    await loop.create_unix_connection(lambda: link, sock=sock)
