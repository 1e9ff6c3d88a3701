"""``pipevisor check``: run a plugin executable and tell its author what breaks the protocol.

The checker spawns the plugin itself (not through :class:`~pipevisor.supervisor.Supervisor`)
because it needs exact observations: which line was garbage, which request went
unanswered, what the exit status was and when. It speaks through the same
sans-I/O :class:`pipevisor.protocol.Peer` the supervisor uses, so "passes the check"
and "works under the supervisor" mean the same thing.

Two runs, each a fresh process in the same containment the supervisor uses:

1. handshake, ``pipevisor/ping``, an unknown method, every declared method
   with ``{}`` params, a second handshake (answered -32600, or a warning),
   cancellation (with ``--slow-method``), one idle second
   watched with psutil (CPU, memory growth), then the way out:
   ``pipevisor/shutdown`` if the plugin claims it, else closing stdin;
2. only when the plugin claims ``shutdown``: handshake, then close stdin, to
   check that end of input alone also makes it exit.

Once the plugin stops answering (a timeout) or dies, the request checks that
follow are reported as not run rather than each waiting out its own timeout:
the first failure is the one to fix, and a bad plugin is judged in seconds.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio
import orjson
import psutil
from anyio.abc import Process

from pipevisor.protocol import (
    CANCEL,
    HANDSHAKE,
    PING,
    PROTOCOL_VERSIONS,
    SHUTDOWN,
    ErrorCode,
    ErrorResponse,
    HandshakeError,
    HandshakeParams,
    HandshakeResult,
    NotificationReceived,
    Peer,
    ProtocolFault,
    RequestReceived,
    ResponseReceived,
    standard_error,
)
from pipevisor.supervisor.proc import containment as _platform
from pipevisor.supervisor.proc import tree
from pipevisor.supervisor.proc.privileges import Privileges
from pipevisor.supervisor.proc.spawn import (
    describe_exit,
    plan,
    plugin_env,
    pump_stderr,
    spawn,
)

UNKNOWN_METHOD = "pipevisor_check.no_such_method"
"""Called to see a -32601 answer; not reserved, so the plugin must answer it itself."""

IDLE_CPU_LIMIT = 20.0
"""Percent of one core a plugin may use while nobody calls it (a busy loop shows ~100)."""

IDLE_GROWTH_LIMIT = 4 * 1024 * 1024
"""Bytes of resident memory a plugin may gain over the idle window."""


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"
    """Not run: either not applicable or impossible after an earlier failure."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    hint: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": str(self.status), "detail": self.detail,
                "hint": self.hint}


@dataclass(frozen=True)
class CheckReport:
    command: tuple[str, ...]
    checks: tuple[CheckResult, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(c.status is not Status.FAIL for c in self.checks)

    def get(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.status is Status.FAIL]

    def to_json(self) -> dict[str, Any]:
        return {"command": list(self.command), "ok": self.ok, "seconds": round(self.seconds, 3),
                "checks": [c.to_json() for c in self.checks]}


@dataclass(frozen=True)
class CheckOptions:
    timeout: float = 2.0
    """Seconds to wait for each answer (handshake included)."""
    grace: float = 2.0
    """Seconds a plugin has to exit after shutdown or end of input."""
    idle_seconds: float = 1.0
    skip_methods: frozenset[str] = frozenset()
    """Declared methods not to call (ones that crash or hang on purpose, or need real params)."""
    slow_method: str | None = None
    """A method that takes a while with ``slow_params``: used to test cancellation."""
    slow_params: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, Any] = field(default_factory=dict)
    """Params to call a declared method with (method -> params); ``{}`` otherwise."""
    cancel_wait: float = 1.0
    """Seconds after ``pipevisor/cancel`` within which the answer must come."""
    preset: str | None = None
    """Check a foreign server by its preset (``"mcp"``, ``"lsp"``) instead of as a
    pipevisor plugin: its own start, calls, ping, cancel and stop (docs/foreign-servers.md)."""


# ---------------------------------------------------------------- one plugin process


class _Gone(Exception):
    """The plugin exited or closed stdout; the request cannot be answered."""


class _Timeout(Exception):
    pass


class _Session:
    """One spawned plugin: writes requests, reads answers, records everything odd."""

    def __init__(self, process: Process, tg: anyio.abc.TaskGroup,
                 content_length: bool = False) -> None:
        self.process = process
        self.peer = Peer(content_length=content_length)
        self.faults: list[str] = []
        self.fault_count = 0
        self.stderr_lines: list[str] = []
        self.stderr_total = 0
        self.notifications = 0
        self.host_calls: list[str] = []
        self._answers: dict[Any, ResponseReceived] = {}
        self._waiters: dict[Any, anyio.Event] = {}
        self.stdout_closed = anyio.Event()
        self.exited = anyio.Event()
        tg.start_soon(self._read_stdout)
        tg.start_soon(pump_stderr, process, self._on_stderr)
        tg.start_soon(self._watch_exit)

    def _on_stderr(self, line: str) -> None:
        self.stderr_total += 1
        if len(self.stderr_lines) < 200:
            self.stderr_lines.append(line)

    async def _watch_exit(self) -> None:
        await self.process.wait()
        self.exited.set()

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        try:
            async for chunk in self.process.stdout:
                await self._handle(self.peer.receive_data(chunk))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        await self._handle(self.peer.receive_eof())
        self.stdout_closed.set()
        for event in self._waiters.values():
            event.set()

    async def _handle(self, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, ResponseReceived):
                self._answers[ev.response.id] = ev
                waiter = self._waiters.get(ev.response.id)
                if waiter is not None:
                    waiter.set()
            elif isinstance(ev, ProtocolFault):
                self.fault_count += 1
                if len(self.faults) < 20:  # a flood must not grow the checker without bound
                    raw = ev.fault.raw[:120].decode("utf-8", "replace")
                    self.faults.append(f"{ev.fault.detail}: {raw!r}")
            elif isinstance(ev, RequestReceived):
                # The checker offers no host methods: answer as an empty host would.
                self.host_calls.append(ev.request.method)
                err = standard_error(ErrorCode.METHOD_NOT_FOUND,
                                     f"pipevisor check offers no host method {ev.request.method}")
                await self.write(self.peer.send_error(ev.request.id, err))
            elif isinstance(ev, NotificationReceived):
                self.notifications += 1

    async def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise _Gone(f"cannot write to its stdin ({exc.__class__.__name__})") from exc

    async def call(self, method: str, params: Any, timeout: float) -> ResponseReceived:
        ident, data = self.peer.send_request(method, params)
        self._waiters[ident] = anyio.Event()
        try:
            await self.write(data)
            return await self.wait_answer(ident, timeout)
        finally:
            self._waiters.pop(ident, None)

    async def wait_answer(self, ident: Any, timeout: float) -> ResponseReceived:
        waiter = self._waiters.setdefault(ident, anyio.Event())
        with anyio.move_on_after(timeout):
            await waiter.wait()
        answer = self._answers.pop(ident, None)
        if answer is not None:
            return answer
        if self.stdout_closed.is_set():
            self.peer.cancel(ident, notify=False)
            with anyio.move_on_after(1.0):  # stdout closes a moment before the exit is seen
                await self.exited.wait()
            raise _Gone(self.describe_end())
        self.peer.cancel(ident, notify=False)
        raise _Timeout(f"no answer within {timeout:g} s")

    def describe_end(self) -> str:
        code = self.process.returncode
        what = describe_exit(code) if code is not None else "closed its stdout"
        tail = self.stderr_lines[-1] if self.stderr_lines else ""
        return f"plugin {what}" + (f" (last stderr line: {tail!r})" if tail else "")

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.aclose()
        except (anyio.BrokenResourceError, OSError):
            pass

    async def wait_exit(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self.exited.wait()
        return self.exited.is_set()


async def _spawn(command: tuple[str, ...]) -> Process:
    """Start the plugin. Raises :class:`SpawnError` naming the file when it cannot run."""
    containment = _platform.detect_containment()
    name = _plugin_name(command[0])
    # as the daemon starts a plugin by default: no_new_privs, the daemon's own user
    return await spawn(command, env=plugin_env(name), containment=containment,
                       privileges=plan(Privileges(), containment, name))


def _plugin_name(executable: str) -> str:
    base = os.path.basename(executable)
    return base.removeprefix("pipevisor-") or "plugin"


def _handshake_params(command: tuple[str, ...]) -> dict[str, Any]:
    return HandshakeParams(plugin_name=_plugin_name(command[0]), host_name="pipevisor-check",
                           host_pid=os.getpid(), instance=1).to_json()


# ---------------------------------------------------------------- the checks


class _Checks:
    """Collects results; turns a dead or mute plugin into "not run" for what follows."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self.stopped: str | None = None
        """Why request checks can no longer run (plugin gone or not answering)."""

    def add(self, name: str, status: Status, detail: str, hint: str = "") -> None:
        self.results.append(CheckResult(name, status, detail, hint))

    def not_run(self, name: str) -> None:
        self.add(name, Status.SKIP, f"not run: {self.stopped}")

    async def request(self, name: str, s: _Session, method: str, params: Any, timeout: float,
                      judge: Callable[[ResponseReceived], tuple[Status, str, str]]) -> None:
        if self.stopped is not None:
            self.not_run(name)
            return
        try:
            answer = await s.call(method, params, timeout)
        except _Timeout as exc:
            self.stopped = f"the plugin stopped answering (see {name})"
            self.add(name, Status.FAIL, str(exc),
                     "answer every request, even with an error; a request must never go "
                     "unanswered (SPEC 4.4)")
            return
        except _Gone as exc:
            self.stopped = f"the plugin is gone (see {name})"
            self.add(name, Status.FAIL, str(exc),
                     "a plugin must not exit while it is in use; answer with an error instead")
            return
        self.add(name, *judge(answer))


def _error_text(answer: ResponseReceived) -> str:
    r = answer.response
    assert isinstance(r, ErrorResponse)
    return f"error {r.error.code}: {r.error.message}"


async def _main_run(command: tuple[str, ...], opts: CheckOptions, checks: _Checks) -> None:
    process = await _spawn(command)
    try:
        async with anyio.create_task_group() as tg:
            s = _Session(process, tg)
            try:
                await _main_checks(s, command, opts, checks)
            finally:
                tree.kill_tree(process.pid)
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()


_NO_MODULE = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '([\w.]+)'")


def _missing_module_hint(stderr: Sequence[str]) -> str | None:
    """A hint for a Python plugin that died importing something, above all the kit:
    the interpreter that runs it is not the one the kit was installed into."""
    for line in reversed(stderr):
        found = _NO_MODULE.search(line)
        if found is None:
            continue
        module = found.group(1)
        if module == "pipevisor" or module.startswith("pipevisor."):
            return ("could not import the kit: the interpreter running this plugin does "
                    "not have pipevisor-kit installed. Give the plugin that interpreter: a "
                    "shebang naming the venv's python, command = [venv/bin/python, plugin] "
                    "in the config, or a zipapp with the kit inside (docs/plugin-kit.md)")
        return (f"the plugin could not import {module!r}: install it for the interpreter "
                "that runs the plugin (its shebang or the command's first item)")
    return None


async def _handshake(s: _Session, command: tuple[str, ...], opts: CheckOptions,
                     checks: _Checks, name: str | None) -> HandshakeResult | None:
    """Handshake; records a check named ``name`` (None: only record failures)."""
    label = name or "handshake"
    try:
        answer = await s.call(HANDSHAKE, _handshake_params(command), opts.timeout)
    except (_Timeout, _Gone) as exc:
        checks.stopped = "no handshake"
        checks.add(label, Status.FAIL, f"no handshake answer: {exc}",
                   _missing_module_hint(s.stderr_lines) or
                   "read one line from stdin, answer pipevisor/handshake on stdout with "
                   "a newline at the end, and flush (SPEC 6)")
        return None
    r = answer.response
    if isinstance(r, ErrorResponse):
        checks.stopped = "the handshake was refused"
        hint = f"the checker offers protocol {PROTOCOL_VERSIONS}; accept it (SPEC 6.4)"
        if r.error.code in (ErrorCode.METHOD_NOT_FOUND, ErrorCode.INVALID_PARAMS):
            hint = ("if this is a foreign JSON-RPC server (MCP, language server), check it "
                    "by its preset: pipevisor check --preset mcp|lsp (docs/foreign-servers.md);"
                    " a pipevisor plugin: " + hint)
        checks.add(label, Status.FAIL, f"handshake refused with {_error_text(answer)}", hint)
        return None
    try:
        result = HandshakeResult.from_json(r.result, PROTOCOL_VERSIONS)
    except HandshakeError as exc:
        checks.stopped = "the handshake result is invalid"
        checks.add(label, Status.FAIL, exc.error.message,
                   "validate your answer against protocol/schemas/handshake.result.json")
        return None
    if name is not None:
        caps = [c for c in ("cancel", "progress", "shutdown") if getattr(result, c)]
        checks.add(name, Status.PASS,
                   f"protocol {result.protocol_version}, {len(result.methods)} method(s)"
                   f"{', capabilities: ' + ', '.join(caps) if caps else ''}")
    return result


async def _main_checks(s: _Session, command: tuple[str, ...], opts: CheckOptions,
                       checks: _Checks) -> None:
    hs = await _handshake(s, command, opts, checks, "handshake")
    methods = [] if hs is None else list(hs.methods)

    def ping_judge(a: ResponseReceived) -> tuple[Status, str, str]:
        if isinstance(a.response, ErrorResponse):
            return (Status.FAIL, f"ping answered with {_error_text(a)}",
                    "answer pipevisor/ping with the result {} (SPEC 7.1)")
        return Status.PASS, "answered", ""

    await checks.request("ping", s, PING, {}, opts.timeout, ping_judge)

    def unknown_judge(a: ResponseReceived) -> tuple[Status, str, str]:
        r = a.response
        if isinstance(r, ErrorResponse) and r.error.code == ErrorCode.METHOD_NOT_FOUND:
            return Status.PASS, "answered -32601 Method not found", ""
        got = _error_text(a) if isinstance(r, ErrorResponse) else "a result"
        return (Status.FAIL, f"{UNKNOWN_METHOD} answered with {got}",
                "answer a method you do not implement with error -32601 (SPEC 4.4)")

    await checks.request("unknown method", s, UNKNOWN_METHOD, {}, opts.timeout, unknown_judge)

    for m in methods:
        if m in opts.skip_methods:
            checks.add(f"method {m}", Status.SKIP, "skipped (--skip)")
            continue
        params = opts.method_params.get(m, {})
        shown = orjson.dumps(params).decode()
        if len(shown) > 40:
            shown = shown[:37] + "..."

        def method_judge(a: ResponseReceived, shown: str = shown) -> tuple[Status, str, str]:
            if isinstance(a.response, ErrorResponse):
                return Status.PASS, f"called with {shown}: answered with {_error_text(a)}", ""
            return Status.PASS, f"called with {shown}: answered with a result", ""

        await checks.request(f"method {m}", s, m, params, opts.timeout, method_judge)

    await _check_second_handshake(s, command, opts, checks)
    await _check_cancel(s, hs, opts, checks)
    await _check_idle(s, checks, opts)

    if hs is not None and hs.shutdown and checks.stopped is None:
        await _check_shutdown(s, opts, checks)
    elif hs is not None and not hs.shutdown:
        checks.add("shutdown", Status.SKIP, "the plugin does not claim capabilities.shutdown")
        if checks.stopped is None:
            await _check_eof(s, opts, checks)
        else:
            checks.not_run("exit on end of input")
    else:
        checks.not_run("shutdown")
    _check_output(s, checks)


async def _check_second_handshake(s: _Session, command: tuple[str, ...], opts: CheckOptions,
                                  checks: _Checks) -> None:
    """SPEC 6.1: a repeated handshake is answered -32600 and changes nothing.

    A host never sends one, so a wrong answer is a warning, not a failure; an unanswered
    one still fails, as any unanswered request does. Run after the method checks so that
    a plugin that mishandles it has already been judged on everything a host does send;
    the checks after it (cancel, idle, shutdown) show whether anything changed."""
    hint = ("answer a pipevisor/handshake after the first one with error -32600 Invalid "
            "Request and keep the first handshake's version and limits (SPEC 6.1)")

    def judge(a: ResponseReceived) -> tuple[Status, str, str]:
        r = a.response
        if isinstance(r, ErrorResponse) and r.error.code == ErrorCode.INVALID_REQUEST:
            return Status.PASS, "answered -32600 Invalid Request", ""
        got = _error_text(a) if isinstance(r, ErrorResponse) else "a result"
        return Status.WARN, f"a second pipevisor/handshake answered with {got}", hint

    await checks.request("second handshake", s, HANDSHAKE, _handshake_params(command),
                         opts.timeout, judge)


async def _check_cancel(s: _Session, hs: HandshakeResult | None, opts: CheckOptions,
                        checks: _Checks) -> None:
    name = "cancel"
    if hs is None or checks.stopped is not None:
        checks.not_run(name)
        return
    if not hs.cancel:
        checks.add(name, Status.SKIP, "the plugin does not claim capabilities.cancel")
        return
    if opts.slow_method is None:
        checks.add(name, Status.SKIP, "not tested: no slow method to cancel",
                   "pass --slow-method NAME [--slow-params JSON] naming a call that takes "
                   "a few seconds")
        return
    ident, data = s.peer.send_request(opts.slow_method, opts.slow_params)
    try:
        await s.write(data)
        early: ResponseReceived | None = None
        with anyio.move_on_after(min(0.2, opts.timeout)):  # let the work start
            early = await s.wait_answer(ident, math.inf)
        if early is not None:
            checks.add(name, Status.WARN, f"{opts.slow_method} answered before it could be "
                       "cancelled", "pick a --slow-method/--slow-params that takes seconds")
            return
        await s.write(s.peer.send_notification(CANCEL, {"id": ident, "reason": "check"}))
        answer = await s.wait_answer(ident, opts.cancel_wait)
    except _Timeout:
        checks.add(name, Status.FAIL,
                   f"no answer within {opts.cancel_wait:g} s of pipevisor/cancel",
                   "when you claim cancel, stop the work and answer -31053 promptly (SPEC 7.2)")
        return
    except _Gone as exc:
        checks.stopped = f"the plugin is gone (see {name})"
        checks.add(name, Status.FAIL, str(exc), "stop the work and answer -31053; do not exit")
        return
    r = answer.response
    if isinstance(r, ErrorResponse) and r.error.code == ErrorCode.REQUEST_CANCELLED:
        checks.add(name, Status.PASS, "cancelled request answered -31053")
    else:
        got = _error_text(answer) if isinstance(r, ErrorResponse) else "a result"
        checks.add(name, Status.PASS, f"answered promptly after cancel with {got}")


async def _check_idle(s: _Session, checks: _Checks, opts: CheckOptions) -> None:
    """Watch the plugin's process tree while nobody calls it."""
    if s.exited.is_set():
        checks.not_run("idle cpu")
        checks.not_run("idle memory")
        return
    try:
        root = psutil.Process(s.process.pid)
        procs = [root, *root.children(recursive=True)]
        cpu0 = sum(_cpu(p) for p in procs)
        rss0 = sum(_rss(p) for p in procs)
        t0 = time.monotonic()
    except psutil.Error:
        checks.not_run("idle cpu")
        checks.not_run("idle memory")
        return
    with anyio.move_on_after(opts.idle_seconds):
        await s.exited.wait()
    elapsed = time.monotonic() - t0
    if s.exited.is_set():
        checks.stopped = "the plugin is gone (see idle cpu)"
        checks.add("idle cpu", Status.FAIL, f"{s.describe_end()} while idle",
                   "stay alive until shutdown or end of input")
        checks.not_run("idle memory")
        return
    cpu = (sum(_cpu(p) for p in procs) - cpu0) / elapsed * 100
    rss1 = sum(_rss(p) for p in procs)
    growth = rss1 - rss0
    if cpu > IDLE_CPU_LIMIT:
        checks.add("idle cpu", Status.FAIL,
                   f"{cpu:.0f}% of a core over {elapsed:.1f} s with no calls",
                   "block on reading stdin instead of polling or spinning")
    else:
        checks.add("idle cpu", Status.PASS, f"{cpu:.1f}% of a core over {elapsed:.1f} s")
    mib = growth / 1024 / 1024
    if growth > IDLE_GROWTH_LIMIT:
        checks.add("idle memory", Status.FAIL,
                   f"resident memory grew {mib:.1f} MiB in {elapsed:.1f} s with no calls "
                   f"(now {rss1 / 1024 / 1024:.0f} MiB)",
                   "something allocates and keeps memory while idle: a leak")
    else:
        checks.add("idle memory", Status.PASS,
                   f"{mib:+.1f} MiB over {elapsed:.1f} s (resident {rss1 / 1024 / 1024:.0f} MiB)")


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def _rss(p: psutil.Process) -> int:
    try:
        return int(p.memory_info().rss)
    except psutil.Error:
        return 0


async def _check_shutdown(s: _Session, opts: CheckOptions, checks: _Checks) -> None:
    name = "shutdown"
    params = {"reason": "pipevisor check", "graceSeconds": opts.grace}
    started = time.monotonic()
    try:
        answer = await s.call(SHUTDOWN, params, opts.grace)
    except _Timeout:
        checks.stopped = "the plugin did not answer shutdown"
        checks.add(name, Status.FAIL, f"pipevisor/shutdown not answered within {opts.grace:g} s",
                   "answer shutdown with null, then exit 0 (SPEC 7.3)")
        return
    except _Gone as exc:
        if s.process.returncode == 0:
            checks.add(name, Status.WARN, "exited 0 without answering pipevisor/shutdown",
                       "answer with null before exiting (SPEC 7.3)")
        else:
            checks.add(name, Status.FAIL, str(exc), "exit with status 0 after shutdown")
        return
    if isinstance(answer.response, ErrorResponse):
        checks.add(name, Status.FAIL, f"shutdown answered with {_error_text(answer)}",
                   "answer pipevisor/shutdown with null (SPEC 7.3)")
        return
    left = max(0.0, opts.grace - (time.monotonic() - started))
    if not await s.wait_exit(left):
        checks.add(name, Status.FAIL, f"answered, but still running {opts.grace:g} s after "
                   "pipevisor/shutdown", "exit promptly after answering shutdown, without "
                   "waiting for stdin to close (SPEC 7.3)")
        return
    code = s.process.returncode
    if code != 0:
        checks.add(name, Status.FAIL, f"answered, then {describe_exit(code)}",
                   "exit with status 0 after shutdown")
        return
    checks.add(name, Status.PASS, f"answered null and exited 0 in "
               f"{time.monotonic() - started:.2f} s")


async def _check_eof(s: _Session, opts: CheckOptions, checks: _Checks) -> None:
    name = "exit on end of input"
    started = time.monotonic()
    await s.close_stdin()
    if not await s.wait_exit(opts.grace):
        checks.add(name, Status.FAIL, f"still running {opts.grace:g} s after stdin was closed",
                   "treat end of input on stdin as a request to exit 0 (SPEC 9)")
        return
    code = s.process.returncode
    if code != 0:
        checks.add(name, Status.FAIL, f"stdin closed, then {describe_exit(code)}",
                   "exit with status 0 at end of input")
        return
    checks.add(name, Status.PASS, f"exited 0 in {time.monotonic() - started:.2f} s")


def _check_output(s: _Session, checks: _Checks) -> None:
    if s.faults:
        checks.add("stdout is protocol only", Status.FAIL,
                   f"{s.fault_count} invalid line(s) on stdout; first: {s.faults[0]}",
                   "write logs and debug prints to stderr; stdout carries protocol lines "
                   "only (SPEC 2.3)")
    else:
        checks.add("stdout is protocol only", Status.PASS,
                   f"{s.peer.stats.messages_in} message(s), no stray output")
    looks_like_rpc = [ln for ln in s.stderr_lines if '"jsonrpc"' in ln]
    if looks_like_rpc:
        checks.add("stderr is the log", Status.WARN,
                   f"{s.stderr_total} line(s); {len(looks_like_rpc)} look like JSON-RPC "
                   f"messages, e.g. {looks_like_rpc[0][:80]!r}",
                   "protocol messages go to stdout; stderr is read as the log only")
    else:
        checks.add("stderr is the log", Status.PASS, f"{s.stderr_total} line(s) of log")


async def _eof_run(command: tuple[str, ...], opts: CheckOptions, checks: _Checks) -> None:
    process = await _spawn(command)
    try:
        async with anyio.create_task_group() as tg:
            s = _Session(process, tg)
            try:
                sub = _Checks()
                if await _handshake(s, command, opts, sub, None) is None:
                    checks.add("exit on end of input", Status.FAIL,
                               f"second run: {sub.results[0].detail}", sub.results[0].hint)
                else:
                    await _check_eof(s, opts, checks)
            finally:
                tree.kill_tree(process.pid)
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()


async def check_plugin(command: tuple[str, ...] | list[str],
                       options: CheckOptions | None = None) -> CheckReport:
    """Run every check against ``command`` (executable and its arguments).

    Raises:
        SpawnError: the executable is missing, not executable, or cannot be started.
    """
    opts = options or CheckOptions()
    cmd = tuple(command)
    started = time.monotonic()
    checks = _Checks()
    if opts.preset is not None:
        await _server_run(cmd, opts, checks)
        return CheckReport(cmd, tuple(checks.results), time.monotonic() - started)
    await _main_run(cmd, opts, checks)
    shutdown = next((c for c in checks.results if c.name == "shutdown"), None)
    if shutdown is not None and shutdown.status is not Status.SKIP:
        # the plugin claims shutdown, so the first run left by it: EOF needs its own process
        await _eof_run(cmd, opts, checks)
    elif shutdown is not None and not any(c.name == "exit on end of input"
                                          for c in checks.results):
        checks.not_run("exit on end of input")
    return CheckReport(cmd, tuple(checks.results), time.monotonic() - started)


def report_text(report: CheckReport) -> str:
    """The human report: one line per check, a hint under each failure or warning."""
    marks = {Status.PASS: "PASS", Status.FAIL: "FAIL", Status.WARN: "WARN", Status.SKIP: "----"}
    width = max((len(c.name) for c in report.checks), default=0)
    lines = [f"pipevisor check {' '.join(report.command)}"]
    for c in report.checks:
        lines.append(f"  {marks[c.status]}  {c.name:<{width}}  {c.detail}")
        if c.hint and c.status in (Status.FAIL, Status.WARN, Status.SKIP):
            lines.append(f"        {'':<{width}}  hint: {c.hint}")
    failed = report.failed()
    verdict = ("OK" if not failed else f"FAILED ({len(failed)}): {', '.join(failed)}")
    lines.append(f"{verdict}  [{report.seconds:.1f} s]")
    return "\n".join(lines)


def report_json(report: CheckReport) -> str:
    return orjson.dumps(report.to_json()).decode()


# ------------------------------------------------------- foreign servers (presets)

_MCP_VERSION = "2025-06-18"


def _result_or_fail(checks: _Checks, name: str, answer: ResponseReceived,
                    hint: str) -> Any:
    r = answer.response
    if isinstance(r, ErrorResponse):
        checks.add(name, Status.FAIL, _error_text(answer), hint)
        return None
    return r.result


async def _server_run(command: tuple[str, ...], opts: CheckOptions, checks: _Checks) -> None:
    """A foreign server checked the way the preset drives it under the supervisor."""
    if opts.preset not in ("mcp", "lsp"):
        checks.add("preset", Status.FAIL, f"unknown preset {opts.preset!r}",
                   "use --preset mcp or --preset lsp")
        return
    process = await _spawn(command)
    try:
        async with anyio.create_task_group() as tg:
            s = _Session(process, tg, content_length=opts.preset == "lsp")
            try:
                if opts.preset == "mcp":
                    await _mcp_checks(s, opts, checks)
                else:
                    await _lsp_checks(s, opts, checks)
                _check_output(s, checks)
            finally:
                tree.kill_tree(process.pid)
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()


async def _mcp_checks(s: _Session, opts: CheckOptions, checks: _Checks) -> None:
    from pipevisor.supervisor.engine.presets import MCP_VERSIONS

    init: dict[str, Any] = {}

    def judge_init(a: ResponseReceived) -> tuple[Status, str, str]:
        r = a.response
        if isinstance(r, ErrorResponse):
            return Status.FAIL, _error_text(a), "an MCP server answers initialize (MCP spec)"
        result = r.result if isinstance(r.result, dict) else {}
        init.update(result)
        version = result.get("protocolVersion")
        if version not in MCP_VERSIONS:
            return (Status.FAIL, f"protocol version {version!r}: pipevisor speaks "
                    f"{', '.join(MCP_VERSIONS)}", "offer one of those versions")
        return (Status.PASS, f"protocol {version}, server {result.get('serverInfo')}, "
                f"capabilities {sorted(result.get('capabilities') or {})}", "")

    await checks.request("initialize", s, "initialize", {
        "protocolVersion": _MCP_VERSION, "capabilities": {},
        "clientInfo": {"name": "pipevisor-check", "version": "0"}}, opts.timeout, judge_init)
    if checks.stopped is None and init.get("protocolVersion") in MCP_VERSIONS:
        await s.write(s.peer.send_notification("notifications/initialized", None))
    else:
        checks.stopped = checks.stopped or "initialize failed"

    def judge_tools(a: ResponseReceived) -> tuple[Status, str, str]:
        r = a.response
        if isinstance(r, ErrorResponse):
            return (Status.WARN, _error_text(a),
                    "a server without tools answers -32601; others should list them")
        tools = r.result.get("tools") if isinstance(r.result, dict) else None
        if not isinstance(tools, list):
            return Status.FAIL, f"no tools list in {str(r.result)[:120]}", "MCP: tools/list"
        names = [t.get("name") for t in tools if isinstance(t, dict)]
        return Status.PASS, f"{len(names)} tool(s): {', '.join(map(str, names[:8]))}", ""

    await checks.request("tools/list", s, "tools/list", {}, opts.timeout, judge_tools)

    def judge_ping(a: ResponseReceived) -> tuple[Status, str, str]:
        if isinstance(a.response, ErrorResponse):
            return (Status.FAIL, _error_text(a), "MCP servers answer ping with {}; without "
                    "it set health.ping_interval = 0 (no liveness check)")
        return Status.PASS, "answered: liveness by ping works", ""

    await checks.request("ping", s, "ping", None, opts.timeout, judge_ping)
    await _server_cancel(s, opts, checks, "notifications/cancelled",
                         lambda ident: {"requestId": ident, "reason": "pipevisor check"})
    await _server_stop_by_eof(s, opts, checks)


async def _lsp_checks(s: _Session, opts: CheckOptions, checks: _Checks) -> None:
    def judge_init(a: ResponseReceived) -> tuple[Status, str, str]:
        r = a.response
        if isinstance(r, ErrorResponse):
            return Status.FAIL, _error_text(a), "a language server answers initialize"
        result = r.result if isinstance(r.result, dict) else {}
        if not isinstance(result.get("capabilities"), dict):
            return Status.FAIL, "no capabilities in the answer", "LSP: InitializeResult"
        return (Status.PASS, f"server {result.get('serverInfo')}, "
                f"{len(result['capabilities'])} capabilities", "")

    await checks.request("initialize", s, "initialize", {
        "processId": os.getpid(), "rootUri": "file://" + os.getcwd(), "capabilities": {},
        "clientInfo": {"name": "pipevisor-check", "version": "0"}}, opts.timeout, judge_init)
    if checks.stopped is not None:
        return
    await s.write(s.peer.send_notification("initialized", {}))
    await _server_cancel(s, opts, checks, "$/cancelRequest", lambda ident: {"id": ident})

    def judge_shutdown(a: ResponseReceived) -> tuple[Status, str, str]:
        if isinstance(a.response, ErrorResponse):
            return Status.FAIL, _error_text(a), "LSP: answer shutdown with null"
        return Status.PASS, "answered", ""

    await checks.request("shutdown", s, "shutdown", None, opts.timeout, judge_shutdown)
    if checks.stopped is not None:
        checks.not_run("exit")
        return
    try:
        await s.write(s.peer.send_notification("exit", None))
    except _Gone:
        pass
    if await s.wait_exit(opts.grace):
        code = s.process.returncode
        checks.add("exit", Status.PASS if code == 0 else Status.WARN,
                   f"exited with code {code} after shutdown + exit",
                   "" if code == 0 else "LSP: exit after shutdown is exit code 0")
    else:
        checks.add("exit", Status.FAIL, f"still running {opts.grace:g} s after exit",
                   "LSP: the server exits on the exit notification; pipevisor would "
                   "SIGTERM it after stop.eof_grace")


async def _server_cancel(s: _Session, opts: CheckOptions, checks: _Checks, method: str,
                         params: Callable[[Any], Any]) -> None:
    name = "cancel honoured"
    if checks.stopped is not None:
        checks.not_run(name)
        return
    if opts.slow_method is None:
        checks.add(name, Status.SKIP, "not run: no slow method given",
                   "give --slow-method NAME --slow-params JSON (for MCP: tools/call with a "
                   "slow tool) to see a cancel reach the server")
        return
    ident, data = s.peer.send_request(opts.slow_method, opts.slow_params)
    await s.write(data)
    with anyio.move_on_after(min(0.2, opts.timeout)):
        answer = await s.wait_answer(ident, opts.timeout)
        checks.add(name, Status.SKIP, "not run: the slow method answered at once",
                   "give params that make it take a second or more")
        return
    await s.write(s.peer.send_notification(method, params(ident)))
    start = time.monotonic()
    try:
        answer = await s.wait_answer(ident, opts.cancel_wait)
    except _Timeout:
        checks.add(name, Status.PASS, f"no answer after {method}: the work was dropped", "")
        return
    except _Gone as exc:
        checks.stopped = "the server is gone (see cancel honoured)"
        checks.add(name, Status.FAIL, str(exc), "a cancel must not end the server")
        return
    took = time.monotonic() - start
    if isinstance(answer.response, ErrorResponse):
        checks.add(name, Status.PASS, f"answered {_error_text(answer)} {took:.2f} s after "
                   f"{method}", "")
    else:
        checks.add(name, Status.WARN, f"finished the work anyway ({took:.2f} s after "
                   f"{method})", "the server ignores cancels: abandoned calls keep its slot "
                   "busy; lower calls.timeout or keep server.max_in_flight low")


async def _server_stop_by_eof(s: _Session, opts: CheckOptions, checks: _Checks) -> None:
    await s.close_stdin()
    if await s.wait_exit(opts.grace):
        checks.add("exit on end of input", Status.PASS,
                   f"exited ({describe_exit(s.process.returncode)})", "")
    else:
        checks.add("exit on end of input", Status.WARN,
                   f"still running {opts.grace:g} s after stdin closed",
                   "pipevisor then sends SIGTERM (stop.eof_grace); MCP servers should exit "
                   "when stdin closes")
