"""What a handler can do besides returning: progress, cancellation, calls to the host.

A handler asks for it by taking an argument named ``ctx``. Every method is
safe from the event loop and from the worker thread a sync handler runs in.
"""

from __future__ import annotations

import threading

from pipevisor.kit.errors import Cancelled

TYPE_CHECKING = False  # no typing import at start-up; mypy reads this name as typing's
if TYPE_CHECKING:
    from typing import Any

    from pipevisor.kit.plugin import Plugin
    from pipevisor.protocol import RequestId


class Context:
    """One call in flight: its id, its cancel flag and a line back to the host."""

    __slots__ = ("_cancelled", "_last_progress", "_plugin", "answered", "id", "method")

    def __init__(self, plugin: Plugin, ident: RequestId, method: str) -> None:
        self.id = ident
        self.method = method
        self._plugin = plugin
        # threading.Event, not asyncio.Event: sync handlers poll it from a worker thread.
        self._cancelled = threading.Event()
        self._last_progress: float = 0.0
        self.answered = False

    # ------------------------------------------------------------ cancellation

    @property
    def cancelled(self) -> bool:
        """True once the host sent ``pipevisor/cancel`` for this call (or shutdown ran out)."""
        return self._cancelled.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the call was cancelled; call it between steps of long
        sync work. The kit answers a call ended this way with REQUEST_CANCELLED."""
        if self._cancelled.is_set():
            raise Cancelled(f"{self.method} (id {self.id!r}) was cancelled")

    def _cancel(self) -> None:
        self._cancelled.set()

    # ---------------------------------------------------------------- progress

    def progress(self, done: float, total: float | None = None,
                 message: str | None = None) -> None:
        """Send ``pipevisor/progress`` for this call.

        Raises ValueError if ``done`` goes backwards: the spec forbids it and a
        host would show nonsense. Progress after the answer is dropped (checked
        under the lock the answer is written with, so it cannot slip in after it).
        """
        if done < self._last_progress:
            raise ValueError(f"progress went backwards: {done} after {self._last_progress}")
        self._last_progress = done
        if self.answered:
            return
        params: dict[str, Any] = {"id": self.id, "progress": done}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        self._plugin._progress(self, params)

    # -------------------------------------------------------------- host calls

    async def call_host(self, method: str, params: Any = None, *,
                        timeout: float | None = 30.0) -> Any:
        """Call a method the host serves (listed in the handshake's ``hostMethods``).

        Returns its result; raises :class:`~pipevisor.kit.HostCallError` with the
        host's error, or with TIMEOUT (-31002) after ``timeout`` seconds, in
        which case the kit also tells the host with ``pipevisor/cancel``.
        """
        return await self._plugin.call_host(method, params, timeout=timeout)

    def call_host_blocking(self, method: str, params: Any = None, *,
                           timeout: float | None = 30.0) -> Any:
        """:meth:`call_host` for sync handlers (which run in worker threads): waits
        in the calling thread. From an ``async def`` handler use ``await
        ctx.call_host(...)`` instead: this would hold up the event loop, and every
        other async handler with it, until the host answers.
        """
        return self._plugin.call_host_blocking(method, params, timeout=timeout)
