"""A pipevisor.kit plugin driven directly over its pipes: exact bytes, ordering and exit codes."""

from __future__ import annotations

import anyio
import pytest

from pipevisor.protocol import ErrorCode
from tests.plugin_kit.pipes import running

pytestmark = pytest.mark.anyio


async def test_handshake_declares_methods_versions_and_capabilities() -> None:
    async with running() as p:
        result = p.handshake["result"]
        assert result["protocolVersion"] == "1.0"
        assert result["plugin"] == {"name": "kit-test", "version": "2.3.4"}
        assert result["methods"]["echo"] == {"version": "1.2"}
        assert result["methods"]["add"] == {"version": "1.0"}
        assert result["capabilities"] == {"cancel": True, "progress": True, "shutdown": True}
        assert result["hostMethods"] == {"host.q": {"version": "1.0"}}
        await p.close_stdin()
        assert await p.wait() == 0


async def test_requests_before_the_handshake_and_a_bad_protocol_range() -> None:
    async with running(handshake=False) as p:
        answer = await p.request(1, "echo", {"text": "x"})
        assert answer["error"]["code"] == ErrorCode.NOT_INITIALIZED
        answer = await p.request(2, "pipevisor/handshake", {
            "protocol": "pipevisor", "protocolVersions": {"min": "2.0", "max": "3.0"},
            "host": {"name": "t", "version": "0"}, "plugin": {"name": "k", "instance": 1}})
        assert answer["error"]["code"] == ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
        assert answer["error"]["data"]["requested"] == {"min": "2.0", "max": "3.0"}
        await p.close_stdin()
        assert await p.wait() == 0


async def test_params_by_name_by_position_and_wrong_params() -> None:
    async with running() as p:
        assert (await p.request(1, "echo", {"text": "hé"}))["result"] == {"text": "hé"}
        assert (await p.request(2, "add", [2, 40]))["result"] == 42
        assert (await p.request(3, "add", {"a": 1}))["result"] == 1
        assert (await p.request(4, "kwonly", {"flag": True}))["result"] is True
        cases = {
            5: ("echo", {}, "missing required param 'text'"),
            6: ("echo", {"text": "a", "extra": 1}, "unexpected param 'extra'"),
            7: ("add", [1, 2, 3], "at most 2 positional"),
            8: ("echo", None, "missing required param 'text'"),
            9: ("kwonly", [True], "at most 0 positional"),
            10: ("typed", {"n": "x"}, "$.n"),
        }
        for ident, (method, params, words) in cases.items():
            error = (await p.request(ident, method, params))["error"]
            assert error["code"] == ErrorCode.INVALID_PARAMS, error
            assert words in error["message"], error
            assert method in error["message"]


async def test_errors_become_answers_and_the_plugin_keeps_running() -> None:
    async with running() as p:
        error = (await p.request(1, "fail"))["error"]
        assert error == {"code": 4001, "message": "deliberate", "data": {"why": "test"}}
        error = (await p.request(2, "boom"))["error"]
        assert error["code"] == ErrorCode.INTERNAL_ERROR
        assert "KeyError" in error["message"] and "missing-thing" in error["message"]
        error = (await p.request(3, "unjson"))["error"]
        assert error["code"] == ErrorCode.INTERNAL_ERROR and "not JSON" in error["message"]
        error = (await p.request(4, "typed", {"n": -1}))["error"]
        assert error["code"] == ErrorCode.INTERNAL_ERROR and "result_schema" in error["message"]
        error = (await p.request(5, "no.such"))["error"]
        assert error["code"] == ErrorCode.METHOD_NOT_FOUND
        error = (await p.request(6, "pipevisor/nope"))["error"]
        assert error["code"] == ErrorCode.METHOD_NOT_FOUND
        await p.process.stdin.send(b"not json\n")  # type: ignore[union-attr]
        assert (await p.read())["error"]["code"] == ErrorCode.PARSE_ERROR
        assert (await p.request(7, "echo", {"text": "still here"}))["result"] == {
            "text": "still here"}


async def test_print_in_a_handler_goes_to_stderr_and_logging_to_the_host() -> None:
    async with running() as p:
        assert (await p.request(1, "chatty"))["result"] == "ok"
        logs = [m for m in p.lines if m.get("method") == "pipevisor/log"]
        assert logs == [{"jsonrpc": "2.0", "method": "pipevisor/log", "params": {
            "level": "warning", "message": "careful: 42", "logger": "kit.test"}}]
        await p.close_stdin()
        assert await p.wait() == 0
        assert p.process.stderr is not None
        with anyio.fail_after(10):
            err = b"".join([chunk async for chunk in p.process.stderr])
        assert b"this must not reach stdout" in err
        # every stdout line was a protocol message (read() would have failed on anything else)
        assert all(m.get("jsonrpc") == "2.0" for m in p.lines)


async def test_ping_is_answered_while_sync_workers_are_all_blocked() -> None:
    async with running() as p:
        await p.send(id=1, method="block")
        await p.send(id=2, method="block")  # both threads of the pool are now taken
        assert (await p.request(3, "pipevisor/ping", {}))["result"] == {}
        assert (await p.request(4, "sleep", [0]))["result"] == "slept"  # async: no thread
        await p.send(id=5, method="release")
        answers = {(await p.answer_to(i))["result"] for i in (1, 2)}
        assert answers == {"released"}


async def test_progress_is_sent_before_the_answer() -> None:
    async with running() as p:
        assert (await p.request(1, "steps", {"n": 3}))["result"] == 3
        progress = [m["params"] for m in p.lines if m.get("method") == "pipevisor/progress"]
        assert progress == [{"id": 1, "progress": i, "total": 3, "message": f"step {i}"}
                            for i in (1, 2, 3)]


async def test_cancel_async_and_sync_calls() -> None:
    async with running() as p:
        await p.send(id=1, method="sleep", params={"seconds": 30})
        await p.send(id=2, method="spin", params={"seconds": 30})
        assert (await p.request(3, "pipevisor/ping"))["result"] == {}
        await p.send(method="pipevisor/cancel", params={"id": 1, "reason": "test"})
        await p.send(method="pipevisor/cancel", params={"id": 2})
        await p.send(method="pipevisor/cancel", params={"id": 99})  # unknown: ignored
        for ident in (1, 2):
            error = (await p.answer_to(ident))["error"]
            assert error["code"] == ErrorCode.REQUEST_CANCELLED, error


async def test_host_calls_results_errors_and_timeouts() -> None:
    async with running() as p:
        await p.send(id=1, method="ask_host", params={"method": "host.q"})
        call = await p.read()
        assert call["method"] == "host.q" and call["params"] == {"q": "?"}
        await p.send(id=call["id"], result={"a": 1})
        assert (await p.answer_to(1))["result"] == {"a": 1}

        await p.send(id=2, method="ask_host_sync", params={"method": "host.q"})
        call = await p.read()
        await p.send(id=call["id"], error={"code": -32601, "message": "no such host method"})
        error = (await p.answer_to(2))["error"]
        assert error == {"code": -32601, "message": "no such host method"}

        await p.send(id=3, method="ask_host", params={"method": "host.q", "timeout": 0.05})
        call = await p.read()
        cancel = await p.read()
        assert cancel == {"jsonrpc": "2.0", "method": "pipevisor/cancel",
                          "params": {"id": call["id"]}}
        error = (await p.answer_to(3))["error"]
        # the kit's own TIMEOUT is a reserved code: sent on as -32603 with it in data
        assert error["code"] == ErrorCode.INTERNAL_ERROR and "host.q" in error["message"]
        assert error["data"]["reservedCode"] == ErrorCode.TIMEOUT
        await p.send(id=call["id"], result="late")  # dropped silently
        assert (await p.request(4, "pipevisor/ping"))["result"] == {}


async def test_shutdown_finishes_calls_in_flight_then_exits_zero() -> None:
    async with running() as p:
        await p.send(id=1, method="sleep", params={"seconds": 0.2})
        await p.send(id=2, method="pipevisor/shutdown", params={"graceSeconds": 5})
        assert (await p.request(3, "echo", {"text": "late"}))["error"]["code"] == (
            ErrorCode.SHUTTING_DOWN)
        assert (await p.answer_to(1))["result"] == "slept"
        assert (await p.answer_to(2))["result"] is None
        assert await p.wait() == 0  # without stdin being closed


async def test_shutdown_grace_cancels_what_does_not_finish() -> None:
    async with running() as p:
        await p.send(id=1, method="sleep", params={"seconds": 30})
        await p.send(id=2, method="block")
        await p.send(id=3, method="pipevisor/shutdown", params={"graceSeconds": 0.1})
        assert (await p.answer_to(1))["error"]["code"] == ErrorCode.REQUEST_CANCELLED
        assert (await p.answer_to(2))["error"]["code"] == ErrorCode.REQUEST_CANCELLED
        assert (await p.answer_to(3))["result"] is None
        assert await p.wait() == 0  # even with a worker thread still blocked


async def test_eof_exits_zero_after_finishing_work() -> None:
    async with running() as p:
        await p.send(id=1, method="sleep", params={"seconds": 0.1})
        await p.close_stdin()
        assert (await p.answer_to(1))["result"] == "slept"
        assert await p.wait() == 0


async def test_a_reserved_host_error_is_not_sent_on_with_its_reserved_code() -> None:
    """SPEC 10: only pipevisor sends -31049..-31000; a handler that lets the host's such
    error escape answers -32603 and keeps the original in data."""
    async with running() as p:
        for ident, method in ((1, "ask_host"), (2, "ask_host_sync")):
            await p.send(id=ident, method=method, params={"method": "host.q"})
            call = await p.read()
            await p.send(id=call["id"], error={"code": ErrorCode.PLUGIN_STOPPED,
                                               "message": "host is stopping",
                                               "data": {"origin": "pipevisor"}})
            error = (await p.answer_to(ident))["error"]
            assert error["code"] == ErrorCode.INTERNAL_ERROR, error
            assert "host is stopping" in error["message"] and "host.q" in error["message"]
            assert error["data"] == {"origin": "plugin", "reservedCode": ErrorCode.PLUGIN_STOPPED,
                                     "hostMethod": "host.q", "data": {"origin": "pipevisor"}}
        # an application code from the host still goes through unchanged
        await p.send(id=3, method="ask_host", params={"method": "host.q"})
        call = await p.read()
        await p.send(id=call["id"], error={"code": 7, "message": "no", "data": [1]})
        assert (await p.answer_to(3))["error"] == {"code": 7, "message": "no", "data": [1]}


async def test_concurrent_writers_never_cut_into_each_others_lines() -> None:
    """Sync workers, the event loop and the log handler all write to stdout, with lines far
    larger than the pipe's buffer; the host reads only after all calls are sent, so writes
    block half-way. Every line must still arrive whole (read() parses each as JSON)."""
    size, notes, calls = 300_000, 20, 6
    async with running() as p:
        for ident in range(1, calls + 1):
            await p.send(id=ident, method="blast" if ident % 2 else "ablast",
                         params={"size": size, "notes": notes})
        results = {ident: (await p.answer_to(ident))["result"] for ident in range(1, calls + 1)}
        assert all(len(r) == size and r == r[0] * size for r in results.values())
        by_call: dict[int, list[int]] = {}
        for m in p.lines:
            if m.get("method") == "pipevisor/progress":
                by_call.setdefault(m["params"]["id"], []).append(m["params"]["progress"])
        assert by_call == {i: list(range(1, notes + 1)) for i in range(1, calls + 1)}
        logs = [m for m in p.lines if m.get("method") == "pipevisor/log"]
        assert len(logs) == notes * (calls // 2)
        assert all(m["params"]["message"] == "l" * 1000 for m in logs)
