"""Starting a plugin process and taking it down; nothing about the protocol here.

The child gets a clean environment (only the variables listed in the spec),
no inherited descriptors besides its three pipes, and is wrapped by the
platform layer so that its whole tree dies with it (see ``_platform``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping

import anyio
from anyio.abc import Process

from supervisor import _platform
from supervisor.config import PluginSpec

log = logging.getLogger("pipevisor.process")

STDERR_LINE_MAX = 64 * 1024
"""Longer stderr lines are split: a log line is not worth unbounded memory."""


class SpawnError(Exception):
    """The executable cannot be started at all (missing, not executable, bad cwd).

    Retrying cannot help, so the plugin goes to ``failed`` with this message.
    """


def resolve_executable(command: str, path: str | None) -> str:
    if os.sep in command:
        if not os.path.exists(command):
            raise SpawnError(f"executable not found: {command}")
        if os.path.isdir(command) or not os.access(command, os.X_OK):
            raise SpawnError(f"not an executable file: {command}")
        return command
    found = shutil.which(command, path=path)
    if found is None:
        raise SpawnError(f"executable {command!r} not found on PATH ({path or ''})")
    return found


def build_env(
    spec: PluginSpec, extra: Mapping[str, str], source: Mapping[str, str]
) -> dict[str, str]:
    env = {k: source[k] for k in spec.inherit_env if k in source}
    env.update(spec.env)
    env.update(extra)
    return env


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


class StderrTail:
    """The last lines a plugin wrote to stderr, for status and crash reports."""

    def __init__(self, maxlen: int) -> None:
        self.lines: deque[str] = deque(maxlen=maxlen)
        self.total = 0

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.total += 1

    def last(self, n: int) -> list[str]:
        if n <= 0:
            return []
        return list(self.lines)[-n:]


async def spawn(
    spec: PluginSpec,
    containment: _platform.Containment,
    extra_env: Mapping[str, str],
    source_env: Mapping[str, str] | None = None,
) -> Process:
    """Start the plugin. Raises :class:`SpawnError` when it cannot start at all."""
    source = os.environ if source_env is None else source_env
    env = build_env(spec, extra_env, source)
    executable = resolve_executable(spec.command[0], env.get("PATH"))
    if spec.cwd is not None and not os.path.isdir(spec.cwd):
        raise SpawnError(f"working directory does not exist: {spec.cwd}")
    rlimits = spec.limits.rlimits()
    argv, kwargs = _platform.wrap_command([executable, *spec.command[1:]], containment, rlimits)
    try:
        process = await anyio.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=spec.cwd,
            env=env,
            **kwargs,
        )
    except OSError as exc:
        raise SpawnError(f"cannot start {executable}: {exc}") from exc
    # no shim: nothing set them before exec, so set them now (a short window, see there)
    _platform.set_rlimits_after_spawn(process.pid, containment, rlimits)
    return process


async def pump_stderr(process: Process, on_line: Callable[[str], None]) -> None:
    """Read stderr until EOF, line by line, never holding more than one bounded line."""
    assert process.stderr is not None
    buf = bytearray()
    try:
        async for chunk in process.stderr:
            buf += chunk
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                on_line(buf[:nl].decode("utf-8", "replace").rstrip("\r"))
                del buf[: nl + 1]
            while len(buf) > STDERR_LINE_MAX:
                on_line(buf[:STDERR_LINE_MAX].decode("utf-8", "replace") + " [line split]")
                del buf[:STDERR_LINE_MAX]
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    if buf:
        on_line(buf.decode("utf-8", "replace"))


async def wait_exit(process: Process, timeout: float) -> bool:
    """True if the process exited within ``timeout`` seconds."""
    with anyio.move_on_after(timeout):
        await process.wait()
        return True
    return process.returncode is not None


async def terminate(process: Process, term_grace: float) -> None:
    """SIGTERM the whole tree, then SIGKILL after the grace period; returns once it is dead."""
    if process.returncode is None:
        _platform.signal_tree(process.pid, signal.SIGTERM)
        if await wait_exit(process, term_grace):
            _platform.kill_tree(process.pid)  # stragglers outside a pid namespace
            return
        log.warning("pid %d ignored SIGTERM for %.1f s; sending SIGKILL", process.pid, term_grace)
    _platform.kill_tree(process.pid)
    await process.wait()
