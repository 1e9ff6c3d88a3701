"""The asyncio fast path under anyio's process streams: the one place the engine's pipe
I/O touches asyncio, and the only one that relies on what asyncio does not publish.

anyio's process streams cost extra event-loop round trips per message (a checkpoint
and a shielded one on each send, a reader task woken for each chunk). On asyncio,
:class:`AsyncioPipes` writes to the stdin transport directly, joins the writes made in
one loop iteration into one system call, settles callers with bare futures, and hands
stdout bytes to the connection inside the transport's callback. Everything it needs
from asyncio's internals is named here, checked when the pipes are taken over
(:meth:`AsyncioPipes.of` returns None when anything is not as expected, and the
connection takes the portable anyio path), and covered by
``tests/supervisor/test_pipes_fast_path.py``, which fails if an upgrade of anyio or
Python silently drops the fast path.

Internals used: anyio's ``_stream`` attribute of its process stream wrappers (the
asyncio ``StreamWriter``/``StreamReader``), and the ``StreamReader``'s ``_buffer``,
``_transport`` and ``feed_data`` (data is handed over where it arrives instead of
being buffered for a task to read).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

__all__ = ["AsyncioPipes", "FutureSlot", "fast_path_available", "wait_pipe_closed"]


def _writer_of(stream: ByteSendStream) -> asyncio.StreamWriter | None:
    writer = getattr(stream, "_stream", None)
    return writer if isinstance(writer, asyncio.StreamWriter) else None


def _reader_of(stream: ByteReceiveStream) -> asyncio.StreamReader | None:
    reader = getattr(stream, "_stream", None)
    if isinstance(reader, asyncio.StreamReader) and isinstance(
            getattr(reader, "_buffer", None), bytearray):
        return reader
    return None


def fast_path_available(stdin: ByteSendStream, stdout: ByteReceiveStream) -> bool:
    """Whether :meth:`AsyncioPipes.of` can take these streams over, callbacks included."""
    return _writer_of(stdin) is not None and _reader_of(stdout) is not None


async def wait_pipe_closed(stream: ByteSendStream) -> bool:
    """Wait until the pipe under ``stream`` is closed (by its reader, or by us); False
    at once when that cannot be watched (another backend: only the next write tells).

    On asyncio the pipe transport watches for it: the kernel flags the write end as
    soon as the last reader is gone, so no write is needed."""
    writer = _writer_of(stream)
    if writer is None:
        return False
    try:
        # shielded: cancelling a task that awaits the transport's own close future
        # would cancel that future, and the transport then fails to settle it
        await asyncio.shield(writer.wait_closed())
    except OSError:  # BrokenPipeError, ConnectionResetError: closed all the same
        pass
    return True


def _drop(data: bytes) -> None:
    """Swallows stdout data that arrives after the reader failed and was ended."""


class FutureSlot:
    """Where a caller waits for its answer on the fast path: one future, no cancel scope.

    An ``anyio.Event`` plus a ``move_on_after`` scope per call cost about two extra
    event-loop iterations and a timer scope object each; a bare future settled by the
    reader (or by a loop timer on timeout) costs one wake-up. Cancelling the calling
    task still cancels the await, so anyio cancel scopes around a call keep working.
    """

    __slots__ = ("future", "local", "response")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.response: Any = None
        self.local = False

    def set(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class AsyncioPipes:
    """A plugin's stdin and stdout as asyncio transports (see the module docstring)."""

    __slots__ = ("_joined", "_loop", "_reader", "_resume", "_writer")

    def __init__(self, writer: asyncio.StreamWriter,
                 reader: asyncio.StreamReader | None) -> None:
        self._writer = writer
        self._reader = reader
        self._loop = asyncio.get_running_loop()
        self._joined: list[bytes] | None = None
        """Writes waiting to go out in one piece (:meth:`send`); None when none is due."""
        self._resume: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, stdin: ByteSendStream, stdout: ByteReceiveStream) -> AsyncioPipes | None:
        """The fast path for these streams, or None: another backend, or an anyio whose
        streams are not what this module expects (the portable path is then taken)."""
        writer = _writer_of(stdin)
        if writer is None:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        return cls(writer, _reader_of(stdout))

    # ----------------------------------------------------------------- writing

    def closing(self) -> bool:
        return self._writer.is_closing()

    def queued(self) -> int:
        """Bytes written but not yet taken by the plugin's pipe."""
        return self._writer.transport.get_write_buffer_size()

    def send(self, data: bytes) -> None:
        """The first message of a loop iteration is written at once (a lone call waits
        for nothing); later ones in the same iteration, typically many pipelined callers
        woken together, are joined and written as one piece at the start of the next
        iteration: one system call instead of one per message. Every write goes through
        here, so messages keep their order (a cancel never overtakes its request)."""
        joined = self._joined
        if joined is not None:
            joined.append(data)
            return
        self._writer.write(data)
        self._joined = []
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what :meth:`send` joined, now."""
        joined, self._joined = self._joined, None
        if joined and not self._writer.is_closing():
            self._writer.write(b"".join(joined) if len(joined) > 1 else joined[0])

    async def drain(self) -> None:
        """Wait until the plugin has read enough; a broken pipe raises
        ``anyio.BrokenResourceError``."""
        try:
            await self._writer.drain()
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise anyio.BrokenResourceError from exc

    def abort(self) -> None:
        self._writer.transport.abort()

    # ----------------------------------------------------------------- waiting

    def slot(self) -> FutureSlot:
        return FutureSlot(self._loop.create_future())

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self._loop.call_later(delay, callback)

    # ----------------------------------------------------------------- reading

    @property
    def can_read_in_callbacks(self) -> bool:
        return self._reader is not None

    async def read_in_callbacks(self, on_data: Callable[[bytes], None]) -> None:
        """Hand stdout data to ``on_data`` in the transport's callback until EOF.

        The stream reader normally buffers the bytes and wakes a task, which then
        settles the caller's future: two event-loop iterations between the answer
        arriving and the caller running. Handling the bytes where they arrive settles
        the caller in the first one; this coroutine only waits for EOF (the reader
        still gets it, and transport errors, as usual). An exception from ``on_data``
        ends reading and is raised here, not inside the transport.
        """
        reader = self._reader
        assert reader is not None, "check can_read_in_callbacks first"
        failure: list[BaseException] = []

        def feed(data: bytes) -> None:
            if not data or failure:
                return
            try:
                on_data(data)
            except BaseException as exc:  # re-raised from the task, not in the transport
                failure.append(exc)
                reader.feed_eof()

        pending: bytearray = reader._buffer  # type: ignore[attr-defined]  # checked in of()
        buffered = bytes(pending)  # anything that came before this task ran
        pending.clear()
        # an instance attribute shadows the method; deleted again below
        reader.feed_data = feed  # type: ignore[method-assign,assignment]
        try:
            feed(buffered)
            try:
                await reader.read()
            except (ConnectionError, OSError, anyio.ClosedResourceError):
                pass
        finally:
            if failure:
                # the reader saw EOF early; data still in flight must not reach it
                reader.feed_data = _drop  # type: ignore[method-assign,assignment]
            else:
                del reader.feed_data
        if failure:
            raise failure[0]

    def pause_reading_until_drained(self) -> bool:
        """Stop reading stdout until the plugin has read what is queued for it (the
        callback path's back-pressure; the portable path gets it by awaiting its
        writes). False when reading is already paused or cannot be."""
        transport = getattr(self._reader, "_transport", None)
        if self._resume is not None or transport is None:
            return False
        transport.pause_reading()
        self._resume = self._loop.create_task(self._resume_reading(transport))
        return True

    async def _resume_reading(self, transport: asyncio.ReadTransport) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            pass  # the pipe broke: the reader must see the end
        finally:
            self._resume = None
            if not transport.is_closing():
                transport.resume_reading()

    def stop_resuming(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
