"""io/process_pipes.py against a child that floods its pipes: what nobody reads yet is
held to a bound (reading pauses), and nothing is lost once it is read."""

from __future__ import annotations

import sys

import anyio
import anyio.lowlevel
import pytest

from pipevisor.supervisor.io.process_pipes import STREAM_LIMIT, open_pipe_process

pytestmark = pytest.mark.anyio

FLOOD = 8 << 20
SCRIPT = ("import sys\n"
          f"sys.stdout.buffer.write(b'o' * {FLOOD}); sys.stdout.flush()\n"
          f"sys.stderr.buffer.write(b'e' * {FLOOD}); sys.stderr.flush()\n")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_unread_output_is_bounded_and_then_delivered_whole() -> None:
    process = await open_pipe_process([sys.executable, "-c", SCRIPT], cwd=None,
                                      env={"PATH": "/usr/bin:/bin"})
    protocol = process.protocol
    try:
        with anyio.fail_after(20):
            while 1 not in protocol._paused:  # the child writes 8 MiB; nobody reads
                await anyio.lowlevel.checkpoint()
                await anyio.sleep(0.005)
        # paused at twice the limit, plus at most one pipe read past it
        assert len(protocol._buffers[1]) <= 2 * STREAM_LIMIT + (1 << 20)
        assert process.returncode is None  # the child is held by its full pipe, not lost
        got = 0
        with anyio.fail_after(30):
            # all of it, not up to EOF: stdout closes only at exit, and the child is
            # about to block on stderr, which nobody reads yet
            while got < FLOOD:
                got += len(await process.stdout.receive(1 << 20))
            assert got == FLOOD
            # stderr flooded next, also unread: bounded the same way, then whole
            while 2 not in protocol._paused and process.returncode is None:
                await anyio.sleep(0.005)
            assert len(protocol._buffers[2]) <= 2 * STREAM_LIMIT + (1 << 20)
            err = 0
            try:
                while True:
                    err += len(await process.stderr.receive(1 << 20))
            except anyio.EndOfStream:
                pass
            assert err == FLOOD
            with pytest.raises(anyio.EndOfStream):  # and stdout ended with the exit
                await process.stdout.receive()
            assert await process.wait() == 0
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()
