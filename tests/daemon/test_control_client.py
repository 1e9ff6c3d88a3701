"""The blocking Client (run on worker threads, as a host application would) against a real
control server: the same results and exception classes as the embedded Supervisor."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor.client import Client, DaemonNotRunning
from pipevisor.supervisor.errors import CallTimeout, PluginCrashed, PluginError, PluginUnavailable
from tests.daemon.control_helpers import running
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio


def _in_thread(fn: Any, *args: Any) -> Any:
    return anyio.to_thread.run_sync(fn, *args)


def test_daemon_not_running_names_the_socket(sock_dir: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.path.join(sock_dir, "absent.sock")
    with pytest.raises(DaemonNotRunning, match=path):
        Client(path)
    monkeypatch.setenv("PIPEVISOR_SOCKET", path)
    with pytest.raises(DaemonNotRunning, match=path):
        Client()


async def test_same_semantics_as_embedded(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path) as sup:
        def embedded_vs_remote() -> list[tuple[str, Any]]:
            seen: list[tuple[str, Any]] = []
            with Client(path) as c:
                seen.append(("echo", c.call("a", "echo", {"v": 1})))
                for method, params, timeout in (("nope", None, None),
                                                ("sleep", {"seconds": 30}, 0.2)):
                    try:
                        c.call("a", method, params, timeout=timeout)
                    except Exception as exc:
                        seen.append((method, exc))
                try:
                    c.call("ghost", "echo")
                except Exception as exc:
                    seen.append(("ghost", exc))
            return seen

        seen = dict(await _in_thread(embedded_vs_remote))
        assert seen["echo"] == {"v": 1}
        assert isinstance(seen["nope"], PluginError)
        assert seen["nope"].code == ErrorCode.METHOD_NOT_FOUND
        assert isinstance(seen["sleep"], CallTimeout)
        assert isinstance(seen["ghost"], PluginUnavailable)
        # the embedded supervisor raises the same classes with the same codes
        with pytest.raises(PluginError) as embedded:
            await sup.call("a", "nope")
        assert embedded.value.error == seen["nope"].error


async def test_threads_share_one_client(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path):
        def many() -> list[Any]:
            with Client(path) as c, ThreadPoolExecutor(8) as pool:
                return list(pool.map(lambda i: c.call("a", "echo", [i]), range(200)))

        assert await _in_thread(many) == [[i] for i in range(200)]


async def test_sync_subscribe_sees_crash_and_restart(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    async with running([fake_spec("a")], path) as sup:
        def watch() -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            with Client(path) as c, c.subscribe(plugins=["a"]) as events:
                with pytest.raises(PluginCrashed):
                    c.call("a", "crash", {"code": 9})
                for ev in events:
                    seen.append(ev)
                    if ev["kind"] == "state" and ev["to"] == "ready":
                        return seen
            return seen

        with anyio.fail_after(30):
            seen = await _in_thread(watch)
        kinds = [e["kind"] for e in seen]
        assert "exit" in kinds
        exit_event = next(e for e in seen if e["kind"] == "exit")
        assert exit_event["returncode"] == 9
        await sup.wait_ready(timeout=20)
