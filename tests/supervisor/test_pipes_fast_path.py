"""The asyncio fast path (supervisor/io/pipes.py, on io/process_pipes.py's protocol) is
the one in use on asyncio, so that a change that loses it fails here instead of
silently halving throughput; and the portable path still answers when it is not."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipevisor.supervisor import Supervisor
from pipevisor.supervisor.engine.connection import Connection
from pipevisor.supervisor.io import pipes
from pipevisor.supervisor.io.process_pipes import PipeProcess, PipesProtocol
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fast_path_in_use(conn: Connection) -> bool:
    """Writes go to the bare pipe transport and stdout bytes straight from
    ``pipe_data_received`` to the connection (the protocol's consumer)."""
    fast = conn._fast
    if fast is None:
        return False
    protocol = fast._protocol
    return isinstance(protocol, PipesProtocol) and protocol._consumer is not None


async def test_asyncio_takes_the_fast_path_for_calls_and_reading() -> None:
    async with Supervisor([fake_spec()]) as sup:
        assert await sup.call("fake", "echo", {"text": "hi"}, timeout=10) == {"text": "hi"}
        conn = sup.runner("fake").conn
        assert conn is not None
        assert fast_path_in_use(conn), "the plugin's pipes are not on the fast path"
        assert isinstance(sup.runner("fake").process, PipeProcess)


async def test_the_portable_path_answers_when_the_fast_path_is_not_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipes.AsyncioPipes, "of", classmethod(lambda cls, a, b: None))
    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        conn = sup.runner("fake").conn
        assert conn is not None and conn._fast is None
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await sup.call("fake", "echo", {"i": i}, timeout=10)

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        assert results == {i: {"i": i} for i in range(200)}


async def test_stdout_bytes_reach_the_connection_without_a_loop_hop() -> None:
    """asyncio's subprocess transport would queue each stdout chunk with call_soon (one
    more loop iteration per answer); the pipe's protocol is ours in front of asyncio's."""
    from pipevisor.supervisor.io.process_pipes import _DirectStdout

    async with Supervisor([fake_spec()]) as sup:
        await sup.wait_ready(timeout=10)
        process = sup.runner("fake").process
        assert isinstance(process, PipeProcess)
        pipe = process._transport.get_pipe_transport(1)
        assert pipe is not None and isinstance(pipe.get_protocol(), _DirectStdout)
        # answers larger than one pipe read arrive whole, in pieces, on this path
        for _ in range(50):
            assert await sup.call("fake", "huge", {"bytes": 200_000}, timeout=10) == "y" * 200_000


class _CountingPipe:
    """The stdin transport with its writes counted (everything else passed through)."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self._pipe.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


async def test_callers_woken_together_write_together() -> None:
    """A plugin that answers a burst at once wakes its callers together; their next
    requests go out joined in one write, not one write each."""
    burst = str(Path(__file__).resolve().parent.parent / "plugins" / "burst_echo.py")
    async with Supervisor([fake_spec("fake", command=(sys.executable, burst))]) as sup:
        await sup.wait_ready(timeout=10)
        conn = sup.runner("fake").conn
        assert conn is not None and conn._fast is not None
        counting = _CountingPipe(conn._fast._stdin)
        conn._fast._stdin = counting  # type: ignore[assignment]
        left = 2000

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await sup.call("fake", "echo", {"text": "x"}, timeout=10)

        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(worker)
        # one write per burst of answers, not one per call (64 to start with)
        assert counting.writes < 64 + 2000 // 4, counting.writes
