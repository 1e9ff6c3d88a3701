"""`pipevisor check` on the examples: every echo plugin passes, each misbehaving one fails
exactly the check that names its fault (and nothing else)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipevisor.supervisor.tools.checker import CheckOptions, Status, check_plugin
from tests.examples.toolchains import EXAMPLES, LANGUAGES, Example

pytestmark = pytest.mark.anyio

FAST = CheckOptions(idle_seconds=0.5)


@pytest.mark.parametrize("example", LANGUAGES, ids=lambda e: e.lang)
async def test_each_language_example_passes_the_checker(
        example: Example, build: Callable[[Example], Path]) -> None:
    report = await check_plugin([str(build(example))], FAST)
    assert report.ok, report.failed()
    for name in ("handshake", "ping", "unknown method", "method echo", "method add",
                 "second handshake", "shutdown", "exit on end of input",
                 "stdout is protocol only"):
        assert report.get(name).status is Status.PASS, report.get(name)


async def test_the_python_stdlib_example_passes_the_checker() -> None:
    report = await check_plugin([str(EXAMPLES / "python-stdlib" / "pipevisor-echo")], FAST)
    assert report.ok, report.failed()


@pytest.mark.parametrize(("name", "args", "fault"), [
    ("crashy", ("--crash-after", "0"), "method crash"),
    ("leaky", ("--rate", "20"), "idle memory"),
    ("spinner", (), "idle cpu"),
    ("hangs", (), "ping"),
    ("garbage", (), "stdout is protocol only"),
])
async def test_each_misbehaving_example_fails_for_its_own_reason(
        name: str, args: tuple[str, ...], fault: str) -> None:
    command = [str(EXAMPLES / "misbehaving" / f"pipevisor-{name}"), *args]
    report = await check_plugin(command, FAST)
    assert report.failed() == [fault], report.checks
    assert report.get("handshake").status is Status.PASS
