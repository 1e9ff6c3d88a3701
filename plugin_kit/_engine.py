"""The run loop, loaded once the handshake is answered (or found not to be a plain one).

Threads, each with one job:

* main: waits for the end (shutdown, EOF, the host gone), lets calls in
  flight finish within the grace, cancels and answers the rest, and returns
  to :meth:`Plugin.run`, which exits.
* ``stdin``: blocking reads of fd 0 fed to :class:`pipevisor.protocol.Peer`; answers
  pings, errors and the handshake itself and hands calls on. A blocking read
  works on every kind of stdin (pipe, socket, regular file, ``/dev/null``),
  where an event loop's reader refuses files and ``/dev/null``.
* workers: ``def`` handlers, at most ``Plugin.threads`` at once, started as
  calls need them; each writes its own answer.
* ``asyncio``: only when an ``async def`` handler is registered. asyncio is
  imported in that thread, after the handshake answer, so it never delays
  it, and a plugin with sync handlers only never imports it at all. Once its
  loop runs, it takes over reading stdin (the ``stdin`` thread is woken
  through a pipe and ends) if the loop can watch fd 0: an async call then
  starts on the thread that read it, with no hop between threads.

Every use of the Peer and every write to stdout happens under one lock: a
line is written whole before the next one starts (``os.write`` may write
part of a large line; the rest follows before the lock is released), and a
call is answered exactly once, by whoever removes it from ``calls``.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

from pipevisor.kit.binding import ParamsError
from pipevisor.kit.context import Context
from pipevisor.kit.errors import LOCAL_CODES, Cancelled, HostCallError, PluginError
from pipevisor.kit.log_handler import HostLogHandler
from pipevisor.kit.plugin import DEFAULT_GRACE, DEFAULT_MAX_LINE_BYTES
from pipevisor.protocol import (
    CANCEL,
    HANDSHAKE,
    PING,
    SHUTDOWN,
    EncodeError,
    ErrorCode,
    ErrorObject,
    ErrorResponse,
    Event,
    NotificationReceived,
    Peer,
    Request,
    RequestReceived,
    ResponseReceived,
    VersionError,
    VersionRange,
    encode,
    negotiate,
    standard_error,
    unsupported_version,
)
from pipevisor.protocol.messages import Notification
from pipevisor.protocol.schema_store import first_error

if TYPE_CHECKING:
    import asyncio

    from pipevisor.kit.plugin import Plugin, _Method

Deliver = Callable[[Any, "ErrorObject | None"], None]
"""Settles one host call: (result, None) or (None, error)."""

_log = logging.getLogger("pipevisor.kit")
_SETTLE = 0.25  # seconds for cancelled async calls to answer themselves before the kit does
_NO_ID = object()
_ID_TYPES = (str, int, float, type(None))  # what a request id can be, so what a cancel may name


class _Call:
    """A request for one of the plugin's methods, from arrival to its one answer."""

    __slots__ = ("ctx", "entry", "params", "task")

    def __init__(self, ctx: Context, entry: _Method, params: Any) -> None:
        self.ctx = ctx
        self.entry = entry
        self.params = params
        self.task: asyncio.Task[None] | None = None  # async handlers, once started


class _Note:
    """A notification for one of the plugin's notification handlers."""

    __slots__ = ("entry", "method", "params")

    def __init__(self, method: str, entry: _Method, params: Any) -> None:
        self.method = method
        self.entry = entry
        self.params = params


class _BadResult(Exception):
    """A handler's result failed its declared result_schema."""


class _Workers:
    """Daemon threads for sync handlers, started as calls need them, at most ``size``.

    Not concurrent.futures: its threads are not daemons, so a handler that
    ignores cancellation would hold up the exit, and it costs a few ms to import.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: SimpleQueue[Callable[[], None]] = SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._idle = 0  # workers waiting for a job that no submitted job has claimed yet
        self.busy = 0  # handlers running now

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            start = False
            if self._idle:
                self._idle -= 1
            elif self._started < self._size:
                self._started += 1
                start = True
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, name=f"{self._name}-{self._started}",
                             daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            with self._lock:
                self.busy += 1
            try:
                job()
            except Exception:  # a job answers its own errors; this is a bug in the kit
                import traceback

                traceback.print_exc(file=sys.stderr)
            finally:
                with self._lock:
                    self.busy -= 1
                    self._idle += 1


class Engine:
    """Everything between the handshake and the exit; see the module docstring."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin
        self.peer = Peer(answer_garbage=True, max_line_bytes=plugin.max_line_bytes)
        # A handshake that comes through the Peer sets the line limit too late for this
        # Peer; a new one with the host's limit takes over at the first line boundary.
        self._limit_pending = not plugin.connected
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)  # notified when a call is answered
        self.calls: dict[Any, _Call] = {}
        self._host_calls: dict[Any, Deliver] = {}
        self._workers = _Workers(plugin.threads, plugin.name)
        self._shutting_down = False
        self._eof = False
        self._gone = False  # a write failed: nobody reads our answers any more
        self._stop = threading.Event()
        self._stop_kind = ""  # "shutdown", "eof" or "gone": the first reason to stop
        self._shutdown_id: Any = None
        self._shutdown_grace = DEFAULT_GRACE
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_ident = -1  # the loop thread's id, once it runs
        self._waiting_for_loop: list[_Call | _Note] = []
        self._cancelled_error: type[BaseException] = Cancelled  # asyncio's, once imported
        self._reader: threading.Thread | None = None
        self._reader_ready = threading.Event()  # the bytes read with the handshake are fed
        self._wake_r = self._wake_w = -1  # tells the stdin thread to leave fd 0 to the loop

    # -------------------------------------------------------------------- run

    def run(self, pending: bytes, eof: bool) -> bool:
        """Serve until the end; True if a sync handler's thread is still running."""
        self._install_logging()
        if any(m.is_async for m in self.plugin.methods.values()):
            if not eof:
                self._wake_r, self._wake_w = os.pipe()
            self._start_loop()
        if pending:
            self.on_data(pending)
        if eof:
            self.on_eof()
        else:
            self._reader = threading.Thread(target=self._read, name="stdin", daemon=True)
            self._reader.start()
        self._reader_ready.set()
        self._stop.wait()
        # SPEC 7.3 and 9.1 give the whole wind-down the grace: calls get all of it but
        # _SETTLE, which is left for cancelled tasks to answer and for the exit.
        if self._stop_kind == "shutdown":
            self._wind_down(max(0.0, self._shutdown_grace - _SETTLE))
            with self.lock:
                self._reply(self._shutdown_id, None)
        elif self._stop_kind == "eof":
            self._wind_down(DEFAULT_GRACE - 2 * _SETTLE)
        self.plugin.connected = False
        self._fail_host_calls("the plugin is exiting")
        self._stop_loop()
        return self._workers.busy > 0

    def _install_logging(self) -> None:
        handler = self.plugin._log_handler = HostLogHandler(self.plugin)
        root = logging.getLogger()
        root.addHandler(handler)
        if root.level == logging.WARNING and len(root.handlers) == 1:
            root.setLevel(logging.INFO)  # unconfigured: logging.info() should reach the host

    def _request_stop(self, kind: str) -> None:
        with self.lock:
            if not self._stop.is_set():
                self._stop_kind = kind
                self._stop.set()
            self._changed.notify_all()

    def _wind_down(self, grace: float) -> None:
        """Let calls in flight finish within ``grace``; cancel and answer the rest.

        A sync handler's thread cannot be stopped: its call is answered as
        cancelled now and whatever it returns later is dropped. An async one is
        cancelled on the loop and answers itself, or is answered here _SETTLE
        seconds later if the loop is too busy to get to it.
        """
        with self.lock:
            self._wait_for_calls(grace)
            left = list(self.calls.values())
        for call in left:
            call.ctx._cancel()
            if call.entry.is_async:
                self._cancel_task(call)
            else:
                self._finish_error(call, self._cancelled(call))
        with self.lock:
            self._wait_for_calls(_SETTLE)
            left = list(self.calls.values())
        for call in left:
            self._finish_error(call, self._cancelled(call))

    def _wait_for_calls(self, seconds: float) -> None:
        """Wait (holding the lock) until no call is in flight, the host is gone, or time is up."""
        deadline = time.monotonic() + seconds
        while self.calls and not self._gone:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._changed.wait(left)

    # ------------------------------------------------------------------ input

    def _read(self) -> None:
        wake = self._wake_r
        poller = None
        if wake >= 0:  # the loop may take fd 0 over: wait for either, never in read()
            poller = select.poll()
            poller.register(0, select.POLLIN)
            poller.register(wake, select.POLLIN)
        while not self._gone:
            try:
                if poller is not None and any(fd == wake for fd, _ in poller.poll()):
                    return  # the loop reads fd 0 from now on
                data = os.read(0, 1 << 16)
            except OSError:
                break
            if not data:
                break
            try:
                self.on_data(data)
            except Exception:  # a bug here must not leave the plugin deaf but alive
                import traceback

                traceback.print_exc(file=sys.stderr)
        self.on_eof()

    def on_data(self, data: bytes) -> None:
        with self.lock:
            events = self.peer.receive_data(data)
            self._write(self.peer.take_output())
        self._dispatch(events)
        if self._limit_pending and self.plugin.connected:
            self._apply_line_limit()

    def on_eof(self) -> None:
        """End of input: the host is finished with us or gone (SPEC 9.1). A shutdown
        already under way keeps its own grace; otherwise wind down with the default."""
        with self.lock:
            if self._eof:
                return
            events = self.peer.receive_eof()  # an unterminated last line still counts
            self._write(self.peer.take_output())
        self._dispatch(events)
        with self.lock:
            self._eof = True
            first = not self._shutting_down
            self._shutting_down = True
        self._fail_host_calls("the host closed the plugin's stdin")
        if first:
            self._request_stop("eof")

    def _apply_line_limit(self) -> None:
        with self.lock:
            limit = self.plugin.max_line_bytes
            if limit == DEFAULT_MAX_LINE_BYTES:
                self._limit_pending = False
            elif not self.peer.buffered and not self.peer.incoming and not self.peer.outgoing:
                self.peer = Peer(answer_garbage=True, max_line_bytes=limit)
                self._limit_pending = False

    def _dispatch(self, events: list[Event]) -> None:
        async_calls: list[_Call | _Note] = []  # started together: one wake-up of the loop
        for event in events:
            if isinstance(event, RequestReceived):
                self._on_request(event.request, async_calls)
            elif isinstance(event, ResponseReceived):
                msg = event.response
                with self.lock:
                    deliver = self._host_calls.pop(msg.id, None)
                if deliver is not None:
                    if isinstance(msg, ErrorResponse):
                        deliver(None, msg.error)
                    else:
                        deliver(msg.result, None)
            elif isinstance(event, NotificationReceived):
                self._on_notification(event.notification, async_calls)
            else:
                sys.stderr.write(f"{self.plugin.name}: bad input: {event.fault.detail}\n")
        if async_calls:
            self._submit_async(async_calls)

    def _on_request(self, req: Request, async_calls: list[_Call | _Note]) -> None:
        plugin = self.plugin
        name = req.method
        entry = plugin.methods.get(name)
        if entry is not None and plugin.connected:
            if self._shutting_down:
                self._reply_error(req.id, ErrorObject(ErrorCode.SHUTTING_DOWN,
                                                      "plugin is shutting down"))
                return
            call = _Call(Context(plugin, req.id, name), entry, req.params)
            with self.lock:
                self.calls[req.id] = call
            if entry.is_async:
                async_calls.append(call)
            else:
                self._workers.submit(lambda: self._run_sync(call))
            return
        if name == HANDSHAKE:
            self._handshake(req)
        elif not plugin.connected:
            self._reply_error(req.id, ErrorObject(ErrorCode.NOT_INITIALIZED,
                                                  f"{name} before the handshake"))
        elif name == PING:
            self._reply(req.id, {})
        elif name == SHUTDOWN:
            grace = DEFAULT_GRACE
            if isinstance(req.params, dict):
                value = req.params.get("graceSeconds")
                if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                    grace = float(value)
            with self.lock:
                again = self._shutting_down  # a second shutdown, or one after EOF
                if not again:
                    self._shutting_down = True  # now: the next line may be a call
                    self._shutdown_id = req.id
                    self._shutdown_grace = grace
            if again:
                self._reply(req.id, None)
            else:
                self._request_stop("shutdown")
        else:
            self._reply_error(req.id, ErrorObject(ErrorCode.METHOD_NOT_FOUND,
                                                  f"Method not found: {name}"))

    def _on_notification(self, note: Notification, async_jobs: list[_Call | _Note]) -> None:
        """SPEC 4.4: never answered. Before the handshake every one is ignored (SPEC 6.1)."""
        if note.method == CANCEL:
            params = note.params
            ident = params.get("id", _NO_ID) if isinstance(params, dict) else _NO_ID
            if type(ident) in _ID_TYPES:  # an array or object id names no request: ignore it
                self._on_cancel(ident)
            else:
                _log.warning("ignored pipevisor/cancel without a usable id: %r", params)
            return
        entry = self.plugin.notifications.get(note.method)
        if entry is None or not self.plugin.connected:
            return  # SPEC 4.4: an unknown notification is ignored
        job = _Note(note.method, entry, note.params)
        if entry.is_async:
            async_jobs.append(job)
        else:
            self._workers.submit(lambda: self._run_note(job))

    def _note_args(self, note: _Note) -> tuple[list[Any], dict[str, Any]] | None:
        """Bind a notification's params, or log why they do not fit and return None."""
        problem = None
        if note.entry.params_check is not None:
            problem = note.entry.params_check.problem(note.params)
        if problem is None:
            try:
                return note.entry.signature.bind(note.params)
            except ParamsError as exc:
                problem = str(exc)
        _log.warning("notification %s ignored: invalid params: %s", note.method, problem)
        return None

    def _run_note(self, note: _Note) -> None:
        bound = self._note_args(note)
        if bound is None:
            return
        try:
            note.entry.fn(*bound[0], **bound[1])
        except Exception:
            _log.exception("notification handler %s failed", note.method)

    async def _serve_note(self, note: _Note) -> None:
        bound = self._note_args(note)
        if bound is None:
            return
        try:
            await note.entry.fn(*bound[0], **bound[1])
        except Exception:
            _log.exception("notification handler %s failed", note.method)

    def _on_cancel(self, ident: Any) -> None:
        with self.lock:
            call = self.calls.get(ident)
        if call is not None:
            call.ctx._cancel()
            if call.entry.is_async:
                self._cancel_task(call)

    def _handshake(self, req: Request) -> None:
        """A handshake the fast path in plugin.py left to us (or a second one)."""
        plugin = self.plugin
        if plugin.connected:
            self._reply_error(req.id, ErrorObject(ErrorCode.INVALID_REQUEST,
                                                  "the handshake happens once per process"))
            return
        problem = first_error("handshake.params", req.params)  # SPEC 6.5: -32602 [M-6.5a]
        if problem is not None:
            self._reply_error(req.id, standard_error(ErrorCode.INVALID_PARAMS,
                                                     f"handshake params: {problem}"))
            return
        params = req.params if isinstance(req.params, dict) else {}
        try:
            offered = VersionRange.parse(params.get("protocolVersions"))
        except (VersionError, TypeError, KeyError, AttributeError) as exc:
            self._reply_error(req.id, ErrorObject(
                ErrorCode.INVALID_PARAMS, f"handshake: bad protocolVersions: {exc}"))
            return
        ours = plugin.protocol_versions
        try:
            chosen = negotiate(ours, offered)
        except VersionError as exc:
            self._reply_error(req.id, unsupported_version(ours, offered, str(exc)))
            return
        plugin._accept_handshake(params, (chosen.major, chosen.minor))
        self._reply(req.id, plugin._handshake_result((chosen.major, chosen.minor)))
        plugin.connected = True

    # ------------------------------------------------------------------ calls

    def _bind(self, call: _Call) -> tuple[list[Any], dict[str, Any]]:
        entry = call.entry
        if entry.params_check is not None:
            problem = entry.params_check.problem(call.params)
            if problem is not None:
                raise ParamsError(problem)
        args, kwargs = entry.signature.bind(call.params)
        if entry.signature.wants_context:
            kwargs = {**kwargs, entry.signature.wants_context: call.ctx}
        return args, kwargs

    def _check_result(self, call: _Call, result: Any) -> None:
        if call.entry.result_check is not None:
            problem = call.entry.result_check.problem(result)
            if problem is not None:
                raise _BadResult(problem)

    def _run_sync(self, call: _Call) -> None:
        """A sync handler, in a worker thread; it answers its own call."""
        try:
            call.ctx.check_cancelled()  # cancelled while it waited for a worker
            args, kwargs = self._bind(call)
            result = call.entry.fn(*args, **kwargs)
            self._check_result(call, result)
        except Exception as exc:
            self._finish_error(call, self._error_for(call, exc))
        else:
            self._finish(call, result)

    async def _serve_async(self, call: _Call) -> None:
        """An async handler, as a task on the loop; it answers its own call."""
        try:
            call.ctx.check_cancelled()  # cancelled before the loop got to it
            args, kwargs = self._bind(call)
            result = await call.entry.fn(*args, **kwargs)
            self._check_result(call, result)
        except Exception as exc:
            error = self._error_for(call, exc)
        except self._cancelled_error:
            error = self._cancelled(call)
        else:
            self._finish(call, result)
            return
        self._finish_error(call, error)

    def _error_for(self, call: _Call, exc: Exception) -> ErrorObject:
        """The one error answer for an exception that ended a handler."""
        method = call.ctx.method
        if isinstance(exc, ParamsError):
            return ErrorObject(ErrorCode.INVALID_PARAMS, f"Invalid params for {method}: {exc}")
        if isinstance(exc, Cancelled):
            return self._cancelled(call)
        if isinstance(exc, PluginError):
            if exc.code in LOCAL_CODES:
                # SPEC 10: only pipevisor may send -31049..-31000. They reach a handler as a
                # HostCallError (the host's answer, or the kit's own timeout); sent on
                # unchanged they would claim that pipevisor, not this plugin, failed the call.
                host_method = getattr(exc, "method", None)
                return ErrorObject(
                    ErrorCode.INTERNAL_ERROR,
                    f"{method}: host call {host_method or '?'} failed with reserved code "
                    f"{exc.code}: {exc.message}",
                    {"origin": "plugin", "reservedCode": exc.code, "hostMethod": host_method,
                     "data": exc.data})
            return ErrorObject(exc.code, exc.message, exc.data)
        if isinstance(exc, _BadResult):
            return ErrorObject(ErrorCode.INTERNAL_ERROR,
                               f"{method} returned a result that breaks its result_schema: {exc}")
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
        return ErrorObject(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def _cancelled(self, call: _Call) -> ErrorObject:
        return ErrorObject(ErrorCode.REQUEST_CANCELLED, f"{call.ctx.method} was cancelled")

    # ------------------------------------------------------------------ output

    def _write(self, data: bytes) -> None:
        """Write whole lines; the caller holds the lock, so no other line can cut in."""
        if not data or self._gone:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.plugin._out_fd, view):]
        except OSError:  # the host is gone (EPIPE): nobody to answer any more
            self._gone = True
            self.plugin.connected = False
            self._request_stop("gone")

    def _finish(self, call: _Call, result: Any) -> None:
        """Answer ``call`` with its result, unless someone answered it already."""
        ident = call.ctx.id
        with self.lock:
            if self.calls.get(ident) is not call:
                return  # cancelled at the end of a shutdown grace, and answered then
            del self.calls[ident]
            call.ctx.answered = True
            try:
                encoded = encode({"jsonrpc": "2.0", "id": ident, "result": result})
            except EncodeError as exc:
                data = self.peer.send_error(ident, ErrorObject(
                    ErrorCode.INTERNAL_ERROR, f"result is not JSON: {exc}"))
            else:
                if len(encoded) - 1 > self.plugin.max_line_bytes:  # SPEC 3.3 [M-3.3a]
                    data = self.peer.send_error(ident, ErrorObject(
                        ErrorCode.INTERNAL_ERROR,
                        f"{call.ctx.method}: result of {len(encoded) - 1} bytes exceeds the "
                        f"host's limits.maxLineBytes of {self.plugin.max_line_bytes}"))
                else:
                    data = self.peer.send_result(ident, result)
            self._write(data)
            self._changed.notify_all()

    def _finish_error(self, call: _Call, error: ErrorObject) -> None:
        ident = call.ctx.id
        with self.lock:
            if self.calls.get(ident) is not call:
                return
            del self.calls[ident]
            call.ctx.answered = True
            self._write(self.peer.send_error(ident, error))
            self._changed.notify_all()

    def _reply(self, ident: Any, result: Any) -> None:
        with self.lock:
            self._write(self.peer.send_result(ident, result))

    def _reply_error(self, ident: Any, error: ErrorObject) -> None:
        with self.lock:
            self._write(self.peer.send_error(ident, error))

    def notify(self, method: str, params: Any) -> None:
        data = encode(Notification(method, params))
        with self.lock:
            self._write(data)

    def progress(self, ctx: Context, params: dict[str, Any]) -> None:
        data = encode(Notification("pipevisor/progress", params))
        with self.lock:
            if not ctx.answered:  # under the lock the answer is written with
                self._write(data)

    # ----------------------------------------------------------- async handlers

    def _start_loop(self) -> None:
        with self.lock:
            if self._loop_thread is not None:
                return
            self._loop_thread = threading.Thread(target=self._loop_main, name="asyncio",
                                                 daemon=True)
        self._loop_thread.start()

    def _loop_main(self) -> None:
        import asyncio

        self._cancelled_error = asyncio.CancelledError
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop_ident = threading.get_ident()
        with self.lock:
            self.loop = loop
            waiting, self._waiting_for_loop = self._waiting_for_loop, []
        self._start_tasks(waiting)
        self._take_over_stdin(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _take_over_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read fd 0 on the loop from now on, if the loop can watch it.

        Registering first is safe: no callback runs before run_forever. Then
        the stdin thread is woken and waited for; it never reads again once
        woken, so no byte is read twice or lost between the two readers.
        """
        if self._wake_w < 0:
            return
        self._reader_ready.wait()  # never read past bytes the main thread is still feeding
        reader = self._reader
        try:
            loop.add_reader(0, self._on_readable)
        except (OSError, ValueError):  # a regular file or /dev/null: the thread keeps reading
            return
        os.write(self._wake_w, b"!")
        if reader is not None:
            reader.join()
        if self._eof or self._gone:
            loop.remove_reader(0)

    def _on_readable(self) -> None:
        try:
            data = os.read(0, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            assert self.loop is not None
            self.loop.remove_reader(0)
            self.on_eof()
            return
        try:
            self.on_data(data)
        except Exception:  # as in _read: keep serving
            import traceback

            traceback.print_exc(file=sys.stderr)

    def _submit_async(self, calls: list[_Call | _Note]) -> None:
        if threading.get_ident() == self._loop_ident:
            self._start_tasks(calls)  # read on the loop: no hop
            return
        with self.lock:
            loop = self.loop
            if loop is None:  # asyncio is still being imported: the loop starts these
                self._waiting_for_loop.extend(calls)
        if loop is None:
            self._start_loop()
            return
        try:
            loop.call_soon_threadsafe(self._start_tasks, calls)
        except RuntimeError:  # the loop is closed: the plugin is exiting, as are these calls
            pass

    def _start_tasks(self, jobs: list[_Call | _Note]) -> None:
        assert self.loop is not None
        for job in jobs:
            if isinstance(job, _Note):
                self.loop.create_task(self._serve_note(job))
                continue
            task = job.task = self.loop.create_task(self._serve_async(job))
            task.add_done_callback(self._task_done_for(job))

    def _task_done_for(self, call: _Call) -> Callable[[asyncio.Task[None]], None]:
        return lambda task: self._task_done(call, task)

    def _task_done(self, call: _Call, task: asyncio.Task[None]) -> None:
        """A task cancelled before it first ran never enters _serve_async's ``try`` (a
        request and its cancel in one read do that): answer its call here. A no-op
        when the task answered, as _finish_error answers a call once."""
        if task.cancelled():
            self._finish_error(call, self._cancelled(call))

    def _cancel_task(self, call: _Call) -> None:
        loop = self.loop
        if loop is None:
            return  # not started: _serve_async sees ctx.cancelled first thing
        try:
            loop.call_soon_threadsafe(self._cancel_on_loop, call)
        except RuntimeError:  # the loop is closed
            pass

    @staticmethod
    def _cancel_on_loop(call: _Call) -> None:
        if call.task is not None:
            call.task.cancel()

    def _stop_loop(self) -> None:
        loop, thread = self.loop, self._loop_thread
        if loop is None or thread is None:
            return
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            return
        thread.join(1.0)  # a handler blocking the loop does not hold up the exit

    # -------------------------------------------------------------- host calls

    def _send_host_call(self, method: str, params: Any, deliver: Deliver) -> Any:
        with self.lock:
            if not self.plugin.connected or self._eof:
                raise HostCallError(ErrorCode.CONNECTION_CLOSED,
                                    f"cannot call {method}: not connected to the host",
                                    method=method)
            ident, data = self.peer.send_request(method, params)
            self._host_calls[ident] = deliver
            self._write(data)
        return ident

    def _abandon(self, ident: Any) -> None:
        """Stop waiting for a host call and tell the host (SPEC 7.2)."""
        with self.lock:
            if self._host_calls.pop(ident, None) is not None:
                self._write(self.peer.cancel(ident))

    def _fail_host_calls(self, why: str) -> None:
        with self.lock:
            waiting = list(self._host_calls.values())
            self._host_calls.clear()
        error = ErrorObject(ErrorCode.CONNECTION_CLOSED, why)
        for deliver in waiting:
            deliver(None, error)

    async def call_host(self, method: str, params: Any, timeout: float | None) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: ErrorObject | None) -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(result)
            else:
                fut.set_exception(HostCallError(error.code, error.message, error.data,
                                                method=method))

        def deliver(result: Any, error: ErrorObject | None) -> None:
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        ident = self._send_host_call(method, params, deliver)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._abandon(ident)
            raise HostCallError(ErrorCode.TIMEOUT,
                                f"host method {method} did not answer within {timeout} s",
                                method=method) from None
        except asyncio.CancelledError:
            self._abandon(ident)
            raise

    def call_host_blocking(self, method: str, params: Any, timeout: float | None) -> Any:
        done = threading.Event()
        box: list[tuple[Any, ErrorObject | None]] = []

        def deliver(result: Any, error: ErrorObject | None) -> None:
            box.append((result, error))
            done.set()

        ident = self._send_host_call(method, params, deliver)
        if not done.wait(timeout):
            self._abandon(ident)
            if not box:
                raise HostCallError(ErrorCode.TIMEOUT,
                                    f"host method {method} did not answer within {timeout} s",
                                    method=method)
        result, error = box[0]
        if error is not None:
            raise HostCallError(error.code, error.message, error.data, method=method)
        return result
