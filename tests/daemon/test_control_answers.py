"""Answers a client cannot read (issue #13, 5e): longer than its line limit, or garbled.
Each must fail its request with a clear error, never leave it waiting; a garbled stream
fails every waiting request. Against a scripted server on a real socket, for Client and
AsyncClient, then against a real control server (the answer cap of ``logs``)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import orjson
import pytest

from pipevisor.supervisor.client import AsyncClient, BadAnswer, Client, DaemonBusy
from pipevisor.supervisor.daemon.control import ControlLimits, serve_control
from pipevisor.supervisor.engine.supervisor import Supervisor
from tests.daemon.control_helpers import FakeHooks
from tests.supervisor.fake import fake_spec

pytestmark = pytest.mark.anyio

LIMIT = 64 * 1024  # the clients' line limit in these tests (the default is 16 MiB)

Script = Callable[[list[dict[str, Any]]], bytes]
"""The requests read so far on a connection -> what to write back now."""


@contextmanager
def scripted_server(path: str, script: Script, wanted: int = 1) -> Iterator[None]:
    """A stand-in daemon: on each connection, after ``wanted`` requests, writes what
    ``script`` says, then keeps reading (requests beyond are answered in turn)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    conns: list[socket.socket] = []

    def serve_one(conn: socket.socket) -> None:
        buf = b""
        seen: list[dict[str, Any]] = []
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = orjson.loads(line)
                    if "id" in msg:
                        seen.append(msg)
                        if len(seen) >= wanted:
                            conn.sendall(script(seen))
        except OSError:
            return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for c in conns:
            c.close()


def result(ident: Any, value: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": ident, "result": value}) + b"\n"


def oversized_for_first(seen: list[dict[str, Any]]) -> bytes:
    """The first request gets an answer over the limit; the others a normal one."""
    last = seen[-1]
    if len(seen) == 1:
        return result(last["id"], "y" * (2 * LIMIT))
    return result(last["id"], "fine")


def test_client_fails_an_oversized_answer_and_goes_on(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    with scripted_server(path, oversized_for_first), \
            Client(path, max_answer_bytes=LIMIT, connect_timeout=5) as c:
        c._sock.settimeout(10)  # type: ignore[union-attr]  # a hang fails, never blocks CI
        with pytest.raises(BadAnswer, match=r"the answer to logs could not be read.*limit"):
            c.request("logs", {"plugin": "x"})
        assert c.request("status") == "fine"  # the stream resynchronised on the next line


def test_client_fails_a_garbled_answer_and_reconnects(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    answered = [0]

    def garbage_first(seen: list[dict[str, Any]]) -> bytes:
        answered[0] += 1  # (over every connection)
        return b"\xff\xfe not json at all\n" if answered[0] == 1 else result(seen[-1]["id"], 1)

    with scripted_server(path, garbage_first), Client(path, connect_timeout=5) as c:
        c._sock.settimeout(10)  # type: ignore[union-attr]
        first = c._sock
        with pytest.raises(BadAnswer, match="connection was closed"):
            c.request("status")
        assert c.request("status") == 1
        assert c._sock is not first  # a new connection: the old stream was not trusted


async def test_async_client_fails_only_the_oversized_answer(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")

    def script(seen: list[dict[str, Any]]) -> bytes:  # both requests, then both answers
        first, second = seen[0]["id"], seen[1]["id"]
        return result(first, "y" * (2 * LIMIT)) + result(second, "fine")

    with scripted_server(path, script, wanted=2):
        async with AsyncClient(path, max_answer_bytes=LIMIT) as c:
            outcomes: dict[str, Any] = {}

            async def ask(name: str) -> None:
                try:
                    outcomes[name] = await c.request(name)
                except Exception as exc:
                    outcomes[name] = exc

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ask, "first")
                    await anyio.sleep(0.05)  # ids in this order
                    tg.start_soon(ask, "second")
            assert isinstance(outcomes["first"], BadAnswer), outcomes
            assert outcomes["second"] == "fine"


async def test_async_client_fails_every_waiting_request_on_garbage(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")

    def script(seen: list[dict[str, Any]]) -> bytes:
        if len(seen) == 3:
            return b"{this is not json\n"
        return b""

    with scripted_server(path, script, wanted=1):
        async with AsyncClient(path) as c:
            failures: list[BaseException] = []

            async def ask() -> None:
                try:
                    await c.request("status")
                except BadAnswer as exc:
                    failures.append(exc)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        tg.start_soon(ask)
            assert len(failures) == 3
            assert all("could not be read" in str(f) for f in failures)


def test_a_refusal_is_busy_not_no_daemon(sock_dir: str) -> None:
    """What the daemon says when it turns a connection away is read as DaemonBusy."""
    path = os.path.join(sock_dir, "s.sock")
    refusal = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {
        "code": -31004, "message": "daemon busy: all 128 control connections in use; "
        "retry later", "data": {"origin": "control", "reason": "busy"}}}) + b"\n"
    with scripted_server(path, lambda seen: refusal), Client(path) as c:
        c._sock.settimeout(10)  # type: ignore[union-attr]
        with pytest.raises(DaemonBusy, match="all 128 control connections in use"):
            c.status()


def test_a_forbidden_client_is_told_so_not_that_there_is_no_daemon(sock_dir: str) -> None:
    """The daemon's "forbidden" notice (not root, not its uid, not in socket_group, or a
    plugin's tree) is AccessDenied, and the CLI exits 8 saying so; it used to read as
    "is `pipevisor run` running?" (exit 3)."""
    import subprocess
    import sys

    from pipevisor.supervisor.cli.control import EXIT_FORBIDDEN
    from pipevisor.supervisor.client import AccessDenied
    from tests.daemon.daemon_helpers import ROOT

    path = os.path.join(sock_dir, "f.sock")
    refusal = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {
        "code": -32600, "message": "not allowed to use this control socket: uid 1000 is "
        "not root, not the daemon's uid 0", "data": {"origin": "control",
                                                    "reason": "forbidden"}}}) + b"\n"
    with scripted_server(path, lambda seen: refusal), Client(path) as c:
        c._sock.settimeout(10)  # type: ignore[union-attr]
        with pytest.raises(AccessDenied, match="uid 1000 is not root"):
            c.status()
    path = os.path.join(sock_dir, "g.sock")
    with scripted_server(path, lambda seen: refusal):
        cli = subprocess.run([sys.executable, "-m", "pipevisor.supervisor", "status",
                              "--socket", path], capture_output=True, text=True,
                             timeout=30, cwd=ROOT, check=False)
    assert cli.returncode == EXIT_FORBIDDEN, (cli.returncode, cli.stderr)
    assert "refused this client" in cli.stderr and "running?" not in cli.stderr


async def test_logs_answers_are_capped_in_bytes_newest_kept(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "c.sock")
    spec = fake_spec("a")
    limits = ControlLimits(logs_answer_bytes=50_000)
    async with Supervisor([spec]) as sup, anyio.create_task_group() as tg:
        await sup.wait_ready(timeout=20)
        await tg.start(lambda task_status: serve_control(
            sup, path, FakeHooks(), limits=limits, task_status=task_status))
        async with AsyncClient(path) as c:
            assert await c.call("a", "stderr_flood", {"lines": 1000}) == "flooded"
            with anyio.fail_after(10):
                while len(sup.runner("a").stderr.last(1000)) < 1000:
                    await anyio.sleep(0.01)
            answer = await c.request("logs", {"plugin": "a", "lines": 1000})
            assert len(orjson.dumps(answer)) < 50_000 + 200
            assert answer["omitted"] == 1000 - len(answer["lines"]) > 0
            assert answer["lines"] == sup.runner("a").stderr.last(1000)[answer["omitted"]:]
        tg.cancel_scope.cancel()
