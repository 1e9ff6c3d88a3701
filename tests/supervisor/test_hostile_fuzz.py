"""A generated hostile plugin (issue 13): hypothesis writes what the plugin says after its
handshake (random bytes, valid and invalid JSON-RPC, bad ids, huge and deep values,
floods, stalls, sudden exits) while the host calls it, and checks after every example:
the supervisor is alive, a neighbour answers with normal latency, every call ended
exactly once, the host's memory stayed under a bound, and nothing is left running.

CI runs a fixed seed and PIPEVISOR_FUZZ_EXAMPLES (default 25) examples; set it higher
for a longer run, e.g. PIPEVISOR_FUZZ_EXAMPLES=500.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import psutil
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from pipevisor.supervisor import (
    CallError,
    CallPolicy,
    HealthPolicy,
    PluginSpec,
    RestartPolicy,
    StopPolicy,
    Supervisor,
    SupervisorConfig,
)
from tests.supervisor.test_hostile import hostile

EXAMPLES = int(os.environ.get("PIPEVISOR_FUZZ_EXAMPLES", "25"))
MAX_LINE = 64 * 1024
RSS_BOUND = 96 * 2**20
"""What the host may grow by over the whole run (every example's plugin is unloaded)."""

# ------------------------------------------------------------------ what it says

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
ids = st.one_of(st.integers(-5, 2**40), st.text(max_size=6), st.none(), st.floats(
    allow_nan=False, allow_infinity=False), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.booleans())
methods = st.one_of(st.sampled_from([
    "pipevisor/cancel", "pipevisor/log", "pipevisor/progress", "pipevisor/ping",
    "pipevisor/handshake", "pipevisor/shutdown", "host.echo", "nosuch", "rpc.x", ""]),
    st.text(max_size=12), json_values)


reserved = st.one_of(
    st.builds(lambda i: {"jsonrpc": "2.0", "method": "pipevisor/cancel", "params": {"id": i}},
              ids),
    st.builds(lambda level, text: {"jsonrpc": "2.0", "method": "pipevisor/log",
                                   "params": {"level": level, "message": text}},
              json_values, json_values),
    st.builds(lambda p: {"jsonrpc": "2.0", "method": "pipevisor/progress", "params": p},
              json_values),
    st.builds(lambda i, p: {"jsonrpc": "2.0", "id": i, "method": "host.echo", "params": p},
              ids, json_values),
)


@st.composite
def messages(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 3)) == 0:
        return draw(reserved)
    message: dict[str, Any] = {}
    if draw(st.booleans()):
        message["jsonrpc"] = draw(st.sampled_from(["2.0", "2.0", "1.0", 2.0, None]))
    for key, strategy in (("id", ids), ("method", methods), ("params", json_values),
                          ("result", json_values), ("error", st.one_of(json_values,
                           st.fixed_dictionaries({"code": st.integers(-33000, -30000),
                                                  "message": st.text(max_size=10)})))):
        if draw(st.integers(0, 2)):  # two in three: present
            message[key] = draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        return [message, draw(json_values)]  # a batch
    return message


def _line(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) + "\n"


lines = st.one_of(
    messages().map(_line),
    st.binary(max_size=120).map(lambda b: b.decode("latin-1") + "\n"),  # random bytes
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n + "\n"),  # deep
    st.integers(MAX_LINE - 10, MAX_LINE + 3000).map(lambda n: '"' + "x" * n + '"\n'),  # huge
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),  # no newline at all
)
actions = st.lists(st.one_of(
    lines.map(lambda text: ["raw", text]),
    st.tuples(st.integers(10, 3000), messages().map(_line)).map(
        lambda t: ["repeat", t[0], t[1]]),  # a flood
    st.floats(0, 0.2).map(lambda s: ["sleep", s]),  # a stall
), max_size=8).flatmap(lambda body: st.one_of(
    st.just(body), st.integers(0, 3).map(lambda code: [*body, ["exit", code]])))


# ------------------------------------------------------------------ the harness


def _spec(name: str, *argv: str) -> PluginSpec:
    """test_hostile's plugin, with a long restart budget and a small line limit (so that
    generated lines can pass it cheaply)."""
    return hostile(name, *argv, max_line_bytes=MAX_LINE,
                   restart=RestartPolicy(first_backoff=0.05, max_delay=0.2, max_restarts=1000,
                                         within_seconds=60),
                   stop=StopPolicy(shutdown_grace=0.5, eof_grace=0.5, term_grace=0.5),
                   calls=CallPolicy(timeout=5.0),
                   health=HealthPolicy(handshake_timeout=5.0, ping_interval=0))


@pytest.fixture(scope="module")
def supervisor() -> Iterator[tuple[anyio.from_thread.BlockingPortal, Supervisor]]:
    with anyio.from_thread.start_blocking_portal() as portal:
        sup = portal.call(_make)
        with portal.wrap_async_context_manager(sup):
            portal.call(sup.wait_ready, ["neighbour"], 20)
            sup.add_host_method("host.echo", _host_echo)
            yield portal, sup


async def _make() -> Supervisor:
    return Supervisor(SupervisorConfig(plugins=[_spec("neighbour", "serve")]))


async def _host_echo(**params: Any) -> Any:
    return params


async def _example(sup: Supervisor, script: Path, number: int) -> None:
    name = f"fuzzed-{number}"
    outcomes: list[str] = []
    calls = 12
    await sup.load(_spec(name, "script", str(script)), wait=10)

    async def one(i: int) -> None:
        try:
            await sup.call(name, "echo", {"i": i}, timeout=2)
            outcomes.append("result")
        except CallError as exc:
            outcomes.append(f"error {exc.code}")

    async with anyio.create_task_group() as tg:
        for i in range(calls):
            tg.start_soon(one, i)
            await anyio.sleep(0.005)
        started = anyio.current_time()
        await sup.call("neighbour", "echo", {"text": "ok"}, timeout=2)
        neighbour = anyio.current_time() - started
    assert len(outcomes) == calls, outcomes  # each call ended exactly once
    assert neighbour < 0.5, f"the neighbour took {neighbour:.3f} s"
    runner = sup.runner(name)
    pid = runner.process.pid if runner.process is not None else None
    await sup.unload(name)
    if pid is not None:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


@pytest.mark.slow
def test_generated_hostile_plugins_never_hurt_the_host(
        supervisor: tuple[anyio.from_thread.BlockingPortal, Supervisor],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    portal, sup = supervisor
    folder = tmp_path_factory.mktemp("fuzz")
    baseline = psutil.Process().memory_info().rss
    counter = iter(range(10**9))

    @seed(1313)
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(actions)
    def example(script_actions: list[Any]) -> None:
        number = next(counter)
        script = folder / f"script-{number}.json"
        script.write_text(json.dumps(script_actions))
        portal.call(_example, sup, script, number)
        grown = psutil.Process().memory_info().rss - baseline
        assert grown < RSS_BOUND, f"the host grew {grown >> 20} MiB"
        assert [r.spec.name for r in sup.runners.values()] == ["neighbour"]

    example()
    assert next(counter) >= EXAMPLES  # every example ran
