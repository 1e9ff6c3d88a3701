"""Leftover cleanup kills only what is proven ours (#14 item 4).

Each record is written by another process (another "instance", as a crashed daemon's
would be) through the public API, then this process cleans up. Processes stand in for
plugins and for other users' programs; every one is killed at teardown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipevisor.supervisor.paths import UnsafeRuntimeDir
from pipevisor.supervisor.proc import leftovers
from pipevisor.supervisor.proc.leftovers import LeftoverRecord

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="leftover records are read from Linux's /proc")

NOBODY = 65534
DEADLINE = 10.0
PY = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
           if os.access(p, os.X_OK)), sys.executable)
"""A Python uid 65534 may run (ours may be in root's 0700 home)."""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="another uid (65534) needs root")

LEADER = """
import os, sys, time
child = os.fork()
if child == 0:
    if sys.argv[1] == "setsid":
        os.setsid()
    time.sleep(120)
    os._exit(0)
print(child, flush=True)
sys.stdin.read()
"""
"""Forks a child (which calls setsid if asked) that sleeps, prints its pid, and exits
when its stdin closes."""


class Procs:
    def __init__(self) -> None:
        self.pids: dict[int, float] = {}
        self.popens: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], *, user: int | None = None,
              env: dict[str, str] | None = None, new_session: bool = True,
              ) -> subprocess.Popen[str]:
        kw: dict[str, object] = {}
        if user is not None:
            kw = {"user": user, "group": user, "extra_groups": []}
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, cwd="/",
                                env=env if env is not None else {"PATH": "/usr/bin:/bin"},
                                start_new_session=new_session, **kw)  # type: ignore[call-overload]
        self.popens.append(proc)
        self.track(proc.pid)
        return proc

    def leader(self, *, setsid: bool, user: int | None = None,
               env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
        """(leader, its forked child's pid); the leader lives until :meth:`release`."""
        proc = self.start([PY, "-c", LEADER, "setsid" if setsid else "-"], user=user,
                          env=env)
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        self.track(child)
        return proc, child

    @staticmethod
    def release(proc: subprocess.Popen[str]) -> None:
        """Let a leader exit and reap it."""
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(DEADLINE)

    def track(self, pid: int) -> None:
        try:
            self.pids[pid] = psutil.Process(pid).create_time()
        except psutil.Error:
            pass

    def close(self) -> None:
        for pid, started in self.pids.items():
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - started) < 0.005:
                    p.kill()
            except psutil.Error:
                pass
        for proc in self.popens:
            proc.wait(DEADLINE)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.close()
        leftovers._release_all_for_tests()


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while running(pid):
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.01)


_RECORD = """
import sys
from pipevisor.supervisor.proc.leftovers import LeftoverRecord
LeftoverRecord(sys.argv[1]).record(int(sys.argv[2]))
"""


def record_elsewhere(path: Path, pid: int) -> None:
    """Record ``pid`` from another process: another instance, gone when this returns."""
    subprocess.run([sys.executable, "-c", _RECORD, str(path), str(pid)], check=True,
                   timeout=DEADLINE)


# ============================================================ positive control


def test_a_live_verified_tree_is_killed_whole(procs: Procs, tmp_path: Path) -> None:
    path = tmp_path / "children.json"
    leader, child = procs.leader(setsid=True)
    record_elsewhere(path, leader.pid)
    data = json.loads(path.read_text())
    tree = data["trees"][str(leader.pid)]
    assert tree["uid"] == os.geteuid() and tree["boot_id"] == leftovers.boot_id()
    assert data["instance"]["pid"] != os.getpid()
    killed = LeftoverRecord(path).cleanup()
    assert {leader.pid, child} <= set(killed)
    wait_gone(child)
    assert LeftoverRecord(path).entries() == {}


# ============================================================ never by a dead pid's numbers


@pytest.mark.parametrize("user", [None, NOBODY], ids=["same-uid", "other-uid"])
def test_a_dead_roots_session_is_not_killed(procs: Procs, tmp_path: Path,
                                            user: int | None) -> None:
    """The recorded root is gone; a process still in its session may be anyone's by
    now (after pid reuse, the session of a program that reused the recorded pid). The
    old cleanup SIGKILLed it for its session number."""
    if user is not None and os.geteuid() != 0:
        pytest.skip("another uid (65534) needs root")
    path = tmp_path / "children.json"
    leader, member = procs.leader(setsid=False, user=user)
    record_elsewhere(path, leader.pid)
    procs.release(leader)
    assert os.getsid(member) == leader.pid
    killed = LeftoverRecord(path).cleanup()
    assert member not in killed
    assert running(member), "a process was killed for the session number of a dead pid"


@needs_root
def test_a_reused_pid_of_another_user_is_not_killed_nor_its_session(
        procs: Procs, tmp_path: Path) -> None:
    """Real pid reuse (ns_last_pid): our recorded plugin died; another user's program
    got its pid, and left a daemon in its session."""
    path = tmp_path / "children.json"
    ours = procs.start([PY, "-c", "import sys; sys.stdin.read()"])
    record_elsewhere(path, ours.pid)
    Procs.release(ours)
    for _ in range(50):  # another fork on the host may take the pid first: try again
        with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
            fh.write(str(ours.pid - 1))
        theirs, daemon = procs.leader(setsid=False, user=NOBODY)
        if theirs.pid == ours.pid:
            break
        procs.release(theirs)
    else:
        pytest.skip("could not get the recorded pid reused (a busy host)")
    saved = path.read_text()
    killed = LeftoverRecord(path).cleanup()  # the pid is alive: another start, another uid
    assert theirs.pid not in killed and daemon not in killed
    assert running(theirs.pid) and running(daemon)
    path.write_text(saved)
    procs.release(theirs)  # now the daemon sits in the session of a dead recorded pid
    assert os.getsid(daemon) == ours.pid
    killed = LeftoverRecord(path).cleanup()
    assert daemon not in killed
    assert running(daemon), "another user's process was killed after pid reuse"


# ============================================================ the tree token


def test_an_orphan_is_killed_by_its_trees_token_and_only_by_it(procs: Procs,
                                                               tmp_path: Path) -> None:
    """The root died and its child called setsid: neither tree nor session leads to it.
    The random token the spawner put in the environment does; a process with another
    token, or with the token but another uid, is left alone."""
    path = tmp_path / "children.json"
    token = leftovers.new_tree_token()
    env = {"PATH": "/usr/bin:/bin", leftovers.TREE_TOKEN_ENV: token}
    root, orphan = procs.leader(setsid=True, env=env)
    record_elsewhere(path, root.pid)
    assert json.loads(path.read_text())["trees"][str(root.pid)]["token"] == token
    other_token = procs.start([PY, "-c", "import time; time.sleep(120)"],
                              env={**env, leftovers.TREE_TOKEN_ENV: "0" * 32})
    bystanders = [other_token.pid]
    if os.geteuid() == 0:
        forged = procs.start([PY, "-c", "import time; time.sleep(120)"], env=env,
                             user=NOBODY)
        bystanders.append(forged.pid)
    procs.release(root)
    killed = LeftoverRecord(path).cleanup()
    assert orphan in killed
    wait_gone(orphan)
    assert not set(bystanders) & set(killed)
    assert all(running(p) for p in bystanders)


def test_a_pvinit_tag_from_another_daemons_tree_is_not_enough(procs: Procs,
                                                             tmp_path: Path) -> None:
    """A tree recorded without a token falls back to pvinit's ``PIPEVISOR_TREE=<pid>``
    tag, and only for processes no other daemon (``PIPEVISOR_HOST_PID``) started."""
    path = tmp_path / "children.json"
    root = procs.start([PY, "-c", "import sys; sys.stdin.read()"])
    record_elsewhere(path, root.pid)
    writer = json.loads(path.read_text())["instance"]["pid"]
    tag = {"PATH": "/usr/bin:/bin", "PIPEVISOR_TREE": str(root.pid)}
    other = procs.start([PY, "-c", "import time; time.sleep(120)"],
                        env={**tag, "PIPEVISOR_HOST_PID": str(os.getpid())})
    mine = procs.start([PY, "-c", "import time; time.sleep(120)"],
                       env={**tag, "PIPEVISOR_HOST_PID": str(writer)})
    Procs.release(root)
    killed = LeftoverRecord(path).cleanup()
    assert mine.pid in killed and other.pid not in killed
    assert running(other.pid)


# ============================================================ the record itself


def test_records_of_another_boot_are_void(procs: Procs, tmp_path: Path) -> None:
    path = tmp_path / "children.json"
    leader, child = procs.leader(setsid=True)
    record_elsewhere(path, leader.pid)
    data = json.loads(path.read_text())
    data["trees"][str(leader.pid)]["boot_id"] = "00000000-0000-0000-0000-000000000000"
    path.write_text(json.dumps(data))
    assert LeftoverRecord(path).cleanup() == []
    assert running(leader.pid) and running(child)


@needs_root
def test_a_planted_old_format_record_kills_nothing(procs: Procs, tmp_path: Path) -> None:
    """The finding: a children.json naming another user's process made root kill it.
    A record without instance, boot and uid proves nothing and is ignored."""
    path = tmp_path / "children.json"
    victim = procs.start([PY, "-c", "import time; time.sleep(120)"], user=NOBODY)
    started = psutil.Process(victim.pid).create_time()
    path.write_text(json.dumps({"version": 1, "children": {str(victim.pid): started}}))
    path.chmod(0o600)
    assert LeftoverRecord(path).cleanup() == []
    assert running(victim.pid)


def test_a_record_of_another_uid_for_the_same_process_kills_nothing(
        procs: Procs, tmp_path: Path) -> None:
    """Same pid and start time but the recorded uid differs (a reuse within one clock
    tick, or a forged record): not proven ours."""
    path = tmp_path / "children.json"
    leader, child = procs.leader(setsid=True)
    record_elsewhere(path, leader.pid)
    data = json.loads(path.read_text())
    data["trees"][str(leader.pid)]["uid"] = os.geteuid() + 1
    path.write_text(json.dumps(data))
    assert LeftoverRecord(path).cleanup() == []
    assert running(leader.pid) and running(child)


def test_a_symlinked_record_is_refused_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"version": 2, "trees": {}}))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "children.json").symlink_to(elsewhere)
    try:
        with pytest.raises(UnsafeRuntimeDir, match=r"children\.json: refusing the leftover "
                                                   r"record: it is a symbolic link"):
            LeftoverRecord(state / "children.json").cleanup()
    finally:
        leftovers._release_all_for_tests()
    assert json.loads(elsewhere.read_text()) == {"version": 2, "trees": {}}


@pytest.mark.anyio
async def test_the_supervisor_gives_each_tree_the_token_it_records(tmp_path: Path) -> None:
    """The spawner puts a fresh PIPEVISOR_TREE_TOKEN in each plugin's environment and
    records the same token, so orphans are proven by it rather than by pid tags."""
    from pipevisor.supervisor import Supervisor, SupervisorConfig
    from tests.supervisor.fake import fake_spec

    state = tmp_path / "state"
    config = SupervisorConfig(plugins=(fake_spec("a"), fake_spec("b")), state_dir=str(state))
    async with Supervisor(config) as sup:
        await sup.wait_ready(timeout=20)
        trees = json.loads((state / "children.json").read_text())["trees"]
        tokens = set()
        for name in ("a", "b"):
            pid = sup.runner(name).status()["pid"]
            token = psutil.Process(pid).environ()[leftovers.TREE_TOKEN_ENV]
            tokens.add(token)
            assert token in {t["token"] for t in trees.values()}
        assert len(tokens) == 2  # one per tree
