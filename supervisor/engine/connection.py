"""Drives a :class:`pipevisor.protocol.Peer` over a plugin's stdin/stdout.

This is the one boundary where protocol events become supervisor actions:
responses wake their callers, requests from the plugin run host handlers,
notifications go to callbacks, faults are counted and reported. When the
pipe closes, every call still in flight gets an error at once; nothing waits
for a timeout to learn that the plugin is gone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream, ByteSendStream, TaskGroup

from pipevisor.protocol import (
    CANCEL,
    PROGRESS,
    ErrorCode,
    ErrorObject,
    ErrorResponse,
    Fault,
    Notification,
    NotificationReceived,
    Peer,
    ProtocolFault,
    Request,
    RequestId,
    RequestReceived,
    Response,
    ResponseReceived,
    local_error,
    standard_error,
)
from pipevisor.protocol.errors import EncodeError
from pipevisor.supervisor.errors import (
    CallError,
    PipevisorError,
    PluginError,
    error_from_object,
    local,
    sanitize_plugin_error,
    unsendable_params,
)
from pipevisor.supervisor.io.pipes import AsyncioPipes, FutureSlot

log = logging.getLogger("pipevisor.connection")

HostHandler = Callable[[str, Any], Awaitable[Any]]
"""(method, params) -> result; raise CallError to answer with a specific error."""

ProgressListener = Callable[[dict[str, Any]], None]
"""Hears the params of each ``pipevisor/progress`` for one request (SPEC 7.5)."""

_READ_CHUNK = 256 * 1024
_HIGH_WATER = 256 * 1024
_ID_TYPES = (str, int, float)
_MAX_QUEUED_HOST_CALLS = 256
"""Plugin-to-host calls waiting for a handler slot; beyond this they get QUEUE_FULL
at once from the reader, without a task."""
PAUSE_WATER = 1024 * 1024
"""Bytes queued for a plugin's stdin above which the host stops reading its stdout
while it owes the plugin answers (replies to its requests, errors for its invalid
lines): a plugin that writes but never reads is held by its own full pipe instead of
growing the host's memory. Reading resumes once the plugin has read what is queued."""


def _pipevisor_cancel_id(params: Any) -> Any:
    return params.get("id") if isinstance(params, dict) else None


def _raw_error(error: ErrorObject) -> CallError:
    """A foreign server's error as it sent it. Only a ``data.origin`` of "pipevisor" (the
    mark of pipevisor's own errors) is moved to ``data.pluginOrigin``, so the mark
    cannot be forged; the code, message and the rest of data are the server's."""
    data = error.data
    if isinstance(data, dict) and data.get("origin") == "pipevisor":
        data = {("pluginOrigin" if k == "origin" else k): v for k, v in data.items()}
        error = ErrorObject(error.code, error.message, data)
    return PluginError(error)


class _Slot:
    __slots__ = ("event", "local", "response")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.response: Response | ErrorResponse | None = None
        self.local = False  # the answer was made up on this side (crash, malformed reply)

    def set(self) -> None:
        self.event.set()


AnswerCallback = Callable[[Response | ErrorResponse, bool], None]
"""(answer, made up locally) for a request sent with :meth:`Connection.request_nowait`;
``local`` is True for an answer this side made (the plugin died, the reply was junk)."""


class _CallbackSlot:
    """A request nobody awaits: its answer is handed to a callback where it arrives
    (in the reader), so a liveness ping costs no task, no future and no timer."""

    __slots__ = ("done", "local", "response")

    def __init__(self, done: AnswerCallback) -> None:
        self.done = done
        self.response: Response | ErrorResponse | None = None
        self.local = False

    def set(self) -> None:
        response = self.response
        if response is None:
            return
        try:
            self.done(response, self.local)
        except Exception:  # the callback's bug must not end the plugin's reader
            log.exception("an answer callback failed")


@dataclass(slots=True)
class ConnectionCallbacks:
    on_notification: Callable[[Notification], None]
    on_fault: Callable[[Fault], None]
    host_handler: HostHandler | None = None


class Connection:
    def __init__(
        self,
        name: str,
        stdin: ByteSendStream,
        stdout: ByteReceiveStream,
        callbacks: ConnectionCallbacks,
        *,
        max_line_bytes: int,
        max_host_calls: int = 64,
        content_length: bool = False,
    ) -> None:
        self.name = name
        self._stdin = stdin
        self._stdout = stdout
        self._cb = callbacks
        # a JSON-RPC 2.0 server answers every line it cannot parse (-32700, id null;
        # SPEC 3.5), bounded per read by the peer; a plugin ignores such answers
        self.peer = Peer(max_line_bytes=max_line_bytes, answer_garbage=True,
                         content_length=content_length)
        self.cancel_message: Callable[[RequestId, str], tuple[str, Any] | None] | None = None
        """A foreign server's cancel: (request id, reason) -> (method, params), or None for
        a server that has no way to hear it; unset: ``pipevisor/cancel``."""
        self.cancel_method_in = CANCEL
        """The notification by which the other side cancels a request it sent us ..."""
        self.cancel_id_in: Callable[[Any], Any] = _pipevisor_cancel_id
        """... and where its params name the request."""
        self.raw_errors = False
        """A foreign server's errors pass through untouched (raw mode): its codes are its
        own, even in pipevisor's local block; ours still carry ``data.origin``."""
        self._slots: dict[RequestId, _Slot | FutureSlot | _CallbackSlot] = {}
        self._progress: dict[RequestId, ProgressListener] = {}
        """Callers that asked to hear ``pipevisor/progress`` for their request, by id."""
        self._write_lock = anyio.Lock(fast_acquire=True)
        self._host_calls = anyio.Semaphore(max_host_calls, fast_acquire=True)
        self._host_scopes: dict[RequestId, anyio.CancelScope] = {}
        self._fast = AsyncioPipes.of(stdin, stdout)
        """The asyncio fast path (io/pipes.py), or None: the portable anyio path."""
        self.closed_error: ErrorObject | None = None
        self.eof = anyio.Event()
        self._max_open = max_host_calls + _MAX_QUEUED_HOST_CALLS
        self._serving = 0
        """Requests from the plugin being served (a task each); at most ``_max_open``."""
        self._owed: list[bytes] = []
        """Answers made by the reader itself (QUEUE_FULL), written with the peer's output."""
        self.host_calls_refused = 0
        self.host_failures = 0
        """Host methods that raised (not CallError) while serving this plugin."""
        self.read_pauses = 0
        """Times reading stopped because the plugin did not read what it was owed."""

    # ----------------------------------------------------------------- writing

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        fast = self._fast
        if fast is not None:
            # a transport write is synchronous and atomic per message, so no lock is
            # needed; wait for the pipe only when the plugin is not keeping up (that is
            # the backpressure)
            if fast.closing():
                raise anyio.BrokenResourceError
            fast.send(data)
            if fast.queued() > _HIGH_WATER:
                await fast.drain()
            else:
                await anyio.lowlevel.cancel_shielded_checkpoint()
            return
        async with self._write_lock:
            await self._stdin.send(data)

    async def _send_cancel(self, data: bytes) -> None:
        """A cancel is a courtesy: queued without waiting for a plugin that does not read
        (one per abandoned call, so bounded by the callers), at most a second otherwise."""
        fast = self._fast
        if fast is not None:
            if not fast.closing():
                fast.send(data)
            return
        with anyio.move_on_after(1.0):
            await self._write_quietly(data)

    async def _write_quietly(self, data: bytes) -> None:
        """Write, ignoring a dead pipe: the reader will notice and settle everything."""
        try:
            await self._write(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async def close_stdin(self, timeout: float = 1.0) -> None:
        """End the plugin's input. What is queued still goes out if the plugin reads it
        within ``timeout``; one that does not read gets its pipe closed regardless."""
        fast = self._fast
        if fast is not None:
            fast.flush()  # what was said before EOF still goes out
        with anyio.move_on_after(timeout):
            async with self._write_lock:
                try:
                    await self._stdin.aclose()
                except (anyio.BrokenResourceError, OSError):
                    pass
                return
        if fast is not None:
            fast.abort()

    # ------------------------------------------------------------------- calls

    async def call(self, method: str, params: Any = None, timeout: float | None = None,
                   on_progress: ProgressListener | None = None) -> Any:
        """Send one request and wait for its answer.

        ``on_progress`` hears the plugin's ``pipevisor/progress`` for this request (its
        params, as sent) until the answer arrives; a listener that raises is dropped.

        Raises:
            CallError: the plugin's error answer, or a local one (timeout, crash).
        """
        if self.closed_error is not None:
            raise error_from_object(self.closed_error)
        try:
            ident, data = self.peer.send_request(method, params)
        except EncodeError as exc:
            raise unsendable_params(method, str(exc), plugin=self.name) from exc
        if on_progress is not None:
            self._progress[ident] = on_progress
        fast = self._fast
        slot: _Slot | FutureSlot
        sent = fast is None  # the portable path writes before it waits
        try:
            if fast is not None:
                # the fast path inline (one coroutine frame less per call): one future,
                # and the deadline on the connection's one timer (io/pipes.py)
                slot = FutureSlot(fast.loop.create_future())
                slots = self._slots
                slots[ident] = slot
                if timeout is not None:
                    fast.deadlines.add(fast.time() + timeout, slot, len(slots))
                try:
                    if not fast.closing():  # else the reader is about to fail every call
                        if fast.queued() > _HIGH_WATER:
                            # the plugin is not reading: wait for it before queueing
                            # more (a plugin that never reads would otherwise make the
                            # host keep every request sent to it), within the deadline
                            # (which settles the call as a timeout if it passes)
                            await self.wait_writable(timeout)
                        if not slot.future.done():
                            fast.send(data)
                            sent = True
                    await slot.future
                except BaseException:
                    await self._abandon(slot, ident, sent)
                    raise
            else:
                slot = await self._call_portable(ident, data, timeout)
        finally:
            if on_progress is not None:
                self._progress.pop(ident, None)
        response = slot.response
        if response is None:
            self._slots.pop(ident, None)
            if sent:
                await self._send_cancel(self._cancel(ident, "timeout"))
            else:
                self.peer.cancel(ident, notify=False)  # never sent: nothing to tell
            assert timeout is not None  # only a timer settles a slot without an answer
            raise self.timeout_error(method, timeout, sent)
        if type(response) is Response:
            return response.result
        assert isinstance(response, ErrorResponse)
        raise self.answer_error(response, slot.local)

    def answer_error(self, response: ErrorResponse, local: bool) -> CallError:
        """What the caller of a request answered with ``response`` gets raised: ours as
        they are (``local``), the plugin's with the origin checked (or untouched for a
        raw-mode server)."""
        if local:
            return error_from_object(response.error)
        if self.raw_errors:
            return _raw_error(response.error)
        return error_from_object(sanitize_plugin_error(response.error))

    def timeout_error(self, method: str, timeout: float, sent: bool = True) -> CallError:
        # timeout is what was left of the caller's deadline: three figures give back
        # the number asked for (0.99998 -> 1), not the time spent queueing
        what = (f"did not answer {method!r} within {timeout:.3g} s" if sent else
                f"did not read its stdin within {timeout:.3g} s ({method!r} was not sent)")
        return local(ErrorCode.TIMEOUT, f"plugin {self.name!r} {what}",
                     plugin=self.name, method=method, timeout=round(timeout, 3))

    def backlogged(self) -> bool:
        """More is queued for the plugin than it has read (over 256 KiB): wait for it
        (:meth:`wait_writable`) before sending more."""
        fast = self._fast
        return fast is not None and fast.queued() > _HIGH_WATER

    async def wait_writable(self, timeout: float | None) -> bool:
        """Wait until the plugin reads what is queued for it: True, or False when it did
        not within ``timeout`` (None: no limit). True at once on the portable path, and
        when the pipe is closed (the reader settles the calls with the real reason)."""
        fast = self._fast
        if fast is None:
            return True
        with anyio.move_on_after(timeout if timeout is not None else math.inf):
            try:
                await fast.drain()
            except anyio.BrokenResourceError:
                pass
            return True
        return False

    @property
    def pipes(self) -> AsyncioPipes | None:
        """The asyncio pipes whose reader hands answers to :meth:`request_nowait`
        callbacks; None on the portable anyio path, where only :meth:`call` works."""
        return self._fast

    def request_nowait(self, method: str, params: Any, done: AnswerCallback) -> RequestId | None:
        """Send a request whose answer goes to ``done`` (called once, from the reader,
        also with the local error when the plugin dies first); no task waits for it.

        The caller keeps its own deadline and calls :meth:`forget` when it passes. None
        when nothing was sent: the connection is closed or closing, it has no callback
        path (the portable anyio path: await :meth:`call` there), or the params cannot
        be sent (:meth:`send_nowait` says which)."""
        try:
            return self.send_nowait(method, params, done)
        except CallError:
            return None

    def send_nowait(self, method: str, params: Any, done: AnswerCallback) -> RequestId | None:
        """:meth:`request_nowait`, but params that cannot be sent (not JSON, over the line
        limit) raise the INVALID_PARAMS :class:`CallError` that :meth:`call` raises."""
        fast = self._fast
        if fast is None or self.closed_error is not None or fast.closing():
            return None
        try:
            ident, data = self.peer.send_request(method, params)
        except EncodeError as exc:
            raise unsendable_params(method, str(exc), plugin=self.name) from exc
        self._slots[ident] = _CallbackSlot(done)
        fast.send_alone(data)
        return ident

    def hold_writes(self) -> None:
        """Join what is sent from now on into one write, made by :meth:`flush_writes` (or
        at the latest in the next loop iteration); for a sender of many requests at once."""
        if self._fast is not None:
            self._fast.join_writes()

    def flush_writes(self) -> None:
        if self._fast is not None:
            self._fast.flush()

    def forget(self, ident: RequestId, reason: str) -> bool:
        """Give up on a request from :meth:`request_nowait` that has not been answered:
        its callback is never called, a late answer is dropped, and the plugin hears a
        cancel (queued, not awaited). False when it was answered already."""
        if self._slots.pop(ident, None) is None:
            return False
        data = self._cancel(ident, reason)
        fast = self._fast
        if data and fast is not None and not fast.closing():
            fast.send(data)
        return True

    def _cancel(self, ident: RequestId, reason: str) -> bytes:
        """Forget ``ident``; the bytes telling the other side (maybe none)."""
        make = self.cancel_message
        if make is None:
            return self.peer.cancel(ident)
        if ident not in self.peer.outgoing:
            return b""
        self.peer.cancel(ident, notify=False)
        message = make(ident, reason)
        if message is None:
            return b""
        try:
            return self.peer.send_notification(*message)
        except EncodeError:
            return b""

    async def _abandon(self, slot: _Slot | FutureSlot, ident: RequestId,
                       sent: bool = True) -> None:
        """The caller was cancelled before an answer: forget the slot and tell the plugin
        (shielded, so the cancel goes out); the caller's cancellation then propagates.
        One place for both call paths, so they cannot drift apart."""
        if slot.response is None:
            self._slots.pop(ident, None)
            if not sent:
                self.peer.cancel(ident, notify=False)
                return
            cancel = self._cancel(ident, "cancelled by the caller")
            with anyio.CancelScope(shield=True):
                await self._send_cancel(cancel)

    async def _call_portable(self, ident: RequestId, data: bytes,
                             timeout: float | None) -> _Slot:
        slot = _Slot()
        self._slots[ident] = slot
        try:
            try:
                await self._write(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the reader is about to fail every pending call with the real reason
            if timeout is None:
                await slot.event.wait()
            else:
                with anyio.move_on_after(timeout):
                    await slot.event.wait()
        except BaseException:
            await self._abandon(slot, ident)
            raise
        return slot

    async def notify(self, method: str, params: Any = None) -> None:
        await self._write(self.peer.send_notification(method, params))

    # ----------------------------------------------------------------- reading

    async def read_loop(self, tg: TaskGroup) -> None:
        """Runs until stdout closes; then every pending call is failed."""
        fast = self._fast
        try:
            if fast is not None:
                await fast.read_in_callbacks(self._fast_reader(fast, tg))
                self._handle(self.peer.receive_eof(), tg)
                return
            while True:
                try:
                    data = await self._stdout.receive(_READ_CHUNK)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
                self._handle(self.peer.receive_data(data), tg)
                out = self._take_output()
                if out:
                    await self._write_quietly(out)  # waits while the plugin does not read
            self._handle(self.peer.receive_eof(), tg)
        finally:
            # self._fast, not the local: mypyc (perf --compiled) narrows the local to
            # None after the early return above
            if self._fast is not None:
                self._fast.stop_resuming()
            self.eof.set()

    def _take_output(self) -> bytes:
        out = self.peer.take_output()
        if self._owed:
            owed, self._owed = self._owed, []
            out = b"".join([out, *owed])
        return out

    def _fast_reader(self, fast: AsyncioPipes, tg: TaskGroup) -> Callable[[bytes], None]:
        """What to do with stdout bytes where they arrive (see
        :meth:`AsyncioPipes.read_in_callbacks`): settle callers, start host calls, and
        write what the peer owes the plugin at once."""

        def on_data(data: bytes) -> None:
            events = self.peer.receive_data(data)
            self._handle(events, tg)
            if len(events) > 1:
                # the callers just woken write together: the flush is queued after
                # their wake-ups (set_result queued those), so it runs right after them
                fast.join_writes()
            out = self._take_output()
            if out and not fast.closing():
                fast.send(out)
                if fast.queued() > PAUSE_WATER:
                    self._pause_reading(fast)

        return on_data

    def _pause_reading(self, fast: AsyncioPipes) -> None:
        """Stop reading stdout until the plugin has read what it is owed."""
        queued = fast.queued()
        if not fast.pause_reading_until_drained():
            return
        self.read_pauses += 1
        if self.read_pauses in (1, 10, 100) or self.read_pauses % 1000 == 0:
            log.warning("plugin %s does not read its stdin (%d bytes queued for it): its "
                        "stdout is not read until it does (pause #%d)", self.name,
                        queued, self.read_pauses)

    def _handle(self, events: list[Any], tg: TaskGroup) -> None:
        for event in events:
            t = type(event)
            if t is ResponseReceived:
                self._settle(event)
            elif t is RequestReceived:
                request = event.request
                if self._serving >= self._max_open:
                    self.host_calls_refused += 1
                    self._owed.append(self.peer.send_error(request.id, local_error(
                        ErrorCode.QUEUE_FULL,
                        f"too many host calls in flight from this plugin (max {self._max_open})")))
                else:
                    self._serving += 1
                    tg.start_soon(self._serve, request)
            elif t is NotificationReceived:
                n = event.notification
                if n.method == self.cancel_method_in:
                    ident = self.cancel_id_in(n.params)
                    # any JSON may stand here; only a plain id can name a host call
                    if type(ident) in _ID_TYPES:
                        scope = self._host_scopes.get(ident)
                        if scope is not None:
                            scope.cancel()
                else:
                    if self._progress and n.method == PROGRESS:
                        self._tell_progress(n.params)
                    self._cb.on_notification(n)
            elif t is ProtocolFault:
                self._cb.on_fault(event.fault)

    def _tell_progress(self, params: Any) -> None:
        """Pass a progress notification to the caller of the request it names, if that
        caller asked for it. The params are the plugin's: only their ``id`` is read."""
        ident = params.get("id") if isinstance(params, dict) else None
        if type(ident) not in _ID_TYPES:
            return
        listener = self._progress.get(ident)
        if listener is None:
            return
        try:
            listener(params)
        except Exception:  # the caller's bug: it stops hearing, the plugin is not blamed
            self._progress.pop(ident, None)
            log.exception("plugin %s: a progress listener failed; dropped", self.name)

    def _settle(self, event: ResponseReceived) -> None:
        slot = self._slots.pop(event.response.id, None)
        if slot is not None:
            slot.response = event.response
            slot.local = event.local
            slot.set()

    def close(self, error: ErrorObject) -> None:
        """The plugin is gone: settle every pending call with ``error``, once."""
        if self.closed_error is None:
            self.closed_error = error
        for failed in self.peer.fail_all(error):
            self._settle(failed)
        # a call whose answer the peer took but that was never handed over (our fault
        # between the two) is still waiting: it gets the error too, not its timeout
        for ident in list(self._slots):
            self._settle(ResponseReceived(ErrorResponse(ident, error), "", local=True))
        if self._fast is not None:
            self._fast.deadlines.close()  # every call is settled: no timer to keep
        for scope in self._host_scopes.values():
            scope.cancel()

    # --------------------------------------------------------- plugin -> host

    async def _serve(self, request: Request) -> None:
        try:
            await self._serve_one(request)
        finally:
            self._serving -= 1

    async def _serve_one(self, request: Request) -> None:
        handler = self._cb.host_handler
        try:
            if handler is None:
                raise CallError(standard_error(ErrorCode.METHOD_NOT_FOUND,
                                               f"host offers no method {request.method!r}"))
            async with self._host_calls:
                with anyio.CancelScope() as scope:
                    self._host_scopes[request.id] = scope
                    try:
                        result = await handler(request.method, request.params)
                    finally:
                        self._host_scopes.pop(request.id, None)
                if scope.cancelled_caught:
                    raise CallError(local_error(ErrorCode.CANCELLED, "cancelled"))
            data = self.peer.send_result(request.id, result)
        except CallError as exc:
            data = self._error_reply(request.id, exc.error)
        except PipevisorError as exc:
            data = self._error_reply(request.id, standard_error(ErrorCode.INTERNAL_ERROR, str(exc)))
        except EncodeError as exc:
            data = self._error_reply(request.id, standard_error(ErrorCode.INTERNAL_ERROR, str(exc)))
        except Exception as exc:  # a host handler bug must not take the supervisor down
            self.host_failures += 1
            n = self.host_failures
            if n <= 10 or n % 1000 == 0:  # a plugin must not be able to flood the log
                log.error("plugin %s: host method %r failed (#%d on this connection)",
                          self.name, request.method, n, exc_info=exc)
            data = self._error_reply(
                request.id,
                standard_error(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"),
            )
        await self._write_quietly(data)

    def _error_reply(self, ident: RequestId, error: ErrorObject) -> bytes:
        if ident not in self.peer.incoming:
            return b""  # connection already failed; nobody to answer
        return self.peer.send_error(ident, error)
