"""Many calls to one plugin from one task: the engine side of ``Supervisor.call_many``.

Why a second way to call: a task per call is a floor of its own. perf/'s
``asyncio-floor-pipelined-64-c-plugin``, a client that does nothing but send and await
one future per call, spends about 5 us of host CPU a call on the event loop and JSON
alone, so ``Supervisor.call`` from 64 tasks cannot go much past plain asyncio streams
(perf/README.md, "Issue 20 in one run"). A host with many calls to make to one plugin
(files to lint, rows to convert) does not need a task for each: here the answers are
handled where they arrive (the connection's reader, through ``send_nowait``), and the
one task driving the batch wakes once per chunk of answers, sends what the freed slots
allow in one write, and sleeps again.

What the caller sees is what ``window`` tasks would see, each awaiting
``Supervisor.call`` on the next params in turn: results in order; a failed call's
``CallError`` in its place (not raised); the same error for the same cause (the
plugin's error, a timeout, with the cancel sent to the plugin, a crash, params that are
not JSON); the same gate (a slot per call in flight, taken in turn with every other
caller, queued behind them when there is none); the same counters. A call's timeout
starts when it is its turn, as a worker's would. This lane runs only while a connection
serves on the asyncio pipes; calls that find the plugin gone or coming back go through
``Supervisor.call`` (which waits for the restart within their timeout), and the lane
takes over again once a connection serves.

Import rule: the engine's own modules, io (its waker and deadline queue), the protocol
and the base modules.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from pipevisor.protocol import ErrorCode, ErrorResponse, RequestId, Response
from pipevisor.supervisor.engine.states import SERVING
from pipevisor.supervisor.errors import CallError, local
from pipevisor.supervisor.io.pipes import FifoDeadlines, Waker, loop_clock

if TYPE_CHECKING:
    from pipevisor.supervisor.engine.connection import Connection
    from pipevisor.supervisor.engine.runner import PluginRunner

__all__ = ["Lane", "lane_for", "lane_possible"]

Todo = deque[tuple[int, Any]]
"""(index in the caller's list, params) of the calls not yet sent, in order."""


def lane_possible(runner: PluginRunner) -> bool:
    """Whether the plugin serves now on a connection with a callback path (not the
    portable anyio path)."""
    conn = runner.conn
    return (runner.state in SERVING and conn is not None and conn.closed_error is None
            and conn.pipes is not None)


def lane_for(runner: PluginRunner, method: str, todo: Todo, results: list[Any],
             timeout: float, window: int) -> Lane | None:
    """A lane for the next calls in ``todo``, or None when :func:`lane_possible` is not."""
    conn = runner.conn
    if conn is None or not lane_possible(runner):
        return None
    return Lane(runner, conn, method, todo, results, timeout, window)


class Lane:
    """The calls of one ``call_many`` on one connection (see the module docstring)."""

    def __init__(self, runner: PluginRunner, conn: Connection, method: str, todo: Todo,
                 results: list[Any], timeout: float, window: int) -> None:
        pipes = conn.pipes
        assert pipes is not None
        self._runner = runner
        self._conn = conn
        self._gate = runner.gate
        self._method = method
        routes = runner.methods.routes
        self._route = routes.get(method) if routes else None
        self._wire_method = self._route.method if self._route is not None else method
        self._todo = todo
        self._results = results
        self._timeout = timeout
        self._window = max(1, window)
        self._clock = loop_clock()
        self._in_flight: dict[RequestId, int] = {}
        """Request id -> index, for the calls sent and not yet settled."""
        self._waker = Waker(pipes.loop)
        self._deadlines = FifoDeadlines(pipes.loop, self._expired, self._in_flight.__contains__)

    # ------------------------------------------------------------ the driving task

    async def run(self) -> None:
        """Until every call is settled, or the connection takes no more: the calls it did
        not take stay in ``todo``, the ones it took are all settled."""
        try:
            while True:
                taking = self._fill()
                if taking and self._todo and self._conn.backlogged():
                    await self._wait_for_pipe()
                    continue
                if not self._in_flight:
                    if not self._todo or not taking:
                        return
                    await self._queue_one()  # the gate had no slot for us: wait in line
                    continue
                await self._waker.wait()
        except Exception as exc:  # our bug: the calls in flight still get an answer
            error = self._fault(exc)
            for index in self._abandon(error).values():
                self._results[index] = error
        except BaseException as exc:  # the caller is cancelled
            self._abandon(exc)
            raise
        finally:
            self._deadlines.close()

    def _fill(self) -> bool:
        """Send what the window and the gate allow, as one write; False when the
        connection takes no more."""
        todo, in_flight, conn = self._todo, self._in_flight, self._conn
        if not todo or len(in_flight) >= self._window or conn.backlogged():
            return conn.closed_error is None
        # what is joined below is not in the pipe's count yet: one look before is all
        # the loop could see, and the window bounds what one fill adds
        return self._send_turn(self._window - len(in_flight), None)

    def _send_turn(self, most: int, deadline: float | None) -> bool:
        """Send up to ``most`` of the next calls the gate has slots for, joined into one
        write; each gets ``deadline``, or its full timeout from now when None. False
        when the connection takes no more (the call it refused goes back in line)."""
        todo, gate, conn = self._todo, self._gate, self._conn
        conn.hold_writes()
        try:
            for _ in range(most):
                if not todo or not gate.try_enter():
                    return True
                index, params = todo.popleft()
                due = self._clock() + self._timeout if deadline is None else deadline
                if not self._send(index, params, due):
                    gate.leave()
                    todo.appendleft((index, params))
                    return False
            return True
        finally:
            conn.flush_writes()

    async def _wait_for_pipe(self) -> None:
        """The plugin has not read what is queued for it: the calls whose turn it is (as
        many as the window has room for) wait for it, within their timeout, before
        anything more is queued; if it does not read in time they fail unsent. A plugin
        that stops reading costs the host at most the window, not the whole list."""
        if len(self._in_flight) >= self._window:
            await self._waker.wait()  # nothing could be sent anyway
            return
        turn = min(self._window - len(self._in_flight), len(self._todo))
        deadline = self._clock() + self._timeout
        if await self._conn.wait_writable(self._timeout):
            self._send_turn(turn, deadline)  # within what is left of their time
            return
        error = self._conn.timeout_error(self._method, self._timeout, sent=False)
        for _ in range(turn):
            index, _params = self._todo.popleft()
            self._fail(index, error)

    async def _queue_one(self) -> None:
        """The next call waits for a slot like any caller (behind the ones queued first)."""
        index, params = self._todo.popleft()
        deadline = self._clock() + self._timeout
        try:
            await self._gate.enter(self._method, deadline, self._timeout)
        except CallError as exc:  # queue full, or no slot in time
            self._fail(index, exc)
            return
        except BaseException:
            self._todo.appendleft((index, params))  # not started: not counted
            raise
        if not self._send(index, params, deadline):
            self._gate.leave()
            self._todo.appendleft((index, params))

    def _send(self, index: int, params: Any, deadline: float) -> bool:
        """One call, holding a gate slot; False (slot still held) when the connection
        takes no more. A call that fails before it is sent is settled here."""
        conn = self._conn
        route = self._route
        try:
            wire = self._runner.methods.outgoing(route, params) if route is not None else params
            ident = conn.send_nowait(self._wire_method, wire, self._answered)
        except CallError as exc:  # params the interface or JSON refuses
            self._gate.leave()
            self._fail(index, exc)
            return True
        except Exception as exc:  # our bug: as Supervisor.call, the instance ends
            self._gate.leave()
            self._fail(index, self._fault(exc))
            return True
        if ident is None:
            return False
        self._in_flight[ident] = index
        self._deadlines.add(deadline, ident, len(self._in_flight))
        return True

    def _abandon(self, exc: BaseException) -> dict[RequestId, int]:
        """The caller was cancelled (or we failed): forget every call in flight, tell the
        plugin, give the slots back. Returns what was in flight."""
        in_flight, self._in_flight = self._in_flight, {}
        reason = ("cancelled by the caller" if not isinstance(exc, Exception)
                  else "pipevisor failed on this call")
        for ident in in_flight:
            self._gate.leave()
            self._runner.count_failure(exc)
            try:
                self._conn.forget(ident, reason)
            except Exception:  # the cancel is a courtesy; the slot is given back anyway
                pass
        return in_flight

    # --------------------------------------------- settled in the reader or the timer

    def _answered(self, response: Response | ErrorResponse, is_local: bool) -> None:
        index = self._in_flight.pop(response.id, None)
        if index is None:
            return
        self._gate.leave()
        try:
            if type(response) is Response:
                result = response.result
                route = self._route
                if route is not None:
                    result = self._runner.methods.incoming(route, result)
                self._results[index] = result
                self._runner.calls_ok += 1
            else:
                assert isinstance(response, ErrorResponse)
                self._fail(index, self._conn.answer_error(response, is_local))
        except CallError as exc:  # a result its interface refuses
            self._fail(index, exc)
        except Exception as exc:  # our bug
            self._fail(index, self._fault(exc))
        self._waker.poke()

    def _expired(self, ident: RequestId) -> None:
        index = self._in_flight.pop(ident)
        self._gate.leave()
        try:
            self._conn.forget(ident, "timeout")
            # the per-call timeout asked for, also for a call that first waited for a
            # gate slot or the pipe (its deadline counted that wait)
            error = self._conn.timeout_error(self._method, self._timeout)
        except Exception as exc:  # our bug
            error = self._fault(exc)
        self._fail(index, error)
        self._waker.poke()

    def _fail(self, index: int, exc: CallError) -> None:
        self._results[index] = exc
        self._runner.count_failure(exc)

    def _fault(self, exc: Exception) -> CallError:
        """Our own bug on a call's path: the instance ends (as for ``Supervisor.call``),
        and the call gets an answer all the same."""
        name = self._runner.spec.name
        self._runner.fault(exc, f"a call to {self._method}")
        return local(ErrorCode.CONNECTION_CLOSED,
                     f"plugin {name!r}: pipevisor failed on this call: {exc!r}",
                     plugin=name, method=self._method)

