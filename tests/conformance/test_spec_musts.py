"""Every plugin-side MUST of protocol/SPEC.md, checked on a pipevisor.kit plugin over its
real pipes. Each test names the ids it checks; every line the plugin writes also goes
through wire.check_line ([M-3.1a] [M-3.1b] [M-4.1a] [M-4.1b] [M-4.1c] [M-5b])."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipevisor.kit import Plugin
from tests.conformance.wire import PLUGIN, Checked, check_line, conformance
from tests.plugin_kit.pipes import DEADLINE, HANDSHAKE

pytestmark = pytest.mark.anyio

MIB16 = 16 * 1024 * 1024


def _handshake(**params: Any) -> dict[str, Any]:
    return {**HANDSHAKE["params"], **params}


async def _handshaken(p: Checked, **params: Any) -> dict[str, Any]:
    return await p.request(0, "pipevisor/handshake", _handshake(**params))


# --------------------------------------------------------------- 1, 2, 3


async def test_m_1a_unknown_members_are_ignored() -> None:
    """[M-1a] Unknown members in the handshake params and in a request are ignored."""
    async with conformance(handshake=False) as p:
        answer = await _handshaken(p, **{"x-vendor": {"a": 1}}, host={
            "name": "h", "version": "1", "x-extra": True})
        assert answer["result"]["protocolVersion"] == "1.0"
        await p.send(id=1, method="text", params={"text": "t"}, **{"x-trace": "abc"})
        assert (await p.answer_to(1))["result"] == "t"


async def test_m_2_1a_any_working_directory(tmp_path: Path) -> None:
    """[M-2.1a]"""
    async with conformance(cwd=str(tmp_path)) as p:
        assert (await p.request(1, "cwd"))["result"] == str(tmp_path)
        assert (await p.request(2, "get_data"))["result"] == ["hello", 5]


async def test_m_2_3a_stdout_holds_protocol_lines_only() -> None:
    """[M-2.3a] A print() and a raw write to fd 1 in a handler land on stderr."""
    async with conformance() as p:
        assert (await p.request(1, "print"))["result"] == "printed"
        assert (await p.request(2, "get_data"))["result"] == ["hello", 5]
        await p.close_stdin()
        assert await p.wait() == 0
        assert p.process.stdout is not None and p.process.stderr is not None
        with anyio.fail_after(DEADLINE):
            rest = b"".join([chunk async for chunk in p.process.stdout])
            err = b"".join([chunk async for chunk in p.process.stderr])
        for line in rest.splitlines(keepends=True):
            check_line(line)
        assert b"a stray print" in err and b"a stray write to fd 1" in err


async def test_m_3_1a_m_3_1b_lines_are_one_strict_json_text() -> None:
    """[M-3.1a] [M-3.1b] CR, LF and U+2028 are escaped; a lone surrogate is not sent
    but answered -32603; NaN never appears."""
    async with conformance() as p:
        tricky = "a\nb\rc\u2028d\u2029e\x00f"
        assert (await p.request(1, "text", {"text": tricky}))["result"] == tricky
        error = (await p.request(2, "surrogate"))["error"]
        assert error["code"] == -32603 and "not JSON" in error["message"]
        assert (await p.request(3, "nan"))["result"] is None


async def test_m_3_2a_reading_splits_at_lf_only() -> None:
    """[M-3.2a] Split at 0x0A only, one CR dropped, blank lines skipped, U+2028 raw
    inside a string kept."""
    async with conformance() as p:
        raw = '{"jsonrpc":"2.0","id":1,"method":"text","params":{"text":"x\u2028y\u2029z"}}'
        await p.send_raw(b"\n  \t\n" + raw.encode() + b"\r\n" + b"\r\n")
        assert (await p.answer_to(1))["result"] == "x\u2028y\u2029z"
        # A CR inside a line does not end it: two requests joined by one are one bad line.
        await p.send_raw(b'{"jsonrpc":"2.0","id":2,"method":"get_data"}\r'
                         b'{"jsonrpc":"2.0","id":3,"method":"get_data"}\n')
        answer = await p.read()
        assert answer["id"] is None and answer["error"]["code"] == -32700
        assert (await p.request(4, "get_data"))["result"] == ["hello", 5]
        assert not any(isinstance(m, dict) and m.get("id") in (2, 3) for m in p.lines)


async def test_m_3_3a_m_3_3c_the_handshake_line_limit_both_ways() -> None:
    """[M-3.3a] A result longer than limits.maxLineBytes is not sent (-32603 instead).
    [M-3.3c] A longer input line is skipped, answered -32700, and reading goes on."""
    async with conformance(handshake=False) as p:
        await _handshaken(p, limits={"maxLineBytes": 1000})
        assert (await p.request(1, "big", {"n": 900}))["result"] == "b" * 900
        error = (await p.request(2, "big", {"n": 5000}))["error"]
        assert error["code"] == -32603 and "maxLineBytes" in error["message"]
        await p.send(id=3, method="text", params={"text": "x" * 2000})
        answer = await p.read()
        assert answer["id"] is None and answer["error"]["code"] == -32700
        assert (await p.request(4, "get_data"))["result"] == ["hello", 5]
        assert not any(m.get("id") == 3 for m in p.lines if isinstance(m, dict))


async def test_m_3_3b_sixteen_mib_when_the_handshake_names_no_limit() -> None:
    """[M-3.3b] Just under 16 MiB is read; just over it is skipped as too long."""
    async with conformance() as p:
        head = b'{"jsonrpc":"2.0","id":1,"method":"size","params":{"text":"'
        tail = b'"}}'
        fits = head + b"s" * (MIB16 - len(head) - len(tail)) + tail
        assert len(fits) == MIB16
        await p.send_raw(fits + b"\n")
        assert (await p.answer_to(1))["result"] == MIB16 - len(head) - len(tail)
        await p.send_raw(fits.replace(b'"id":1', b'"id":2').replace(b"ss", b"sss", 1) + b"\n")
        answer = await p.read()
        assert answer["id"] is None and answer["error"]["code"] == -32700
        assert (await p.request(3, "get_data"))["result"] == ["hello", 5]


# ------------------------------------------------------------------- 4, 5


async def test_m_4_3a_the_plugins_own_request_ids_are_unique() -> None:
    """[M-4.3a] [M-8c] Host calls in flight at once carry distinct ids; host requests,
    responses and notifications interleave on stdin in any order."""
    async with conformance() as p:
        await p.send(id=1, method="ask_host", params={"method": "host.q", "times": 3})
        calls = []
        while len(calls) < 3:
            msg = await p.read()
            if isinstance(msg, dict) and msg.get("method") == "host.q":
                calls.append(msg)
        assert len({json.dumps(c["id"]) for c in calls}) == 3
        assert all(c["id"] is not None for c in calls)
        # Interleave: a request, a notification and the answers in reverse order.
        await p.send(id=2, method="pipevisor/ping", params={})
        await p.send(method="update", params=[9])
        for call in reversed(calls):
            await p.send(id=call["id"], result={"n": call["params"]["n"]})
            await p.send(id=f"x{call['params']['n']}", method="get_data")
        assert (await p.answer_to(2))["result"] == {}
        assert (await p.answer_to(1))["result"] == [{"n": 0}, {"n": 1}, {"n": 2}]
        for n in range(3):
            assert (await p.answer_to(f"x{n}"))["result"] == ["hello", 5]


def test_m_5a_reserved_names_cannot_be_declared() -> None:
    """[M-5a]"""
    plugin = Plugin("p")
    for name in ("pipevisor/handshake", "pipevisor/x", "rpc.discover", "$/cancel"):
        with pytest.raises(ValueError, match="reserved"):
            plugin.method(name)
    assert plugin._handshake_result((1, 0))["methods"] == {}


# ---------------------------------------------------------------------- 6


async def test_m_6_1a_m_6_1b_before_the_handshake() -> None:
    """[M-6.1a] [M-6.1b] An early request gets -31051 and is otherwise ignored; nothing
    else is written before the handshake answer."""
    async with conformance(handshake=False) as p:
        await p.send(id="early", method="get_data")
        await p.send(method="update", params=[1])
        await p.send(id=0, method="pipevisor/handshake", params=HANDSHAKE["params"])
        before: list[Any] = []
        while True:
            msg = await p.read()
            if isinstance(msg, dict) and msg.get("id") == 0:
                break
            before.append(msg)
        assert [m["id"] for m in before if m.get("method") != "pipevisor/log"] == ["early"]
        assert before[-1]["error"]["code"] == -31051
        assert (await p.request(1, "heard"))["result"] == []  # [M-6.1c]


async def test_m_6_1d_a_second_handshake_is_refused_and_changes_nothing() -> None:
    """[M-6.1d]"""
    async with conformance() as p:
        answer = await p.request(5, "pipevisor/handshake", _handshake(
            protocolVersions={"min": "2.0", "max": "2.0"}, limits={"maxLineBytes": 10}))
        assert answer["error"]["code"] == -32600 and "once" in answer["error"]["message"]
        assert (await p.request(6, "text", {"text": "y" * 100}))["result"] == "y" * 100


@pytest.mark.parametrize(("offer", "chosen"), [
    ({"min": "1.0", "max": "2.7"}, "1.0"), ({"min": "0.1", "max": "1.0"}, "1.0"),
    ({"min": "1.0", "max": "1.0"}, "1.0"), ({"min": "0.9", "max": "1.10"}, "1.0")])
async def test_m_6_4a_the_highest_common_version(offer: Any, chosen: str) -> None:
    """[M-6.4a]"""
    async with conformance(handshake=False) as p:
        answer = await _handshaken(p, protocolVersions=offer)
        assert answer["result"]["protocolVersion"] == chosen


async def test_m_6_4b_no_common_version() -> None:
    """[M-6.4b]"""
    async with conformance(handshake=False) as p:
        error = (await _handshaken(p, protocolVersions={"min": "2.0", "max": "3.1"}))["error"]
        assert error["code"] == -31050
        assert error["data"] == {"supported": {"min": "1.0", "max": "1.0"},
                                 "requested": {"min": "2.0", "max": "3.1"}}


async def test_m_6_5a_params_the_schema_refuses() -> None:
    """[M-6.5a] (more cases in tests/plugin_kit/test_issue17_fixes.py)"""
    async with conformance(handshake=False) as p:
        params = {k: v for k, v in HANDSHAKE["params"].items() if k != "host"}
        answer = await p.request(0, "pipevisor/handshake", {**params, "protocol": "other"})
        assert answer["error"]["code"] == -32602


# ---------------------------------------------------------------------- 7


async def _block_every_worker(p: Checked, count: int) -> None:
    for i in range(count):
        await p.send(id=f"block-{i}", method="block")


async def test_m_7_1a_m_6_3a_ping_while_every_worker_is_busy() -> None:
    """[M-7.1a] [M-6.3a] Pings are answered at once while every worker is blocked and
    more calls wait for one."""
    async with conformance() as p:
        await _block_every_worker(p, 6)  # the plugin has 4 workers
        start = time.monotonic()
        for i in range(3):
            assert (await p.request(f"ping-{i}", "pipevisor/ping", {}))["result"] == {}
        assert time.monotonic() - start < 2.0
        assert not any(isinstance(m, dict) and str(m.get("id")).startswith("block")
                       for m in p.lines)
        await p.send(id="r", method="release")  # waits for a worker: runs after a block
        for i in range(6):
            assert (await p.answer_to(f"block-{i}"))["result"] == "released"


async def test_m_7_3_shutdown() -> None:
    """[M-7.3a] new calls -31052, pings answered; [M-7.3b] work cut off answered
    -31053 within graceSeconds; [M-7.3c] then the shutdown's null; [M-7.3d] exit 0
    with stdin still open."""
    async with conformance() as p:
        await p.send(id=1, method="sleep", params=[30])
        await p.send(id=2, method="sleep", params=[0.2])
        start = time.monotonic()
        await p.send(id=3, method="pipevisor/shutdown", params={"graceSeconds": 1})
        await p.send(id=4, method="get_data")
        await p.send(id=5, method="pipevisor/ping", params={})
        assert (await p.answer_to(4))["error"]["code"] == -31052
        assert (await p.answer_to(5))["result"] == {}
        assert (await p.answer_to(2))["result"] == "slept"
        assert (await p.answer_to(1))["error"]["code"] == -31053
        assert (await p.answer_to(3)) == {"jsonrpc": "2.0", "id": 3, "result": None}
        order = [m.get("id") for m in p.lines if isinstance(m, dict)]
        assert order.index(1) < order.index(3) and order.index(2) < order.index(3)
        assert await p.wait() == 0
        assert time.monotonic() - start < 1.0 + 0.5


async def test_m_7_3b_graceseconds_defaults_to_two() -> None:
    """[M-7.3b] Without graceSeconds a call needing 1 s is let finish."""
    async with conformance() as p:
        await p.send(id=1, method="sleep", params=[1.0])
        await p.send(id=2, method="pipevisor/shutdown", params={})
        assert (await p.answer_to(1))["result"] == "slept"
        assert (await p.answer_to(2))["result"] is None
        assert await p.wait() == 0


async def test_m_6_3a_shutdown_is_answered_while_every_worker_is_busy() -> None:
    """[M-6.3a] [M-7.3b] Sync work that ignores cancellation is answered -31053 at the
    end of the grace, then the shutdown, then the process exits."""
    async with conformance() as p:
        await _block_every_worker(p, 6)
        await p.send(id="s", method="pipevisor/shutdown", params={"graceSeconds": 0.3})
        for i in range(6):
            assert (await p.answer_to(f"block-{i}"))["error"]["code"] == -31053
        assert (await p.answer_to("s"))["result"] is None
        assert await p.wait() == 0


async def test_m_7_5_progress_grows_and_comes_before_the_answer() -> None:
    """[M-7.5a] [M-7.5b]"""
    async with conformance() as p:
        assert (await p.request(1, "steps", {"n": 5}))["result"] == 5
        progress = [m["params"] for m in p.lines
                    if isinstance(m, dict) and m.get("method") == "pipevisor/progress"]
        assert [m["progress"] for m in progress] == [1, 2, 3, 4, 5]
        assert all(m["id"] == 1 and m["total"] == 5 for m in progress)
        answered = next(i for i, m in enumerate(p.lines) if isinstance(m, dict)
                        and m.get("id") == 1 and "method" not in m)
        assert all(p.lines.index({"jsonrpc": "2.0", "method": "pipevisor/progress",
                                  "params": m}) < answered for m in progress)


# ---------------------------------------------------------------------- 9


async def test_m_9_1a_end_of_input_with_work_in_flight() -> None:
    """[M-9.1a] EOF: exit 0 within 2 s, work in flight cut off and answered -31053."""
    async with conformance() as p:
        await p.send(id=1, method="sleep", params=[30])
        await p.send(id=2, method="get_data")
        assert (await p.answer_to(2))["result"] == ["hello", 5]
        start = time.monotonic()
        await p.close_stdin()
        assert (await p.answer_to(1))["error"]["code"] == -31053
        assert await p.wait() == 0
        assert time.monotonic() - start < 2.0


def test_m_9_1b_exit_when_stdout_is_gone() -> None:
    """[M-9.1b] Nobody reads the answers any more: the plugin exits by itself.
    (subprocess, not anyio: closing anyio's stdout stream leaves the pipe open.)"""
    process = subprocess.Popen([sys.executable, PLUGIN], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(HANDSHAKE).encode() + b"\n")
        process.stdin.flush()
        assert json.loads(process.stdout.readline())["id"] == 0
        process.stdout.close()  # the host is gone
        for ident in range(1, 4):
            process.stdin.write(json.dumps({"jsonrpc": "2.0", "id": ident,
                                            "method": "get_data"}).encode() + b"\n")
            process.stdin.flush()
        process.wait(timeout=DEADLINE)  # stdin still open: it left on the failed write
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()


async def test_m_9_2a_sigterm_ends_the_plugin_at_once() -> None:
    """[M-9.2a]"""
    async with conformance() as p:
        await p.send(id=1, method="sleep", params=[30])
        await p.send(id=2, method="get_data")
        await p.answer_to(2)
        p.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(2.0):
            await p.process.wait()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
async def test_m_9_3a_no_detached_children() -> None:
    """[M-9.3a] The kit starts no process of its own, so it has none to detach."""
    async with conformance() as p:
        assert (await p.request(1, "sleep", [0]))["result"] == "slept"
        pid = (await p.request(2, "pid"))["result"]
        assert pid == p.process.pid
        tasks = Path(f"/proc/{pid}/task")
        children = "".join((task / "children").read_text() for task in tasks.iterdir()
                           if (task / "children").exists())
        assert children.split() == []
        assert os.getsid(pid) == os.getsid(0)  # it did not escape into a session of its own


# --------------------------------------------------------------------- 10


async def test_m_10a_a_local_code_from_the_host_is_not_passed_on() -> None:
    """[M-10a] The host's -31005 reaching a handler uncaught is answered -32603 with the
    original in data, never as -31005."""
    async with conformance() as p:
        await p.send(id=1, method="ask_host", params={"method": "host.q"})
        call = await p.read()
        while not (isinstance(call, dict) and call.get("method") == "host.q"):
            call = await p.read()
        await p.send(id=call["id"], error={"code": -31005, "message": "unavailable",
                                           "data": {"origin": "pipevisor"}})
        error = (await p.answer_to(1))["error"]
        assert error["code"] == -32603
        assert error["data"]["reservedCode"] == -31005 and error["data"]["origin"] == "plugin"
