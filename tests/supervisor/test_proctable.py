"""The Linux process table behind the limit sampler (supervisor/proc/proctable.py), on real
processes: new ones found through the pid cursor, threads kept out, kept descriptors
following the process and not its number, idle processes answered from schedstat,
and the limit sampler still catching a burst after a long idle stretch."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from pipevisor.supervisor import Supervisor, SupervisorConfig
from pipevisor.supervisor.engine.limits import Limit, LimitAction, Limits
from pipevisor.supervisor.proc import containment as _platform
from pipevisor.supervisor.proc.proctable import RANGE_MAX, ProcTable, last_pid
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.skipif(not _platform.IS_LINUX, reason="/proc is Linux only")

HOG = str(Path(__file__).resolve().parent.parent / "plugins" / "hog.py")
MiB = 1 << 20

_CHILD = r"""
import sys, threading
if "thread" in sys.argv:
    threading.Thread(target=threading.Event().wait, daemon=True).start()
held = []
print("ready", flush=True)
for line in sys.stdin:
    held.append(bytearray(b"\x01") * (int(line) << 20))  # written, so resident
    print("ok", flush=True)
"""


@contextmanager
def child(*args: str) -> Iterator[subprocess.Popen[str]]:
    """A python child that idles on stdin and allocates N MiB per line it reads."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(10)


def until(condition: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline} s: {what}")
        time.sleep(0.01)


def rss_pages(line: bytes) -> int:
    return int(line.split(b" ")[21])


def test_a_new_child_is_found_without_a_full_pass() -> None:
    table = ProcTable()
    table.refresh(())
    assert table.passes["full"] == 1
    with child() as proc:
        table.refresh(())
        assert table.changed
        assert proc.pid in table.children()[os.getpid()]
        assert table.passes["full"] == 1  # found through the cursor (a range or a listing)
        assert table.passes["range"] + table.passes["list"] >= 1


def test_a_refresh_with_no_new_pid_changes_nothing() -> None:
    table = ProcTable()
    table.refresh(())
    # retried: other processes on the machine may start between the two refreshes
    def quiet_refresh() -> bool:
        before = table.passes["none"]
        table.refresh(())
        return table.passes["none"] > before and not table.changed
    until(quiet_refresh, "a refresh with an unmoved pid cursor", deadline=30)


def test_new_threads_are_not_taken_for_processes() -> None:
    table = ProcTable()
    table.refresh(())
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert thread.native_id is not None
        cursor = last_pid()
        assert cursor is not None and cursor >= thread.native_id  # its tid was handed out
        table.refresh(())
        assert thread.native_id not in table.lines
        assert os.getpid() in table.lines
    finally:
        stop.set()
        thread.join()


def test_a_kept_descriptor_follows_the_process_and_drops_it_when_reaped() -> None:
    table = ProcTable()
    table.refresh(())
    with child() as proc:
        pid = proc.pid
        table.refresh({pid})
        assert pid in table.lines and table.kept_fds == 2  # stat + schedstat
    # reaped by the context manager
    table.refresh({pid})
    assert pid not in table.lines and pid not in table.parent
    assert table.changed and table.kept_fds == 0


def test_an_idle_process_is_answered_from_schedstat_until_it_runs() -> None:
    table = ProcTable()
    table.refresh(())
    with child() as proc:
        assert proc.stdin is not None and proc.stdout is not None
        table.refresh({proc.pid})
        first = table.lines[proc.pid]

        def skipped() -> bool:
            before = table.skipped_reads
            table.refresh({proc.pid})
            return table.skipped_reads > before
        until(skipped, "a refresh answered from the kept line")
        assert table.lines[proc.pid] == first or rss_pages(table.lines[proc.pid]) == \
            rss_pages(first)
        reads = table.stat_reads
        proc.stdin.write("40\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "ok\n"
        table.refresh({proc.pid})
        assert table.stat_reads == reads + 1  # it ran: stat is read again
        grown = rss_pages(table.lines[proc.pid]) - rss_pages(first)
        assert grown * os.sysconf("SC_PAGE_SIZE") >= 38 * MiB


def test_a_multi_threaded_process_always_reads_stat() -> None:
    table = ProcTable()
    table.refresh(())
    with child("thread") as proc:
        table.refresh({proc.pid})
        assert table.kept_fds == 1  # no schedstat: another thread could run unseen
        skipped, reads = table.skipped_reads, table.stat_reads
        for _ in range(3):
            table.refresh({proc.pid})
        assert table.skipped_reads == skipped and table.stat_reads == reads + 3


def test_a_wrapped_or_jumping_cursor_falls_back_to_reading_proc() -> None:
    """A pid-space wrap cannot be made to happen in a test; the cursor it would leave
    behind can: lower than the last one seen means a full pass, a jump beyond
    ``RANGE_MAX`` a listing of /proc."""
    table = ProcTable()
    table.refresh(())
    cursor = last_pid()
    assert cursor is not None
    table._cursor = cursor + 100_000  # the cursor went down since: it wrapped
    table.refresh(())
    assert table.passes["full"] == 2
    with child() as proc:
        table._cursor = max(0, proc.pid - RANGE_MAX - 10)
        table.refresh(())
        assert table.passes["list"] == 1 and table.passes["full"] == 2
        assert proc.pid in table.children()[os.getpid()]


def test_the_descriptor_budget_is_respected() -> None:
    table = ProcTable(max_kept_fds=2)
    table.refresh(())
    with child() as a, child() as b:
        table.refresh({a.pid, b.pid})
        assert table.kept_fds <= 2
        assert a.pid in table.lines and b.pid in table.lines  # the other read by path



@pytest.mark.anyio
async def test_a_burst_after_a_long_idle_stretch_is_still_caught() -> None:
    """The sampler answers idle trees from schedstat and skips checks whose figures did
    not move; a plugin that idles for many ticks and then allocates must still be
    caught at the next tick."""
    limits = Limits(memory=Limit(60 * MiB, LimitAction.WARN))
    spec = fake_spec("hog", limits=limits, command=(sys.executable, HOG, "idle"))
    sup = Supervisor(SupervisorConfig(plugins=[spec], sample_interval=0.05))
    async with sup, sup.subscribe() as events:
        await sup.wait_ready(timeout=10)
        table = sup.sampler.table
        assert table is not None
        with anyio.fail_after(10):
            while table.skipped_reads < 10:  # idle ticks answered without reading stat
                await anyio.sleep(0.05)
        resources = sup.runner("hog").resources
        assert resources is not None and resources["rss"] < 60 * MiB
        await sup.call("hog", "alloc", {"bytes": 80 * MiB}, timeout=10)
        with anyio.fail_after(10):
            while True:
                ev = await events.next()
                if ev.kind == "limit" and ev.plugin == "hog":
                    break
        assert ev.detail["limit"] == "memory" and ev.detail["value"] > 60 * MiB
