"""Real calls with the supervisor's event loop on uvloop (anyio's asyncio backend option).

``supervisor/io/process_pipes.py`` starts plugins with ``loop.subprocess_exec`` and its
own protocol. uvloop brings its own transports (socketpairs instead of pipes, classes
that do not derive from asyncio's transport ABCs), so these tests pin down that the
callback path is still the one in use there and that every way a call can end behaves
as it does on asyncio: answer, plugin error, timeout, caller cancellation, a crash
mid-call, writes into a dead pipe, plugin-to-host calls. uvloop is in the ``test`` extra
so that they run; it is not a dependency of pipevisor itself (perf/README.md "Speed
options"). Skipped when it is not installed.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import anyio
import pytest

from pipevisor.protocol import ErrorCode, Fault, Notification, local_error
from pipevisor.supervisor import CallTimeout, PluginCrashed, PluginError, Supervisor
from pipevisor.supervisor.engine.connection import Connection, ConnectionCallbacks
from pipevisor.supervisor.errors import CallError
from tests.conftest import no_shim_mode
from tests.supervisor.fake import fake_spec
from tests.supervisor.test_calls import (
    test_caller_cancellation_reaches_the_plugin as _caller_cancel,
)
from tests.supervisor.test_calls import test_plugin_can_call_the_host as _host_calls
from tests.supervisor.test_calls import test_timeout_sends_cancel_to_the_plugin as _timeout
from tests.supervisor.test_lifecycle import (
    test_crash_mid_call_fails_every_call_in_flight_and_restarts as _crash,
)
from tests.supervisor.test_pipes_fast_path import fast_path_in_use

uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (pip install uvloop)")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", {"use_uvloop": True})


async def test_calls_run_on_uvloop_through_the_fast_path() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    async with Supervisor([fake_spec()]) as sup:
        assert await sup.call("fake", "echo", {"text": "hi"}, timeout=10) == {"text": "hi"}
        conn = sup.runner("fake").conn
        assert conn is not None
        assert fast_path_in_use(conn)
        with pytest.raises(PluginError) as info:
            await sup.call("fake", "no_such_method", {}, timeout=10)
        assert info.value.code == ErrorCode.METHOD_NOT_FOUND

        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await sup.call("fake", "echo", {"i": i, "pad": "x" * (i % 50)},
                                        timeout=10)

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(one, i)
        assert all(results[i] == {"i": i, "pad": "x" * (i % 50)} for i in range(500))
        # a message far bigger than the socket buffer, both ways (the drain path)
        big = {"text": "y" * (3 * 1024 * 1024)}
        assert await sup.call("fake", "echo", big, timeout=20) == big


# The asyncio tests themselves, collected again here so they run on this module's
# uvloop backend: timeout, caller cancellation, a crash mid-call, plugin-to-host calls.
test_timeout_on_uvloop_sends_cancel_to_the_plugin = _timeout
test_caller_cancellation_on_uvloop_reaches_the_plugin = _caller_cancel
test_crash_mid_call_on_uvloop_fails_every_call_in_flight_and_restarts = _crash
test_host_calls_on_uvloop = _host_calls


async def test_a_restarted_instance_on_uvloop_takes_the_fast_path_too() -> None:
    async with Supervisor([fake_spec()]) as sup:
        with pytest.raises(PluginCrashed):
            await sup.call("fake", "crash", {"code": 7}, timeout=10)
        assert await sup.call("fake", "echo", ["again"], timeout=10) == ["again"]
        conn = sup.runner("fake").conn
        assert conn is not None
        assert fast_path_in_use(conn)


async def test_writes_into_a_dead_pipe_on_uvloop_end_in_the_call_outcome() -> None:
    """uvloop's transports raise RuntimeError on a write after close where asyncio's do
    not; the connection must check before writing, so a call into a dead pipe still ends
    as a timeout (or, once the owner closes the connection, with its error)."""
    code = "import os, sys; sys.stdin.readline(); os._exit(3)"
    proc = await anyio.open_process([sys.executable, "-c", code],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    notes: list[Notification] = []
    faults: list[Fault] = []
    assert proc.stdin is not None and proc.stdout is not None
    conn = Connection("dying", proc.stdin, proc.stdout,
                      ConnectionCallbacks(notes.append, faults.append), max_line_bytes=4 << 20)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.read_loop, tg)
            with pytest.raises(CallTimeout):  # the plugin reads this one, then exits
                await conn.call("echo", {"pad": "x" * 1000}, timeout=0.3)
            with anyio.fail_after(10):
                await proc.wait()
            for size in (10, 1024 * 1024):  # a small write, and one that has to drain
                with pytest.raises(CallTimeout):
                    await conn.call("echo", {"pad": "x" * size}, timeout=0.3)
            with pytest.raises(anyio.BrokenResourceError):
                await conn.notify("note", {})
            with anyio.fail_after(10):
                await conn.eof.wait()

            async def pending() -> None:
                with pytest.raises(CallError) as info:
                    await conn.call("echo", {})
                assert info.value.code == ErrorCode.PLUGIN_CRASHED

            tg.start_soon(pending)
            with anyio.fail_after(5):  # its slot is registered before the owner closes
                while not conn._slots:
                    await anyio.sleep(0.01)
            conn.close(local_error(ErrorCode.PLUGIN_CRASHED, "exited with code 3"))
    finally:
        await proc.aclose()
    assert proc.returncode == 3
    assert not notes
    assert not faults


@pytest.mark.xfail(no_shim_mode(), strict=True, reason=(
    "uvloop does not implement close_fds (loop.pyx: 'TODO: Implement close_fds') and "
    "leaves its own child ends of the stdio socketpairs open in the child: without the "
    "pvinit shim, which closes every descriptor past stdio before the plugin starts, the "
    "plugin inherits the supervisor's inheritable descriptors."))
async def test_plugin_inherits_no_extra_file_descriptors_on_uvloop() -> None:
    async with Supervisor([fake_spec()]) as sup:
        fds = await sup.call("fake", "fds", timeout=10)
    # as tests/supervisor/test_calls.py: 0-2 the stdio, 3 the plugin's own dup of stdout,
    # one more the listing itself
    assert len(fds) <= 5, fds
