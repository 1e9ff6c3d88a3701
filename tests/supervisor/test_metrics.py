"""Prometheus metrics (supervisor/engine/metrics.py, metrics_http.py) from a real supervisor
with real plugins: calls by outcome, restarts, limit breaches, resources, states; the
exposition format itself; and the HTTP endpoint's answers."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import anyio
import pytest

from pipevisor.supervisor import PluginState, Supervisor, SupervisorConfig
from pipevisor.supervisor.daemon.metrics_http import answer, serve_metrics
from pipevisor.supervisor.engine.limits import Limit, LimitAction, Limits
from pipevisor.supervisor.engine.metrics import _label
from pipevisor.supervisor.errors import CallError
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio

HOG = str(Path(__file__).resolve().parent.parent / "plugins" / "hog.py")
MiB = 1 << 20

_SAMPLE = re.compile(r'^([a-z_]+)(\{([a-z_]+="(?:[^"\\]|\\.)*")(,[a-z_]+="(?:[^"\\]|\\.)*")*\})? '
                     r"(?P<value>-?[0-9.]+(?:e[+-]?[0-9]+)?)$")


def parse(text: str) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """Strict enough reader of the text format: every family announced by HELP and
    TYPE before its samples, every sample line well formed."""
    assert text.endswith("\n")
    families: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("counter", "gauge")
            typed.add(name)
            families[name] = {}
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed sample line: {line!r}"
        name = m.group(1)
        assert name in typed, f"{name} has samples before its TYPE line"
        labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', line.split(" ")[0]))
        families[name][labels] = float(m.group("value"))
    return families


def value(families: dict[str, dict[frozenset[tuple[str, str]], float]], name: str,
          **labels: str) -> float:
    return families[name][frozenset(labels.items())]


async def test_calls_restarts_states_and_breaches_are_counted() -> None:
    limits = Limits(memory=Limit(40 * MiB, LimitAction.WARN))
    hog = fake_spec("hog", limits=limits, command=(sys.executable, HOG, "idle"))
    sup = Supervisor(SupervisorConfig(plugins=[fake_spec("alpha"), hog], sample_interval=0.05))
    async with sup, sup.subscribe() as events:
        await sup.wait_ready(timeout=10)
        for _ in range(3):
            assert await sup.call("alpha", "echo", {"n": 1}) == {"n": 1}
        with pytest.raises(CallError):
            await sup.call("alpha", "no_such_method")
        with pytest.raises(CallError):
            await sup.call("alpha", "sleep", {"seconds": 5}, timeout=0.2)
        with pytest.raises(CallError):
            await sup.call("alpha", "crash", {"code": 3})
        await sup.call("hog", "alloc", {"bytes": 60 * MiB}, timeout=10)
        with anyio.fail_after(15):
            while not (sup.runner("alpha").state is PluginState.READY
                       and sup.runner("hog").breach_counts):
                await events.next()
        m = parse(sup.metrics())
    assert value(m, "pipevisor_plugin_calls_total", plugin="alpha", outcome="ok") == 3
    assert value(m, "pipevisor_plugin_calls_total", plugin="alpha",
                 outcome="plugin_error") == 1
    assert value(m, "pipevisor_plugin_calls_total", plugin="alpha", outcome="timeout") == 1
    assert value(m, "pipevisor_plugin_calls_total", plugin="alpha",
                 outcome="plugin_crashed") == 1
    assert value(m, "pipevisor_plugin_restarts_total", plugin="alpha") == 1
    assert value(m, "pipevisor_plugin_instance", plugin="alpha") == 2
    assert value(m, "pipevisor_plugin_up", plugin="alpha") == 1
    assert value(m, "pipevisor_plugin_state", plugin="alpha", state="ready") == 1
    assert value(m, "pipevisor_plugin_state", plugin="alpha", state="backoff") == 0
    assert value(m, "pipevisor_plugin_limit_breaches_total", plugin="hog", limit="memory",
                 action="warn") == 1
    assert value(m, "pipevisor_plugin_memory_bytes", plugin="hog") > 40 * MiB
    assert ("pipevisor_plugin_memory_bytes" not in m
            or frozenset({("plugin", "alpha")}) not in m["pipevisor_plugin_memory_bytes"])
    assert value(m, "pipevisor_sampler_tick_seconds") > 0


def test_label_values_are_escaped() -> None:
    assert _label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_the_http_answers_say_what_is_wrong() -> None:
    def render() -> str:
        return "x 1\n"
    ok = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", render)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nx 1\n")
    assert b"Content-Type: text/plain; version=0.0.4" in ok
    head = answer(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n", render)
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    assert b"Content-Length: 4\r\n" in head
    assert answer(b"GET / HTTP/1.1\r\n\r\n", render).startswith(b"HTTP/1.1 404")
    post = answer(b"POST /metrics HTTP/1.1\r\n\r\n", render)
    assert post.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in post
    assert answer(b"hello\r\n\r\n", render).startswith(b"HTTP/1.1 400")
    assert answer(None, render).startswith(b"HTTP/1.1 431")


async def test_the_endpoint_serves_over_real_tcp_and_survives_bad_clients() -> None:
    def render() -> str:
        return "pipevisor_x 1\n"
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(serve_metrics, render, "127.0.0.1", 0)
        # a client that connects and says nothing, one that hangs up mid-head
        silent = await anyio.connect_tcp(host, port)
        rude = await anyio.connect_tcp(host, port)
        await rude.send(b"GET /met")
        await rude.aclose()
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            with anyio.fail_after(5):
                while True:
                    try:
                        data += await stream.receive()
                    except anyio.EndOfStream:
                        break
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"pipevisor_x 1\n")
        await silent.aclose()
        tg.cancel_scope.cancel()
