"""Plain asyncio as an in-run baseline: the fair floor for an event-loop host.

``raw-python-pipe`` blocks in ``readline``, so when both ends share a CPU
(``--pin``) its wake-up is a bare context switch, and no event-loop host can
come near it: an asyncio host pays ``epoll`` plus at least one task step per
answer. This module measures that cost with no pipevisor code at all: asyncio
subprocess streams, a reader task, a dict of id -> future (what the issue calls
"plain asyncio with a minimal id->future client"). The supervisor's ratio
against ``asyncio-pipe`` is then the price of pipevisor itself, pinned or not.

It talks to the same ``peers/echo_child.py`` as ``raw-python-pipe``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field

import orjson

from perf.cases.baselines import ECHO_CHILD, PIPELINE_DEPTH, request
from perf.harness import Context, case

_NL = orjson.OPT_APPEND_NEWLINE


@dataclass
class AsyncioClient:
    proc: asyncio.subprocess.Process
    reader: asyncio.Task[None]
    pending: dict[int, asyncio.Future[object]] = field(default_factory=dict)
    next_id: int = 0

    async def call(self, i: int) -> object:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(request(i), option=_NL))
        return await fut


async def _read(client: AsyncioClient) -> None:
    stdout = client.proc.stdout
    assert stdout is not None
    loads = orjson.loads
    pending = client.pending
    while True:
        line = await stdout.readline()
        if not line:
            break
        msg = loads(line)
        fut = pending.pop(msg["id"], None)
        if fut is not None and not fut.done():
            fut.set_result(msg["result"])
    for fut in pending.values():
        if not fut.done():
            fut.set_exception(RuntimeError("echo child exited"))


async def _setup(ctx: Context) -> AsyncioClient:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ECHO_CHILD),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    client = AsyncioClient(proc, asyncio.get_running_loop().create_task(asyncio.sleep(0)))
    client.reader = asyncio.get_running_loop().create_task(_read(client))
    return client


async def _teardown(ctx: Context) -> None:
    client: AsyncioClient | None = ctx.state
    if client is None:
        return
    assert client.proc.stdin is not None
    client.proc.stdin.close()
    try:
        await asyncio.wait_for(client.proc.wait(), 5)
    except TimeoutError:
        client.proc.kill()
        await client.proc.wait()
    await client.reader


@case(
    "asyncio-pipe",
    group="baselines",
    unit="us/call",
    baseline="raw-python-pipe",
    setup=_setup,
    teardown=_teardown,
)
async def asyncio_pipe(ctx: Context) -> float:
    """Plain asyncio streams + id->future dict, sequential: the event-loop floor."""
    client: AsyncioClient = ctx.state
    n = ctx.pick(full=2000, quick=50)
    start = time.perf_counter_ns()
    for _ in range(n):
        client.next_id += 1
        await client.call(client.next_id)
    return (time.perf_counter_ns() - start) / n / 1000


@case(
    "asyncio-pipe-pipelined-64",
    group="baselines",
    unit="calls/s",
    baseline="raw-python-pipe-pipelined",
    setup=_setup,
    teardown=_teardown,
    repeat=10,
)
async def asyncio_pipe_pipelined(ctx: Context) -> float:
    """Plain asyncio client, 64 tasks in flight to one echo child: event-loop throughput."""
    client: AsyncioClient = ctx.state
    remaining = ctx.pick(full=6400, quick=256)
    total = remaining

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            client.next_id += 1
            await client.call(client.next_id)

    start = time.perf_counter_ns()
    await asyncio.gather(*(worker() for _ in range(PIPELINE_DEPTH)))
    return total / ((time.perf_counter_ns() - start) / 1e9)
