"""The asyncio fast path (supervisor/io/pipes.py, on io/process_pipes.py's protocol) is
the one in use on asyncio, so that a change that loses it fails here instead of
silently halving throughput; and the portable path still answers when it is not."""

from __future__ import annotations

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
