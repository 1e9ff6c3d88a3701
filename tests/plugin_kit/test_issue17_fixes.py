"""Issue 17's plugin_kit fixes, each over the plugin's real pipes.

Every test here failed on the kit before the fix it names: a request and its
cancel in one read went unanswered, a cancel with an array id dropped the rest
of its read, handshakes SPEC 6.5 refuses were accepted, a bare
``{"jsonrpc": "2.0", "id": "x"}`` got no answer, and there were no
notification handlers.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

import anyio
import pytest

from pipevisor.kit import PluginError
from tests.plugin_kit.pipes import DEADLINE, HANDSHAKE, Pipes, running

pytestmark = pytest.mark.anyio

ANSWER_WITHIN = DEADLINE  # a lost answer never comes; a slow box must not fail a good one
FAST_EXIT = 2.5  # seconds; waiting out the grace took 3 s and more (2 s, then 1 s more)


def _line(**message: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n"


async def _send_raw(p: Pipes, data: bytes) -> None:
    """One write: the plugin reads every line of ``data`` in the same read."""
    assert p.process.stdin is not None
    await p.process.stdin.send(data)


async def _answer(p: Pipes, ident: Any) -> dict[str, Any]:
    with anyio.fail_after(ANSWER_WITHIN):
        return await p.answer_to(ident)


async def _loop_reads_stdin(p: Pipes) -> None:
    """Once an async call has been answered, the event loop reads stdin itself: a request
    and its cancel in one read are then dispatched on the loop thread, the case that
    lost the answer (read by the stdin thread, the cancel reached the task later)."""
    assert (await p.request("warm-up", "sleep", [0]))["result"] == "slept"


async def _exit_time(p: Pipes) -> float:
    start = time.monotonic()
    await p.close_stdin()
    assert await p.wait() == 0
    return time.monotonic() - start


# ------------------------------------------------- a cancel in the same read


async def test_an_async_call_cancelled_in_the_same_read_is_answered() -> None:
    """[M-7.2a] The request and its pipevisor/cancel in one read: the task was cancelled
    before its try ran, so it was never answered and EOF waited the whole grace."""
    async with running() as p:
        await _loop_reads_stdin(p)
        await _send_raw(p, _line(id=1, method="sleep", params={"seconds": 30})
                        + _line(method="pipevisor/cancel", params={"id": 1}))
        error = (await _answer(p, 1))["error"]
        assert error["code"] == -31053
        # The id is free again: the same id is a new call, not a dropped duplicate.
        p.lines.clear()
        assert (await p.request(1, "sleep", {"seconds": 0}))["result"] == "slept"
        # Nothing in flight: EOF ends the plugin at once, not after the 2 s grace.
        assert await _exit_time(p) < FAST_EXIT


async def test_a_batch_holding_a_call_cancelled_in_the_same_read_is_answered() -> None:
    async with running() as p:
        await _loop_reads_stdin(p)
        batch = [{"jsonrpc": "2.0", "id": "b1", "method": "sleep", "params": [30]},
                 {"jsonrpc": "2.0", "id": "b2", "method": "echo", "params": {"text": "t"}}]
        await _send_raw(p, json.dumps(batch).encode() + b"\n"
                        + _line(method="pipevisor/cancel", params={"id": "b1"}))
        with anyio.fail_after(ANSWER_WITHIN):
            answer = await p.read()
        assert isinstance(answer, list)
        by_id = {a["id"]: a for a in answer}
        assert by_id["b1"]["error"]["code"] == -31053
        assert by_id["b2"]["result"] == {"text": "t"}
        assert await _exit_time(p) < FAST_EXIT


async def test_a_shutdown_after_a_same_read_cancel_does_not_wait_the_grace() -> None:
    async with running() as p:
        await _loop_reads_stdin(p)
        await _send_raw(p, _line(id=1, method="sleep", params=[30])
                        + _line(method="pipevisor/cancel", params={"id": 1})
                        + _line(id=2, method="pipevisor/shutdown", params={"graceSeconds": 5}))
        start = time.monotonic()
        assert (await _answer(p, 1))["error"]["code"] == -31053
        assert (await _answer(p, 2)) == {"jsonrpc": "2.0", "id": 2, "result": None}
        assert await p.wait() == 0
        assert time.monotonic() - start < FAST_EXIT


# ------------------------------------------- a cancel naming an unusable id


@pytest.mark.parametrize("bad_id", [[1], {"id": 1}])
async def test_a_cancel_with_an_array_or_object_id_is_ignored(bad_id: Any) -> None:
    """[M-7.2b] The rest of the read is still served."""
    async with running() as p:
        await _send_raw(p, _line(method="pipevisor/cancel", params={"id": bad_id})
                        + _line(id=5, method="echo", params={"text": "after"})
                        + _line(id=6, method="sleep", params=[0]))
        assert (await _answer(p, 5))["result"] == {"text": "after"}
        assert (await _answer(p, 6))["result"] == "slept"


# ------------------------------------------------------ handshakes to refuse


def _handshake_params(**changes: Any) -> dict[str, Any]:
    params = dict(HANDSHAKE["params"])
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return params


@pytest.mark.parametrize("changes", [
    {"protocol": "other"}, {"protocol": None}, {"host": None}, {"plugin": None},
    {"host": {"name": "h"}}, {"plugin": {"instance": 1}}, {"protocolVersions": "1.0"},
    {"limits": {"maxLineBytes": 0}}, {"hostMethods": {"m": []}},
], ids=["protocol-other", "no-protocol", "no-host", "no-plugin", "host-no-version",
        "plugin-no-name", "range-as-string", "zero-line-limit", "empty-version-list"])
async def test_a_handshake_whose_params_fail_the_schema_is_refused(changes: Any) -> None:
    """[M-6.5a] -32602 with the fault in data; the plugin stays uninitialised."""
    async with running(handshake=False) as p:
        answer = await p.request(0, "pipevisor/handshake", _handshake_params(**changes))
        assert answer["error"]["code"] == -32602, answer
        assert answer["error"]["data"].startswith("handshake params: $")
        assert (await p.request(1, "echo", {"text": "x"}))["error"]["code"] == -31051
        await p.close_stdin()
        assert await p.wait() == 0


async def test_a_valid_but_unusual_handshake_is_still_accepted() -> None:
    """Members the fast path leaves to the engine (integers written 1.0, extra members)
    still validate against the schema and are accepted."""
    params = _handshake_params(plugin={"name": "k", "instance": 1.0}, **{"x-extra": [1]})
    async with running(handshake=False) as p:
        answer = await p.request(0, "pipevisor/handshake", params)
        assert answer["result"]["protocolVersion"] == "1.0"
        assert (await p.request(1, "internals"))["result"]["fast"] is False


# ------------------------------------------------------------ a bare id


async def test_an_object_with_only_an_id_is_answered_invalid_request() -> None:
    """[M-4.2b]"""
    async with running() as p:
        await p.send(id="x")
        answer = await _answer(p, "x")
        assert answer["error"]["code"] == -32600 and answer["id"] == "x"
        assert (await p.request(1, "echo", {"text": "y"}))["result"] == {"text": "y"}


# ------------------------------------------------------- PluginError codes


def test_plugin_error_points_authors_to_the_codes_spec_gives_them() -> None:
    """[M-10b] SPEC 10 forbids plugins -32768..-30000 but for the codes it defines for
    them: PluginError refuses the local ones and warns about the rest."""
    doc = PluginError.__doc__ or ""
    assert "-32000..-32099" not in doc and "outside -32768..-30000" in doc
    with pytest.raises(ValueError, match=r"outside -32768\.\.-30000") as info:
        PluginError(-31002, "local")
    assert "-32000" not in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for code in (1, -1, 4001, -29999, -32769, -32602, -32603, -31053, -31050):
            assert PluginError(code, "fine").code == code
    for code in (-32000, -32099, -31500, -31060, -30000):
        with pytest.warns(FutureWarning, match="reserved"):
            PluginError(code, "reserved")


# --------------------------------------------------- notification handlers


async def _notes_until(p: Pipes, want: list[Any], start: int) -> list[Any]:
    """Ask for the recorded notifications until ``want`` is there (handlers run in
    worker threads, concurrently with the call that reads them)."""
    ident = start
    with anyio.fail_after(ANSWER_WITHIN):
        while True:
            got: list[Any] = (await p.request(ident, "notes"))["result"]
            if sorted(map(str, got)) == sorted(map(str, want)):  # handlers run concurrently
                return got
            assert len(got) <= len(want), got
            ident += 1
            await anyio.sleep(0.01)


async def test_notification_handlers_get_checked_params_and_are_never_answered() -> None:
    """[M-4.4b] [M-4.4c] Valid params reach the handler; invalid ones are logged, not
    answered; a failing handler is logged; unknown notifications are ignored."""
    async with running() as p:
        await p.send(method="note.add", params={"value": 1})
        await p.send(method="note.add", params={"value": "not an integer"})  # schema
        await p.send(method="note.add", params={"value": 2, "extra": True})  # signature
        await p.send(method="note.boom")
        await p.send(method="no.such.notification", params=[1])
        await p.send(method="note.async", params=[3])
        await p.send(method="note.add", params={"value": 4})
        await _notes_until(p, [1, ["async", 3], 4], 100)
        # The log says why two were dropped and one failed (handlers run in workers:
        # wait for the three lines rather than assume they came before the answers).
        wanted = ("note.add ignored: invalid params: $.value", "unexpected param 'extra'",
                  "note.boom failed")

        def logs() -> list[str]:
            return [m["params"]["message"] for m in p.lines
                    if m.get("method") == "pipevisor/log"]

        with anyio.fail_after(ANSWER_WITHIN):
            while not all(any(w in text for text in logs()) for w in wanted):
                await p.read()
        # Nothing answered any of the notifications.
        assert (await p.request("last", "notes"))["result"]
        assert not any("error" in m or ("result" in m and not isinstance(m["id"], int)
                                        and m["id"] != "last") for m in p.lines), p.lines


async def test_notifications_before_the_handshake_are_ignored() -> None:
    """[M-6.1c]"""
    async with running(handshake=False) as p:
        await p.send(method="note.add", params={"value": 9})
        await p.send(**{k: v for k, v in HANDSHAKE.items() if k != "jsonrpc"})
        await _answer(p, 0)
        assert (await p.request(1, "notes"))["result"] == []


def test_notification_names_follow_the_method_rules() -> None:
    from pipevisor.kit import Plugin

    plugin = Plugin("n")
    for name in ("pipevisor/cancel", "rpc.x", "$/x", ""):
        with pytest.raises(ValueError):
            plugin.notification(name)
    plugin.notification("a")(lambda: None)
    with pytest.raises(ValueError, match="twice"):
        plugin.notification("a")(lambda: None)
