"""The Python SDK for pipevisor plugins: write handlers, the kit speaks the protocol.

    from plugin_kit import Plugin
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

from plugin_kit.context import Context
from plugin_kit.errors import Cancelled, HostCallError, PluginError
from plugin_kit.plugin import Plugin

__all__ = ["Cancelled", "Context", "HostCallError", "Plugin", "PluginError"]
