"""plugin_kit plugins run as real children of the real Supervisor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor import (
    CallError,
    HealthPolicy,
    PluginError,
    PluginSpec,
    PluginState,
    StopPolicy,
    Supervisor,
)
from tests.plugin_kit.pipes import KIT_PLUGIN

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python-plugin-kit" / \
    "pipevisor-kit-echo"
DEADLINE = 10.0


def spec(name: str, command: tuple[str, ...]) -> PluginSpec:
    return PluginSpec(name, command, autostart=False,
                      stop=StopPolicy(shutdown_grace=2.0, eof_grace=2.0, term_grace=2.0),
                      health=HealthPolicy(handshake_timeout=DEADLINE, ping_interval=0.1))


async def test_kit_plugin_serves_calls_errors_and_host_calls() -> None:
    async with Supervisor([spec("kit", (sys.executable, KIT_PLUGIN))]) as sup:
        @sup.host_method("host.q")
        async def host_q(q: str) -> dict[str, Any]:
            return {"answer": q * 2}

        sup.start("kit")
        await sup.wait_ready(timeout=DEADLINE)
        [status] = sup.status()
        assert status["state"] == "ready"
        assert {"echo", "add", "sleep", "ask_host"} <= set(status["methods"])
        # declared with uses_host_method; this host has no interface files for it
        assert status["host_methods"]["host.q"]["how"] == "no-interface"
        assert status["host_methods"]["host.q"]["plugin"] == "1.0"
        assert await sup.call("kit", "echo", {"text": "hi"}, timeout=DEADLINE) == {"text": "hi"}
        assert await sup.call("kit", "add", [1, 2], timeout=DEADLINE) == 3
        assert await sup.call("kit", "ask_host", {"method": "host.q"},
                              timeout=DEADLINE) == {"answer": "??"}
        assert await sup.call("kit", "ask_host_sync", {"method": "host.q"},
                              timeout=DEADLINE) == {"answer": "??"}
        with pytest.raises(PluginError) as bad:
            await sup.call("kit", "echo", {}, timeout=DEADLINE)
        assert bad.value.code == ErrorCode.INVALID_PARAMS
        with pytest.raises(PluginError) as boom:
            await sup.call("kit", "boom", timeout=DEADLINE)
        assert boom.value.code == ErrorCode.INTERNAL_ERROR
        # a timed-out call is cancelled; the plugin stays healthy and answers the next call
        with pytest.raises(CallError):
            await sup.call("kit", "sleep", {"seconds": 30}, timeout=0.2)
        assert await sup.call("kit", "sleep", {"seconds": 0}, timeout=DEADLINE) == "slept"
        sup.stop("kit")
        await sup.runner("kit").wait_state({PluginState.STOPPED}, DEADLINE)
        assert sup.status()[0]["state"] == "stopped"


async def test_example_under_the_supervisor() -> None:
    async with Supervisor([spec("echo", (str(EXAMPLE),))]) as sup, sup.subscribe() as sub:
        @sup.host_method("host.name")
        async def host_name() -> dict[str, str]:
            return {"name": "tester"}

        sup.start("echo")
        await sup.wait_ready(timeout=DEADLINE)
        assert await sup.call("echo", "echo", {"text": "☃"}, timeout=DEADLINE) == {"text": "☃"}
        assert await sup.call("echo", "count", {"n": 3, "delay": 0}, timeout=DEADLINE) == {
            "counted": 3}
        assert await sup.call("echo", "greet", timeout=DEADLINE) == {"greeting": "hello, tester"}
        with pytest.raises(PluginError) as bad:
            await sup.call("echo", "count", {"n": -1}, timeout=DEADLINE)
        assert bad.value.code == ErrorCode.INVALID_PARAMS
        kinds: set[str] = set()
        with anyio.fail_after(DEADLINE):
            while not {"log", "progress"} <= kinds:
                kinds.add((await sub.next()).kind)


def test_example_is_executable_and_the_import_stays_light() -> None:
    assert os.access(EXAMPLE, os.X_OK)
    assert EXAMPLE.read_text().startswith("#!/usr/bin/env python3\n")
    code = ("import sys, pipevisor.kit; heavy = {'jsonschema', 'anyio', 'psutil', 'click'} & "
            "{m.split('.')[0] for m in sys.modules}; print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=DEADLINE, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_caller_hears_the_progress_of_its_own_call_only() -> None:
    async with Supervisor([spec("kit", (sys.executable, KIT_PLUGIN))]) as sup:
        sup.start("kit")
        await sup.wait_ready(timeout=DEADLINE)
        heard: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        results: dict[str, Any] = {}

        async def steps(who: str, n: int) -> None:
            results[who] = await sup.call("kit", "steps", {"n": n}, timeout=DEADLINE,
                                          on_progress=heard[who].append)

        async with anyio.create_task_group() as tg:
            tg.start_soon(steps, "a", 3)
            tg.start_soon(steps, "b", 5)
        assert results == {"a": 3, "b": 5}
        assert [p["progress"] for p in heard["a"]] == [1, 2, 3]
        assert [p["progress"] for p in heard["b"]] == [1, 2, 3, 4, 5]
        assert heard["b"][-1]["total"] == 5 and heard["b"][-1]["message"] == "step 5"

        def broken(params: dict[str, Any]) -> None:
            raise RuntimeError("the caller's own bug")

        # a listener that raises stops hearing; the call and the plugin are unharmed
        assert await sup.call("kit", "steps", {"n": 4}, timeout=DEADLINE,
                              on_progress=broken) == 4
        assert sup.runner("kit").instance == 1
        assert await sup.call("kit", "steps", {"n": 2}, timeout=DEADLINE) == 2
