"""Benchmark cases; every non-underscore module here is imported by the runner."""

from __future__ import annotations
