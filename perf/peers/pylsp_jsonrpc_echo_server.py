"""Echo server on python-lsp-jsonrpc (the JSON-RPC layer under pylsp), for perf's peer
cases (issue #20). Run by the python-lsp-jsonrpc venv's interpreter
(``python -m perf.peers_env install``), spawned by ``pylsp_jsonrpc_driver.py``.

It is wired the way pylsp wires its own server: a ``JsonRpcStreamReader`` on
stdin feeding an ``Endpoint`` whose answers go to a ``JsonRpcStreamWriter`` on
stdout (LSP framing: a Content-Length header per message). ``echo`` returns
its params; a plain return value is answered on the reader thread, with no
executor hop, which is the library's fast path.
"""

from __future__ import annotations

import sys
from typing import Any

from pylsp_jsonrpc.dispatchers import MethodDispatcher
from pylsp_jsonrpc.endpoint import Endpoint
from pylsp_jsonrpc.streams import JsonRpcStreamReader, JsonRpcStreamWriter


class Echo(MethodDispatcher):  # type: ignore[misc]
    def m_echo(self, **params: Any) -> dict[str, Any]:
        return params


def main() -> None:
    writer = JsonRpcStreamWriter(sys.stdout.buffer)
    endpoint = Endpoint(Echo(), writer.write)
    JsonRpcStreamReader(sys.stdin.buffer).listen(endpoint.consume)
    endpoint.shutdown()


if __name__ == "__main__":
    main()
