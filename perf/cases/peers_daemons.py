"""Peers (issue #20): supervisord and circus next to pipevisor, for restarts and idle cost.

Group ``peers``; left out of a plain ``--quick`` run (they need the peer venvs of
``python -m perf.peers_env install`` and take minutes). Without a venv a case
skips and says so. supervisord and circus run as daemons from their own venvs'
interpreters; the harness only spawns them, kills their children and reads
their figures from /proc (psutil), so no peer code is imported here.

The child is ``peers/restart_child.c``: its first act is a datagram carrying its
pid and a CLOCK_MONOTONIC stamp, so "kill -> replacement started" is measured
by the child's own clock, the same way for all three.

- ``peers-restart-{pipevisor,supervisord,circus}``: SIGKILL the child, ms until
  the replacement's main() runs. pipevisor: embedded ``Supervisor``, the no-backoff
  policy of ``restart-after-sigkill``, the kill aimed at the plugin's outer
  process (the pvinit shim when there is one, as that case does); note
  ``answered_ms_p50`` is kill -> a call answered by the new instance.
  supervisord: ``autorestart=true``, ``startsecs=0``. circus: ``respawn = true``,
  ``check_delay = 0.1`` (its default is 5 s).
- ``peers-idle50-{pipevisor,supervisord,circus}-{cpu,rss,threads}``: the daemon
  process with 50 idle C children, at its defaults: % of one core (user+system
  over an idle window), resident MB, thread count. pipevisor is the real daemon
  (``python -m pipevisor.supervisor run``) with 50 copies of the scale benchmark's
  ``plugins/c_echo_plugin.c``, which answer its liveness pings.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import psutil

from perf.harness import REPO_ROOT, Context, build_c, case, summarize
from perf.peers_env import INSTALL_HINT, python_for
from pipevisor.supervisor import CallError, PluginSpec, RestartPolicy, Supervisor

PERF = Path(__file__).resolve().parent.parent
RESTART_CHILD = PERF / "peers" / "restart_child.c"
C_ECHO_PLUGIN = PERF / "plugins" / "c_echo_plugin.c"

IDLE_CHILDREN = 50
IDLE_QUICK_CHILDREN = 4
IDLE_SETTLE_S = 5.0
"""After every child has started: start-up work leaves the measured windows."""
IDLE_WINDOW_S = 12.0
"""Longer than pipevisor's default ping interval (10 s): each window holds a ping round."""
IDLE_WINDOWS = 3
CIRCUS_CHECK_DELAY = 0.1
START_DEADLINE = 60.0
RESTART_DEADLINE = 15.0
STOP_DEADLINE = 20.0
PAUSE_BEFORE_KILL_S = 0.05
"""Between kills: the new child is past exec and its daemon back in its loop."""

# The policy of restart-after-sigkill (supervisor_calls.py): every kill is followed
# by an immediate restart, as the first one is under the default policy.
NO_BACKOFF = RestartPolicy(
    max_restarts=1000, within_seconds=1.0, initial_delay=0.0, first_backoff=0.0, jitter=0.0
)
CALL_TIMEOUT = 10.0


def _peer_python(ctx: Context, peer: str) -> Path:
    python = python_for(peer)
    if python is None:
        ctx.skip(f"no {peer} venv: {INSTALL_HINT}")
    return python


def _child_binary(ctx: Context) -> Path:
    # restart_child.c #includes plugins/c_echo_plugin.c: its hash in the flags keys the cache.
    digest = hashlib.sha256(C_ECHO_PLUGIN.read_bytes()).hexdigest()[:16]
    return build_c(ctx, RESTART_CHILD, [f"-DPLUGIN_SRC_HASH={digest}"])


def _short_tmpdir() -> str:
    # Unix socket paths are limited to ~107 bytes
    return tempfile.mkdtemp(prefix="pv-peers-", dir="/tmp")


class Announcements:
    """The datagram socket every restart_child reports its start to."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "announce.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def recv(self, timeout: float) -> tuple[int, int, int]:
        """(pid, child's CLOCK_MONOTONIC ns at start, ours at receipt); TimeoutError if none."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(256)
        got = time.monotonic_ns()
        pid, stamp = data.split()
        return int(pid), int(stamp), got

    def drain(self) -> None:
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(256)

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- daemons


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen[bytes]
    folder: str
    log: str
    pids: list[int] = field(default_factory=list)
    announce: Announcements | None = None
    seen_ms: list[float] = field(default_factory=list)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = Path(self.log).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _supervisord_conf(folder: str, child: Path, n: int, announce: str) -> str:
    return f"""[supervisord]
nodaemon=true
silent=true
logfile={folder}/supervisord.log
pidfile={folder}/supervisord.pid
childlogdir={folder}

[program:child]
command={child} idle {announce}
numprocs={n}
process_name=%(program_name)s_%(process_num)03d
autorestart=true
startsecs=0
stdout_logfile=NONE
stderr_logfile=NONE
"""


def _circus_conf(folder: str, child: Path, n: int, announce: str, default_delay: bool) -> str:
    # ipc endpoints in the private folder: no TCP port, no clash with another run;
    # an empty multicast endpoint turns cluster discovery (a UDP socket) off.
    delay = "" if default_delay else f"check_delay = {CIRCUS_CHECK_DELAY}\n"
    return f"""[circus]
{delay}endpoint = ipc://{folder}/endpoint
pubsub_endpoint = ipc://{folder}/pubsub
multicast_endpoint =
statsd = false

[watcher:child]
cmd = {child}
args = idle {announce}
numprocesses = {n}
respawn = true
"""


def _start_peer_daemon(ctx: Context, name: str, n: int) -> Daemon:
    """supervisord or circusd with n idle restart_child children, all announced.

    ``circus-default`` is circusd at its default check_delay (5 s), ``circus`` at 0.1 s.
    """
    python = _peer_python(ctx, "supervisor" if name == "supervisord" else "circus")
    child = _child_binary(ctx)
    folder = _short_tmpdir()
    announce: Announcements | None = None
    daemon: Daemon | None = None
    try:
        announce = Announcements(folder)
        conf = os.path.join(folder, f"{name}.conf")
        log = os.path.join(folder, f"{name}.out")
        if name == "supervisord":
            Path(conf).write_text(_supervisord_conf(folder, child, n, announce.path))
            argv = [str(python), "-m", "supervisor.supervisord", "-c", conf]
        else:
            Path(conf).write_text(_circus_conf(folder, child, n, announce.path,
                                               default_delay=name == "circus-default"))
            argv = [str(python), "-m", "circus.circusd", "--log-output", log, conf]
        with open(log, "ab") as out:
            proc = ctx.popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=folder)
        daemon = Daemon(name, proc, folder, log, announce=announce)
        deadline = time.monotonic() + START_DEADLINE
        seen: set[int] = set()
        while len(seen) < n:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"{name}: {len(seen)} of {n} children started "
                                   f"(exit {proc.returncode}):\n{daemon.log_tail()}")
            with contextlib.suppress(TimeoutError):
                pid, _, _ = announce.recv(min(left, 0.5))
                seen.add(pid)
        daemon.pids = sorted(seen)
        return daemon
    except BaseException:
        if daemon is not None:
            _stop_daemon(ctx, daemon)
        else:
            if announce is not None:
                announce.close()
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _stop_daemon(ctx: Context, daemon: Daemon) -> None:
    """SIGTERM (each daemon then stops its children), wait, then kill whatever is left.

    The descendants are listed first: supervisord puts each child in a process
    group of its own, so nothing short of a per-pid kill reaches a straggler.
    """
    proc = daemon.proc
    try:
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            print(f"{daemon.name} ignored SIGTERM for {STOP_DEADLINE} s; killing it:\n"
                  f"{daemon.log_tail()}", file=sys.stderr)
        ctx.reap(proc)
        alive = [p for p in tree if p.is_running()]
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
    finally:
        if daemon.announce is not None:
            daemon.announce.close()
        shutil.rmtree(daemon.folder, ignore_errors=True)


def _pipevisor_conf(folder: str, plugin: Path, n: int) -> str:
    tables = "".join(f'\n[plugins.c{i:03d}]\ncommand = ["{plugin}"]\n' for i in range(n))
    return (f'[daemon]\nsocket = "{folder}/control.sock"\n'
            f'\n[supervisor]\nstate_dir = "{folder}/state"\n'
            "\n[discovery]\nenabled = false\n" + tables)


def _start_pipevisor_daemon(ctx: Context, n: int) -> Daemon:
    """``pipevisor run`` with n copies of the C plugin; ready on its READY=1."""
    plugin = build_c(ctx, C_ECHO_PLUGIN)
    folder = _short_tmpdir()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon: Daemon | None = None
    try:
        notify_path = os.path.join(folder, "notify.sock")
        notify.bind(notify_path)
        conf = os.path.join(folder, "pipevisor.toml")
        Path(conf).write_text(_pipevisor_conf(folder, plugin, n))
        log = os.path.join(folder, "daemon.log")
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), NOTIFY_SOCKET=notify_path)
        for key in ("PIPEVISOR_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(key, None)
        with open(log, "ab") as out:
            argv = [sys.executable, "-m", "pipevisor.supervisor", "run", "--config", conf]
            proc = ctx.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=out, env=env, cwd=folder)
        daemon = Daemon("pipevisor", proc, folder, log)
        deadline = time.monotonic() + START_DEADLINE
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"pipevisor run: no READY=1 (exit {proc.returncode}):\n"
                                   f"{daemon.log_tail()}")
            notify.settimeout(min(left, 0.5))
            with contextlib.suppress(TimeoutError):
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    break
        from pipevisor.supervisor.client import Client

        with Client(os.path.join(folder, "control.sock")) as client:
            states = [p["state"] for p in client.status()["plugins"]]
        if states.count("ready") != n:
            raise RuntimeError(f"pipevisor run READY but plugin states are {sorted(set(states))}")
        return daemon
    except BaseException:
        if daemon is not None:
            _stop_daemon(ctx, daemon)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        notify.close()


# --------------------------------------------------------------------------- idle cost


def _cpu_ns(proc: psutil.Process) -> int:
    """On-CPU time of every thread of the process, in ns, from /proc/PID/task/*/schedstat.

    user+system time from /proc/PID/stat comes in 10 ms ticks, which over a 12 s
    window is a step of 0.083 % of a core: about the whole figure for an idle
    daemon. schedstat is the scheduler's own nanosecond count. Falls back to the
    ticks where schedstat is missing (kernels without CONFIG_SCHEDSTATS).
    """
    if not os.path.exists(f"/proc/{proc.pid}/schedstat"):
        t = proc.cpu_times()
        return int((t.user + t.system) * 1e9)
    total = 0
    for tid in os.listdir(f"/proc/{proc.pid}/task"):
        try:
            with open(f"/proc/{proc.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that has just ended
    return total


def _idle_figures(daemon: Daemon, windows: int, window_s: float, settle_s: float,
                  notes: dict[str, Any]) -> dict[str, list[float]]:
    me = psutil.Process(daemon.proc.pid)
    time.sleep(settle_s)
    out: dict[str, list[float]] = {"cpu": [], "rss": [], "threads": []}
    for _ in range(windows):
        cpu0, wall0 = _cpu_ns(me), time.perf_counter()
        time.sleep(window_s)
        cpu1, wall1 = _cpu_ns(me), time.perf_counter()
        out["cpu"].append(100 * (cpu1 - cpu0) / 1e9 / (wall1 - wall0))
        out["rss"].append(me.memory_info().rss / 2**20)
        out["threads"].append(float(me.num_threads()))
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"{daemon.name} exited while idle:\n{daemon.log_tail()}")
    tree = me.children(recursive=True)
    rss_tree = me.memory_info().rss
    for p in tree:
        with contextlib.suppress(psutil.Error):
            rss_tree += p.memory_info().rss
    notes["processes_under_daemon"] = len(tree)
    notes["tree_rss_sum_mb"] = round(rss_tree / 2**20, 1)
    return out


_IDLE: dict[tuple[str, bool], tuple[dict[str, list[float]], dict[str, Any]]] = {}
_IDLE_REPORTED: set[tuple[str, bool]] = set()


def _measure_idle(ctx: Context, name: str) -> dict[str, list[float]]:
    """One daemon, measured once for its three cases; each case gets the notes."""
    key = (name, ctx.quick)
    if key in _IDLE:
        ctx.notes.update(_IDLE[key][1])
        return _IDLE[key][0]
    n = IDLE_QUICK_CHILDREN if ctx.quick else IDLE_CHILDREN
    window = 0.3 if ctx.quick else IDLE_WINDOW_S
    notes: dict[str, Any] = {"children": n, "idle_window_s": window}
    if name.startswith("circus"):
        notes["check_delay_s"] = 5.0 if name == "circus-default" else CIRCUS_CHECK_DELAY
    if name == "pipevisor":
        daemon = _start_pipevisor_daemon(ctx, n)
    else:
        daemon = _start_peer_daemon(ctx, name, n)
    try:
        if ctx.quick:
            figures = _idle_figures(daemon, 1, window, 0.2, notes)
        else:
            figures = _idle_figures(daemon, IDLE_WINDOWS, window, IDLE_SETTLE_S, notes)
    finally:
        _stop_daemon(ctx, daemon)
    _IDLE[key] = (figures, notes)
    ctx.notes.update(notes)
    return figures


def _register_idle(name: str) -> None:
    metrics = {
        "cpu": ("%core", "CPU of the daemon, % of one core, over an idle window"),
        "rss": ("MB", "resident memory of the daemon process"),
        "threads": ("threads", "threads of the daemon process"),
    }
    for metric, (unit, what) in metrics.items():
        case_name = f"peers-idle50-{name}-{metric}"

        def make(metric: str = metric, case_name: str = case_name) -> Callable[[Context], Any]:
            def report(ctx: Context) -> list[float]:
                samples = _measure_idle(ctx, name)[metric]
                # one measurement feeds three cases; each reports it once
                key = (case_name, ctx.quick)
                if ctx.warming_up or key in _IDLE_REPORTED:
                    return []
                _IDLE_REPORTED.add(key)
                return samples

            return report

        fn = make()
        who = "circus (default check_delay 5 s)" if name == "circus-default" else name
        fn.__doc__ = f"{who} with 50 idle C children: {what}."
        case(case_name, group="peers", unit=unit, baseline=f"peers-idle50-pipevisor-{metric}",
             repeat=1, warmup=0, higher_is_better=False, in_quick=False)(fn)


for _name in ("pipevisor", "supervisord", "circus", "circus-default"):
    _register_idle(_name)


# --------------------------------------------------------------------------- restarts


def _setup_peer_restart(name: str) -> Callable[[Context], Daemon]:
    def setup(ctx: Context) -> Daemon:
        return _start_peer_daemon(ctx, name, 1)

    return setup


def _teardown_peer_restart(ctx: Context) -> None:
    daemon: Daemon | None = ctx.state
    if daemon is None:
        return
    if daemon.seen_ms:
        ctx.note("seen_ms_p50", round(summarize(daemon.seen_ms)["median"], 2))
    _stop_daemon(ctx, daemon)


def _kill_peer_child(ctx: Context) -> float:
    daemon: Daemon = ctx.state
    announce = daemon.announce
    assert announce is not None
    time.sleep(PAUSE_BEFORE_KILL_S)
    announce.drain()
    old = daemon.pids[0]
    t0 = time.monotonic_ns()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + RESTART_DEADLINE
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{daemon.name} started no new child within "
                               f"{RESTART_DEADLINE} s:\n{daemon.log_tail()}")
        try:
            pid, stamp, got = announce.recv(left)
        except TimeoutError:
            continue
        if pid != old:
            break
    daemon.pids = [pid]
    if not ctx.warming_up:
        daemon.seen_ms.append((got - t0) / 1e6)
    return (stamp - t0) / 1e6


@dataclass
class EmbeddedRestart:
    stack: AsyncExitStack
    sup: Supervisor
    folder: str
    announce: Announcements
    answered_ms: list[float] = field(default_factory=list)


class _DeliberateKills(logging.Filter):
    """Drop the runner's warning about each SIGKILL: every one here is the benchmark's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "killed by SIGKILL" not in record.getMessage()


_DELIBERATE = _DeliberateKills()


async def _setup_pipevisor_restart(ctx: Context) -> EmbeddedRestart:
    child = _child_binary(ctx)
    logging.getLogger("pipevisor.runner").addFilter(_DELIBERATE)
    folder = _short_tmpdir()
    announce = Announcements(folder)
    stack = AsyncExitStack()
    try:
        spec = PluginSpec("child", (str(child), "serve", announce.path), restart=NO_BACKOFF)
        sup = await stack.enter_async_context(Supervisor([spec]))
        await sup.wait_ready(timeout=START_DEADLINE)
        await sup.call("child", "echo", {}, timeout=CALL_TIMEOUT)
    except BaseException:
        await stack.aclose()
        logging.getLogger("pipevisor.runner").removeFilter(_DELIBERATE)
        announce.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return EmbeddedRestart(stack, sup, folder, announce)


async def _teardown_pipevisor_restart(ctx: Context) -> None:
    st: EmbeddedRestart | None = ctx.state
    if st is None:
        return
    try:
        await st.stack.aclose()
    finally:
        logging.getLogger("pipevisor.runner").removeFilter(_DELIBERATE)
        st.announce.close()
        shutil.rmtree(st.folder, ignore_errors=True)
    if st.answered_ms:
        ctx.note("answered_ms_p50", round(summarize(st.answered_ms)["median"], 2))


@case("peers-restart-pipevisor", group="peers", unit="ms", baseline="peers-restart-pipevisor",
      setup=_setup_pipevisor_restart, teardown=_teardown_pipevisor_restart,
      repeat=15, warmup=1, in_quick=False)
async def peers_restart_pipevisor(ctx: Context) -> float:
    """pipevisor (embedded, no backoff): SIGKILL the C plugin, ms until its replacement runs."""
    st: EmbeddedRestart = ctx.state
    runner = st.sup.runner("child")
    await anyio.sleep(PAUSE_BEFORE_KILL_S)
    st.announce.drain()
    process = runner.process
    assert process is not None
    old_instance = runner.instance
    t0 = time.monotonic_ns()
    os.kill(process.pid, signal.SIGKILL)
    while True:
        try:
            await st.sup.call("child", "echo", {}, timeout=CALL_TIMEOUT)
        except CallError:
            # settled by the dying instance: again at once, within a deadline
            if time.monotonic_ns() - t0 > RESTART_DEADLINE * 1e9:
                raise
            await anyio.lowlevel.checkpoint()
            continue
        if runner.instance > old_instance:
            break
        await anyio.lowlevel.checkpoint()
    answered = time.monotonic_ns()
    # the announcement was sent before the handshake, so it is waiting already
    _, stamp, _ = st.announce.recv(RESTART_DEADLINE)
    if not ctx.warming_up:
        st.answered_ms.append((answered - t0) / 1e6)
    return (stamp - t0) / 1e6


@case("peers-restart-supervisord", group="peers", unit="ms", baseline="peers-restart-pipevisor",
      setup=_setup_peer_restart("supervisord"), teardown=_teardown_peer_restart,
      repeat=10, warmup=1, in_quick=False)
def peers_restart_supervisord(ctx: Context) -> float:
    """supervisord (autorestart, startsecs=0): SIGKILL the C child, ms until the new one runs."""
    return _kill_peer_child(ctx)


@case("peers-restart-circus", group="peers", unit="ms", baseline="peers-restart-pipevisor",
      setup=_setup_peer_restart("circus"), teardown=_teardown_peer_restart,
      repeat=15, warmup=1, in_quick=False)
def peers_restart_circus(ctx: Context) -> float:
    """circus (respawn, check_delay 0.1 s): SIGKILL the C child, ms until its replacement runs."""
    return _kill_peer_child(ctx)
