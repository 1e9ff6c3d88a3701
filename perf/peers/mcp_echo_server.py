"""An MCP server with one ``echo`` tool, on the MCP Python SDK's own server class
(``MCPServer``, FastMCP before mcp 2), for perf's peer cases (issue #20). Run by
the mcp venv's interpreter (``python -m perf.peers_env install``), spawned by
``mcp_driver.py`` through the SDK's stdio client.

Each call goes through the SDK's whole path: newline-delimited JSON-RPC on
stdio, message models, the tool's argument model (built from the signature)
and its result conversion (text content, plus structured content for the str
return).
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("pipevisor-perf-echo", version="1.0")


@server.tool()
def echo(text: str) -> str:
    """Returns the text it was given."""
    return text


if __name__ == "__main__":
    server.run("stdio")
