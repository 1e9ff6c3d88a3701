"""OS processes, and nothing about the protocol: spawning a plugin with its clean
environment, containment (the pvinit shim, rlimits, kill/pause of a whole tree),
leftover records, and the process table the sampler reads.

Import rule (tests/test_layering.py): the standard library, psutil, anyio's process
API, ``pipevisor.protocol``, the base modules ``pipevisor.supervisor.errors`` /
``.paths`` and io/ (asyncio is named only there). Never the engine, tools, client,
daemon or CLI.
"""
