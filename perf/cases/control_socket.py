"""Calls through a daemon's control socket with the CLI-free clients (``supervisor.client``).

The daemon (``peers/control_daemon.py``) is a separate process holding the
Supervisor and the real control server; the harness is the host application.
So a call crosses two pipes: harness -> daemon (Unix socket) -> plugin
(stdin/stdout) and back. The same shapes as the embedded cases:

- ``control-seq-stdlib``: the blocking ``Client``, one call at a time, us/call;
- ``control-pipelined-16`` / ``-256``: ``AsyncClient`` on one connection with 16 or
  256 tasks in flight to one plugin, calls/s;
- ``control-pipelined-8-plugins``: 256 tasks over 8 plugins.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from perf.cases.baselines import TEXT
from perf.harness import REPO_ROOT, Context, case
from supervisor.client import AsyncClient, Client

DAEMON = Path(__file__).resolve().parent.parent / "peers" / "control_daemon.py"
PARAMS = {"text": TEXT}
CALL_TIMEOUT = 10.0


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: str
    tmp: tempfile.TemporaryDirectory[str]
    plugins: list[str]


def _start_daemon(ctx: Context, n: int) -> Daemon:
    tmp = tempfile.TemporaryDirectory(prefix="pv-perf-")
    path = os.path.join(tmp.name, "control.sock")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = ctx.popen([sys.executable, str(DAEMON), path, str(n)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        ctx.reap(proc)
        tmp.cleanup()
        raise RuntimeError(f"control daemon did not start (said {line!r}, rc={proc.poll()})")
    return Daemon(proc, path, tmp, [f"echo{i}" for i in range(n)])


def _stop_daemon(ctx: Context) -> None:
    st: Daemon | None = ctx.state
    if st is None:
        return
    ctx.reap(st.proc, grace=10.0)  # closing stdin asks the daemon to stop its plugins
    st.tmp.cleanup()


def _setup_one(ctx: Context) -> Daemon:
    return _start_daemon(ctx, 1)


def _setup_eight(ctx: Context) -> Daemon:
    return _start_daemon(ctx, 8)


@case(
    "control-seq-stdlib",
    group="control",
    unit="us/call",
    baseline="raw-python-pipe",
    setup=_setup_one,
    teardown=_stop_daemon,
)
def control_seq_stdlib(ctx: Context) -> float:
    """Blocking Client.call() through the daemon's socket, sequential: control-path latency."""
    st: Daemon = ctx.state
    n = ctx.pick(full=1000, quick=30)
    with Client(st.socket) as client:
        client.call("echo0", "echo", PARAMS, timeout=CALL_TIMEOUT)  # connect outside the timing
        start = time.perf_counter_ns()
        for _ in range(n):
            client.call("echo0", "echo", PARAMS, timeout=CALL_TIMEOUT)
        return (time.perf_counter_ns() - start) / n / 1000


async def _pipelined(ctx: Context, in_flight: int, total: int) -> float:
    st: Daemon = ctx.state
    remaining = total
    async with AsyncClient(st.socket) as client:

        async def worker(plugin: str) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await client.call(plugin, "echo", PARAMS, timeout=CALL_TIMEOUT)

        start = time.perf_counter_ns()
        async with anyio.create_task_group() as tg:
            for w in range(in_flight):
                tg.start_soon(worker, st.plugins[w % len(st.plugins)])
        return total / ((time.perf_counter_ns() - start) / 1e9)


@case(
    "control-pipelined-16",
    group="control",
    unit="calls/s",
    baseline="raw-python-pipe-pipelined",
    setup=_setup_one,
    teardown=_stop_daemon,
    repeat=10,
)
async def control_pipelined_16(ctx: Context) -> float:
    """AsyncClient, 16 tasks in flight to one plugin through the socket: throughput."""
    return await _pipelined(ctx, 16, ctx.pick(full=3200, quick=128))


@case(
    "control-pipelined-256",
    group="control",
    unit="calls/s",
    baseline="raw-python-pipe-pipelined",
    setup=_setup_one,
    teardown=_stop_daemon,
    repeat=10,
)
async def control_pipelined_256(ctx: Context) -> float:
    """AsyncClient, 256 tasks in flight to one plugin through the socket: throughput."""
    return await _pipelined(ctx, 256, ctx.pick(full=3840, quick=512))


@case(
    "control-pipelined-8-plugins",
    group="control",
    unit="calls/s",
    baseline="raw-python-pipe-pipelined",
    setup=_setup_eight,
    teardown=_stop_daemon,
    repeat=10,
)
async def control_pipelined_8_plugins(ctx: Context) -> float:
    """AsyncClient, 256 tasks over 8 plugins through the socket: fan-out throughput."""
    return await _pipelined(ctx, 256, ctx.pick(full=3840, quick=512))
