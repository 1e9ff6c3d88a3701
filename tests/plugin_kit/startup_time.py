"""Time a plugin from exec to its handshake answer, the figure a restart waits for.

    python tests/plugin_kit/startup_time.py [-n 30] [--call METHOD] [PLUGIN ...]

Defaults to the kit example and the stdlib example. Each run spawns the plugin
with the interpreter running this script, writes the handshake at once (the
supervisor does the same: it does not wait for the plugin to be "up"), and
stops the clock when the answer line has arrived. It then sends one call
(``echo {"text": "x"}`` unless ``--call`` names another method, ``--call ''``
for none) and notes when its answer arrives: the time until the plugin does
real work, which a kit plugin that loads asyncio after the handshake answers
later than the handshake itself. Finally it closes stdin and waits for the
plugin to exit. Runs alternate between plugins so that a load spike on the
machine hits them alike; a plugin inside another checkout (say an older commit
exported with ``git archive``) runs with that checkout's pipevisor.kit. Not a
test: timings depend on the box, so nothing asserts on them.
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
from collections.abc import Iterator
from contextlib import contextmanager
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


def read_line(proc: subprocess.Popen[bytes], got: bytearray, start: float) -> bytes:
    """The next stdout line (without its newline), within the deadline counted from start."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while b"\n" not in got:
        left = start + DEADLINE - time.perf_counter()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"{proc.args!r}: no answer within {DEADLINE} s")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise RuntimeError(f"{proc.args!r}: stdout closed before the answer")
        got += chunk
    line, _, rest = bytes(got).partition(b"\n")
    got[:] = rest
    return line


def checkout_of(plugin: str) -> Path:
    """The checkout a plugin lives in (so an exported older checkout runs its own kit)."""
    for folder in Path(plugin).resolve().parents:
        if (folder / "plugin_kit" / "plugin.py").is_file():  # not tests/plugin_kit
            return folder
    return ROOT


@contextmanager
def spawned(plugin: str) -> Iterator[subprocess.Popen[bytes]]:
    """The plugin running with its own checkout's pipevisor.kit; killed if still there after."""
    env = {**os.environ, "PYTHONPATH": str(checkout_of(plugin))}
    proc = subprocess.Popen([sys.executable, plugin], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def one_run(plugin: str, call: str) -> tuple[float, float | None]:
    """Seconds from spawn to the handshake answer and to the first call's answer."""
    start = time.perf_counter()
    with spawned(plugin) as proc:
        assert proc.stdin is not None
        proc.stdin.write(HANDSHAKE)
        proc.stdin.flush()
        got = bytearray()
        answer = json.loads(read_line(proc, got, start))
        handshake = time.perf_counter() - start
        if answer.get("id") != 0 or "result" not in answer:
            raise RuntimeError(f"{plugin}: not a handshake result: {answer}")
        first_call = None
        if call:
            proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": call,
                                         "params": {"text": "x"}}).encode() + b"\n")
            proc.stdin.flush()
            while (answer := json.loads(read_line(proc, got, start))).get("id") != 1:
                pass  # a log line or progress: not the answer yet
            first_call = time.perf_counter() - start
            if "result" not in answer:
                raise RuntimeError(f"{plugin}: {call} failed: {answer}")
        proc.stdin.close()
        proc.wait(DEADLINE)
        return handshake, first_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=30, help="runs per plugin (default 30)")
    parser.add_argument("--call", default="echo",
                        help="method called once after the handshake, with {\"text\": \"x\"} "
                             "(default echo; '' for none)")
    parser.add_argument("plugins", nargs="*", default=list(DEFAULT_PLUGINS))
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float | None]]] = {p: [] for p in args.plugins}
    for _ in range(args.n):
        for plugin in args.plugins:
            times[plugin].append(one_run(plugin, args.call))
    for plugin, runs in times.items():
        print(f"{plugin}:")
        print(f"  exec -> handshake answer: {summary([h for h, _ in runs])}")
        if args.call:
            print(f"  exec -> first {args.call} answer: {summary([c for _, c in runs if c])}")


def summary(seconds: list[float]) -> str:
    ms = sorted(t * 1000 for t in seconds)
    return (f"median {statistics.median(ms):.1f} ms, best {ms[0]:.1f}, "
            f"p90 {ms[int(len(ms) * 0.9) - 1]:.1f}, worst {ms[-1]:.1f} (n={len(ms)})")


if __name__ == "__main__":
    main()
