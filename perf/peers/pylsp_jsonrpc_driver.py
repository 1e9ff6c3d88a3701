"""Client side of perf's python-lsp-jsonrpc peer cases (issue #20).

Run by the python-lsp-jsonrpc venv's interpreter; the harness
(``perf/cases/peers_rpc.py``) starts it and talks to it on stdin/stdout, one
JSON object per line (see ``peer_driver_loop.py``). It spawns
``pylsp_jsonrpc_echo_server.py`` with the same interpreter and calls it through
the library's own client pieces: an ``Endpoint`` whose ``request()`` returns a
``concurrent.futures.Future``, a ``JsonRpcStreamWriter`` on the child's stdin
and a ``JsonRpcStreamReader`` thread on its stdout. Timings are taken here,
around the library calls only.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from peer_driver_loop import PARAMS, serve
from pylsp_jsonrpc.endpoint import Endpoint
from pylsp_jsonrpc.streams import JsonRpcStreamReader, JsonRpcStreamWriter

SERVER = Path(__file__).resolve().parent / "pylsp_jsonrpc_echo_server.py"
TIMEOUT = 30.0


def main() -> None:
    child = subprocess.Popen([sys.executable, str(SERVER)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    writer = JsonRpcStreamWriter(child.stdin)
    endpoint = Endpoint({}, writer.write)
    reader = JsonRpcStreamReader(child.stdout)
    listener = threading.Thread(target=reader.listen, args=(endpoint.consume,), daemon=True)
    listener.start()
    request = endpoint.request

    def seq(n: int) -> list[int]:
        clock = time.perf_counter_ns
        out = [0] * n
        prev = clock()
        for i in range(n):
            request("echo", PARAMS).result(TIMEOUT)
            now = clock()
            out[i] = now - prev
            prev = now
        return out

    def pipelined(depth: int, total: int) -> int:
        # a sliding window: a finished call frees its slot for the next one
        slots = threading.BoundedSemaphore(depth)
        failures: list[BaseException] = []

        def done(fut: object) -> None:
            exc = fut.exception()  # type: ignore[attr-defined]
            if exc is not None:
                failures.append(exc)
            slots.release()

        start = time.perf_counter_ns()
        for _ in range(total):
            if not slots.acquire(timeout=TIMEOUT):
                raise TimeoutError("no answer within the timeout")
            request("echo", PARAMS).add_done_callback(done)
        for _ in range(depth):
            if not slots.acquire(timeout=TIMEOUT):
                raise TimeoutError("no answer within the timeout")
        elapsed = time.perf_counter_ns() - start
        if failures:
            raise RuntimeError(f"{len(failures)} calls failed, e.g. {failures[0]!r}")
        return elapsed

    try:
        seq(20)  # the first calls warm the endpoint's threads, outside any timing
        serve(seq, pipelined, ["python-lsp-jsonrpc", "ujson"])
    finally:
        endpoint.shutdown()
        child.stdin.close()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


if __name__ == "__main__":
    main()
