"""Host-bound call cost: every client talks to the same C echo plugin.

With a Python echo child, 64 calls in flight measure the child as much as the host:
the stdlib plugin costs about 10 us of CPU a call, so no host can pass 100k calls/s
through it, and the asyncio baseline's orjson child is cheaper than the plugin the
supervisor cases use, which tilts the ratio. ``perf/plugins/c_echo_plugin.c`` answers
in about a microsecond, so what is left is the host's own work per call, and the
ratios below compare hosts on equal terms (issue #20's "64 in flight >= 1.5x plain
asyncio streams"):

- ``blocking-pipe-c-plugin``: a blocking Python parent (write, flush, readline),
  sequential: the floor for one call at a time;
- ``asyncio-pipe-c-plugin`` / ``asyncio-pipe-pipelined-64-c-plugin``: plain asyncio
  streams with an id -> future dict (the client of ``asyncio_baseline.py``);
- ``asyncio-floor-c-plugin`` / ``asyncio-floor-pipelined-64-c-plugin``: the least an
  asyncio client with one task per call can do: a ``SubprocessProtocol`` that splits
  lines and settles futures in ``pipe_data_received``, writes joined per loop
  iteration, no streams, no deadline, no check of what comes back. Nothing that awaits
  a future per call on this loop goes faster, so its ratio to plain asyncio streams is
  the ceiling for ``Supervisor.call``'s (issue #20 asks for 1.5x);
- ``embedded-seq-c-plugin`` / ``embedded-pipelined-64-c-plugin``: ``Supervisor.call``
  with the plugin's handshake, deadline, gate and checks; its ratios are against plain
  asyncio streams;
- ``embedded-call-many-64-c-plugin``: the same calls through ``Supervisor.call_many``
  from one task with a window of 64 (no task per call), against the same baseline.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from perf.cases.asyncio_baseline import AsyncioClient, _read, _teardown
from perf.cases.baselines import PIPELINE_DEPTH, PipePeer, _close_peer, sequential_roundtrips
from perf.cases.supervisor_calls import PARAMS, Embedded, _start, _stop
from perf.harness import Context, build_c, case
from pipevisor.supervisor import PluginSpec

C_PLUGIN = Path(__file__).resolve().parent.parent / "plugins" / "c_echo_plugin.c"


def _binary(ctx: Context) -> str:
    return str(build_c(ctx, C_PLUGIN))


def _setup_blocking(ctx: Context) -> PipePeer:
    return PipePeer(ctx.popen([_binary(ctx)], stdin=subprocess.PIPE, stdout=subprocess.PIPE))


@case("blocking-pipe-c-plugin", group="host-bound", unit="us/call",
      baseline="blocking-pipe-c-plugin", setup=_setup_blocking, teardown=_close_peer)
def blocking_pipe_c_plugin(ctx: Context) -> float:
    """Blocking Python parent to the C echo plugin, sequential: the one-call floor."""
    return sequential_roundtrips(ctx, ctx.state, ctx.pick(full=5000, quick=50))


async def _setup_asyncio(ctx: Context) -> AsyncioClient:
    proc = await asyncio.create_subprocess_exec(
        _binary(ctx), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    loop = asyncio.get_running_loop()
    client = AsyncioClient(proc, loop.create_task(asyncio.sleep(0)))
    client.reader = loop.create_task(_read(client))
    return client


@case("asyncio-pipe-c-plugin", group="host-bound", unit="us/call",
      baseline="blocking-pipe-c-plugin", setup=_setup_asyncio, teardown=_teardown)
async def asyncio_pipe_c_plugin(ctx: Context) -> float:
    """Plain asyncio streams + id->future dict to the C echo plugin, sequential."""
    client: AsyncioClient = ctx.state

    def one() -> Awaitable[object]:
        client.next_id += 1
        return client.call(client.next_id)

    return await _one_at_a_time(one, ctx.pick(full=5000, quick=50))


async def _one_at_a_time(call: Callable[[], Awaitable[object]], n: int) -> float:
    """``n`` calls in turn: us per call."""
    start = time.perf_counter_ns()
    for _ in range(n):
        await call()
    return (time.perf_counter_ns() - start) / n / 1000


@case("asyncio-pipe-pipelined-64-c-plugin", group="host-bound", unit="calls/s",
      baseline="asyncio-pipe-pipelined-64-c-plugin", setup=_setup_asyncio,
      teardown=_teardown, repeat=10)
async def asyncio_pipe_pipelined_64_c_plugin(ctx: Context) -> float:
    """Plain asyncio client, 64 tasks in flight to the C echo plugin: host-bound throughput."""
    client: AsyncioClient = ctx.state

    def one() -> Awaitable[object]:
        client.next_id += 1
        return client.call(client.next_id)

    return await _in_flight(one, ctx.pick(full=20000, quick=256))


async def _in_flight(call: Callable[[], Awaitable[object]], total: int) -> float:
    """``total`` calls from PIPELINE_DEPTH tasks, each starting its next as the last
    returns: calls/s."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    start = time.perf_counter_ns()
    await asyncio.gather(*(worker() for _ in range(PIPELINE_DEPTH)))
    return total / ((time.perf_counter_ns() - start) / 1e9)


class _FloorProtocol(asyncio.SubprocessProtocol):
    """Answers settle their futures right where the bytes arrive."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.tail = b""
        self.exited = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        lines = (self.tail + data if self.tail else data).split(b"\n")
        self.tail = lines.pop()
        pending, loads = self.pending, orjson.loads
        for line in lines:
            msg = loads(line)
            pending.pop(msg["id"]).set_result(msg["result"])

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class _StdoutNow(asyncio.Protocol):
    """The stdout pipe's data without asyncio's ``call_soon`` hop, as pipevisor reads it
    (``supervisor/io/process_pipes.py``), so the floor is not handicapped."""

    def __init__(self, inner: Any, target: _FloorProtocol) -> None:
        self.inner, self.target = inner, target

    def data_received(self, data: bytes) -> None:
        self.target.pipe_data_received(1, data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)


@dataclass
class FloorClient:
    """One task per call, and nothing else."""

    transport: asyncio.SubprocessTransport
    protocol: _FloorProtocol
    stdin: asyncio.WriteTransport
    queued: list[bytes] = field(default_factory=list)
    next_id: int = 0

    def _flush(self) -> None:
        self.stdin.write(b"".join(self.queued))
        self.queued.clear()

    async def call(self, method: str, params: Any) -> Any:
        self.next_id = ident = self.next_id + 1
        fut = asyncio.get_running_loop().create_future()
        self.protocol.pending[ident] = fut
        if not self.queued:
            asyncio.get_running_loop().call_soon(self._flush)
        self.queued.append(orjson.dumps(
            {"jsonrpc": "2.0", "id": ident, "method": method, "params": params},
            option=orjson.OPT_APPEND_NEWLINE))
        return await fut


async def _setup_floor(ctx: Context) -> FloorClient:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        _FloorProtocol, _binary(ctx), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=None)
    stdout = transport.get_pipe_transport(1)
    assert stdout is not None
    stdout.set_protocol(_StdoutNow(stdout.get_protocol(), protocol))
    stdin = transport.get_pipe_transport(0)
    assert isinstance(stdin, asyncio.WriteTransport)
    return FloorClient(transport, protocol, stdin)


async def _teardown_floor(ctx: Context) -> None:
    client: FloorClient | None = ctx.state
    if client is None:
        return
    client.stdin.close()  # the plugin ends at EOF
    try:
        await asyncio.wait_for(asyncio.shield(client.protocol.exited), 5)
    except TimeoutError:
        client.transport.kill()
        await client.protocol.exited
    client.transport.close()


@case("asyncio-floor-c-plugin", group="host-bound", unit="us/call",
      baseline="asyncio-pipe-c-plugin", setup=_setup_floor, teardown=_teardown_floor)
async def asyncio_floor_c_plugin(ctx: Context) -> float:
    """The least an asyncio client can do per call (protocol, no streams), sequential."""
    client: FloorClient = ctx.state
    return await _one_at_a_time(lambda: client.call("echo", PARAMS),
                                ctx.pick(full=5000, quick=50))


@case("asyncio-floor-pipelined-64-c-plugin", group="host-bound", unit="calls/s",
      baseline="asyncio-pipe-pipelined-64-c-plugin", setup=_setup_floor,
      teardown=_teardown_floor, repeat=10)
async def asyncio_floor_pipelined_64_c_plugin(ctx: Context) -> float:
    """64 tasks on the least asyncio client: the ceiling for one task per call."""
    client: FloorClient = ctx.state
    return await _in_flight(lambda: client.call("echo", PARAMS),
                            ctx.pick(full=20000, quick=256))


async def _setup_embedded(ctx: Context) -> Embedded:
    return await _start([PluginSpec("echo", (_binary(ctx),))])


@case("embedded-seq-c-plugin", group="host-bound", unit="us/call",
      baseline="asyncio-pipe-c-plugin", setup=_setup_embedded, teardown=_stop)
async def embedded_seq_c_plugin(ctx: Context) -> float:
    """Sequential Supervisor.call() to the C echo plugin, vs plain asyncio on the same plugin."""
    call = ctx.state.sup.call  # the same loop as the clients above (_one_at_a_time)
    return await _one_at_a_time(lambda: call("echo", "echo", PARAMS, timeout=10.0),
                                ctx.pick(full=5000, quick=50))


@case("embedded-pipelined-64-c-plugin", group="host-bound", unit="calls/s",
      baseline="asyncio-pipe-pipelined-64-c-plugin", setup=_setup_embedded, teardown=_stop,
      repeat=10)
async def embedded_pipelined_64_c_plugin(ctx: Context) -> float:
    """64 tasks calling the C echo plugin through Supervisor.call(), vs plain asyncio."""
    call = ctx.state.sup.call  # the same loop as the clients above (_in_flight)
    return await _in_flight(lambda: call("echo", "echo", PARAMS, timeout=10.0),
                            ctx.pick(full=20000, quick=256))


@case("embedded-call-many-64-c-plugin", group="host-bound", unit="calls/s",
      baseline="asyncio-pipe-pipelined-64-c-plugin", setup=_setup_embedded, teardown=_stop,
      repeat=10)
async def embedded_call_many_64_c_plugin(ctx: Context) -> float:
    """Supervisor.call_many, window 64, one task, to the C echo plugin, vs plain asyncio."""
    st: Embedded = ctx.state
    total = ctx.pick(full=20000, quick=256)
    items = [PARAMS] * total
    start = time.perf_counter_ns()
    results = await st.sup.call_many("echo", "echo", items, timeout=10.0, window=PIPELINE_DEPTH)
    elapsed = time.perf_counter_ns() - start
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {total} calls failed, first: {failed[0]!r}")
    return total / (elapsed / 1e9)
