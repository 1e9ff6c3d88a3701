"""The system daemon: its run loop, config file, control socket, /metrics endpoint,
systemd notifications and the demo.

Import rule (tests/test_layering.py): the engine only through its public modules
(``Supervisor`` and the records it returns, never the runner, connection or sampler),
tools, io, proc, protocol and the base modules. Never the CLI or the client.
"""
