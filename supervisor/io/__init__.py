"""The only layer that names asyncio's internals: the fast pipe and socket paths,
the control-socket transport shared by the daemon and the async client, and the
accept loops with their back-off.

Import rule (tests/test_layering.py): the standard library, anyio, orjson,
``pipevisor.protocol`` and the base modules. Never proc, engine, tools, client,
daemon or CLI.
"""
