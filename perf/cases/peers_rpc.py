"""Peers (issue #20): python-lsp-jsonrpc and the MCP SDK's stdio client, call cost.

Group ``peers``; left out of a plain ``--quick`` run. Each case starts a driver
script from ``perf/peers/`` with its peer venv's interpreter (``python -m
perf.peers_env install``; without the venv the case skips). The driver spawns an
echo child written with the same library, times the calls itself and prints
the timings as JSON (``peers/peer_driver_loop.py``), so no peer code is
imported into the harness and the harness's own pipe to the driver is outside
every timing. Same payload as the baselines (``{"text": "hello from pipevisor
perf"}``), same shapes as pipevisor's cases:

- ``peers-seq-{pylsp-jsonrpc,mcp-stdio}``: sequential calls, mean us/call per
  repetition (call p50/p90/p99 in the notes), vs ``raw-python-pipe``; compare
  with ``embedded-seq-stdlib`` and ``asyncio-pipe``;
- ``peers-pipelined-64-{pylsp-jsonrpc,mcp-stdio}``: 64 calls kept in flight,
  calls/s, vs ``raw-python-pipe-pipelined``; compare with ``embedded-pipelined-64``
  and ``asyncio-pipe-pipelined-64``.

python-lsp-jsonrpc: ``Endpoint.request()`` futures over ``JsonRpcStreamWriter`` /
``JsonRpcStreamReader`` (LSP Content-Length framing), a blocking thread design.
MCP: ``ClientSession.call_tool("echo")`` over ``stdio_client`` to an
``MCPServer`` tool: MCP's own framing, models and validation are in the figure.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from perf.cases.baselines import PIPELINE_DEPTH
from perf.harness import Context, case, summarize
from perf.peers_env import INSTALL_HINT, python_for

PEERS_DIR = Path(__file__).resolve().parent.parent / "peers"
DRIVERS = {
    "python-lsp-jsonrpc": PEERS_DIR / "pylsp_jsonrpc_driver.py",
    "mcp": PEERS_DIR / "mcp_driver.py",
}
ANSWER_TIMEOUT = 120.0
"""Seconds for one command (a whole repetition) or the driver's start-up."""


@dataclass
class Driver:
    peer: str
    proc: subprocess.Popen[bytes]
    call_ns: list[int] = field(default_factory=list)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)

    def read(self) -> dict[str, Any]:
        out = self.proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], ANSWER_TIMEOUT)
        if not ready:
            raise TimeoutError(f"{self.peer} driver: no answer within {ANSWER_TIMEOUT} s")
        line = out.readline()
        if not line:
            raise RuntimeError(f"{self.peer} driver exited ({self.proc.poll()})")
        msg: dict[str, Any] = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"{self.peer} driver: {msg['error']}")
        return msg

    def command(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()
        return self.read()


def _setup(peer: str) -> Callable[[Context], Driver]:
    def setup(ctx: Context) -> Driver:
        python = python_for(peer)
        if python is None:
            ctx.skip(f"no {peer} venv: {INSTALL_HINT}")
        argv = [str(python), str(DRIVERS[peer])]
        if peer == "mcp":
            argv.append("/dev/null")  # the server's log: written, not shown
        proc = ctx.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=PEERS_DIR)
        driver = Driver(peer, proc)
        try:
            hello = driver.read()
        except BaseException:
            _close(ctx, driver)
            raise
        ctx.note("versions", hello.get("versions"))
        return driver

    return setup


def _close(ctx: Context, driver: Driver) -> None:
    """EOF to the driver (it then closes its echo child); kill what is left after 5 s."""
    try:
        tree = psutil.Process(driver.proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    ctx.reap(driver.proc, grace=5.0)
    alive = [p for p in tree if p.is_running()]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def _teardown(ctx: Context) -> None:
    driver: Driver | None = ctx.state
    if driver is None:
        return
    if driver.call_ns:
        us = sorted(ns / 1000 for ns in driver.call_ns)
        stats = summarize(us)
        ctx.note("call_p50_us", round(stats["median"], 2))
        ctx.note("call_p90_us", round(stats["p90"], 2))
        ctx.note("call_p99_us", round(us[min(len(us) - 1, len(us) * 99 // 100)], 2))
    for side, values in driver.cpu_us.items():
        ctx.note(f"{side}_cpu_us_per_call_p50", round(summarize(values)["median"], 1))
    _close(ctx, driver)


def _cpu_s(procs: list[psutil.Process]) -> list[float]:
    out = []
    for p in procs:
        try:
            t = p.cpu_times()
            out.append(t.user + t.system)
        except psutil.Error:
            out.append(0.0)
    return out


def _seq(ctx: Context, n: int) -> float:
    driver: Driver = ctx.state
    # CPU of the client (the driver) and of the echo server, per call: where the time goes
    procs = [psutil.Process(driver.proc.pid)]
    procs += procs[0].children(recursive=True)[:1]
    before = _cpu_s(procs)
    calls: list[int] = driver.command(op="seq", n=n)["calls_ns"]
    after = _cpu_s(procs)
    if not ctx.warming_up:
        driver.call_ns.extend(calls)
        for side, b, a in zip(("client", "server"), before, after, strict=False):
            driver.cpu_us.setdefault(side, []).append((a - b) / n * 1e6)
    return sum(calls) / len(calls) / 1000


def _pipelined(ctx: Context, total: int) -> float:
    driver: Driver = ctx.state
    elapsed_ns = driver.command(op="pipelined", depth=PIPELINE_DEPTH, total=total)["elapsed_ns"]
    return float(total / (elapsed_ns / 1e9))


@case("peers-seq-pylsp-jsonrpc", group="peers", unit="us/call", baseline="raw-python-pipe",
      setup=_setup("python-lsp-jsonrpc"), teardown=_teardown, in_quick=False)
def peers_seq_pylsp_jsonrpc(ctx: Context) -> float:
    """python-lsp-jsonrpc Endpoint.request().result(), sequential, to its own echo server."""
    return _seq(ctx, ctx.pick(full=2000, quick=50))


@case("peers-pipelined-64-pylsp-jsonrpc", group="peers", unit="calls/s",
      baseline="raw-python-pipe-pipelined", setup=_setup("python-lsp-jsonrpc"),
      teardown=_teardown, repeat=10, in_quick=False)
def peers_pipelined_64_pylsp_jsonrpc(ctx: Context) -> float:
    """python-lsp-jsonrpc with 64 requests kept in flight: throughput."""
    return _pipelined(ctx, ctx.pick(full=3200, quick=256))


@case("peers-seq-mcp-stdio", group="peers", unit="us/call", baseline="raw-python-pipe",
      setup=_setup("mcp"), teardown=_teardown, repeat=10, in_quick=False)
def peers_seq_mcp_stdio(ctx: Context) -> float:
    """MCP SDK ClientSession.call_tool() over stdio_client to an MCPServer echo tool, sequential."""
    return _seq(ctx, ctx.pick(full=500, quick=20))


@case("peers-pipelined-64-mcp-stdio", group="peers", unit="calls/s",
      baseline="raw-python-pipe-pipelined", setup=_setup("mcp"), teardown=_teardown,
      repeat=10, in_quick=False)
def peers_pipelined_64_mcp_stdio(ctx: Context) -> float:
    """MCP SDK call_tool() with 64 calls in flight over one stdio session: throughput."""
    return _pipelined(ctx, ctx.pick(full=1280, quick=128))
