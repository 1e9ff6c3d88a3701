"""What :class:`pipevisor.protocol.peer.Peer` reports after reading bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from pipevisor.protocol.codec import Fault
from pipevisor.protocol.messages import ErrorResponse, Notification, Request, Response


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """The peer called us; answer with ``Peer.send_result``/``send_error``."""

    request: Request


@dataclass(frozen=True, slots=True)
class NotificationReceived:
    notification: Notification


@dataclass(frozen=True, slots=True, init=False)
class ResponseReceived:
    """The answer to a request we sent (``method`` is the method we called).

    ``response`` is an :class:`ErrorResponse` also when the answer was
    synthesised locally; ``local`` says so.
    """

    response: Response | ErrorResponse
    method: str
    local: bool = False
    """True when this side made the answer up (``fail_all``, a malformed reply):
    the error is then pipevisor's own, not the peer's."""

    def __init__(self, response: Response | ErrorResponse, method: str,
                 local: bool = False) -> None:
        # the slot descriptors, not object.__setattr__: one of these per answer read
        # (see messages.Response)
        _set_received_response(self, response)
        _set_received_method(self, method)
        _set_received_local(self, local)


_set_received_response = ResponseReceived.__dict__["response"].__set__
_set_received_method = ResponseReceived.__dict__["method"].__set__
_set_received_local = ResponseReceived.__dict__["local"].__set__


@dataclass(frozen=True, slots=True)
class ProtocolFault:
    """The peer sent something invalid. Never fatal by itself; counted and logged."""

    fault: Fault


Event: TypeAlias = RequestReceived | NotificationReceived | ResponseReceived | ProtocolFault
