"""One plugin's life: start, handshake, serve calls, notice death, restart or give up.

A :class:`PluginRunner` owns one long-lived task (``run``) that loops over
*instances* (one process each). Everything that can end an instance (the
process exiting, stdout closing, missed pings, a protocol fault under the
strict setting, an operator's stop or restart) funnels into ``_end``, so there
is exactly one place that decides what happens next and exactly one answer
for every call in flight.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import Process, TaskGroup

from pipevisor.protocol import (
    PING,
    SHUTDOWN,
    ErrorCode,
    ErrorObject,
    HandshakeParams,
    HandshakeResult,
    local_error,
)
from pipevisor.protocol.host_methods import HostBinding
from pipevisor.protocol.interfaces import (
    AdapterLookup,
    Binding,
    InterfaceSet,
)
from pipevisor.supervisor.engine import bringup, presets
from pipevisor.supervisor.engine.call_gate import (
    CallGate,
    not_ready_in_time,
    serving_verdict,
    unavailable,
)
from pipevisor.supervisor.engine.config import (
    Framing,
    PluginMode,
    PluginSpec,
    Preset,
    StartStep,
)
from pipevisor.supervisor.engine.connection import (
    Connection,
    ConnectionCallbacks,
    HostHandler,
    ProgressListener,
)
from pipevisor.supervisor.engine.ending import (
    End,
    EndKind,
    Want,
    after_backoff,
    after_end,
    claim,
    exit_end,
)
from pipevisor.supervisor.engine.events import EventHub, EventKind, SupervisorEvent
from pipevisor.supervisor.engine.health import (
    ConnectionPings,
    HealthTicker,
    Watch,
    first_ping_delay,
    held_by_throttle,
)
from pipevisor.supervisor.engine.host_calls import HostCalls
from pipevisor.supervisor.engine.limits import LimitAction, backstop_evidence
from pipevisor.supervisor.engine.method_calls import MethodCalls
from pipevisor.supervisor.engine.plugin_output import PluginOutput
from pipevisor.supervisor.engine.policy import Decision, RestartTracker
from pipevisor.supervisor.engine.states import SERVING, PluginState, check_transition
from pipevisor.supervisor.engine.status import exit_record, plugin_status
from pipevisor.supervisor.errors import (
    CallError,
    CallTimeout,
    PluginCrashed,
    PluginError,
    local,
)
from pipevisor.supervisor.io.pipes import loop_clock
from pipevisor.supervisor.proc import containment as _platform
from pipevisor.supervisor.proc import leftovers, tree
from pipevisor.supervisor.proc.privileges import Privileges
from pipevisor.supervisor.proc.spawn import (
    SpawnError,
    describe_exit,
    plan,
    plugin_env,
    pump_stderr,
    spawn,
    terminate,
    wait_exit,
    wait_exit_after_eof,
    wait_stdin_closed,
)
from pipevisor.supervisor.records import LastExit, PluginStatus

S = PluginState
log = logging.getLogger("pipevisor.runner")

_CRASH_TAIL_LINES = 10


class PluginRunner:
    def __init__(
        self,
        spec: PluginSpec,
        *,
        hub: EventHub,
        containment: _platform.Containment,
        handshake_params: Callable[[PluginSpec, int], HandshakeParams],
        host_handler: HostHandler | None = None,
        notification_handler: Callable[[str, str, Any], None] | None = None,
        leftovers: leftovers.LeftoverRecord | None = None,
        interfaces: InterfaceSet | None = None,
        adapters: AdapterLookup | None = None,
        host_adapters: AdapterLookup | None = None,
        health: HealthTicker | None = None,
    ) -> None:
        self.spec = spec
        self._clock: Callable[[], float] = anyio.current_time
        """The loop's clock; a cheaper read of it once :meth:`run` is in the loop."""
        self._health = health
        self._watch: Watch | None = None
        """This instance's place in the shared ping ticker, if any."""
        self._interfaces = interfaces or InterfaceSet()
        self.methods = MethodCalls(spec, hub, self._interfaces, adapters, self._end)
        """Calls to the plugin's methods through their interfaces (engine/method_calls.py)."""
        self.raw = False
        self.requested_restarts = 0
        """Restarts an operator or the host asked for (restart()), not counted in the
        restart policy's ``tracker.total_restarts``."""
        self.raw_configured = spec.mode is PluginMode.RAW
        """Raw by configuration (``mode = "raw"`` or a preset): ``ready``, not degraded."""
        self.server = presets.settings(spec)
        """How this plugin is driven when it is a foreign server (engine/presets.py)."""
        self.server_info: dict[str, Any] | None = None
        """What the preset's ``initialize`` learnt: version, server info, capabilities."""
        self._plugin_pid_of: tuple[int, int] | None = None
        """(shim pid, plugin pid) of the running instance, once found."""
        self._hub = hub
        self.containment = containment
        self.privileges: dict[str, Any] | None = None
        """What the last spawn put in effect (uid, gid, no_new_privs, sandbox), for status."""
        self._handshake_params = handshake_params
        self.host_calls = HostCalls(spec, hub, host_handler, self._interfaces, host_adapters,
                                    lambda: self.raw)
        """The plugin's requests to the host (engine/host_calls.py)."""
        self._leftovers = leftovers
        self.state = S.STOPPED
        self._changed = anyio.Event()
        self._wake = anyio.Event()
        self._want: Want = None
        self._end_info: End | None = None
        self._end_event = anyio.Event()
        self.tracker = RestartTracker(spec.restart)
        self.conn: Connection | None = None
        self.process: Process | None = None
        self.handshake: HandshakeResult | None = None
        self.output = PluginOutput(spec, hub, notification_handler, self._end,
                                   lambda: self.state is S.HANDSHAKING)
        """stderr, notifications and protocol faults (engine/plugin_output.py)."""
        self.stderr = self.output.stderr
        self.instance = 0
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.last_exit: LastExit | None = None
        self._exit_published = False  # this instance's `exit` event is out (one per instance)
        self.reason: str | None = None
        self.internal_faults = 0
        """Exceptions raised while serving this plugin, each one ending its instance."""
        self.gate = CallGate(spec.name, spec.calls.max_in_flight, spec.calls.max_queued)
        self.resources: dict[str, Any] | None = None
        """The latest resource sample (set by the sampler when the plugin has limits)."""
        self.breaches: deque[dict[str, Any]] = deque(maxlen=10)
        self.paused_since: float | None = None
        """Monotonic time the CPU throttle paused the tree; None while it runs."""
        self.resumed_at = 0.0
        self._limit_stop = False
        self.calls_ok = 0
        self.call_failures: Counter[str] = Counter()
        """Failed calls by outcome (``count_failure``), for metrics."""
        self.breach_counts: Counter[tuple[str, str]] = Counter()
        """(limit, action) -> breaches since the plugin was loaded."""

    @property
    def queued(self) -> int:
        """Calls waiting for a free in-flight slot."""
        return self.gate.waiting

    def count_failure(self, exc: BaseException) -> None:
        """Count a call that did not return a result, by what ended it: ``plugin_error``
        (the plugin answered an error), pipevisor's own reason (``timeout``,
        ``plugin_crashed``, ``invalid_params``, ...), or ``cancelled`` by the caller."""
        if isinstance(exc, PluginError):
            outcome = "plugin_error"
        elif isinstance(exc, CallError):
            try:
                outcome = ErrorCode(exc.code).name.lower()
            except ValueError:
                outcome = "error"
        elif isinstance(exc, anyio.get_cancelled_exc_class()):
            outcome = "cancelled"
        else:
            outcome = "error"
        self.call_failures[outcome] += 1

    # ================================================================ commands

    def start(self) -> None:
        """Start (or start again after ``failed``); a no-op when already running."""
        if self.state in (S.STOPPED, S.FAILED) or self._want == "stop":
            self.tracker.reset()
            self._command("start")

    def stop(self) -> None:
        self._command("stop")
        self._end(End(EndKind.STOP, "stopped on request", failed=False))

    def restart(self) -> None:
        self.tracker.reset()
        self.requested_restarts += 1  # apart from the policy's: `restarts` counts those
        if self.state in (S.STOPPED, S.FAILED):
            self._command("start")
        else:
            self._command("restart")
            self._end(End(EndKind.RESTART, "restarted on request", failed=False))

    def close(self) -> None:
        """Stop for good (unload, supervisor exit): the ``run`` task returns."""
        self._command("close")
        self._end(End(EndKind.UNLOAD, "supervisor is shutting down or unloaded the plugin",
                       failed=False))

    def _command(self, what: Want) -> None:
        if self._want == "close":
            return
        self._want = what
        self._wake.set()

    def _end(self, info: End) -> None:
        """The one funnel every ending goes through (see engine/ending.py)."""
        verdict = claim(self.state, self._end_info is not None, info)
        if verdict in ("take", "take_stopping"):
            self._end_info = info
            self._end_event.set()
            if verdict == "take_stopping":
                # at once, so that calls made from now on wait for the next instance
                self._set_state(S.STOPPING, info.detail)
        elif verdict == "wake_backoff":
            self._wake.set()

    # ================================================================== state

    def _set_state(self, new: PluginState, reason: str | None = None) -> None:
        old = self.state
        if old is new:
            return
        check_transition(old, new)
        self.state = new
        self.reason = reason
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        detail: dict[str, Any] = {"from": str(old), "to": str(new)}
        if reason:
            detail["reason"] = reason
        level = logging.WARNING if new in (S.FAILED, S.BACKOFF, S.DEGRADED) else logging.INFO
        log.log(level, "plugin %s: %s -> %s%s", self.spec.name, old, new,
                f" ({reason})" if reason else "")
        self._hub.publish(SupervisorEvent(self.spec.name, EventKind.STATE, detail))

    async def wait_state(self, states: set[PluginState] | frozenset[PluginState],
                         timeout: float) -> PluginState:
        with anyio.fail_after(timeout):
            while self.state not in states:
                await self._changed.wait()
        return self.state

    # ================================================================== calls

    async def call(self, method: str, params: Any = None, timeout: float | None = None,
                   on_progress: ProgressListener | None = None) -> Any:
        if timeout is None:
            timeout = self.spec.calls.timeout
        clock = self._clock
        deadline = clock() + timeout
        conn = self.conn
        waited = False  # the common case: the whole timeout is left for the plugin
        if self.state not in SERVING or conn is None:
            conn = await self._wait_serving(deadline, method)
            waited = True
        gate = self.gate
        if not gate.try_enter() and await gate.enter(method, deadline, timeout):
            waited = True
        try:
            if conn.closed_error is not None:
                conn = await self._wait_serving(deadline, method)
                waited = True
            left = max(0.0, deadline - clock()) if waited else timeout
            routes = self.methods.routes
            route = routes.get(method) if routes else None
            if route is not None:
                return await self._routed_call(route, conn, params, left, on_progress)
            return await conn.call(method, params, left, on_progress)
        except CallError:
            raise
        except Exception as exc:  # our bug on this call's path: the caller still gets an answer
            self.fault(exc, f"a call to {method}")
            raise local(ErrorCode.CONNECTION_CLOSED,
                        f"plugin {self.spec.name!r}: pipevisor failed on this call: {exc!r}",
                        plugin=self.spec.name, method=method) from None
        finally:
            gate.leave()

    async def _routed_call(self, route: Binding, conn: Connection, params: Any,
                           timeout: float, on_progress: ProgressListener | None) -> Any:
        """A call through its interface: check, convert, send, check, convert back."""
        methods = self.methods
        wire = methods.outgoing(route, params)
        return methods.incoming(route, await conn.call(route.method, wire, timeout,
                                                       on_progress))

    async def notify(self, method: str, params: Any = None) -> None:
        conn = self.conn
        if self.state not in SERVING or conn is None:
            raise self._unavailable(method)
        routes = self.methods.routes
        route = routes.get(method) if routes else None
        if route is not None:
            params = self.methods.outgoing(route, params)
        await conn.notify(method, params)

    async def _wait_serving(self, deadline: float, method: str) -> Connection:
        while True:
            conn = self.conn
            verdict = serving_verdict(self.state, self._want,
                                      conn is not None and conn.closed_error is None)
            if verdict == "go":
                assert conn is not None
                return conn
            if verdict == "unavailable":
                raise self._unavailable(method)
            changed = self._changed
            with anyio.move_on_after(deadline - anyio.current_time()):
                await changed.wait()
                continue
            raise not_ready_in_time(self.spec.name, method, self.state, self.reason)

    def _unavailable(self, method: str) -> CallError:
        return unavailable(self.spec.name, method, self.state, self.reason)

    # ================================================================ the loop

    async def run(self) -> None:
        """The plugin's lifetime; returns after ``close()``.

        The outer fault boundary: an exception between instances (a state change, an
        event, the restart decision) leaves the plugin ``failed`` with the reason, its
        neighbours untouched; ``start`` brings it back.
        """
        self._clock = loop_clock()
        while True:
            try:
                await self._run_loop()
                return
            except Exception as exc:
                self._fail_hard(exc)
                if self._want == "close":
                    return

    def _count_fault(self, exc: Exception, where: str, outcome: str) -> tuple[str, ErrorObject]:
        """Count and log an exception raised while serving this plugin; returns the
        reason and the error every call of the instance is answered with."""
        self.internal_faults += 1
        detail = f"pipevisor failed in {where}: {exc!r}"
        log.error("plugin %s: %s (internal fault #%d); %s", self.spec.name, detail,
                  self.internal_faults, outcome, exc_info=exc)
        return detail, local_error(ErrorCode.CONNECTION_CLOSED,
                                   f"plugin {self.spec.name!r}: {detail}", plugin=self.spec.name)

    def _fail_hard(self, exc: Exception) -> None:
        reason, _ = self._count_fault(exc, "between instances", "marked failed")
        if self._want != "close":
            self._want = None
        # the state machine (or publishing) may be what broke: set the state directly
        self.state, self.reason = S.FAILED, reason
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def fault(self, exc: Exception, where: str) -> None:
        """A failure outside the instance's own tasks (the sampler, say) while serving
        this plugin: logged, counted, and the instance ends like after a crash."""
        detail, error = self._count_fault(exc, where, "ending this instance")
        self._publish_fault(detail)
        self._end(End(EndKind.INTERNAL, detail, error=error))

    def _publish_fault(self, detail: str) -> None:
        self._hub.publish(SupervisorEvent(self.spec.name, EventKind.FAULT, {
            "fault": "internal", "detail": detail, "count": self.internal_faults}))

    async def _run_loop(self) -> None:
        while True:
            while self._want not in ("start", "restart", "close"):
                self._wake = anyio.Event()
                await self._wake.wait()
            if self._want == "close":
                return
            self._want = None
            try:
                end = await self._run_instance()
            except Exception as exc:  # the fault boundary: this plugin's problem only
                end = self._internal_fault(exc)
            step = after_end(end, self._want, limit_stop=self._limit_stop,
                             policy=self._restart_verdict)
            if step.state != "backoff":
                self._finish(S.FAILED if step.state == "failed" else S.STOPPED, step.reason)
                if step.close:
                    return
                if step.again:
                    self._want = "restart"
                continue
            self._set_state(S.BACKOFF, step.reason)
            self._hub.publish(SupervisorEvent(
                self.spec.name, EventKind.RESTART,
                {"delay": round(step.delay, 3), "after": end.detail}))
            self._wake = anyio.Event()
            with anyio.move_on_after(step.delay):
                await self._wake.wait()
            then = after_backoff(self._want)
            if then != "start":
                self._set_state(S.STOPPING, "stopped during backoff")
                self._finish(S.STOPPED, "stopped during backoff")
                if then == "close":
                    return
                self._want = None
                continue
            self._want = "start"

    def _restart_verdict(self, failed: bool) -> Decision:
        """The restart policy's verdict on the instance that just ended (records it)."""
        now = time.monotonic()
        return self.tracker.on_exit(now, now - self.ready_at if self.ready_at else 0.0, failed)

    def _internal_fault(self, exc: Exception) -> End:
        """Something raised while serving this plugin (spawn bookkeeping, reading, a
        callback, a host handler's plumbing): the instance is over (its process was
        killed on the way out), every call in flight is answered, and the restart
        policy decides, exactly as after a crash. Nothing leaves this plugin's scope."""
        detail, error = self._count_fault(exc, "serving this instance", "instance ended")
        if self.conn is not None:
            self.conn.close(error)
        self._publish_fault(detail)
        return End(EndKind.INTERNAL, detail, error=error)

    def _finish(self, state: PluginState, reason: str) -> None:
        if state is S.STOPPED and self.state is not S.STOPPING:
            self._set_state(S.STOPPING, reason)
        self._set_state(state, reason)

    async def _run_instance(self) -> End:
        self.instance += 1
        self._end_info = None
        self._end_event = anyio.Event()
        self._exit_published = False
        self.handshake = None
        self.ready_at = None
        self.output.new_instance(self.instance)
        self.methods.reset()
        self.raw = False
        self.server_info = None
        self.host_calls.bindings = {}
        self._set_state(S.STARTING)
        spawned_at = time.time()
        try:
            privileges = plan(Privileges(self.spec.user, self.spec.group,
                                         self.spec.no_new_privs, self.spec.sandbox),
                              self.containment, self.spec.name)
            env = plugin_env(self.spec.name, inherit=self.spec.inherit_env, env=self.spec.env)
            token = None
            if self._leftovers is not None:
                # inherited by everything the plugin starts: what proves an orphan ours
                token = env[leftovers.TREE_TOKEN_ENV] = leftovers.new_tree_token()
            process = await spawn(
                self.spec.command, containment=self.containment, cwd=self.spec.cwd,
                env=env, rlimits=self.spec.limits.rlimits(), privileges=privileges)
            self.privileges = privileges.describe()
        except SpawnError as exc:
            self._hub.publish(SupervisorEvent(self.spec.name, EventKind.EXIT, {"error": str(exc)}))
            return End(EndKind.SPAWN, str(exc), give_up=True)
        self.process = process
        self.started_at = time.monotonic()
        end: End | None = None
        try:
            if self._leftovers is not None:
                self._leftovers.record(process.pid, spawned_at=spawned_at, token=token)
            conn = Connection(
                self.spec.name, process.stdin, process.stdout,  # type: ignore[arg-type]
                ConnectionCallbacks(self.output.on_notification, self.output.on_fault,
                                    self.host_calls.serve),
                max_line_bytes=self.spec.max_line_bytes,
                content_length=self.raw_configured
                and self.server.framing is Framing.CONTENT_LENGTH,
            )
            if self.raw_configured:
                self._speak_raw(conn)
            self.conn = conn
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.read_loop, tg)
                tg.start_soon(pump_stderr, process, self.output.on_stderr)
                tg.start_soon(self._watch_exit, process, conn)
                tg.start_soon(self._bring_up, conn, tg)
                await self._end_event.wait()
                end = self._end_info
                assert end is not None
                with anyio.CancelScope(shield=True):
                    await self._teardown(process, conn, end)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    tree.kill_tree(process.pid)
                    await process.wait()
                await process.aclose()
            if self._watch is not None:
                self._watch.cancel()
                self._watch = None
            if self._leftovers is not None:
                self._leftovers.forget(process.pid)
            self.process = None
        assert end is not None
        return end

    def _bring_up_state(self, new: PluginState, reason: str | None = None) -> bool:
        """Advance the bring-up unless the instance is already ending.

        A stop, restart, unload or exit can land while the spawn or the handshake is
        awaited; the ending owns the state from then on, so bring-up must step aside
        instead of moving ``stopping`` back to ``handshaking`` or ``ready``.
        """
        if self._end_info is not None:
            return False
        self._set_state(new, reason)
        return True

    async def _bring_up(self, conn: Connection, tg: TaskGroup) -> None:
        if not self._bring_up_state(S.HANDSHAKING):
            return
        if self.spec.mode is PluginMode.RAW:
            await self._go_raw(conn, f"preset {self.spec.preset.value}"
                               if self.spec.preset is not Preset.NONE
                               else "configured with mode = raw", tg)
            return
        params = self._handshake_params(self.spec, self.instance)
        outcome = await bringup.handshake(conn, self.spec, params,
                                          lambda: self.output.first_stdout)
        if isinstance(outcome, End):
            self._end(outcome)
            return
        if isinstance(outcome, bringup.GoRaw):
            await self._go_raw(conn, outcome.reason, tg)
            return
        if isinstance(outcome, bringup.Crashed):
            return  # _watch_exit reports the exit
        result = outcome.result
        self.handshake = result
        if result.max_concurrency is not None and result.max_concurrency < (
            self.spec.calls.max_in_flight
        ):
            self.gate.resize(result.max_concurrency)
        else:
            self.gate.resize(self.spec.calls.max_in_flight)
        disabled = [f"{b.method} disabled: {b.reason}" for b in self.methods.negotiate(result)]
        disabled += [f"host method {b.method} disabled: {b.reason}"
                     for b in self.host_calls.negotiate(result, params.host_methods.keys())]
        if not await self._run_start_sequence(conn):
            return
        self.ready_at = time.monotonic()
        if disabled:
            up = self._bring_up_state(S.DEGRADED, "; ".join(disabled))
        else:
            up = self._bring_up_state(S.READY)
        if up and self.spec.health.ping_interval > 0:
            self._start_pings(conn, PING, {}, tg)

    def _speak_raw(self, conn: Connection) -> None:
        """Talk to ``conn`` as to a foreign server: its cancel, its errors as they are."""
        conn.raw_errors = True
        server = self.server
        conn.cancel_message = server.cancel_message
        if server.cancel_method is not None:
            conn.cancel_method_in = server.cancel_method
            conn.cancel_id_in = server.cancel_id

    async def _go_raw(self, conn: Connection, why: str, tg: TaskGroup) -> None:
        """Serve a JSON-RPC 2.0 server that does not speak pipevisor: its preset's
        bring-up, the start sequence, its own ping if it has one, nothing validated."""
        self.raw = True
        self._speak_raw(conn)
        server = self.server
        self.gate.resize(server.max_in_flight)
        liveness = (f"liveness by {server.ping_method!r}" if server.ping_method
                    and self.spec.health.ping_interval > 0 else "liveness is the process")
        if self.raw_configured:
            log.info("plugin %s: raw mode (%s): %s, at most %d call(s) at once",
                     self.spec.name, why, liveness, server.max_in_flight)
        else:
            log.warning("plugin %s: raw mode (%s): no pipevisor handshake, calls pass "
                        "through unvalidated, %s", self.spec.name, why, liveness)
        self._hub.publish(SupervisorEvent(self.spec.name, EventKind.RAW, {
            "reason": why, "preset": self.spec.preset.value, "configured": self.raw_configured}))
        if not await self._initialize_server(conn):
            return
        if not await self._run_start_sequence(conn):
            return
        self.ready_at = time.monotonic()
        if self.raw_configured:
            up = self._bring_up_state(S.READY)
        else:
            up = self._bring_up_state(S.DEGRADED, f"raw mode: {why}")
        if up and server.ping_method and self.spec.health.ping_interval > 0:
            self._start_pings(conn, server.ping_method, None, tg)

    async def _initialize_server(self, conn: Connection) -> bool:
        """The preset's ``initialize``; False (the instance is ending) when it failed."""
        if self.spec.preset is Preset.NONE:
            return True
        hs = self._handshake_params(self.spec, self.instance)
        outcome = await bringup.initialize_server(conn, self.spec, hs.host_name,
                                                  hs.host_version)
        if not isinstance(outcome, bringup.Initialized):
            if isinstance(outcome, End):
                self._end(outcome)
            return False
        self.server_info = outcome.info
        info = self.server_info or {}
        log.info("plugin %s: %s server %s%s", self.spec.name, self.spec.preset.value,
                 info.get("serverInfo"),
                 f", protocol {info['protocolVersion']}" if info.get("protocolVersion") else "")
        return True

    async def _run_start_sequence(self, conn: Connection) -> bool:
        """Send the configured start sequence; False (the instance is ending) on failure."""
        outcome = await bringup.start_sequence(conn, self.spec)
        if isinstance(outcome, End):
            self._end(outcome)
        return outcome is None

    def _start_pings(self, conn: Connection, method: str, params: Any, tg: TaskGroup) -> None:
        """Liveness for this instance: ``method`` every ping_interval, through the
        supervisor's shared ticker (engine/health.py) when there is one: sent from the
        ticker and heard in the connection's reader, with no task, future or timer a
        ping; awaited in a task only where the connection has no callback path."""
        interval = self.spec.health.ping_interval
        first = first_ping_delay(interval, random.random())
        if self._health is None:
            tg.start_soon(self._health_loop, conn, method, params, first)
            return

        async def ping() -> bool:
            try:
                return await self._ping_once(conn, method, params)
            except Exception as exc:  # our bug: this instance's, like any other
                self.fault(exc, "a liveness ping")
                return False

        pings = ConnectionPings(
            conn, method, params, self.spec.health.ping_timeout,
            current=lambda: conn is self.conn,
            unanswered=self._ping_unanswered,
            fault=lambda exc: self.fault(exc, "a liveness ping"))
        self._watch = self._health.watch(interval, ping, first, pings)

    async def _health_loop(self, conn: Connection, method: str, params: Any,
                           first: float) -> None:
        """Liveness without a shared ticker: a task of the instance's own."""
        delay = first
        while True:
            await anyio.sleep(delay)
            delay = self.spec.health.ping_interval
            if not await self._ping_once(conn, method, params):
                return

    async def _ping_once(self, conn: Connection, method: str, params: Any) -> bool:
        """One ping; no answer within ping_timeout (any answer counts, an error too) ends
        the instance as hung. False once this instance needs no more pings."""
        if conn is not self.conn or conn.closed_error is not None:
            return False
        timeout = self.spec.health.ping_timeout
        sent = time.monotonic()
        try:
            await conn.call(method, params, timeout)
        except CallTimeout:
            return self._ping_unanswered(sent)
        except PluginCrashed:
            return False
        except CallError:
            pass  # any answer, even an error, proves the plugin is alive
        return True

    def _ping_unanswered(self, sent: float) -> bool:
        """A ping sent at ``sent`` (monotonic) got no answer within ping_timeout: the
        instance ends as hung, unless the CPU throttle held it (True: ping on). One
        verdict for pings awaited and pings heard in the ticker (engine/health.py)."""
        if held_by_throttle(sent, self.paused_since, self.resumed_at):
            return True  # the CPU throttle held it, it did not hang
        timeout = self.spec.health.ping_timeout
        self._end(End(EndKind.HUNG, f"no answer to a liveness ping within {timeout:g} s",
                      error=local_error(ErrorCode.TIMEOUT,
                                        f"plugin {self.spec.name!r} stopped answering "
                                        "(liveness ping timed out); it is restarted",
                                        plugin=self.spec.name)))
        return False

    async def _watch_exit(self, process: Process, conn: Connection) -> None:
        """Notice death as soon as a pipe closes or the process exits (no polling)."""
        closed = "closed its stdout"
        async with anyio.create_task_group() as tg:
            async def exited() -> None:
                await process.wait()
                with anyio.move_on_after(0.5):  # let the reader drain the last answers
                    await conn.eof.wait()
                tg.cancel_scope.cancel()

            async def eof() -> None:
                await conn.eof.wait()
                if self._end_info is not None:  # being stopped: wait for its exit status
                    await wait_exit(process, 1.0)
                else:  # a plugin that lives on without its stdout is ended at once
                    await wait_exit_after_eof(process)
                tg.cancel_scope.cancel()

            async def stdin_closed() -> None:
                nonlocal closed
                await wait_stdin_closed(process)
                if self._end_info is not None or await wait_exit_after_eof(process):
                    return  # we closed it (stopping), or it is exiting: exited() reports
                closed = "closed its stdin"  # it can never be called again
                tg.cancel_scope.cancel()

            tg.start_soon(exited)
            tg.start_soon(eof)
            tg.start_soon(stdin_closed)
        code = process.returncode
        how = describe_exit(code) if code is not None else closed
        tail = self.stderr.last(_CRASH_TAIL_LINES)
        self.last_exit = exit_record(code, how, tail)
        self._exit_published = True
        detail: dict[str, Any] = dict(self.last_exit)
        if self._end_info is not None:  # it exited while being stopped or killed: say why
            detail["reason"] = self._end_info.detail
        self._hub.publish(SupervisorEvent(self.spec.name, EventKind.EXIT, detail))
        if self._end_info is None and self._backstop_breach(code, tail):
            end_info = self._end_info
            if end_info is not None:  # restart or stop: the limit owns the ending
                assert isinstance(end_info, End)
                conn.close(end_info.error or local_error(
                    ErrorCode.OVER_LIMIT, end_info.detail, plugin=self.spec.name))
                return
        if self._end_info is None:
            end = exit_end(self.spec.name, how, code, tail,
                           handshaking=self.state is S.HANDSHAKING,
                           junk=None if self.handshake is not None or self.raw
                           else self.output.first_stdout)
            assert end.error is not None
            conn.close(end.error)
            self._end(end)

    async def _teardown(self, process: Process, conn: Connection, end: End) -> None:
        graceful = end.graceful
        if graceful and self.state is not S.STOPPING:
            self._set_state(S.STOPPING, end.detail)
        stop = self.spec.stop
        if process.returncode is None:
            if graceful:
                await self._graceful(process, conn)
            else:
                await terminate(process, min(stop.term_grace, 1.0))
        error = end.error or local_error(
            ErrorCode.PLUGIN_STOPPED, f"plugin {self.spec.name!r}: {end.detail}",
            plugin=self.spec.name)
        conn.close(error)
        if end.kind is not EndKind.EXITED and (self.last_exit is None
                                               or process.returncode is not None):
            self.last_exit = exit_record(process.returncode, describe_exit(process.returncode),
                                         self.stderr.last(_CRASH_TAIL_LINES))
        if not self._exit_published:
            # Stopped, restarted, unloaded or killed (hung, limit, protocol fault): the process
            # ended here, and _watch_exit may be cancelled before it reports it, so report it
            # here, once, with why it was ended.
            self._exit_published = True
            info = exit_record(process.returncode, describe_exit(process.returncode),
                               self.stderr.last(_CRASH_TAIL_LINES))
            self._hub.publish(SupervisorEvent(self.spec.name, EventKind.EXIT,
                                              {**info, "reason": end.detail}))

    async def _graceful(self, process: Process, conn: Connection) -> None:
        stop = self.spec.stop
        if self.handshake is not None and self.handshake.shutdown and conn.closed_error is None:
            with anyio.move_on_after(stop.shutdown_grace):
                try:
                    await conn.call(SHUTDOWN, {"reason": "stop", "graceSeconds": stop.eof_grace},
                                    stop.shutdown_grace)
                except CallError:
                    pass
                await process.wait()
        elif self.raw and self.server.stop_sequence and conn.closed_error is None:
            with anyio.move_on_after(stop.shutdown_grace):
                await self._run_stop_sequence(conn, self.server.stop_sequence,
                                              stop.shutdown_grace)
                await process.wait()
        if process.returncode is None:
            await conn.close_stdin(min(stop.eof_grace, 1.0))
            if await wait_exit(process, stop.eof_grace):
                return
        await terminate(process, stop.term_grace)

    async def _run_stop_sequence(self, conn: Connection, steps: tuple[StartStep, ...],
                                 grace: float) -> None:
        """A foreign server's own stop (LSP: ``shutdown`` then ``exit``); an error answer
        does not stop the sequence, the grace period bounds it."""
        for step in steps:
            try:
                if step.notify:
                    await conn.notify(step.method, step.params)
                else:
                    await conn.call(step.method, step.params, grace)
            except CallError as exc:
                log.info("plugin %s: stop sequence %s answered %s", self.spec.name,
                         step.method, exc.error.message)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return

    @property
    def bindings(self) -> dict[str, Binding]:
        """Every declared method's negotiated binding (for status)."""
        return self.methods.bindings

    @property
    def invalid_results(self) -> int:
        return self.methods.invalid_results

    @property
    def host_bindings(self) -> dict[str, HostBinding]:
        """The host methods the plugin declared it calls, as negotiated."""
        return self.host_calls.bindings

    @property
    def faults(self) -> int:
        """Protocol faults since the plugin was loaded."""
        return self.output.faults

    @property
    def stderr_suppressed(self) -> int:
        """Lines (stderr and pipevisor/log) kept out of the log by the budget, in all."""
        return self.output.suppressed

    # ================================================================ status

    def plugin_pid(self) -> int | None:
        """The plugin's own pid (SPEC 14), found once per instance below the shim."""
        process = self.process
        if process is None:
            return None
        if self.containment.shim is None:
            return process.pid
        cached = self._plugin_pid_of
        if cached is not None and cached[0] == process.pid:
            return cached[1]
        pid = tree.plugin_pid(process.pid)
        if pid is not None and pid != process.pid:
            self._plugin_pid_of = (process.pid, pid)
        return pid

    def status(self) -> PluginStatus:
        return plugin_status(self)

    # ================================================================ limits

    def _backstop_breach(self, code: int | None, tail: list[str]) -> bool:
        """An unexpected exit that the evidence pins on the kernel's memory rlimit is
        reported as a memory breach (event, breach, metric), not as a plain crash."""
        last_rss = self.resources.get("rss") if self.resources else None
        evidence = backstop_evidence(self.spec.limits, code, tail,
                                     last_rss if isinstance(last_rss, int) else None)
        if evidence is None:
            return False
        memory = self.spec.limits.memory
        assert memory is not None
        rlimit = self.spec.limits.rlimits().get(self.spec.limits.memory_backstop.value, 0)
        action = memory.action
        if action not in (LimitAction.RESTART, LimitAction.STOP):
            action = LimitAction.RESTART  # it is dead either way; the policy restarts it
        self.on_breach("memory", rlimit, memory.max, action,
                       f"an allocation failed at the kernel backstop "
                       f"(RLIMIT_{self.spec.limits.memory_backstop.value.upper()}={rlimit}): "
                       f"{evidence}", backstop=evidence)
        return True

    def on_breach(self, limit: str, value: float, maximum: float, action: LimitAction,
                  text: str, *, backstop: str | None = None) -> None:
        """A limit was passed (called by the sampler, or after an exit the kernel
        backstop explains): record, log, publish, and for restart/stop end the
        instance so calls in flight fail with OVER_LIMIT."""
        breach = {"limit": limit, "value": value, "max": maximum, "action": str(action),
                  "time": time.time(), "instance": self.instance}
        if backstop is not None:
            breach["backstop"] = backstop
        self.breaches.append(breach)
        self.breach_counts[limit, str(action)] += 1
        log.warning("plugin %s: over its %s limit: %s (action %s)", self.spec.name, limit,
                    text, action)
        self._hub.publish(SupervisorEvent(self.spec.name, EventKind.LIMIT, {
            "limit": limit, "value": value, "max": maximum, "action": str(action),
            **({"backstop": backstop} if backstop is not None else {})}))
        if action in (LimitAction.RESTART, LimitAction.STOP) and self._end_info is None:
            self._limit_stop = action is LimitAction.STOP
            message = f"plugin {self.spec.name!r} over its {limit} limit: {text}"
            self._end(End(EndKind.LIMIT, f"over its {limit} limit ({text}); {action}",
                           error=local_error(ErrorCode.OVER_LIMIT, message,
                                             plugin=self.spec.name, limit=limit, value=value,
                                             max=maximum)))
