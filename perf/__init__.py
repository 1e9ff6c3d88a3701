"""Benchmarks for pipevisor; run with ``python -m perf`` (see perf/README.md)."""

from __future__ import annotations
