"""Resource limits against real hog processes (tests/plugins/hog.py).

Each test also keeps a well-behaved neighbour answering calls, to show the
supervisor stays responsive while it samples, throttles and stops the hog.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import orjson
import psutil
import pytest

from pipevisor.supervisor import PluginState, Supervisor, SupervisorConfig
from pipevisor.supervisor.engine import sampler as S
from pipevisor.supervisor.engine.config import HealthPolicy, PluginSpec
from pipevisor.supervisor.engine.events import Subscription, SupervisorEvent
from pipevisor.supervisor.engine.limits import NO_LIMITS, Limit, LimitAction, Limits, MemoryBackstop
from pipevisor.supervisor.engine.policy import RestartMode, RestartPolicy
from pipevisor.supervisor.errors import ConfigError, OverLimit
from pipevisor.supervisor.proc import containment as _platform
from pipevisor.supervisor.proc.proctable import ProcTable
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio

HOG = str(Path(__file__).resolve().parent.parent / "plugins" / "hog.py")
MiB = 1 << 20


def hog(name: str, mode: str, *args: str, limits: Limits = NO_LIMITS, **kw: Any) -> PluginSpec:
    return fake_spec(name, limits=limits, command=(sys.executable, HOG, mode, *args), **kw)


async def next_event(events: Subscription, kind: str, plugin: str,
                     timeout: float = 10.0) -> SupervisorEvent:
    with anyio.fail_after(timeout):
        while True:
            ev = await events.next()
            if ev.kind == kind and ev.plugin == plugin:
                return ev


async def neighbour_answers(sup: Supervisor) -> None:
    assert await sup.call("calm", "echo", {"ok": 1}, timeout=5) == {"ok": 1}


def tree_cpu(pid: int) -> float:
    total = 0.0
    for p in _platform.tree_pids(pid):
        try:
            t = psutil.Process(p).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


# ================================================================ config


def test_limits_default_to_none_and_rlimits_always_drop_core() -> None:
    limits = Limits()
    assert not limits.any
    assert limits.rlimits() == {"core": 0}
    full = Limits(memory=Limit(100 * MiB), fds=Limit(50, "warn"))
    assert full.any and full.fds is not None and full.fds.action is LimitAction.WARN
    assert full.rlimits() == {"core": 0, "nofile": 100, "data": 200 * MiB}
    assert Limits(memory=Limit(MiB), memory_backstop=MemoryBackstop.AS).rlimits()["as"] == 2 * MiB
    assert "data" not in Limits(memory=Limit(MiB), memory_backstop="none").rlimits()  # type: ignore[arg-type]


@pytest.mark.parametrize("bad, words", [
    (lambda: Limits(memory=Limit(MiB, LimitAction.THROTTLE)), "cannot be throttled"),
    (lambda: Limit(0), "positive"),
    (lambda: Limit(5, "explode"), "warn"),  # type: ignore[arg-type]
    (lambda: Limits(memory_backstop="rss"), "memory_backstop"),  # type: ignore[arg-type]
    (lambda: Limits(cpu_window=0), "cpu_window"),
    (lambda: SupervisorConfig(sample_interval=-1), "sample_interval"),
])
def test_bad_limits_are_refused_with_a_clear_error(bad: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        bad()


def test_maxima_of_counts_and_bytes_are_ints_and_cpu_a_float() -> None:
    limits = Limits(memory=Limit(1.5 * MiB), fds=Limit(64.0), processes=Limit(10.9),
                    cpu=Limit(50))
    assert limits.memory is not None and limits.fds is not None
    assert limits.processes is not None and limits.cpu is not None
    assert (type(limits.memory.max), limits.memory.max) == (int, 1536 * 1024)
    assert (type(limits.fds.max), limits.fds.max) == (int, 64)
    assert (type(limits.processes.max), limits.processes.max) == (int, 10)  # 11 > 10.9
    assert (type(limits.cpu.max), limits.cpu.max) == (float, 50.0)
    with pytest.raises(ConfigError, match="fds max must be at least 1"):
        Limits(fds=Limit(0.5))
    with pytest.raises(ConfigError, match="positive number"):
        Limit(float("inf"))


async def test_maxima_from_a_config_file_print_as_integers(tmp_path: Path) -> None:
    """The TOML converter makes every ``max`` a float (the field is a float); events,
    status, the CLI's event line and OverLimit data must still say 1048576, not 1048576.0."""
    from pipevisor.supervisor.cli.control import _event_line
    from pipevisor.supervisor.daemon.config_file import load

    cfg = tmp_path / "pipevisor.toml"
    cfg.write_text(
        '[supervisor]\nsample_interval = 0.1\n[discovery]\nenabled = false\n'
        f'[plugins.hog]\ncommand = ["{sys.executable}", "{HOG}", "idle"]\n'
        'limits.memory = { max = "1MiB", action = "warn" }\n'
        'limits.fds = { max = 2, action = "warn" }\n'
        'limits.processes = { max = 100000, action = "warn" }\n'
        'limits.cpu = { max = 90, action = "warn" }\n'
        'limits.memory_backstop = "none"\n')  # a 2 MiB RLIMIT_DATA stops Python starting
    config = load(str(cfg)).supervisor
    limits = config.plugins[0].limits
    assert limits.memory is not None and limits.fds is not None
    assert limits.processes is not None and limits.cpu is not None
    assert [type(limit.max) for limit in (limits.memory, limits.fds, limits.processes,
                                          limits.cpu)] == [int, int, int, float]
    sup = Supervisor(config)
    async with sup, sup.subscribe() as events:
        seen = {}
        while set(seen) != {"memory", "fds"}:
            ev = await next_event(events, "limit", "hog")
            seen[ev.detail["limit"]] = ev
        assert b'"max":1048576,' in orjson.dumps(seen["memory"].detail)
        assert "max=1048576 " in _event_line({"plugin": "hog", "kind": "limit",
                                                 **seen["memory"].detail})
        assert "max=2 " in _event_line({"plugin": "hog", "kind": "limit",
                                          **seen["fds"].detail})
        [status] = sup.status()
        assert {type(b["max"]) for b in status["breaches"]} == {int}


# ================================================================ memory


async def test_growing_memory_is_stopped_near_the_limit_and_calls_fail_over_limit() -> None:
    rate, interval, cap = 40 * MiB, 0.2, 80 * MiB
    config = SupervisorConfig(plugins=[
        hog("hog", "memory", "--rate", str(rate), limits=Limits(memory=Limit(cap))),
        hog("calm", "idle")], sample_interval=interval)
    sup = Supervisor(config)
    async with sup, sup.subscribe() as events:
        await sup.wait_ready(timeout=10)
        with pytest.raises(OverLimit) as info:
            await sup.call("hog", "hold", {}, timeout=30)
        assert "memory" in str(info.value)
        ev = await next_event(events, "limit", "hog")
        assert ev.detail["limit"] == "memory" and ev.detail["action"] == "stop"
        assert ev.detail["max"] == cap
        # caught within about one interval's growth (plus one tick of slack for a busy box)
        assert cap < ev.detail["value"] <= cap + 2 * rate * interval + 4 * MiB
        await sup.runner("hog").wait_state({PluginState.STOPPED}, timeout=10)
        [status] = [s for s in sup.status() if s["name"] == "hog"]
        assert status["breaches"][-1]["limit"] == "memory"
        await neighbour_answers(sup)


async def test_memory_restart_action_goes_through_the_restart_policy() -> None:
    config = SupervisorConfig(plugins=[
        hog("hog", "memory", "--rate", str(60 * MiB),
            limits=Limits(memory=Limit(60 * MiB, LimitAction.RESTART)))], sample_interval=0.2)
    sup = Supervisor(config)
    async with sup, sup.subscribe() as events:
        await next_event(events, "limit", "hog")
        ev = await next_event(events, "restart", "hog")
        assert "memory" in ev.detail["after"]
        await sup.runner("hog").wait_state({PluginState.READY}, timeout=10)
        assert sup.runner("hog").instance == 2


async def test_children_that_allocate_are_counted_with_the_tree() -> None:
    cap = 90 * MiB
    config = SupervisorConfig(plugins=[
        hog("hog", "fork", "--children", "3", "--rate", str(20 * MiB),
            limits=Limits(memory=Limit(cap), processes=Limit(1000, LimitAction.WARN))),
        hog("calm", "idle")], sample_interval=0.2)
    sup = Supervisor(config)
    async with sup, sup.subscribe() as events:
        await sup.wait_ready(timeout=10)
        ev = await next_event(events, "limit", "hog")
        assert ev.detail["limit"] == "memory" and ev.detail["value"] > cap
        # no single process got near the limit: only the sum over the tree passed it
        await sup.runner("hog").wait_state({PluginState.STOPPED}, timeout=10)
        assert sup.runner("hog").resources is not None
        assert sup.runner("hog").resources["pids"] >= 4  # type: ignore[index]
        await neighbour_answers(sup)


async def test_rlimit_backstop_stops_an_allocation_faster_than_sampling() -> None:
    config = SupervisorConfig(plugins=[
        hog("hog", "burst", "--rate", str(16 * MiB),
            limits=Limits(memory=Limit(100 * MiB), backstop_factor=1.5),
            restart=RestartPolicy(mode=RestartMode.NEVER)),
        hog("calm", "idle")], sample_interval=5.0)
    sup = Supervisor(config)
    async with sup, sup.subscribe() as events:
        ev = await next_event(events, "exit", "hog", timeout=4)  # before the first 5 s tick
        assert ev.detail["returncode"] == 3
        assert any("MemoryError" in line for line in ev.detail["stderr"])
        # the exit says MemoryError: reported as a breach of the memory limit (#13)
        (breach,) = sup.runner("hog").breaches
        assert breach["limit"] == "memory" and "MemoryError" in breach["backstop"]
        assert breach["action"] == "stop"
        await sup.runner("hog").wait_state({PluginState.STOPPED}, timeout=10)
        await neighbour_answers(sup)


# ================================================================ fds


async def test_fd_opener_hits_rlimit_nofile_and_is_stopped() -> None:
    config = SupervisorConfig(plugins=[
        hog("hog", "files", limits=Limits(fds=Limit(64))), hog("calm", "idle")],
        sample_interval=0.2)
    sup = Supervisor(config)
    async with sup, sup.subscribe() as events:
        ev = await next_event(events, "limit", "hog")
        assert ev.detail["limit"] == "fds" and ev.detail["value"] > 64
        await sup.runner("hog").wait_state({PluginState.STOPPED}, timeout=10)
        # the plugin itself was refused by the kernel at 2x the sampled limit
        assert any("EMFILE after" in line for line in sup.runner("hog").stderr.last(50))
        await neighbour_answers(sup)


# ================================================================ cpu


async def test_cpu_spinner_is_throttled_to_its_share_and_not_declared_hung() -> None:
    share = 30.0
    health = HealthPolicy(handshake_timeout=10, ping_interval=0.3, ping_timeout=0.25)
    config = SupervisorConfig(plugins=[
        hog("hog", "cpu", limits=Limits(cpu=Limit(share, LimitAction.THROTTLE), cpu_window=1.0),
            health=health),
        hog("calm", "idle")], sample_interval=0.1)
    sup = Supervisor(config)
    async with sup, sup.subscribe() as events:
        ev = await next_event(events, "limit", "hog")
        assert ev.detail["action"] == "throttle" and ev.detail["value"] > share
        pid = sup.runner("hog").process.pid  # type: ignore[union-attr]
        before, start = tree_cpu(pid), time.monotonic()
        # At least 3 s of throttling with calls to the neighbour all along, and until the
        # spinner has had a quarter of its share over that time: on a loaded machine it
        # gets less than its share, so "not starved" is a condition with a deadline, not
        # a fixed window. Load only lowers its CPU, so the upper bound holds either way.
        least, deadline = 3.0 * share / 4 / 100, start + 30.0
        while True:
            await neighbour_answers(sup)
            await anyio.sleep(0.3)
            elapsed, grown = time.monotonic() - start, tree_cpu(pid) - before
            if (elapsed >= 3.0 and grown >= least) or time.monotonic() > deadline:
                break
        used = grown / elapsed * 100
        assert used < share * 2, f"throttled spinner used {used:.0f}% of a core"
        assert grown >= least, f"throttled spinner starved: {grown:.2f} CPU s in {elapsed:.0f} s"
        runner = sup.runner("hog")
        assert runner.state is PluginState.READY and runner.instance == 1
        assert await sup.call("hog", "echo", {"x": 1}, timeout=5) == {"x": 1}
    # the supervisor exited: nothing left paused (the conftest fixture checks for leftovers)


async def test_cpu_warn_acts_on_the_window_average() -> None:
    config = SupervisorConfig(plugins=[
        hog("hog", "cpu", limits=Limits(cpu=Limit(50, LimitAction.WARN), cpu_window=1.0))],
        sample_interval=0.1)
    sup = Supervisor(config)
    async with sup, sup.subscribe() as events:
        ev = await next_event(events, "limit", "hog")
        assert ev.detail["limit"] == "cpu" and ev.detail["action"] == "warn"
        assert ev.detail["value"] > 50
        assert sup.runner("hog").state is PluginState.READY


async def test_plugins_without_limits_are_not_sampled() -> None:
    config = SupervisorConfig(plugins=[fake_spec("plain")], sample_interval=0.05)
    sup = Supervisor(config)
    async with sup:
        await sup.wait_ready(timeout=10)
        await sup.sampler.tick()
        assert sup.runner("plain").resources is None


def test_no_shim_sets_rlimits_on_the_spawned_child() -> None:
    import subprocess

    none = _platform.Containment("session", None, "test")
    rlimits = {"core": 0, "nofile": 77}
    argv, kwargs = _platform.wrap_command(
        [sys.executable, "-c", "import resource; input(); print(resource.getrlimit("
         "resource.RLIMIT_NOFILE)[0], resource.getrlimit(resource.RLIMIT_CORE)[0])"], none,
        rlimits)
    assert "preexec_fn" not in kwargs  # anyio.open_process takes none
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             **kwargs)
    _platform.set_rlimits_after_spawn(child.pid, none, rlimits)
    out, _ = child.communicate("\n", timeout=10)  # it reads its limits only now
    assert out.split() == ["77", "0"]
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] != 77  # ours untouched


def test_shim_applies_rlimits_in_the_plugin_only() -> None:
    shim = _platform.ensure_shim()
    if shim is None:
        pytest.skip("no pvinit shim on this host")
    containment = replace(_platform.detect_containment(), shim=shim)
    argv, kwargs = _platform.wrap_command(
        [sys.executable, "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)"
         "[0], resource.getrlimit(resource.RLIMIT_DATA)[0])"], containment,
        {"core": 0, "nofile": 99, "data": 512 * MiB})
    import subprocess
    out = subprocess.run(argv, capture_output=True, text=True, check=True, **kwargs).stdout
    assert out.split() == ["99", str(512 * MiB)]


async def test_a_plugin_stopped_while_throttled_is_resumed_and_stops() -> None:
    config = SupervisorConfig(plugins=[
        hog("hog", "cpu", limits=Limits(cpu=Limit(5, LimitAction.THROTTLE), cpu_window=0.5))],
        sample_interval=0.05)
    sup = Supervisor(config)
    async with sup, sup.subscribe() as events:
        await next_event(events, "limit", "hog")
        runner = sup.runner("hog")
        with anyio.fail_after(5):  # a condition with a deadline: the next pause
            while runner.paused_since is None:
                await anyio.sleep(0.01)
        pid = runner.process.pid  # type: ignore[union-attr]
        stopping = time.monotonic()
        sup.stop("hog")
        await runner.wait_state({PluginState.STOPPED}, timeout=5)
        # resumed at once for its graceful shutdown (a pause slice alone lasts up to 1 s)
        assert time.monotonic() - stopping < 1.5
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE



_TREE_SCRIPT = r"""
import os, subprocess, sys, threading, time
def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
if sys.argv[1] == "leaf":
    spin(0.1)  # exits and is reaped: its time shows in the parent's children times
    sys.exit(0)
if sys.argv[1] == "child":
    subprocess.run([sys.executable, __file__, "leaf"], check=True)
    hoard = bytearray(32 << 20)
    hoard[::4096] = b"x" * len(hoard[::4096])
    spin(0.1)
    files = [open(os.devnull) for _ in range(7)]
    print("ready", flush=True)
    sys.stdin.read()
    sys.exit(0)
child = subprocess.Popen([sys.executable, __file__, "child"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
for _ in range(3):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
assert child.stdout.readline() == "ready\n"
print("ready", flush=True)
sys.stdin.read()
child.stdin.close()
child.wait()
"""


@pytest.mark.skipif(not _platform.IS_LINUX, reason="the /proc fast path is Linux only")
def test_proc_fast_path_and_psutil_give_the_same_figures_for_a_real_tree(
        tmp_path: Path) -> None:
    """The Linux fast path (one read of /proc/PID/stat per process) and psutil (the
    portable path) must agree on the tree and on every figure of every member."""
    script = tmp_path / "tree.py"
    script.write_text(_TREE_SCRIPT)
    root = subprocess.Popen([sys.executable, str(script), "root"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert root.stdout is not None and root.stdin is not None
    try:
        # the tree is built and quiet once "ready" arrives (EOF instead if it broke)
        assert root.stdout.readline() == "ready\n"
        table = ProcTable()
        table.refresh(())
        fast_tree = sorted(S.tree_of(root.pid, table.children()))
        slow_tree = sorted(S.tree_of(root.pid, S.parent_map()))
        assert fast_tree == slow_tree == sorted(_platform.tree_pids(root.pid))
        assert len(fast_tree) == 2
        # wait (with a deadline) until the tree has settled: two passes in a row agree
        deadline, previous = time.monotonic() + 10, None
        while True:
            table.refresh(fast_tree)
            stats = table.lines
            now = [S.figures_from_stat(pid, stats[pid], want_fds=True) for pid in fast_tree]
            if now == previous or time.monotonic() > deadline:
                break
            previous = now
        rows = []
        for pid in fast_tree:
            fast = S.figures_from_stat(pid, stats[pid], want_fds=True)
            slow = S.figures_by_psutil(psutil.Process(pid), want_fds=True)
            assert fast is not None and slow is not None
            assert fast[0] == pytest.approx(slow[0], abs=0.02), pid  # CPU s, both from stat
            assert fast[1] == slow[1], pid  # RSS, exact (statm) both ways
            approx = S.figures_from_stat(pid, stats[pid], want_fds=False, exact_rss=False)
            assert approx is not None  # stat's own RSS: the kernel's batched estimate
            assert abs(approx[1] - slow[1]) <= S.STAT_RSS_SLACK, pid
            assert fast[2:] == slow[2:], pid  # threads, fds
            rows.append(fast)
        # the figures are the ones the tree really has (so a wrong field cannot agree by luck)
        assert sum(r[0] for r in rows) > 0.15  # the child's spin + the reaped leaf's
        assert sum(r[1] for r in rows) > 32 << 20
        assert sum(r[2] for r in rows) >= 5  # root: main + 3 sleepers; child: 1
        assert sum(r[3] for r in rows) >= 3 + 7
        # and summed per tree by the sampler, both ways
        table.refresh(fast_tree)
        fast_sample = S.measure(S._Track(root.pid), fast_tree, True, table.lines,
                                rss_limit=0)  # near any limit: exact RSS
        slow_sample = S.measure(S._Track(root.pid), fast_tree, True, None)
        assert (fast_sample.pids, fast_sample.processes, fast_sample.fds) == \
            (slow_sample.pids, slow_sample.processes, slow_sample.fds) == \
            (2, sum(r[2] for r in rows), sum(r[3] for r in rows))
        assert fast_sample.rss == slow_sample.rss
    finally:
        root.stdin.close()
        root.wait(10)
