"""Echo calls per second over a plugin's raw pipes, pipelined and one at a time.

    python tests/plugin_kit/throughput.py [-n 20000] [--method echo] [PLUGIN ...]

Defaults to the kit example (async ``echo``), the kit test plugin (sync
``echo``) and the stdlib example. Pipelined: a writer thread sends all calls
while the main thread reads the answers. One at a time: each call is sent
once the previous answer is in. Both start half a second after the handshake
answer, when a kit plugin has loaded what it loads after it. Each plugin is
measured three times, in turn, and the best run is shown (the machine is
shared; the best is the least disturbed). A plugin in another checkout runs with that checkout's
pipevisor.kit (see startup_time.py). Not a test: nothing asserts on the figures.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from tests.plugin_kit.startup_time import DEADLINE, HANDSHAKE, ROOT, spawned

DEFAULT_PLUGINS = (
    str(ROOT / "examples" / "python-plugin-kit" / "pipevisor-kit-echo"),
    str(ROOT / "tests" / "plugin_kit" / "kit_plugin.py"),
    str(ROOT / "examples" / "python-stdlib" / "pipevisor-echo"),
)


def request(ident: int, method: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": ident, "method": method,
                       "params": {"text": "hello"}}).encode() + b"\n"


def measure(plugin: str, method: str, n: int) -> tuple[float, float]:
    """(pipelined calls/s, sequential calls/s) for one fresh process."""
    with spawned(plugin) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout
        stdin.write(HANDSHAKE)
        stdin.flush()
        assert json.loads(stdout.readline())["id"] == 0
        # steady state: a kit plugin loads protocol and asyncio after the handshake answer
        # (startup_time.py measures that part); these figures are for a plugin that is up
        time.sleep(0.5)
        batch = b"".join(request(i, method) for i in range(1, n + 1))

        def send() -> None:
            stdin.write(batch)
            stdin.flush()

        start = time.perf_counter()
        writer = threading.Thread(target=send)
        writer.start()
        for _ in range(n):
            answer = json.loads(stdout.readline())
            while "id" not in answer:  # a log line
                answer = json.loads(stdout.readline())
            assert "result" in answer, answer
        pipelined = n / (time.perf_counter() - start)
        writer.join(DEADLINE)

        calls = [request(i, method) for i in range(n + 1, 2 * n + 1)]
        start = time.perf_counter()
        for line in calls:
            stdin.write(line)
            stdin.flush()
            line = stdout.readline()
            while b'"id"' not in line:
                line = stdout.readline()
            assert b'"result"' in line
        sequential = n / (time.perf_counter() - start)
        stdin.close()
        proc.wait(DEADLINE)
        return pipelined, sequential


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="calls per run (default 20000)")
    parser.add_argument("--method", default="echo", help='called with {"text": "hello"}')
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("plugins", nargs="*", default=list(DEFAULT_PLUGINS))
    args = parser.parse_args()
    best: dict[str, tuple[float, float]] = dict.fromkeys(args.plugins, (0.0, 0.0))
    for _ in range(args.runs):
        for plugin in args.plugins:
            piped, seq = measure(plugin, args.method, args.n)
            best[plugin] = (max(best[plugin][0], piped), max(best[plugin][1], seq))
    for plugin, (piped, seq) in best.items():
        print(f"{plugin}: {piped:,.0f} calls/s pipelined, {seq:,.0f} one at a time "
              f"(best of {args.runs} x {args.n})")


if __name__ == "__main__":
    main()
