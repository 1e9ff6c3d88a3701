"""The supervision engine an embedding host uses: ``Supervisor`` (the public API),
the per-plugin runner and its connection, restart policy, limits, versioned
interfaces, states, events, the sampler and metrics.

Import rule (tests/test_layering.py): proc, io, ``pipevisor.protocol`` and the base
modules. Never tools, client, daemon or CLI.
"""
