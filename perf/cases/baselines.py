"""In-run floors that every supervisor figure is divided by.

Each baseline removes one layer: ``c-pipe-c2c`` is the kernel alone,
``c-pipe`` adds the Python parent loop, ``raw-python-pipe`` adds a Python
child, and ``spawn-per-call`` is the design pipevisor exists to replace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from perf.harness import Context, build_c, case, summarize

PEERS = Path(__file__).resolve().parent.parent / "peers"
ECHO_CHILD = PEERS / "echo_child.py"
ONESHOT_CHILD = PEERS / "oneshot_child.py"
C_ECHO = PEERS / "c_echo.c"
C_PINGPONG = PEERS / "c_pingpong.c"

TEXT = "hello from pipevisor perf"
PIPELINE_DEPTH = 64
_NL = orjson.OPT_APPEND_NEWLINE


def request(i: int) -> dict[str, object]:
    """The one request shape all baselines send, so payload size is never a variable."""
    return {"jsonrpc": "2.0", "id": i, "method": "echo", "params": {"text": TEXT}}


@dataclass
class PipePeer:
    proc: subprocess.Popen[bytes]
    call_ns: list[int] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)


def _spawn_peer(ctx: Context, argv: list[str]) -> PipePeer:
    proc = ctx.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return PipePeer(proc)


def _close_peer(ctx: Context) -> None:
    peer: PipePeer | None = ctx.state
    if peer is None:
        return
    ctx.reap(peer.proc)
    if peer.call_ns:
        # Per-call distribution pooled over measured repetitions: the tail that
        # a per-repetition mean hides.
        stats = summarize([ns / 1000 for ns in peer.call_ns])
        ctx.note("call_p50_us", round(stats["median"], 2))
        ctx.note("call_p90_us", round(stats["p90"], 2))
        ctx.note("call_p99_us", round(_p99(peer.call_ns) / 1000, 2))


def _p99(xs: list[int]) -> float:
    s = sorted(xs)
    return float(s[min(len(s) - 1, (len(s) * 99) // 100)])


def sequential_roundtrips(ctx: Context, peer: PipePeer, n: int) -> float:
    """Blocking write+flush, blocking readline, orjson both ways; mean us per call.

    The per-repetition mean (not the median of single calls) is the sample,
    because a caller doing N calls in a row pays the tail too.  Individual
    timings are kept as notes for the tail view.
    """
    proc = peer.proc
    assert proc.stdin is not None and proc.stdout is not None
    write, flush, readline = proc.stdin.write, proc.stdin.flush, proc.stdout.readline
    dumps, loads = orjson.dumps, orjson.loads
    clock = time.perf_counter_ns
    timings = [0] * n
    start = prev = clock()
    for i in range(n):
        write(dumps(request(i), option=_NL))
        flush()
        line = readline()
        if not line:
            raise RuntimeError(f"peer exited with code {proc.wait()}")
        if loads(line)["id"] != i:
            raise RuntimeError(f"out-of-order response at call {i}: {line!r}")
        now = clock()
        timings[i] = now - prev
        prev = now
    if not ctx.warming_up:
        peer.call_ns.extend(timings)
    return (prev - start) / n / 1000


# --------------------------------------------------------------------------- raw-python-pipe


def _setup_python_peer(ctx: Context) -> PipePeer:
    return _spawn_peer(ctx, [sys.executable, str(ECHO_CHILD)])


@case(
    "raw-python-pipe",
    group="baselines",
    unit="us/call",
    baseline="raw-python-pipe",
    setup=_setup_python_peer,
    teardown=_close_peer,
)
def raw_python_pipe(ctx: Context) -> float:
    """Python parent to Python child over pipes, orjson, no framework: the Python floor."""
    return sequential_roundtrips(ctx, ctx.state, ctx.pick(full=2000, quick=50))


# --------------------------------------------------------------------------- c-pipe


def _setup_c_echo(ctx: Context) -> PipePeer:
    return _spawn_peer(ctx, [str(build_c(ctx, C_ECHO))])


@case(
    "c-pipe",
    group="baselines",
    unit="us/call",
    baseline="raw-python-pipe",
    setup=_setup_c_echo,
    teardown=_close_peer,
)
def c_pipe(ctx: Context) -> float:
    """Same Python parent loop, C byte-echo child: what the Python parent alone costs."""
    return sequential_roundtrips(ctx, ctx.state, ctx.pick(full=2000, quick=50))


@dataclass
class PingPong:
    client: Path
    echo: Path
    p50_us: list[float] = field(default_factory=list)
    p99_us: list[float] = field(default_factory=list)


def _setup_c2c(ctx: Context) -> PingPong:
    return PingPong(client=build_c(ctx, C_PINGPONG), echo=build_c(ctx, C_ECHO))


def _teardown_c2c(ctx: Context) -> None:
    st: PingPong | None = ctx.state
    if st and st.p50_us:
        ctx.note("call_p50_us", round(summarize(st.p50_us)["median"], 2))
        ctx.note("call_p99_us", round(summarize(st.p99_us)["median"], 2))


@case(
    "c-pipe-c2c",
    group="baselines",
    unit="us/call",
    baseline="raw-python-pipe",
    setup=_setup_c2c,
    teardown=_teardown_c2c,
)
def c_pipe_c2c(ctx: Context) -> float:
    """C parent to C byte-echo child, timed in C: the machine's round-trip floor."""
    st: PingPong = ctx.state
    calls = ctx.pick(full=20000, quick=200)
    warm = ctx.pick(full=1000, quick=20)
    message = orjson.dumps(request(0)).decode()
    proc = ctx.popen(
        [str(st.client), str(calls), str(warm), message, str(st.echo)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    out, _ = proc.communicate(timeout=120)
    ctx.reap(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"c_pingpong exited with {proc.returncode}")
    report = json.loads(out)
    if not ctx.warming_up:
        st.p50_us.append(report["p50_ns"] / 1000)
        st.p99_us.append(report["p99_ns"] / 1000)
    return float(report["mean_ns"]) / 1000


# --------------------------------------------------------------------------- spawn-per-call


@case("spawn-per-call", group="baselines", unit="us/call", baseline="raw-python-pipe", repeat=7)
def spawn_per_call(ctx: Context) -> float:
    """A fresh `python -I -S` per request, mdbook style: the cost pipevisor avoids."""
    n = ctx.pick(full=30, quick=2)
    argv = [sys.executable, "-I", "-S", str(ONESHOT_CHILD)]
    start = time.perf_counter_ns()
    for i in range(n):
        proc = ctx.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = proc.communicate(orjson.dumps(request(i), option=_NL), timeout=30)
        ctx.reap(proc)
        if proc.returncode != 0 or orjson.loads(out)["id"] != i:
            raise RuntimeError(f"one-shot peer failed (rc={proc.returncode}, out={out!r})")
    return (time.perf_counter_ns() - start) / n / 1000


# --------------------------------------------------------------------------- pipelined


@case(
    "raw-python-pipe-pipelined",
    group="baselines",
    unit="calls/s",
    baseline="raw-python-pipe-pipelined",
    setup=_setup_python_peer,
    teardown=_close_peer,
)
def raw_python_pipe_pipelined(ctx: Context) -> float:
    """Same raw Python child, 64 requests written before 64 responses are read."""
    peer: PipePeer = ctx.state
    proc = peer.proc
    assert proc.stdin is not None and proc.stdout is not None
    write, flush, readline = proc.stdin.write, proc.stdin.flush, proc.stdout.readline
    dumps, loads = orjson.dumps, orjson.loads
    batches = ctx.pick(full=200, quick=3)
    k = PIPELINE_DEPTH
    # 64 small requests (~90 bytes each) stay far below the 64 KiB pipe buffer,
    # so writing them all before reading cannot deadlock.
    start = time.perf_counter_ns()
    next_id = 0
    for _ in range(batches):
        first = next_id
        for _ in range(k):
            write(dumps(request(next_id), option=_NL))
            next_id += 1
        flush()
        for j in range(k):
            line = readline()
            if not line:
                raise RuntimeError(f"peer exited with code {proc.wait()}")
            if loads(line)["id"] != first + j:
                raise RuntimeError(f"out-of-order response: {line!r}")
    elapsed = (time.perf_counter_ns() - start) / 1e9
    return batches * k / elapsed
