"""One daemon per state dir (#14 item 4): the instance lock.

The finding: a second ``pipevisor run`` (another ``--socket``, or after the first one's
socket file was deleted) took the first daemon's live plugins for leftovers and
SIGKILLed them, then both ran copies of every plugin and rewrote one children.json.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pipevisor.supervisor.client import Client
from pipevisor.supervisor.proc import leftovers
from tests.daemon.daemon_helpers import fake_table, running_daemon

BASE = "[discovery]\nenabled = false\n\n"
DEADLINE = 30.0


def tree_of(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def alive(procs: list[psutil.Process]) -> bool:
    return all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)


def test_a_second_daemon_on_the_same_state_dir_refuses_and_kills_nothing(
        sock_dir: str) -> None:
    with running_daemon(sock_dir, BASE + fake_table("a") + fake_table("b")) as first:
        with Client(first.socket) as c:
            pids = {p["name"]: p["pid"] for p in c.status()["plugins"]}
        procs = [p for pid in pids.values() for p in tree_of(int(pid))]
        other = os.path.join(sock_dir, "second.sock")
        second = subprocess.Popen(
            [sys.executable, "-m", "pipevisor.supervisor", "run", "--config", first.config,
             "--socket", other],
            env={**os.environ, "XDG_RUNTIME_DIR": sock_dir}, cwd=sock_dir, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = second.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            second.send_signal(signal.SIGTERM)
            _, err = second.communicate(timeout=DEADLINE)
            raise AssertionError(f"the second daemon started:\n{err}") from None
        assert second.returncode == 1, err
        state = os.path.join(sock_dir, "pipevisor")
        assert (f"state directory {state} is in use by another pipevisor instance "
                f"(pid {first.proc.pid})") in err
        assert not os.path.exists(other)
        assert alive(procs), "the second daemon killed the first one's plugins"
        with Client(first.socket) as c:
            status = c.status()["plugins"]
        assert {p["name"]: p["pid"] for p in status} == pids
        assert all(p["state"] == "ready" for p in status), status


def test_a_stale_lock_of_a_dead_daemon_does_not_block_a_new_start(sock_dir: str) -> None:
    """SIGKILL leaves the lock file behind; the kernel released the lock itself."""
    state_home = sock_dir
    with running_daemon(sock_dir, BASE + fake_table("a")) as first:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(DEADLINE)
    lock = Path(state_home, "pipevisor", leftovers.LOCK_NAME)
    assert lock.exists()
    again = tempfile.mkdtemp(prefix="pvc-", dir="/tmp")
    try:
        with running_daemon(again, BASE + fake_table("a"),
                            env={"XDG_RUNTIME_DIR": state_home}) as second:
            with Client(second.socket) as c:
                assert [p["state"] for p in c.status()["plugins"]] == ["ready"]
            assert f'"pid": {second.proc.pid}' in lock.read_text()
    finally:
        subprocess.run(["rm", "-rf", again], check=False)


_HOLD = """
import sys, time
from pipevisor.supervisor.proc import leftovers
leftovers.claim_state_dir(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


def test_the_lock_names_its_holder_and_is_free_once_it_dies(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, state], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        record = leftovers.LeftoverRecord(os.path.join(state, "children.json"))
        with pytest.raises(leftovers.StateDirBusy, match=f"pid {holder.pid}"):
            record.cleanup()
    finally:
        holder.kill()
        holder.wait(DEADLINE)
    deadline = time.monotonic() + DEADLINE
    while True:  # released by the kernel as the holder's files close
        try:
            assert leftovers.claim_state_dir(state).endswith(leftovers.LOCK_NAME)
            break
        except leftovers.StateDirBusy:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert record.cleanup() == []
    leftovers._release_all_for_tests()
