"""Client side of perf's MCP peer cases (issue #20).

Run by the mcp venv's interpreter; the harness (``perf/cases/peers_rpc.py``)
talks to it on stdin/stdout, one JSON object per line (``peer_driver_loop.py``).
It starts ``mcp_echo_server.py`` with the SDK's ``stdio_client`` and calls the
``echo`` tool with ``ClientSession.call_tool``, after ``initialize`` and one
``list_tools`` (what a client does before calling; it also hands the session
the tool's output schema, which it then checks results against). The timings
are taken here, around ``call_tool`` only, on anyio's asyncio backend.
The server's stderr (its log) goes to the file named by argv[1], or nowhere.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO

import anyio
import anyio.to_thread
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from peer_driver_loop import PARAMS, TEXT, emit, failure, parse, ready

SERVER = Path(__file__).resolve().parent / "mcp_echo_server.py"
TIMEOUT = 30.0


async def run(errlog: TextIO) -> None:
    params = StdioServerParameters(command=sys.executable, args=[str(SERVER)])
    async with stdio_client(params, errlog=errlog) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        got = await session.call_tool("echo", PARAMS)
        if got.is_error or TEXT not in str(got.content):
            raise RuntimeError(f"echo tool answered {got!r}")
        call = session.call_tool

        async def seq(n: int) -> list[int]:
            clock = time.perf_counter_ns
            out = [0] * n
            prev = clock()
            for i in range(n):
                with anyio.fail_after(TIMEOUT):
                    await call("echo", PARAMS)
                now = clock()
                out[i] = now - prev
                prev = now
            return out

        async def pipelined(depth: int, total: int) -> int:
            remaining = total

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1  # no await between test and decrement
                    await call("echo", PARAMS)

            start = time.perf_counter_ns()
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    for _ in range(depth):
                        tg.start_soon(worker)
            return time.perf_counter_ns() - start

        await seq(20)  # warm the session outside any timing
        ready(["mcp", "pydantic", "anyio"])
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                break
            if not line.strip():
                continue
            try:
                op, args = parse(line)
                if op == "seq":
                    emit({"calls_ns": await seq(args["n"])})
                elif op == "pipelined":
                    emit({"elapsed_ns": await pipelined(args["depth"], args["total"])})
                else:
                    emit({"error": f"unknown op {op!r}"})
            except Exception:
                emit(failure())


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else os.devnull, "a") as log:
        anyio.run(run, log)
