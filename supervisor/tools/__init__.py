"""Tools built on the engine and the process layer: the plugin checker and
``prefix-*`` discovery on PATH.

Import rule (tests/test_layering.py): engine, proc, io, protocol and the base
modules. Never client, daemon or CLI.
"""
