"""The run loop: handshake, dispatch, cancellation, host calls and shutdown.

One asyncio event loop reads stdin and answers; async handlers run as tasks
on that loop (no thread hop per call), sync handlers in a bounded thread pool
so a blocking handler never stops pings from being answered. All bytes go
through :class:`protocol.Peer`, the reference implementation of the wire
format; this module only moves them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from plugin_kit.binding import ParamsError, Signature
from plugin_kit.context import Context
from plugin_kit.errors import Cancelled, HostCallError, PluginError
from plugin_kit.log_handler import LEVELS, HostLogHandler
from plugin_kit.schema import SchemaCheck
from protocol import (
    CANCEL,
    HANDSHAKE,
    PING,
    PROTOCOL_VERSIONS,
    SHUTDOWN,
    EncodeError,
    ErrorCode,
    ErrorObject,
    ErrorResponse,
    HandshakeResult,
    MethodInfo,
    NotificationReceived,
    Peer,
    Request,
    RequestReceived,
    ResponseReceived,
    Version,
    VersionError,
    VersionRange,
    encode,
    is_reserved,
    negotiate,
    unsupported_version,
)
from protocol.messages import Notification

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("plugin_kit")

DEFAULT_GRACE = 2.0  # SPEC 9.1: exit within the grace after EOF; also the shutdown default


@dataclass(frozen=True, slots=True)
class _Method:
    fn: Callable[..., Any]
    is_async: bool
    signature: Signature
    info: MethodInfo
    params_check: SchemaCheck | None
    result_check: SchemaCheck | None


class Plugin:
    """A plugin: register handlers with :meth:`method`, then call :meth:`run`.

    ``threads`` bounds the pool sync handlers run in; ``max_concurrency`` is
    declared to the host (which then never sends more calls at once) and is
    left undeclared by default.
    """

    def __init__(self, name: str, version: str = "0.0.0", *, threads: int = 4,
                 max_concurrency: int | None = None,
                 protocol_versions: VersionRange = PROTOCOL_VERSIONS) -> None:
        self.name = name
        self.version = version
        self.threads = threads
        self.max_concurrency = max_concurrency
        self.protocol_versions = protocol_versions
        self.methods: dict[str, _Method] = {}
        self.host_methods: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({})
        """What the host serves to us, from the handshake (empty before it)."""
        self.protocol_version: Version | None = None
        self.connected = False  # handshake answered and the host still reading
        self._peer = Peer(answer_garbage=True)
        self._write_lock = threading.Lock()
        self._out_fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._calls: dict[Any, tuple[Context, asyncio.Task[None]]] = {}
        self._host_calls: dict[Any, asyncio.Future[Any]] = {}
        self._done: asyncio.Event | None = None
        self._shutting_down = False
        self._eof = False
        self._log_handler: HostLogHandler | None = None
        self._threads_busy = 0  # sync handlers running now, in worker threads
        self._busy_lock = threading.Lock()

    # ----------------------------------------------------------- registration

    def method(self, name: str, version: str | None = "1.0", *,
               description: str | None = None,
               params_schema: dict[str, Any] | None = None,
               result_schema: dict[str, Any] | None = None) -> Callable[[F], F]:
        """Decorator: serve ``name`` with the decorated function.

        ``version`` is the interface version declared in the handshake. A
        ``params_schema`` is checked before the handler runs (-32602 on a
        mismatch); a ``result_schema`` after it (-32603: the plugin broke its
        own contract). Bad registrations fail here, at import, not on a call.
        """
        if is_reserved(name):
            raise ValueError(f"method name {name!r} is reserved (pipevisor/, rpc., $/)")
        if not 1 <= len(name) <= 256:
            raise ValueError(f"method name must be 1..256 characters, got {len(name)}")
        parsed = Version.parse(version) if version is not None else None

        def register(fn: F) -> F:
            if name in self.methods:
                raise ValueError(f"method {name!r} is registered twice")
            self.methods[name] = _Method(
                fn=fn,
                is_async=asyncio.iscoroutinefunction(fn),
                signature=Signature.of(fn),
                info=MethodInfo(parsed, description),
                params_check=SchemaCheck(params_schema, f"{name} params_schema")
                if params_schema is not None else None,
                result_check=SchemaCheck(result_schema, f"{name} result_schema")
                if result_schema is not None else None,
            )
            return fn

        return register

    # -------------------------------------------------------------------- run

    def run(self) -> None:
        """Serve on stdin/stdout until shutdown or EOF, then exit with status 0.

        Stdout is taken for the protocol first: file descriptor 1 is pointed
        at stderr, so a ``print()`` in a handler (or a library writing to fd 1)
        ends up in the log instead of corrupting the protocol.
        """
        self._out_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        status = asyncio.run(self.serve())
        sys.stderr.flush()
        if status:
            os._exit(0)  # a sync handler is still running: its thread cannot be stopped
        sys.exit(0)

    async def serve(self) -> bool:
        """The loop behind :meth:`run`; returns True if worker threads were left running."""
        loop = self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self.name)
        self._install_logging()
        reader = await self._open_stdin(loop)
        try:
            await self._done.wait()
        finally:
            self.connected = False
            reader()
            for fut in self._host_calls.values():
                fut.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)
        return self._threads_busy > 0

    def _install_logging(self) -> None:
        self._log_handler = HostLogHandler(self)
        root = logging.getLogger()
        root.addHandler(self._log_handler)
        if root.level == logging.WARNING and len(root.handlers) == 1:
            root.setLevel(logging.INFO)  # unconfigured: logging.info() should reach the host

    async def _open_stdin(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Read fd 0 with the loop's pipe transport; a regular file gets a reader thread."""
        plugin = self

        class StdinProtocol(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                plugin._on_data(data)

            def eof_received(self) -> bool | None:
                plugin._on_eof()
                return None

            def connection_lost(self, exc: Exception | None) -> None:
                plugin._on_eof()

        stdin = os.fdopen(0, "rb", buffering=0, closefd=False)
        try:
            transport, _ = await loop.connect_read_pipe(StdinProtocol, stdin)
            return transport.close
        except ValueError:  # not a pipe, socket or character device
            def pump() -> None:
                while data := os.read(0, 1 << 16):
                    loop.call_soon_threadsafe(self._on_data, data)
                loop.call_soon_threadsafe(self._on_eof)
            threading.Thread(target=pump, daemon=True, name="stdin").start()
            return lambda: None

    # ----------------------------------------------------------------- output

    def _write(self, data: bytes) -> None:
        """Write whole lines under a lock: handlers' threads also send (progress, logs)."""
        if not data or self._out_fd < 0:
            return
        with self._write_lock:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._out_fd, view):]
            except OSError:  # the host is gone (EPIPE): nobody to answer any more
                self._out_fd = -1
                self.connected = False
                if self._loop is not None and self._done is not None:
                    self._loop.call_soon_threadsafe(self._done.set)

    def _notify(self, method: str, params: Any) -> None:
        self._write(encode(Notification(method, params)))

    def _answer(self, ident: Any, result: Any) -> None:
        try:
            self._write(self._peer.send_result(ident, result))
        except EncodeError as exc:
            self._error(ident, ErrorObject(ErrorCode.INTERNAL_ERROR,
                                              f"result is not JSON: {exc}"))

    def _error(self, ident: Any, error: ErrorObject) -> None:
        self._write(self._peer.send_error(ident, error))

    # ------------------------------------------------------------------ input

    def _on_eof(self) -> None:
        """End of input: the host is finished with us or gone (SPEC 9.1). A shutdown
        already under way keeps its own grace; otherwise wind down with the default."""
        if self._done is None or self._eof:
            return
        self._eof = True
        if not self._shutting_down:
            assert self._loop is not None
            self._shutting_down = True
            self._loop.create_task(self._stop_after_eof())

    async def _stop_after_eof(self) -> None:
        await self._wind_down(DEFAULT_GRACE)
        assert self._done is not None
        self._done.set()

    def _on_data(self, data: bytes) -> None:
        for event in self._peer.receive_data(data):
            if isinstance(event, RequestReceived):
                self._on_request(event.request)
            elif isinstance(event, ResponseReceived):
                msg = event.response
                fut = self._host_calls.pop(msg.id, None)
                if fut is not None and not fut.done():
                    if isinstance(msg, ErrorResponse):
                        err = msg.error
                        fut.set_exception(HostCallError(err.code, err.message, err.data))
                    else:
                        fut.set_result(msg.result)
            elif isinstance(event, NotificationReceived):
                self._on_notification(event.notification)
            else:
                sys.stderr.write(f"{self.name}: bad input: {event.fault.detail}\n")
        self._write(self._peer.take_output())

    def _on_request(self, req: Request) -> None:
        name = req.method
        entry = self.methods.get(name)
        if entry is not None and self.connected:
            if self._shutting_down:
                self._error(req.id, ErrorObject(ErrorCode.SHUTTING_DOWN,
                                                "plugin is shutting down"))
                return
            ctx = Context(self, req.id, name)
            assert self._loop is not None
            task = self._loop.create_task(self._serve_call(entry, ctx, req.params))
            self._calls[req.id] = (ctx, task)
            return
        if name == HANDSHAKE:
            self._handshake(req)
        elif not self.connected:
            self._error(req.id, ErrorObject(ErrorCode.NOT_INITIALIZED,
                                            f"{name} before the handshake"))
        elif name == PING:
            self._answer(req.id, {})
        elif name == SHUTDOWN:
            grace = DEFAULT_GRACE
            if isinstance(req.params, dict):
                value = req.params.get("graceSeconds")
                if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                    grace = float(value)
            if self._shutting_down:  # a second shutdown, or one after EOF: nothing more to do
                self._answer(req.id, None)
                return
            self._shutting_down = True  # now, not in the task: the next line may be a call
            assert self._loop is not None
            self._loop.create_task(self._shutdown(req.id, grace))
        else:
            self._error(req.id, ErrorObject(ErrorCode.METHOD_NOT_FOUND,
                                               f"Method not found: {name}"))

    def _on_notification(self, note: Notification) -> None:
        if note.method == CANCEL and isinstance(note.params, dict):
            call = self._calls.get(note.params.get("id"))
            if call is not None:
                ctx, task = call
                ctx._cancel()
                if self.methods[ctx.method].is_async:
                    task.cancel()

    # -------------------------------------------------------------- handshake

    def _handshake(self, req: Request) -> None:
        if self.connected:
            self._error(req.id, ErrorObject(ErrorCode.INVALID_REQUEST,
                                               "the handshake happens once per process"))
            return
        params = req.params if isinstance(req.params, dict) else {}
        try:
            offered = VersionRange.parse(params.get("protocolVersions"))
        except (VersionError, TypeError, KeyError, AttributeError) as exc:
            self._error(req.id, ErrorObject(
                ErrorCode.INVALID_PARAMS, f"handshake: bad protocolVersions: {exc}"))
            return
        try:
            chosen = negotiate(self.protocol_versions, offered)
        except VersionError as exc:
            self._error(req.id, unsupported_version(self.protocol_versions, offered, str(exc)))
            return
        self.protocol_version = chosen
        hosted = params.get("hostMethods")
        if isinstance(hosted, dict):
            self.host_methods = MappingProxyType({k: tuple(v) for k, v in hosted.items()
                                                  if isinstance(v, list)})
        caps = params.get("capabilities")
        level = caps.get("log", {}).get("minLevel") if isinstance(caps, dict) else None
        if self._log_handler is not None and level in LEVELS:
            self._log_handler.min_rank = LEVELS.index(level)
        result = HandshakeResult(
            protocol_version=chosen, plugin_name=self.name, plugin_version=self.version,
            methods=MappingProxyType({n: m.info for n, m in self.methods.items()}),
            cancel=True, progress=True, shutdown=True, max_concurrency=self.max_concurrency,
        )
        self._answer(req.id, result.to_json())
        self.connected = True

    # ------------------------------------------------------------------ calls

    async def _serve_call(self, entry: _Method, ctx: Context, params: Any) -> None:
        """Run one handler and send its one answer, whatever happens."""
        ident = ctx.id
        try:
            try:
                if entry.params_check is not None:
                    problem = entry.params_check.problem(params)
                    if problem is not None:
                        raise ParamsError(problem)
                args, kwargs = entry.signature.bind(params)
                if entry.signature.wants_context:
                    kwargs = {**kwargs, entry.signature.wants_context: ctx}
                if entry.is_async:
                    result = await entry.fn(*args, **kwargs)
                else:
                    assert self._loop is not None and self._pool is not None
                    result = await self._loop.run_in_executor(
                        self._pool, self._in_thread, entry.fn, args, kwargs)
                if entry.result_check is not None:
                    problem = entry.result_check.problem(result)
                    if problem is not None:
                        raise _BadResult(problem)
            except ParamsError as exc:
                error = ErrorObject(ErrorCode.INVALID_PARAMS,
                                       f"Invalid params for {ctx.method}: {exc}")
            except PluginError as exc:
                error = ErrorObject(exc.code, exc.message, exc.data)
            except (asyncio.CancelledError, Cancelled):
                error = ErrorObject(ErrorCode.REQUEST_CANCELLED,
                                    f"{ctx.method} was cancelled")
            except _BadResult as exc:
                error = ErrorObject(ErrorCode.INTERNAL_ERROR,
                                       f"{ctx.method} returned a result that breaks its "
                                       f"result_schema: {exc}")
            except Exception as exc:
                import traceback

                traceback.print_exc(file=sys.stderr)
                error = ErrorObject(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            else:
                ctx.answered = True
                self._answer(ident, result)
                return
            ctx.answered = True
            self._error(ident, error)
        finally:
            self._calls.pop(ident, None)

    def _in_thread(self, fn: Callable[..., Any], args: list[Any],
                   kwargs: dict[str, Any]) -> Any:
        """Run a sync handler in a worker thread, counting it so that exit knows whether
        a thread is still busy (a cancelled call's thread runs on)."""
        with self._busy_lock:
            self._threads_busy += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self._busy_lock:
                self._threads_busy -= 1

    async def _wind_down(self, grace: float) -> None:
        """Let calls in flight finish within ``grace``; cancel and answer the rest."""
        tasks = [task for _, task in self._calls.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for ctx, task in list(self._calls.values()):
            ctx._cancel()
            task.cancel()  # a sync call's thread runs on, but its answer is sent now
        pending = [task for _, task in self._calls.values()]
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    async def _shutdown(self, ident: Any, grace: float) -> None:
        await self._wind_down(grace)
        self._answer(ident, None)
        assert self._done is not None
        self._done.set()

    # -------------------------------------------------------------- host calls

    async def call_host(self, method: str, params: Any = None, *,
                        timeout: float | None = 30.0) -> Any:
        """Call a host method from the event loop; see :meth:`Context.call_host`."""
        if not self.connected:
            raise HostCallError(ErrorCode.CONNECTION_CLOSED,
                                f"cannot call {method}: not connected to the host")
        assert self._loop is not None
        ident, data = self._peer.send_request(method, params)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._host_calls[ident] = fut
        self._write(data)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._host_calls.pop(ident, None)
            self._write(self._peer.cancel(ident))
            raise HostCallError(ErrorCode.TIMEOUT,
                                f"host method {method} did not answer within {timeout} s"
                                ) from None
        except asyncio.CancelledError:
            self._host_calls.pop(ident, None)
            self._write(self._peer.cancel(ident))
            raise


class _BadResult(Exception):
    """A handler's result failed its declared result_schema."""

