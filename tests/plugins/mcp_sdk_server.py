"""A tiny MCP server written with the PyPI ``mcp`` SDK (2.x: ``MCPServer``), for
tests/foreign/test_real_servers.py. Run by the interpreter of tests/foreign/.venv,
where tests/foreign/requirements.txt installs the SDK; not checked by mypy."""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("pipevisor-sdk-test", version="0.1")


@server.tool()
def echo(message: str) -> str:
    """Returns the message."""
    return message


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleeps, then says so (a slow call to cancel)."""
    await anyio.sleep(seconds)
    return f"slept {seconds}"


if __name__ == "__main__":
    server.run("stdio")
