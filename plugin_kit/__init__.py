"""The Python SDK for pipevisor plugins: write handlers, the kit speaks the protocol.

    from pipevisor.kit import Plugin
    plugin = Plugin("echo", version="1.0.0")

    @plugin.method("echo", version="1.0")
    def echo(text: str) -> dict:
        return {"text": text}

    if __name__ == "__main__":
        plugin.run()

See docs/plugin-kit.md. Importing this package stays light (no jsonschema,
anyio, psutil or click) because plugin start-up is part of every restart.
"""

from __future__ import annotations

from pipevisor.kit.context import Context
from pipevisor.kit.errors import Cancelled, HostCallError, PluginError
from pipevisor.kit.plugin import Plugin

__all__ = ["Cancelled", "Context", "HostCallError", "Plugin", "PluginError"]
