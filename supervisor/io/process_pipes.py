"""A plugin process on asyncio's public subprocess API: ``loop.subprocess_exec`` with our
own :class:`asyncio.SubprocessProtocol`, behind anyio's ``Process`` and byte-stream
interfaces.

Why not ``anyio.open_process``: its streams are asyncio's ``StreamReader``/``StreamWriter``,
which buffer every chunk for a task to read and hide the transports; going faster
meant reaching into their private attributes, which an upgrade can rename. With a
protocol of our own, every hook is public API: stdout bytes arrive in
``pipe_data_received`` and go straight to the connection's callback when it has one
(:meth:`PipesProtocol.set_consumer`), writes go to the pipe transport with its own flow
control (``pause_writing``/``resume_writing``), back-pressure is
``ReadTransport.pause_reading``, and a plugin closing its stdin shows up as
``pipe_connection_lost(0)`` without any write.

The rest of the engine sees an ``anyio.abc.Process``: code written against it (the
checker, the stderr pump, a test) works unchanged, and on another anyio backend
:func:`pipevisor.supervisor.proc.spawn.spawn` falls back to ``anyio.open_process``.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

__all__ = ["PipeProcess", "PipeReceiveStream", "PipeSendStream", "PipesProtocol",
           "open_pipe_process", "open_process"]

STREAM_LIMIT = 256 * 1024
"""Bytes buffered per output pipe before reading pauses (when nobody consumes them)."""


class PipesProtocol(asyncio.SubprocessProtocol):
    """Buffers and signals for a child's three pipes; see the module docstring."""

    def __init__(self, limit: int = STREAM_LIMIT) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.SubprocessTransport | None = None
        self._limit = limit
        self._buffers: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._eof: dict[int, bool] = {1: False, 2: False}
        self._waiters: dict[int, asyncio.Future[None] | None] = {1: None, 2: None}
        self._paused: set[int] = set()
        self._consumer: Callable[[bytes], None] | None = None
        self.stdin_lost: asyncio.Future[None] = self._loop.create_future()
        """Done once the stdin pipe is closed: by the plugin (its end), by us, or broken."""
        self.exited: asyncio.Future[None] = self._loop.create_future()
        self._write_paused = False
        self._drainers: list[asyncio.Future[None]] = []

    # ---------------------------------------------------------- asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not derive from asyncio's ABCs
        self.transport = cast(asyncio.SubprocessTransport, transport)

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        consumer = self._consumer
        if fd == 1 and consumer is not None:
            consumer(bytes(data))
            return
        buf = self._buffers.get(fd)
        if buf is None:
            return
        buf += data
        self._wake(fd)
        if len(buf) > 2 * self._limit and fd not in self._paused:
            pipe = self._pipe(fd)
            if pipe is not None and not pipe.is_closing():
                cast(asyncio.ReadTransport, pipe).pause_reading()
                self._paused.add(fd)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 0:
            if not self.stdin_lost.done():
                self.stdin_lost.set_result(None)
            self._wake_drainers()
            return
        if fd in self._eof:
            self._eof[fd] = True
            self._wake(fd)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drainers()

    # -------------------------------------------------------------- our side

    def _pipe(self, fd: int) -> asyncio.BaseTransport | None:
        return self.transport.get_pipe_transport(fd) if self.transport is not None else None

    def _wake(self, fd: int) -> None:
        waiter = self._waiters[fd]
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drainers(self) -> None:
        drainers, self._drainers = self._drainers, []
        for waiter in drainers:
            if not waiter.done():
                waiter.set_result(None)

    # The pipes' kinds are known by their fd (0 is written, 1 and 2 are read); cast, not
    # isinstance, since uvloop's pipe transports do not derive from asyncio's ABCs.

    def stdin(self) -> asyncio.WriteTransport | None:
        return cast("asyncio.WriteTransport | None", self._pipe(0))

    def stdout(self) -> asyncio.ReadTransport | None:
        return cast("asyncio.ReadTransport | None", self._pipe(1))

    async def drain(self) -> None:
        """Wait until the stdin pipe takes more; a closed pipe raises BrokenPipeError."""
        while True:
            if self.stdin_lost.done():
                raise BrokenPipeError("the plugin's stdin is closed")
            if not self._write_paused:
                return
            waiter = self._loop.create_future()
            self._drainers.append(waiter)
            await waiter

    async def read(self, fd: int, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of what ``fd`` sent; ``anyio.EndOfStream`` at its end."""
        buf = self._buffers[fd]
        while not buf:
            if self._eof[fd]:
                raise anyio.EndOfStream
            waiter = self._waiters[fd] = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiters[fd] = None
        data = bytes(buf[:max_bytes])
        del buf[:max_bytes]
        if fd in self._paused and len(buf) <= self._limit:
            self._paused.discard(fd)
            pipe = self._pipe(fd)
            if pipe is not None and not pipe.is_closing():
                cast(asyncio.ReadTransport, pipe).resume_reading()
        return data

    def set_consumer(self, consumer: Callable[[bytes], None] | None) -> None:
        """Hand stdout bytes to ``consumer`` as they arrive (what is buffered first);
        None goes back to buffering. The consumer must not raise."""
        self._consumer = consumer
        if consumer is None:
            return
        buf = self._buffers[1]
        if buf:
            data = bytes(buf)
            buf.clear()
            consumer(data)
        if 1 in self._paused:
            self._paused.discard(1)
            pipe = self.stdout()
            if pipe is not None and not pipe.is_closing():
                pipe.resume_reading()

    async def wait_eof(self, fd: int) -> None:
        while not self._eof[fd]:
            waiter = self._waiters[fd] = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiters[fd] = None

    def end_stdout(self) -> None:
        """Treat stdout as ended now (its consumer failed); later bytes are dropped."""
        self._consumer = _drop
        self._eof[1] = True
        self._wake(1)


def _drop(data: bytes) -> None:
    """Swallows stdout data that arrives after the reader failed and was ended."""


class PipeSendStream(ByteSendStream):
    """The plugin's stdin."""

    def __init__(self, protocol: PipesProtocol) -> None:
        self.protocol = protocol

    async def send(self, item: bytes) -> None:
        pipe = self.protocol.stdin()
        if pipe is None or pipe.is_closing():
            raise anyio.BrokenResourceError("the plugin's stdin is closed")
        pipe.write(item)
        try:
            await self.protocol.drain()
        except BrokenPipeError as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        pipe = self.protocol.stdin()
        if pipe is not None and not pipe.is_closing():
            pipe.close()  # what is still buffered is written first
        await anyio.lowlevel.checkpoint()


class PipeReceiveStream(ByteReceiveStream):
    """The plugin's stdout or stderr."""

    def __init__(self, protocol: PipesProtocol, fd: int) -> None:
        self.protocol = protocol
        self.fd = fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.protocol.read(self.fd, max_bytes)

    async def aclose(self) -> None:
        transport = self.protocol.transport
        pipe = transport.get_pipe_transport(self.fd) if transport is not None else None
        if pipe is not None and not pipe.is_closing():
            pipe.close()
        await anyio.lowlevel.checkpoint()


class PipeProcess(Process):
    """A child started by :func:`open_pipe_process`, as an ``anyio.abc.Process``."""

    def __init__(self, transport: asyncio.SubprocessTransport,
                 protocol: PipesProtocol) -> None:
        self._transport = transport
        self.protocol = protocol
        self._stdin = PipeSendStream(protocol)
        self._stdout = PipeReceiveStream(protocol, 1)
        self._stderr = PipeReceiveStream(protocol, 2)

    async def aclose(self) -> None:
        await self._stdin.aclose()
        await self._stdout.aclose()
        await self._stderr.aclose()
        try:
            await self.wait()
        finally:
            self._transport.close()

    async def wait(self) -> int:
        await asyncio.shield(self.protocol.exited)
        code = self._transport.get_returncode()
        assert code is not None
        return code

    def terminate(self) -> None:
        self._transport.terminate()

    def kill(self) -> None:
        self._transport.kill()

    def send_signal(self, sig: signal.Signals) -> None:
        self._transport.send_signal(sig)

    @property
    def pid(self) -> int:
        return self._transport.get_pid()

    @property
    def returncode(self) -> int | None:
        return self._transport.get_returncode()

    @property
    def stdin(self) -> PipeSendStream:
        return self._stdin

    @property
    def stdout(self) -> PipeReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> PipeReceiveStream:
        return self._stderr


async def open_process(argv: Sequence[str], *, cwd: str | None, env: Mapping[str, str],
                       **kwargs: Any) -> Process:
    """Start ``argv`` with three pipes: on asyncio (uvloop included) through
    :func:`open_pipe_process`, on any other anyio backend with ``anyio.open_process``
    (the portable path). ``kwargs``: the ``subprocess.Popen`` options containment adds."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return await anyio.open_process(list(argv), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        cwd=cwd, env=dict(env), **kwargs)
    return await open_pipe_process(argv, cwd=cwd, env=env, **kwargs)


async def open_pipe_process(argv: Sequence[str], *, cwd: str | None,
                            env: Mapping[str, str], **kwargs: Any) -> PipeProcess:
    """Start ``argv`` with three pipes on the running asyncio loop."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        PipesProtocol, *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=cwd, env=dict(env), **kwargs)
    assert isinstance(protocol, PipesProtocol)
    _read_stdout_directly(transport, protocol)
    return PipeProcess(transport, protocol)


class _DirectStdout(asyncio.Protocol):
    """The stdout pipe's protocol: data goes straight to :class:`PipesProtocol`, the rest
    (end of file, connection lost) to asyncio's own pipe protocol, which it wraps.

    asyncio's subprocess transport hands each chunk to ``pipe_data_received`` through
    ``call_soon``: one more loop iteration between the bytes arriving and the caller
    being settled, on every answer (a third of the iterations of a sequential call).
    Data still comes before the end: the end goes through asyncio's protocol, which
    queues it behind what was delivered here."""

    def __init__(self, inner: asyncio.BaseProtocol, target: PipesProtocol) -> None:
        self._inner = inner
        self._target = target

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._target.pipe_data_received(1, data)

    def eof_received(self) -> bool | None:
        # duck-typed: uvloop's pipe protocols have the method but not asyncio's base
        eof_received = getattr(self._inner, "eof_received", None)
        return eof_received() if eof_received is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _read_stdout_directly(transport: asyncio.SubprocessTransport,
                          protocol: PipesProtocol) -> None:
    """Put :class:`_DirectStdout` in front of the stdout pipe's protocol (public
    ``get_protocol``/``set_protocol``); a loop whose pipes cannot change protocol keeps
    the hop."""
    pipe = transport.get_pipe_transport(1)
    if pipe is None:
        return
    try:
        pipe.set_protocol(_DirectStdout(pipe.get_protocol(), protocol))
    except (NotImplementedError, AttributeError):
        pass
