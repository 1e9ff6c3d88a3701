"""Time a plugin from exec to its handshake answer, the figure a restart waits for.

    python tests/plugin_kit/startup_time.py [-n 30] [PLUGIN ...]

Defaults to the kit example and the stdlib example. Each run spawns the plugin
with the interpreter running this script, writes the handshake at once (the
supervisor does the same: it does not wait for the plugin to be "up"), and
stops the clock when the answer line has arrived; then it closes stdin and
waits for the plugin to exit. Runs alternate between plugins so that a load
spike on the machine hits them alike. Not a test: timings depend on the box,
so nothing asserts on them.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PLUGINS = (
    str(ROOT / "examples" / "python-plugin-kit" / "pipevisor-kit-echo"),
    str(ROOT / "examples" / "python-stdlib" / "pipevisor-echo"),
)
HANDSHAKE = json.dumps({
    "jsonrpc": "2.0", "id": 0, "method": "pipevisor/handshake",
    "params": {"protocol": "pipevisor", "protocolVersions": {"min": "1.0", "max": "1.0"},
               "host": {"name": "timer", "version": "0"},
               "plugin": {"name": "timed", "instance": 1},
               "capabilities": {"cancel": True, "log": {"minLevel": "info"}}},
}).encode() + b"\n"
DEADLINE = 10.0


def one_run(plugin: str) -> float:
    """Seconds from spawn to the handshake answer's newline; raises if it is not an answer."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, plugin], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(HANDSHAKE)
        proc.stdin.flush()
        fd = proc.stdout.fileno()
        got = b""
        while b"\n" not in got:
            left = start + DEADLINE - time.perf_counter()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"{plugin}: no handshake answer within {DEADLINE} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"{plugin}: stdout closed before the handshake answer")
            got += chunk
        elapsed = time.perf_counter() - start
        answer = json.loads(got.split(b"\n", 1)[0])
        if answer.get("id") != 0 or "result" not in answer:
            raise RuntimeError(f"{plugin}: not a handshake result: {answer}")
        proc.stdin.close()
        proc.wait(DEADLINE)
        return elapsed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=30, help="runs per plugin (default 30)")
    parser.add_argument("plugins", nargs="*", default=list(DEFAULT_PLUGINS))
    args = parser.parse_args()
    times: dict[str, list[float]] = {p: [] for p in args.plugins}
    for _ in range(args.n):
        for plugin in args.plugins:
            times[plugin].append(one_run(plugin))
    for plugin, runs in times.items():
        ms = sorted(t * 1000 for t in runs)
        print(f"{Path(plugin).name}: median {statistics.median(ms):.1f} ms, "
              f"best {ms[0]:.1f}, p90 {ms[int(len(ms) * 0.9) - 1]:.1f}, worst {ms[-1]:.1f} "
              f"(n={len(ms)})")


if __name__ == "__main__":
    main()
