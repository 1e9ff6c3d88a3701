"""What a client of the control socket raises besides the engine's own errors."""

from __future__ import annotations

from pipevisor.supervisor.errors import CallError, PipevisorError

SOCKET_ENV = "PIPEVISOR_SOCKET"
EVENT = "event"


class DaemonNotRunning(PipevisorError):
    """Nothing answers on the control socket; the message names the socket."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(f"no pipevisor daemon on {socket_path}: {reason}")
        self.socket_path = socket_path


class DaemonConnectionLost(DaemonNotRunning):
    """The daemon closed the connection before answering (it stopped or crashed)."""


class DaemonBusy(PipevisorError):
    """The daemon runs but refused the connection or the request for lack of room (every
    connection in use, out of file descriptors, too many large requests at once, its
    listen backlog full). Nothing was done; retrying later may succeed."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(f"the pipevisor daemon on {socket_path} is busy: {reason}")
        self.socket_path = socket_path


class BadAnswer(PipevisorError):
    """An answer from the daemon could not be read: longer than the client's line limit,
    or not JSON. The request it answered failed with this; when the stream could not be
    trusted any more, every request waiting on the connection failed and it was closed
    (the next request opens a new one)."""


class EventsLagged(PipevisorError):
    """The subscriber read events more slowly than they came: the daemon dropped
    ``dropped`` (at least) and ended the subscription. Subscribe again to go on."""

    def __init__(self, dropped: int) -> None:
        super().__init__(f"the event subscriber fell behind: {dropped} events dropped, "
                         "the daemon ended the subscription")
        self.dropped = dropped


class ControlError(CallError):
    """The daemon refused a control request itself (bad params, unknown method, bad reload)."""


class AccessDenied(PipevisorError):
    """The daemon runs but refused this client: not root, not its uid, not in its
    ``socket_group``, or a process inside a plugin's tree (docs/cli.md)."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(f"the pipevisor daemon at {socket_path} refused this client: "
                         f"{reason}")
        self.socket_path = socket_path
