"""The metrics endpoint against clients that hold connections (issue #13, item 6), in
process over real TCP: a slowloris is cut at the request deadline, idle connections
make room for a scraper at the cap, and when every connection is busy a new one gets
503 at once instead of waiting."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from pipevisor.supervisor.daemon.metrics_http import serve_metrics

pytestmark = pytest.mark.anyio

REQUEST = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"


async def scrape(host: str, port: int) -> bytes:
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(REQUEST)
        data = b""
        while True:
            try:
                data += await stream.receive()
            except anyio.EndOfStream:
                return data


async def closed(stream: anyio.abc.SocketStream) -> bytes:
    """What the server still sends, until it closes the connection."""
    data = b""
    while True:
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            return data


def small() -> str:
    return "pipevisor_x 1\n"


async def _start(tg: anyio.abc.TaskGroup, render: Callable[[], str],
                 **kw: float) -> tuple[str, int]:
    host, port = await tg.start(lambda task_status: serve_metrics(
        render, "127.0.0.1", 0, task_status=task_status, **kw))  # type: ignore[arg-type]
    return str(host), int(port)


async def test_a_slowloris_is_cut_at_the_request_deadline() -> None:
    async with anyio.create_task_group() as tg:
        host, port = await _start(tg, small, head_timeout=0.5)
        with anyio.fail_after(10):
            slow = await anyio.connect_tcp(host, port)
            started = anyio.current_time()

            async def dribble() -> None:
                for byte in b"GET /metrics HTTP/1.1\r\nHost: slow\r\n":
                    try:
                        await slow.send(bytes([byte]))
                    except (anyio.BrokenResourceError, ConnectionError):
                        return
                    await anyio.sleep(0.1)

            tg.start_soon(dribble)
            assert await closed(slow) == b""
            assert 0.4 < anyio.current_time() - started < 2
            assert (await scrape(host, port)).startswith(b"HTTP/1.1 200 OK")
        tg.cancel_scope.cancel()


async def test_at_the_cap_the_longest_waiting_connection_makes_room() -> None:
    async with anyio.create_task_group() as tg:
        host, port = await _start(tg, small, max_connections=3)
        with anyio.fail_after(10):
            idle = [await anyio.connect_tcp(host, port) for _ in range(3)]
            await anyio.sleep(0.1)  # all three accepted and waiting for a request head
            assert (await scrape(host, port)).startswith(b"HTTP/1.1 200 OK")
            assert await closed(idle[0]) == b""  # the oldest left for the scraper
            for s in idle:
                await s.aclose()
        tg.cancel_scope.cancel()


async def test_with_every_connection_busy_a_new_one_gets_503_at_once() -> None:
    big = "x" * (64 << 20)

    def render() -> str:
        return big

    async with anyio.create_task_group() as tg:
        host, port = await _start(tg, render, max_connections=2, send_timeout=30)
        with anyio.fail_after(20):
            stuck = []
            for _ in range(2):  # ask, never read: the answer cannot be sent
                s = await anyio.connect_tcp(host, port)
                await s.send(REQUEST)
                stuck.append(s)
            await anyio.sleep(0.3)
            started = anyio.current_time()
            refused = await scrape(host, port)
            assert refused.startswith(b"HTTP/1.1 503 Service Unavailable"), refused[:100]
            assert b"Retry-After: 1" in refused
            assert anyio.current_time() - started < 2
            for s in stuck:
                await s.aclose()
        tg.cancel_scope.cancel()
