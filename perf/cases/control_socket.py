"""Calls through the real ``pipevisor run`` daemon's control socket
(``pipevisor.supervisor.client``).

Each case starts ``python -m pipevisor.supervisor run --config <tmp toml>`` (what the
``pipevisor`` entry point runs) with one or eight copies of the stdlib echo
plugin (``peers/stdlib_echo_plugin.py``), discovery off and every run-time
file in a private temporary folder; the harness is the host application. So a
call crosses two pipes: harness -> daemon (Unix socket) -> plugin
(stdin/stdout) and back, through exactly the code a deployed daemon runs
(config loading, logging, the sampler and the systemd notifier included). The
same shapes as the embedded cases:

- ``control-seq-stdlib``: the blocking ``Client``, one call at a time, us/call;
- ``control-pipelined-16`` / ``-256``: ``AsyncClient`` on one connection with 16 or
  256 tasks in flight to one plugin, calls/s;
- ``control-pipelined-8-plugins``: 256 tasks over 8 plugins.

Readiness is the daemon's own ``READY=1`` on a ``NOTIFY_SOCKET`` the case binds
(sent once every plugin is serving or given up on), confirmed by a ``status``
call that finds every plugin ``ready``; teardown is SIGTERM, as a service
manager stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from perf.cases.baselines import TEXT
from perf.harness import REPO_ROOT, Context, case, summarize
from pipevisor.supervisor.client import AsyncClient, Client

STDLIB_ECHO = Path(__file__).resolve().parent.parent / "peers" / "stdlib_echo_plugin.py"
PARAMS = {"text": TEXT}
CALL_TIMEOUT = 10.0
READY_DEADLINE = 60.0
"""Seconds for the daemon to start its plugins and say READY=1 (a loaded 2-core box)."""
STOP_DEADLINE = 30.0
"""Seconds for the daemon to stop its plugins after SIGTERM before it is killed."""


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    folder: str
    socket: str
    plugins: list[str]
    call_ns: list[int] = field(default_factory=list)

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.folder, "daemon.log").read_text(errors="replace")
        except OSError:
            return "(no daemon log)"
        return "\n".join(text.splitlines()[-lines:])


def _config(folder: str, n: int) -> str:
    """The daemon's configuration: N stdlib echo plugins, nothing discovered, state
    and socket in ``folder`` so nothing outside it is read or left behind."""
    command = ", ".join(f'"{a}"' for a in (sys.executable, str(STDLIB_ECHO)))
    tables = "".join(f"\n[plugins.echo{i}]\ncommand = [{command}]\n" for i in range(n))
    return (f'[daemon]\nsocket = "{folder}/control.sock"\n'
            f'\n[supervisor]\nstate_dir = "{folder}/state"\n'
            "\n[discovery]\nenabled = false\n" + tables)


def _wait_ready(proc: subprocess.Popen[bytes], notify: socket.socket, deadline: float) -> None:
    """Block until the daemon sends READY=1; fail early if it exits first."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no READY=1 within {READY_DEADLINE} s")
        # short waits only so that a daemon that died (bad config) is noticed at once
        notify.settimeout(min(left, 0.5))
        try:
            data = notify.recv(4096)
        except TimeoutError:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode} before READY") from None
            continue
        if b"READY=1" in data.split(b"\n"):
            return


def _start_daemon(ctx: Context, n: int) -> Daemon:
    # short path: Unix socket names are limited to ~107 bytes
    folder = tempfile.mkdtemp(prefix="pv-perf-", dir="/tmp")
    cfg = os.path.join(folder, "pipevisor.toml")
    Path(cfg).write_text(_config(folder, n))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = os.path.join(folder, "notify.sock")
    notify.bind(notify_path)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), NOTIFY_SOCKET=notify_path)
    for key in ("PIPEVISOR_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(key, None)
    try:
        with open(os.path.join(folder, "daemon.log"), "wb") as log:
            proc = ctx.popen([sys.executable, "-m", "pipevisor.supervisor", "run", "--config", cfg],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                             env=env, cwd=folder)
    except BaseException:
        notify.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    daemon = Daemon(proc, folder, os.path.join(folder, "control.sock"),
                    [f"echo{i}" for i in range(n)])
    try:
        _wait_ready(proc, notify, time.monotonic() + READY_DEADLINE)
        with Client(daemon.socket) as client:
            states = {p["name"]: p["state"] for p in client.status()["plugins"]}
        if states != dict.fromkeys(daemon.plugins, "ready"):
            raise RuntimeError(f"daemon READY but plugins are {states}")
    except BaseException as exc:
        tail = daemon.stderr_tail()  # read before _stop removes the folder
        _stop(ctx, daemon, quiet=True)
        if isinstance(exc, Exception):
            raise RuntimeError(f"pipevisor run did not start: {exc}\n{tail}") from exc
        raise
    finally:
        notify.close()
    return daemon


def _stop(ctx: Context, daemon: Daemon, *, quiet: bool = False) -> None:
    """SIGTERM (the daemon stops every plugin gracefully), then wait; kill past the deadline."""
    proc = daemon.proc
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            print(f"pipevisor run ignored SIGTERM for {STOP_DEADLINE} s; killing it:\n"
                  f"{daemon.stderr_tail()}", file=sys.stderr)
        ctx.reap(proc)  # forgets it (kills it first if it is somehow still there)
        if proc.returncode != 0 and not quiet:
            print(f"pipevisor run exited with {proc.returncode}:\n{daemon.stderr_tail()}",
                  file=sys.stderr)
    finally:
        shutil.rmtree(daemon.folder, ignore_errors=True)


def _stop_daemon(ctx: Context) -> None:
    st: Daemon | None = ctx.state
    if st is None:
        return
    if st.call_ns:
        # per-call distribution over the measured repetitions: the tail a mean hides
        xs = sorted(ns / 1000 for ns in st.call_ns)
        stats = summarize(xs)
        ctx.note("call_p50_us", round(stats["median"], 2))
        ctx.note("call_p90_us", round(stats["p90"], 2))
        ctx.note("call_p99_us", round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 2))
    _stop(ctx, st)


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
    """Blocking Client.call() through pipevisor run's socket, sequential: control-path latency."""
    st: Daemon = ctx.state
    n = ctx.pick(full=1000, quick=30)
    clock = time.perf_counter_ns
    per_call: list[int] = []
    with Client(st.socket) as client:
        client.call("echo0", "echo", PARAMS, timeout=CALL_TIMEOUT)  # connect outside the timing
        start = clock()
        for _ in range(n):
            t0 = clock()
            client.call("echo0", "echo", PARAMS, timeout=CALL_TIMEOUT)
            per_call.append(clock() - t0)
        elapsed = clock() - start
    if not ctx.warming_up:
        st.call_ns.extend(per_call)
    return elapsed / n / 1000


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
