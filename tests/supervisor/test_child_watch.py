"""Plugin exits are watched without a thread per plugin (issue 20), with real processes.

On Python 3.11 asyncio's default child watcher blocks one thread in ``waitpid`` per
child. ``supervisor/io/child_watch.py`` replaces it with pidfds on the event loop
where the kernel has them; these tests count the process's threads with N plugins
running, kill plugins with SIGKILL and check the exit is still seen (exit code
included) and the plugin restarted, and run the fallbacks (``PIPEVISOR_PIDFD=0``, a
host's own watcher, no descriptor left for a pidfd) for real.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipevisor.supervisor import Supervisor
from pipevisor.supervisor.engine.states import PluginState
from pipevisor.supervisor.io import child_watch
from tests.supervisor.fake import fake_spec

REPO = Path(__file__).resolve().parents[2]
N = 24
"""Plugins per test: enough that a thread each would be unmistakable."""

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not child_watch.pidfd_supported(), reason="no pidfds on this system"),
]
PY311 = sys.version_info < (3, 12)


def threads() -> int:
    """Every thread of this process, not only Python's (the kernel's count)."""
    return len(os.listdir("/proc/self/task"))


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def wait_restarted(sup: Supervisor, name: str, instance: int) -> None:
    runner = sup.runner(name)
    with anyio.fail_after(20):
        while runner.instance <= instance or runner.state is not PluginState.READY:
            await anyio.sleep(0.01)  # polled condition, bounded by the deadline


async def test_n_plugins_add_no_thread_each_and_a_sigkill_is_still_seen() -> None:
    before = threads()
    async with Supervisor([fake_spec(f"p{i}") for i in range(N)]) as sup:
        await sup.wait_ready(timeout=60)
        assert sup.child_watching == ("pidfd" if PY311 else "builtin")
        running = threads()
        # a thread per plugin would be N more; anyio's worker threads (the sampler) a few
        assert running - before < N // 3, (before, running)

        victim = sup.runner("p3")
        old = victim.process
        assert old is not None
        os.kill(old.pid, signal.SIGKILL)
        with anyio.fail_after(5):
            await old.wait()  # the pidfd turned readable and the watcher reaped it
        assert old.returncode == -signal.SIGKILL
        await wait_restarted(sup, "p3", 1)
        assert victim.process is not None and victim.process.pid != old.pid
        assert await sup.call("p3", "echo", ["again"], timeout=10) == ["again"]
        assert threads() - before < N // 3


async def test_the_watcher_reaps_many_children_and_closes_every_pidfd() -> None:
    assert child_watch.install() in ("pidfd", "builtin")
    before_threads, before_fds = threads(), fds()
    procs = [await anyio.open_process(["sleep", "60"]) for _ in range(40)]
    try:
        assert threads() == before_threads
        if PY311:  # three pipes each, and its pidfd
            assert fds() >= before_fds + 4 * len(procs)
        for p in procs:
            p.kill()
        with anyio.fail_after(10):
            for p in procs:
                assert await p.wait() == -signal.SIGKILL
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
            await p.aclose()
    assert fds() <= before_fds
    assert threads() == before_threads


@pytest.mark.skipif(not PY311, reason="Python 3.12+ uses asyncio's own pidfd watcher")
async def test_no_descriptor_for_a_pidfd_falls_back_to_the_shared_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    watcher = child_watch.PidfdChildWatcher()

    def no_fd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    # bare pids, spawned outside asyncio: the watcher is handed them as asyncio would
    proc = subprocess.Popen(["sleep", "60"])  # noqa: ASYNC220
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def exited(pid: int, returncode: int) -> None:
        done.set_result(returncode)

    try:
        with monkeypatch.context() as m:
            m.setattr(os, "pidfd_open", no_fd)
            watcher.add_child_handler(proc.pid, exited)
        assert watcher.fallbacks == 1
        proc.kill()
        with anyio.fail_after(5):
            assert await done == -signal.SIGKILL
    finally:
        proc.kill()
        watcher.close()
        try:
            proc.wait(timeout=5)
        except ChildProcessError:
            pass  # reaped by the watcher's thread, as it should be


@pytest.mark.skipif(not PY311, reason="Python 3.12+ uses asyncio's own pidfd watcher")
async def test_over_the_descriptor_budget_children_share_one_thread() -> None:
    """Past ``max_pidfds`` every further child is watched by one shared thread, not one
    each; exits are seen for both kinds, and a foreign zombie nobody reaps (someone
    else's child) does not hide them."""
    watcher = child_watch.PidfdChildWatcher(max_pidfds=3)
    loop = asyncio.get_running_loop()
    codes: dict[int, asyncio.Future[int]] = {}
    before = threads()
    foreign = subprocess.Popen(["true"])  # noqa: ASYNC220 - exits, left unreaped
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(12)]  # noqa: ASYNC220
    try:
        for p in procs:
            codes[p.pid] = loop.create_future()
            watcher.add_child_handler(p.pid, lambda pid, rc: codes[pid].set_result(rc))
        assert watcher.fallbacks == 9
        assert threads() == before + 1
        with anyio.fail_after(5):
            while psutil_status(foreign.pid) != "zombie":
                await anyio.sleep(0.01)  # polled condition, bounded by the deadline
        for p in procs:
            p.kill()
        with anyio.fail_after(5):
            got = [await codes[p.pid] for p in procs]
        assert got == [-signal.SIGKILL] * len(procs)
        assert threads() == before + 1
    finally:
        for p in procs:
            p.kill()
        watcher.close()
        foreign.wait(timeout=5)
        for p in procs:
            try:
                p.wait(timeout=5)
            except ChildProcessError:
                pass  # reaped by the watcher, as it should be


def psutil_status(pid: int) -> str:
    import psutil
    try:
        return str(psutil.Process(pid).status())
    except psutil.NoSuchProcess:
        return "gone"


SCRIPT = r"""
import asyncio, json, os, signal, sys
import anyio
from pipevisor.supervisor import Supervisor
from pipevisor.supervisor.engine.states import PluginState
from tests.supervisor.fake import fake_spec

n = int(sys.argv[1])

class HostWatcher(asyncio.ThreadedChildWatcher):
    pass

async def main() -> None:
    if sys.argv[2] == "host-watcher":
        asyncio.set_child_watcher(HostWatcher())
    before = len(os.listdir("/proc/self/task"))
    async with Supervisor([fake_spec(f"p{i}") for i in range(n)]) as sup:
        await sup.wait_ready(timeout=60)
        running = len(os.listdir("/proc/self/task"))
        runner = sup.runner("p0")
        old = runner.process
        os.kill(old.pid, signal.SIGKILL)
        with anyio.fail_after(5):
            await old.wait()
        with anyio.fail_after(20):
            while runner.instance < 2 or runner.state is not PluginState.READY:
                await anyio.sleep(0.01)
        answer = await sup.call("p0", "echo", ["again"], timeout=10)
        watcher = "-"
        if sys.version_info < (3, 12):
            watcher = type(asyncio.get_child_watcher()).__name__
        print(json.dumps({"mode": sup.child_watching, "grew": running - before,
                          "returncode": old.returncode, "answer": answer,
                          "watcher": watcher}))

anyio.run(main)
"""


def run_script(case: str, n: int, **env: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(n), case], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["returncode"] == -signal.SIGKILL and out["answer"] == ["again"], out
    return out


def test_pidfd_forced_off_keeps_asyncio_watcher_and_still_restarts() -> None:
    n = 12
    out = run_script("forced-off", n, PIPEVISOR_PIDFD="0")
    if PY311:
        assert out["mode"] == "threads", out
        assert out["watcher"] == "ThreadedChildWatcher", out
        assert out["grew"] >= n, out  # the portable path really ran: a thread per plugin
    else:
        assert out["mode"] == "builtin", out


@pytest.mark.skipif(not PY311, reason="the child watcher API is deprecated from 3.12")
def test_a_watcher_the_host_set_is_kept() -> None:
    out = run_script("host-watcher", 4)
    assert out["mode"] == "host", out
    assert out["watcher"] == "HostWatcher", out
