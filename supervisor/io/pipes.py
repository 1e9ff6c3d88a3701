"""The asyncio fast path for a plugin's stdin and stdout: writes joined per loop
iteration, callers settled with bare futures, stdout bytes handled where they arrive.

anyio's process streams cost extra event-loop round trips per message (a checkpoint
and a shielded one on each send, a reader task woken for each chunk). On asyncio a
plugin's pipes are our own protocol's (io/process_pipes.py, public asyncio API only),
and :class:`AsyncioPipes` drives them directly: it writes to the stdin pipe transport,
joins the writes made in one loop iteration into one system call, settles callers with
bare futures, and takes stdout bytes inside ``pipe_data_received``. On another
backend :meth:`AsyncioPipes.of` returns None and the connection takes the portable
anyio path. ``tests/supervisor/test_pipes_fast_path.py`` checks both.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

from pipevisor.supervisor.io.process_pipes import PipeReceiveStream, PipeSendStream, PipesProtocol

__all__ = ["AsyncioPipes", "CallDeadlines", "FifoDeadlines", "FutureSlot", "Waker", "loop_clock",
           "wait_pipe_closed"]


def loop_clock() -> Callable[[], float]:
    """The running loop's clock as a bound method: ``anyio.current_time`` looks up the
    backend on every read (about 1 us, 7 % of a pipelined call's host CPU); this reads
    the same clock without the lookup. Off asyncio, anyio's own."""
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:
        return anyio.current_time


async def wait_pipe_closed(stream: ByteSendStream) -> bool:
    """Wait until the pipe under ``stream`` is closed (by its reader, or by us); False
    at once when that cannot be watched (another backend: only the next write tells).

    On asyncio the pipe transport watches for it: the kernel flags the write end as
    soon as the last reader is gone, so no write is needed."""
    if not isinstance(stream, PipeSendStream):
        return False
    await asyncio.shield(stream.protocol.stdin_lost)
    return True


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


_Entry = tuple[float, int, FutureSlot]


class CallDeadlines:
    """Every waiting call's deadline on one loop timer, instead of a timer per call.

    ``loop.call_later`` per call and its cancel on the answer were 15 % of a pipelined
    call's host CPU (a TimerHandle, a heap push compared in Python, a cancel that
    leaves the handle in the heap). Here a deadline is a tuple pushed on a heap compared
    in C, and an answer costs nothing: an answered entry is dropped when it reaches the
    top, and the heap is rebuilt without them once they outnumber the waiting calls, so
    memory follows the calls in flight, not the call rate. The one timer is armed for
    the earliest deadline still waiting, so under a steady load it fires about once per
    timeout, not once per call.
    """

    __slots__ = ("_armed_at", "_heap", "_loop", "_order", "_timer")

    COMPACT_SLACK = 256
    """Answered entries tolerated beyond the waiting ones before a rebuild."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, deadline: float, slot: FutureSlot, waiting: int) -> None:
        """``slot`` is settled without an answer at ``deadline`` unless answered first;
        ``waiting``: the calls in flight now (a bound on the entries still needed)."""
        heap = self._heap
        if len(heap) > 2 * waiting + self.COMPACT_SLACK:
            self._compact()
            heap = self._heap
        heapq.heappush(heap, (deadline, next(self._order), slot))
        if deadline < self._armed_at:
            self._arm(deadline)

    def _compact(self) -> None:
        heap = [e for e in self._heap if not e[2].future.done()]
        heapq.heapify(heap)
        self._heap = heap

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = at
        self._timer = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = float("inf")
        heap = self._heap
        now = self._loop.time()
        while heap:
            deadline, _, slot = heap[0]
            if slot.future.done():
                heapq.heappop(heap)
            elif deadline <= now:
                heapq.heappop(heap)
                slot.set()  # no response: the caller reads a timeout
            else:
                self._arm(deadline)
                return

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_at = float("inf")
        self._heap.clear()


class Waker:
    """One task waiting for whichever of many callbacks comes first (answers handled in
    the reader, a timer): a bare future, made only while the task waits.

    A poke while nobody waits is remembered, so the task, about to wait after checking
    its state, returns at once instead of missing it."""

    __slots__ = ("_future", "_loop", "_poked")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] | None = None
        self._poked = False

    def poke(self) -> None:
        future = self._future
        if future is None:
            self._poked = True
        elif not future.done():
            future.set_result(None)

    async def wait(self) -> None:
        if self._poked:
            self._poked = False
            return
        self._future = self._loop.create_future()
        try:
            await self._future
        finally:
            self._future = None
            self._poked = False


class FifoDeadlines:
    """Deadlines added in the order they fall due (one sender's requests, all with the
    same timeout, sent in turn): a deque and one loop timer armed for the oldest.

    ``live(key)`` says whether the request still waits; ``expire(key)`` is called, in
    the timer, for each that does not get its answer in time. Answered entries are
    dropped from the front as new ones come, and the deque is rebuilt without them once
    they outnumber ``waiting`` (a bound on the live ones) behind a slow one, so it holds
    about the requests in flight, not one timeout's worth of all sent."""

    __slots__ = ("_entries", "_expire", "_live", "_loop", "_timer")

    COMPACT_SLACK = 256

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[Any], None],
                 live: Callable[[Any], bool]) -> None:
        self._loop = loop
        self._expire = expire
        self._live = live
        self._entries: collections.deque[tuple[float, Any]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, deadline: float, key: Any, waiting: int) -> None:
        entries, live = self._entries, self._live
        while entries and not live(entries[0][1]):  # answered, oldest first: the usual
            entries.popleft()
        if len(entries) > 2 * waiting + self.COMPACT_SLACK:  # one slow call holds the front
            self._entries = entries = collections.deque(e for e in entries if live(e[1]))
        if entries and deadline < entries[-1][0]:
            deadline = entries[-1][0]  # out of order by a clock tick: keep the deque sorted
        entries.append((deadline, key))
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        entries, live, expire = self._entries, self._live, self._expire
        now = self._loop.time()
        while entries:
            deadline, key = entries[0]
            if not live(key):
                entries.popleft()
            elif deadline <= now:
                entries.popleft()
                expire(key)
            else:
                self._timer = self._loop.call_at(deadline, self._fire)
                return

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._entries.clear()


class AsyncioPipes:
    """A plugin's stdin and stdout as asyncio transports (see the module docstring)."""

    __slots__ = ("_joined", "_protocol", "_resume", "_stdin", "deadlines", "loop", "time")

    def __init__(self, protocol: PipesProtocol, stdin: asyncio.WriteTransport) -> None:
        self._protocol = protocol
        self._stdin = stdin
        self.loop = asyncio.get_running_loop()
        self._joined: list[bytes] | None = None
        """Writes waiting to go out in one piece (:meth:`send`); None when none is due."""
        self._resume: asyncio.Task[None] | None = None
        self.deadlines = CallDeadlines(self.loop)
        self.time = self.loop.time

    @classmethod
    def of(cls, stdin: ByteSendStream, stdout: ByteReceiveStream) -> AsyncioPipes | None:
        """The fast path for these streams, or None: they are not our protocol's (another
        backend, a test's memory streams), and the portable path is taken."""
        if not (isinstance(stdin, PipeSendStream) and isinstance(stdout, PipeReceiveStream)
                and stdin.protocol is stdout.protocol and stdout.fd == 1):
            return None
        pipe = stdin.protocol.stdin()
        return None if pipe is None else cls(stdin.protocol, pipe)

    # ----------------------------------------------------------------- writing

    def closing(self) -> bool:
        return self._stdin.is_closing()

    def queued(self) -> int:
        """Bytes written but not yet taken by the plugin's pipe."""
        return self._stdin.get_write_buffer_size()

    def send(self, data: bytes) -> None:
        """The first message of a loop iteration is written at once (a lone call waits
        for nothing); later ones in the same iteration, typically many callers started
        together, are joined and written as one piece in the next iteration: one system
        call instead of one per message. Every write goes through here, so messages keep
        their order (a cancel never overtakes its request)."""
        joined = self._joined
        if joined is not None:
            joined.append(data)
            return
        self.send_alone(data)
        self._joined = []
        self.loop.call_soon(self.flush)

    def send_alone(self, data: bytes) -> None:
        """Write a message nothing else is expected to follow in this iteration (a
        liveness ping: one per plugin per tick), without queueing a flush for followers:
        at 5,000 plugins that flush was a callback of its own for every ping. Behind
        a burst being joined, it joins it, so the order still holds."""
        joined = self._joined
        if joined is not None:
            joined.append(data)
            return
        pipe = self._stdin
        if not pipe.is_closing():
            pipe.write(data)

    def join_writes(self) -> None:
        """Several callers are about to wake together (the reader has just settled their
        calls): join all they send, the first message too, into one write.

        The flush is queued behind their wake-ups, so it runs in the same loop iteration
        as they do, right after them: one system call per burst of answers, where
        :meth:`send` alone would write the first at once and the rest an iteration
        later."""
        if self._joined is None:
            self._joined = []
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what :meth:`send` joined, now."""
        joined, self._joined = self._joined, None
        pipe = self._stdin
        if joined and not pipe.is_closing():
            pipe.write(b"".join(joined) if len(joined) > 1 else joined[0])

    async def drain(self) -> None:
        """Wait until the plugin has read enough; a broken pipe raises
        ``anyio.BrokenResourceError``."""
        try:
            await self._protocol.drain()
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise anyio.BrokenResourceError from exc

    def abort(self) -> None:
        self._stdin.abort()

    # ----------------------------------------------------------------- waiting

    # ----------------------------------------------------------------- reading

    async def read_in_callbacks(self, on_data: Callable[[bytes], None]) -> None:
        """Hand stdout data to ``on_data`` as it arrives, until EOF.

        A buffering reader would wake a task, which then settles the caller's future:
        two event-loop iterations between the answer arriving and the caller running.
        Handling the bytes where they arrive settles the caller in the first one; this
        coroutine only waits for EOF. An exception from ``on_data`` ends reading (later
        bytes are dropped) and is raised here, not inside the transport.
        """
        protocol = self._protocol
        failure: list[BaseException] = []

        def feed(data: bytes) -> None:
            if not data or failure:
                return
            try:
                on_data(data)
            except BaseException as exc:  # re-raised from the task, not in the transport
                failure.append(exc)
                protocol.end_stdout()

        protocol.set_consumer(feed)
        await protocol.wait_eof(1)
        if failure:
            raise failure[0]

    def pause_reading_until_drained(self) -> bool:
        """Stop reading stdout until the plugin has read what is queued for it (the
        callback path's back-pressure; the portable path gets it by awaiting its
        writes). False when reading is already paused or cannot be."""
        pipe = self._protocol.stdout()
        if self._resume is not None or pipe is None or pipe.is_closing():
            return False
        pipe.pause_reading()
        self._resume = self.loop.create_task(self._resume_reading(pipe))
        return True

    async def _resume_reading(self, pipe: asyncio.ReadTransport) -> None:
        try:
            await self._protocol.drain()
        except (ConnectionError, OSError):
            pass  # the pipe broke: the reader must see the end
        finally:
            self._resume = None
            if not pipe.is_closing():
                pipe.resume_reading()

    def stop_resuming(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
