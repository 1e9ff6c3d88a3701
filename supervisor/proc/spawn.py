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
from collections.abc import Callable, Mapping, Sequence

import anyio
from anyio.abc import Process

from pipevisor.protocol import PROTOCOL_VERSIONS
from pipevisor.supervisor.io import child_watch
from pipevisor.supervisor.io.pipes import wait_pipe_closed
from pipevisor.supervisor.io.process_pipes import open_process
from pipevisor.supervisor.proc import containment as _platform
from pipevisor.supervisor.proc.privileges import (
    PrivilegeError,
    PrivilegePlan,
    Privileges,
    plan_privileges,
)
from pipevisor.supervisor.proc.trust import TrustRule, check_trusted

log = logging.getLogger("pipevisor.process")

STDERR_LINE_MAX = 64 * 1024
"""Longer stderr lines are split: a log line is not worth unbounded memory."""

EOF_EXIT_GRACE = 0.03
"""Seconds a plugin whose pipe closed gets to exit before it is judged to live on."""


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


DEFAULT_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
"""The only variables a plugin inherits from the supervisor unless configured otherwise."""


def plugin_env(name: str, *, inherit: Sequence[str] = DEFAULT_INHERITED_ENV,
               env: Mapping[str, str] | None = None,
               source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a plugin named ``name``: the ``inherit`` variables of
    ``source`` (the supervisor's own by default), then ``env``, then the ``PIPEVISOR_*``
    variables SPEC 5 promises, which neither of those can override. The daemon and the
    checker both start plugins with this, so a plugin sees the same under both."""
    source = os.environ if source is None else source
    out = {k: source[k] for k in inherit if k in source}
    out.update(env or {})
    out.update({
        "PIPEVISOR_PLUGIN": "1",
        "PIPEVISOR_PLUGIN_NAME": name,
        "PIPEVISOR_PROTOCOL": f"{PROTOCOL_VERSIONS.min}..{PROTOCOL_VERSIONS.max}",
        "PIPEVISOR_HOST_PID": str(os.getpid()),
    })
    return out


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


def plan(privileges: Privileges | None, containment: _platform.Containment,
         name: str = "plugin") -> PrivilegePlan:
    """How ``privileges`` apply under ``containment`` (and what will be in effect, for
    status); :class:`SpawnError` when the plugin must not start that way."""
    try:
        return plan_privileges(privileges, shim=containment.shim is not None, name=name)
    except PrivilegeError as exc:
        raise SpawnError(str(exc)) from None


async def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    containment: _platform.Containment,
    cwd: str | None = None,
    rlimits: Mapping[str, int] | None = None,
    privileges: PrivilegePlan | None = None,
    trust: TrustRule | None = None,
) -> Process:
    """Start ``command`` (its first item looked up on ``env``'s PATH) with three pipes,
    wrapped by ``containment`` with the kernel ``rlimits`` (short name -> value, see
    :mod:`pipevisor.supervisor.proc.rlimits`) and ``privileges`` (from :func:`plan`;
    None: the supervisor's own, no no_new_privs). The executable must pass ``trust``
    (:mod:`~pipevisor.supervisor.proc.trust`; default: root's or ours, writable by no
    one else). Raises :class:`SpawnError` when it cannot or may not start."""
    executable = resolve_executable(command[0], env.get("PATH"))
    # the rule discovery and `load` apply, checked again at every start: a file that
    # became writable by others (or was swapped for another user's) is not run
    why = check_trusted(executable, trust)
    if why is not None:
        raise SpawnError(f"refusing to run {executable}: {why}")
    if cwd is not None and not os.path.isdir(cwd):
        raise SpawnError(f"working directory does not exist: {cwd}")
    rlimits = dict(rlimits or {})
    argv, kwargs = _platform.wrap_command([executable, *command[1:]], containment, rlimits,
                                          privileges)
    # its exit is watched by a pidfd on the loop, not by a thread per child (io/child_watch)
    child_watch.install()
    try:
        process = await open_process(argv, cwd=cwd, env=env, **kwargs)
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


async def wait_exit_after_eof(process: Process, grace: float = EOF_EXIT_GRACE,
                              dying: float = 1.0) -> bool:
    """After the plugin's stdout or stdin closed: True once the process has exited.

    A plugin usually closes its pipes by exiting, and its exit status follows within
    milliseconds (through pvinit, a few more); that is worth waiting for, up to
    ``dying`` seconds, to report the real exit code. A plugin that closed a pipe and
    lives on is not exiting: then this returns False after ``grace`` seconds, so the
    caller can end the instance at once instead of leaving calls hanging.
    """
    if await wait_exit(process, grace):
        return True
    if _platform.tree_alive(process.pid):
        return False
    return await wait_exit(process, max(0.0, dying - grace))


async def wait_stdin_closed(process: Process) -> None:
    """Return once the plugin's stdin pipe is closed: by the plugin (it closed its end,
    or exited) or by us.

    On asyncio the pipe transport watches for it (the kernel flags the write end as
    soon as the last reader is gone), so this returns at once, without any write;
    pvinit keeps no copy of the pipe, so the plugin's close is the last one. Other
    backends watch nothing on an idle pipe: this never returns there, and the next
    write fails instead.
    """
    assert process.stdin is not None
    if not await wait_pipe_closed(process.stdin):
        await anyio.sleep_forever()


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
