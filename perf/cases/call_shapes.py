"""Embedded calls of other shapes: depth 1 and 16, large payloads, validation on/off.

- ``embedded-pipelined-1`` / ``-16``: the throughput curve below the 64/256 of
  ``supervisor_calls.py`` (1 in flight is sequential throughput).
- ``raw-stdlib-pipe-<size>`` / ``embedded-seq-<size>``: one echo call carrying a
  string of 1 KiB, 64 KiB or 1 MiB. Both drive the **same** plugin process
  kind (``peers/stdlib_echo_plugin.py``) so that the plugin's own JSON cost
  is on both sides of the ratio and the ratio is the supervisor's share.
- ``embedded-seq-validated``: the same sequential call as ``embedded-seq-unvalidated``
  through a versioned interface whose params and result are checked on every
  call (by jsonschema-rs when the ``fast`` extra is installed, else jsonschema);
  its baseline is the unvalidated call, so the ratio is the cost of validation.
  ``embedded-seq-validated-jsonschema`` checks with jsonschema alone whatever is
  installed, so one run shows both.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

from perf.cases.supervisor_calls import (
    CALL_TIMEOUT,
    STDLIB_ECHO,
    Embedded,
    _pipelined,
    _setup_one,
    _start,
    _stop,
)
from perf.harness import Context, case
from pipevisor.protocol.interfaces import InterfaceSet, fast_validation_available
from pipevisor.supervisor import PluginSpec
from pipevisor.supervisor.engine.config import SupervisorConfig

_NL = orjson.OPT_APPEND_NEWLINE

# --------------------------------------------------------------------------- depth 1, 16


@case(
    "embedded-pipelined-1",
    group="supervisor",
    unit="calls/s",
    baseline="raw-python-pipe-pipelined",
    setup=_setup_one,
    teardown=_stop,
    repeat=10,
)
async def embedded_pipelined_1(ctx: Context) -> float:
    """One task calling one plugin: sequential throughput, for the depth curve."""
    return await _pipelined(ctx, 1, ctx.pick(full=1000, quick=32))


@case(
    "embedded-pipelined-16",
    group="supervisor",
    unit="calls/s",
    baseline="raw-python-pipe-pipelined",
    setup=_setup_one,
    teardown=_stop,
    repeat=10,
)
async def embedded_pipelined_16(ctx: Context) -> float:
    """16 tasks calling one plugin concurrently: throughput at a moderate depth."""
    return await _pipelined(ctx, 16, ctx.pick(full=3200, quick=128))


# --------------------------------------------------------------------------- large messages

SIZES = {"1KiB": 1024, "64KiB": 64 * 1024, "1MiB": 1024 * 1024}


def _calls_for(size: int, quick: bool) -> int:
    if quick:
        return 3
    return {1024: 1000, 64 * 1024: 200}.get(size, 20)


def _payload(size: int) -> dict[str, str]:
    return {"text": "x" * size}


@dataclass
class RawPlugin:
    proc: subprocess.Popen[bytes]


def _setup_raw_plugin(ctx: Context) -> RawPlugin:
    # The plugin answers ``echo`` without a handshake, so a raw parent can drive it.
    return RawPlugin(ctx.popen([sys.executable, str(STDLIB_ECHO)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE))


def _teardown_raw_plugin(ctx: Context) -> None:
    st: RawPlugin | None = ctx.state
    if st is not None:
        ctx.reap(st.proc)


def _raw_roundtrips(ctx: Context, size: int) -> float:
    proc = ctx.state.proc
    write, flush, readline = proc.stdin.write, proc.stdin.flush, proc.stdout.readline
    params = _payload(size)
    n = _calls_for(size, ctx.quick)
    start = time.perf_counter_ns()
    for i in range(n):
        write(orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "echo", "params": params},
                           option=_NL))
        flush()
        reply = orjson.loads(readline())
        if reply["id"] != i or len(reply["result"]["text"]) != size:
            raise RuntimeError(f"bad echo for call {i}")
    return (time.perf_counter_ns() - start) / n / 1000


async def _embedded_roundtrips(ctx: Context, size: int) -> float:
    st: Embedded = ctx.state
    params = _payload(size)
    n = _calls_for(size, ctx.quick)
    start = time.perf_counter_ns()
    for _ in range(n):
        result = await st.sup.call("echo", "echo", params, timeout=CALL_TIMEOUT)
        if len(result["text"]) != size:
            raise RuntimeError("echo came back with a different size")
    return (time.perf_counter_ns() - start) / n / 1000


def _register_size(label: str, size: int) -> None:
    raw_name = f"raw-stdlib-pipe-{label}"

    def raw(ctx: Context) -> float:
        return _raw_roundtrips(ctx, size)

    raw.__doc__ = f"Raw blocking parent <-> the stdlib echo plugin, {label} string: the floor."
    case(raw_name, group="messages", unit="us/call", baseline=raw_name,
         setup=_setup_raw_plugin, teardown=_teardown_raw_plugin)(raw)

    async def embedded(ctx: Context) -> float:
        return await _embedded_roundtrips(ctx, size)

    embedded.__doc__ = f"Sequential sup.call() with a {label} string in params and result."
    case(f"embedded-seq-{label}", group="messages", unit="us/call", baseline=raw_name,
         setup=_setup_one, teardown=_stop)(embedded)


for _label, _size in SIZES.items():
    _register_size(_label, _size)


# --------------------------------------------------------------------------- validation

ECHO_INTERFACE: dict[str, Any] = {
    "plugin": {
        "echo": {
            "1.0": {
                "description": "Echo a short text back.",
                "params": {
                    "type": "object",
                    "properties": {"text": {"type": "string", "maxLength": 4096}},
                    "required": ["text"],
                    "additionalProperties": False,
                },
                "result": {
                    "type": "object",
                    "properties": {"text": {"type": "string"}},
                    "required": ["text"],
                },
            }
        }
    }
}


async def _setup_versioned(ctx: Context, validate: bool, fast: bool = True) -> Embedded:
    spec = PluginSpec("echo", (sys.executable, str(STDLIB_ECHO), "--echo-version", "1.0"),
                      validate_params=validate, validate_results=validate)
    interfaces = InterfaceSet.from_documents(ECHO_INTERFACE, fast=fast)
    echo = interfaces.plugin["echo"].current
    compiled = echo.params_fast is not None and echo.result_fast is not None
    if validate:
        ctx.note("validator", "jsonschema-rs" if compiled else "jsonschema")
    config = SupervisorConfig(plugins=(spec,), interfaces=interfaces)
    st = await _start([spec], config=config)
    status = st.sup.runner("echo").status()
    how = status["interfaces"].get("echo", {}).get("how")
    if how != "exact":
        await st.stack.aclose()
        raise RuntimeError(f"echo is not routed through its interface (how={how!r})")
    return st


async def _setup_validated(ctx: Context) -> Embedded:
    return await _setup_versioned(ctx, True)


async def _setup_unvalidated(ctx: Context) -> Embedded:
    return await _setup_versioned(ctx, False)


async def _setup_validated_reference(ctx: Context) -> Embedded:
    return await _setup_versioned(ctx, True, fast=False)


async def _seq(ctx: Context) -> float:
    st: Embedded = ctx.state
    params = {"text": "hello from pipevisor perf"}
    n = ctx.pick(full=2000, quick=50)
    start = time.perf_counter_ns()
    for _ in range(n):
        await st.sup.call("echo", "echo", params, timeout=CALL_TIMEOUT)
    return (time.perf_counter_ns() - start) / n / 1000


@case(
    "embedded-seq-unvalidated",
    group="validation",
    unit="us/call",
    baseline="raw-python-pipe",
    setup=_setup_unvalidated,
    teardown=_stop,
)
async def embedded_seq_unvalidated(ctx: Context) -> float:
    """Sequential call through interface echo 1.0 with validation off (both directions)."""
    return await _seq(ctx)


@case(
    "embedded-seq-validated",
    group="validation",
    unit="us/call",
    baseline="embedded-seq-unvalidated",
    setup=_setup_validated,
    teardown=_stop,
)
async def embedded_seq_validated(ctx: Context) -> float:
    """The same call with params and result checked (jsonschema-rs if installed): its cost."""
    if not fast_validation_available() and not ctx.warming_up:
        ctx.note("hint", "pip install '.[fast]' for the compiled validator")
    return await _seq(ctx)


@case(
    "embedded-seq-validated-jsonschema",
    group="validation",
    unit="us/call",
    baseline="embedded-seq-unvalidated",
    setup=_setup_validated_reference,
    teardown=_stop,
)
async def embedded_seq_validated_jsonschema(ctx: Context) -> float:
    """The same checks by jsonschema alone, the compiled validator left out even if installed."""
    return await _seq(ctx)

