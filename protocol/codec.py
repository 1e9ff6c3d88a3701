"""One line of bytes <-> one JSON-RPC value, with every fault typed instead of raised.

``decode_line`` never raises: a caller reading a plugin's stdout must survive
anything the plugin prints. It returns a message, a batch (a list of per-item
results), or a :class:`Fault` that says exactly what was wrong and keeps the
offending bytes (truncated) for the log.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias

import orjson

from pipevisor.protocol.errors import EncodeError, ErrorObject
from pipevisor.protocol.framing import HEAD_BYTES
from pipevisor.protocol.messages import (
    ErrorResponse,
    Message,
    Notification,
    Request,
    RequestId,
    Response,
)

_DUMPS_OPTS = orjson.OPT_APPEND_NEWLINE


class FaultKind(StrEnum):
    OVERSIZED_LINE = "oversized_line"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNEXPECTED_RESPONSE = "unexpected_response"
    DUPLICATE_REQUEST_ID = "duplicate_request_id"
    TRUNCATED_MESSAGE = "truncated_message"



@dataclass(frozen=True, slots=True)
class Fault:
    """Something the peer sent that is not a valid message.

    ``id`` is the request id when one could be read from an invalid request
    (so an error reply can echo it), else ``None``. ``is_request`` is true when
    the value looked like a request or notification, i.e. when a JSON-RPC
    server owes an ``Invalid Request`` reply. ``maybe_response`` marks an
    object with a usable id and nothing else (no method, result or error): if
    a request of ours waits for that id, it is a malformed answer to it;
    otherwise it is an invalid request.
    """

    kind: FaultKind
    detail: str
    raw: bytes
    id: RequestId = None
    is_request: bool = False
    maybe_response: bool = False


Decoded: TypeAlias = Message | Fault
Batch: TypeAlias = list[Decoded]


def _truncate(raw: bytes) -> bytes:
    return raw if len(raw) <= HEAD_BYTES else raw[:HEAD_BYTES]


def _valid_id(value: Any) -> bool:
    t = type(value)
    return t is str or t is int or t is float or value is None


def _error_object(value: Any) -> ErrorObject | None:
    if type(value) is not dict:
        return None
    code = value.get("code")
    message = value.get("message")
    if type(code) is not int or type(message) is not str:
        return None
    return ErrorObject(code, message, value.get("data"))


def parse_value(obj: Any, raw: bytes) -> Decoded:
    """Classify one already-parsed JSON value (a batch item or a whole line)."""
    if type(obj) is not dict:
        return Fault(FaultKind.INVALID_MESSAGE, "not a JSON object", _truncate(raw), None, True)
    has_id = "id" in obj
    ident = obj.get("id")
    id_ok = _valid_id(ident)
    echo_id = ident if id_ok else None
    if obj.get("jsonrpc") != "2.0":
        return Fault(
            FaultKind.INVALID_MESSAGE,
            'missing or wrong "jsonrpc" member (must be "2.0")',
            _truncate(raw),
            echo_id,
            "method" in obj or ("result" not in obj and "error" not in obj),
        )
    if "method" in obj:
        method = obj["method"]
        if type(method) is not str:
            return Fault(FaultKind.INVALID_MESSAGE, '"method" is not a string', _truncate(raw),
                         echo_id, True)
        params = obj.get("params")
        if params is not None and type(params) is not dict and type(params) is not list:
            return Fault(FaultKind.INVALID_MESSAGE, '"params" must be an object or an array',
                         _truncate(raw), echo_id, True)
        if "params" in obj and params is None:
            return Fault(FaultKind.INVALID_MESSAGE, '"params" must be an object or an array',
                         _truncate(raw), echo_id, True)
        if "result" in obj or "error" in obj:
            return Fault(FaultKind.INVALID_MESSAGE, "a request must not carry result or error",
                         _truncate(raw), echo_id, True)
        if not has_id:
            return Notification(method, params)
        if not id_ok:
            return Fault(FaultKind.INVALID_MESSAGE, '"id" must be a string, number or null',
                         _truncate(raw), None, True)
        return Request(ident, method, params)
    has_result = "result" in obj
    has_error = "error" in obj
    if has_result and has_error:
        return Fault(FaultKind.INVALID_MESSAGE, "a response needs exactly one of result and error",
                     _truncate(raw), echo_id)
    if not has_result and not has_error:
        # No method, no result, no error: JSON-RPC 2.0 calls this an invalid Request
        # object (SPEC 4.2), answered -32600 echoing a readable id.
        return Fault(FaultKind.INVALID_MESSAGE, "neither a request (no method) nor a response",
                     _truncate(raw), echo_id, True, has_id and id_ok)
    if not has_id or not id_ok:
        return Fault(FaultKind.INVALID_MESSAGE, "a response needs a string, number or null id",
                     _truncate(raw), None)
    if has_result:
        return Response(ident, obj["result"])
    err = _error_object(obj["error"])
    if err is None:
        return Fault(FaultKind.INVALID_MESSAGE,
                     '"error" must be an object with an integer code and a string message',
                     _truncate(raw), ident)
    return ErrorResponse(ident, err)


def decode_line(line: bytes) -> Decoded | Batch:
    """Decode one framed line. Returns a list for a (non-empty) batch."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Fault(FaultKind.INVALID_UTF8, f"invalid UTF-8 at byte {uexc.start}",
                         _truncate(line))
        return Fault(FaultKind.INVALID_JSON, f"not JSON: {exc}", _truncate(line))
    return decode_value(obj, line)


def decode_value(obj: Any, line: bytes) -> Decoded | Batch:
    """Classify a line's already-parsed JSON: what :func:`decode_line` does after
    parsing, for a reader that parsed the line itself."""
    if type(obj) is list:
        if not obj:
            return Fault(FaultKind.INVALID_MESSAGE, "empty batch", _truncate(line), None, True)
        return [parse_value(item, _item_raw(item)) for item in obj]
    return parse_value(obj, line)


def _item_raw(item: Any) -> bytes:
    try:
        return _truncate(orjson.dumps(item))
    except TypeError:  # pragma: no cover - values that came from orjson always re-encode
        return b""


def check_params(params: Any, method: str) -> None:
    """Params, when given, are an object or an array (SPEC 4.1 [M-4.1b], JSON-RPC 2.0):
    a receiver answers a scalar with -32600, so refusing it here tells the caller what
    is wrong instead. Anything orjson writes as one of them (a dict, list or tuple, a
    dataclass) passes."""
    kind = type(params)
    if kind is dict or kind is list or params is None:
        return
    if isinstance(params, dict | list | tuple) or dataclasses.is_dataclass(params):
        return
    raise EncodeError(f"params of {method!r} must be an object or an array (JSON-RPC 2.0), "
                      f"not {kind.__name__}")


def encode(message: Message | dict[str, Any] | list[Any]) -> bytes:
    """Encode one message (or a raw JSON value) as a framed line."""
    if isinstance(message, dict | list):
        obj: Any = message
    else:
        if type(message) is Request or type(message) is Notification:
            check_params(message.params, message.method)
        obj = message.to_json()
    try:
        return orjson.dumps(obj, option=_DUMPS_OPTS)
    except TypeError as exc:
        raise EncodeError(f"cannot encode message as JSON: {exc}") from exc


def encode_request(ident: RequestId, method: str, params: Any) -> bytes:
    """Hot-path shortcut for :func:`encode` of a request (no intermediate dataclass)."""
    obj: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
    if params is not None:
        kind = type(params)
        if kind is not dict and kind is not list:
            check_params(params, method)
        obj["params"] = params
    try:
        return orjson.dumps(obj, option=_DUMPS_OPTS)
    except TypeError as exc:
        raise EncodeError(f"cannot encode params of {method!r} as JSON: {exc}") from exc


__all__ = [
    "Batch",
    "Decoded",
    "Fault",
    "FaultKind",
    "decode_line",
    "decode_value",
    "encode",
    "encode_request",
    "parse_value",
]
