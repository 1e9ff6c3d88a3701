"""Containment with real processes: nothing a plugin starts may outlive its supervisor.

Every test registers what it spawns with the ``tracker`` fixture, whose
finalizer kills whole trees, so a failing assertion never leaves processes
behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from pipevisor.supervisor.proc import containment as plat

pytestmark = pytest.mark.skipif(not plat.IS_LINUX, reason="containment tests need Linux")

HELPERS = Path(__file__).parent / "helpers"
TREE_PLUGIN = str(HELPERS / "tree_plugin.py")
ZOMBIE_PLUGIN = str(HELPERS / "zombie_plugin.py")
MINI_SUPERVISOR = str(HELPERS / "mini_supervisor.py")
DEADLINE = 10.0


def running(pid: int) -> bool:
    """A zombie is dead for our purposes: it runs no code and holds no resources."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def wait_gone(pids: list[int]) -> None:
    wait_until(
        lambda: not any(running(p) for p in pids),
        f"processes to die: still running {[p for p in pids if running(p)]}",
    )


def read_json(path: Path) -> dict[str, object]:
    wait_until(path.exists, f"{path.name} to be written")
    data: dict[str, object] = json.loads(path.read_text())
    return data


class Tracker:
    """Remembers every process a test creates and kills them all at teardown."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.pids: dict[int, float] = {}

    def popen(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        self.popens.append(proc)
        self.track(proc.pid)
        return proc

    def track(self, *pids: int) -> None:
        for pid in pids:
            try:
                self.pids.setdefault(pid, psutil.Process(pid).create_time())
            except psutil.NoSuchProcess:
                pass

    def track_tree(self, pid: int) -> list[int]:
        pids = plat.tree_pids(pid)
        self.track(*pids)
        return pids

    def close(self) -> None:
        for proc in self.popens:
            plat.kill_tree(proc.pid)
        for pid, started in self.pids.items():
            try:
                if abs(psutil.Process(pid).create_time() - started) < 0.005:
                    plat.kill_tree(pid)
            except psutil.NoSuchProcess:
                pass
        for proc in self.popens:
            try:
                proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    t = Tracker()
    try:
        yield t
    finally:
        t.close()


def require_shim() -> str:
    shim = plat.ensure_shim()
    if shim is None:
        pytest.skip("pvinit shim could not be built (no C compiler?): install gcc")
    return shim


def containment_for(mode: str) -> plat.Containment:
    require_shim()
    try:
        return plat.detect_containment(force=mode)
    except RuntimeError as exc:
        pytest.skip(f"pid namespace unavailable on this host: {exc}")


@pytest.fixture(params=["pidns", "session"])
def containment(request: pytest.FixtureRequest) -> plat.Containment:
    return containment_for(request.param)


def spawn(
    tracker: Tracker, containment: plat.Containment, argv: list[str], **kwargs: object
) -> subprocess.Popen[bytes]:
    cmd, extra = plat.wrap_command(argv, containment)
    return tracker.popen(cmd, stdin=subprocess.DEVNULL, **extra, **kwargs)


def start_mini_supervisor(
    tracker: Tracker, tmp_path: Path, mode: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, object], dict[str, object]]:
    pidfile = tmp_path / "tree.json"
    info = tmp_path / "info.json"
    sup = tracker.popen(
        [
            sys.executable,
            MINI_SUPERVISOR,
            str(info),
            mode,
            str(tmp_path / "children.json"),
            "--",
            sys.executable,
            TREE_PLUGIN,
            str(pidfile),
        ],
        stdin=subprocess.DEVNULL,
        env=env,
    )
    tree = read_json(pidfile)
    meta = read_json(info)
    tracker.track(*(int(p) for p in tree.values()))  # type: ignore[call-overload]
    tracker.track_tree(int(meta["spawned"]))  # type: ignore[call-overload]
    return sup, tree, meta


def pids_of(tree: dict[str, object]) -> list[int]:
    return [int(p) for p in tree.values()]  # type: ignore[call-overload]


# --------------------------------------------------------------------------- supervisor death


@pytest.mark.parametrize("mode", ["pidns", "session"])
def test_supervisor_sigkill_leaves_no_process(tracker: Tracker, tmp_path: Path, mode: str) -> None:
    expected = "pidns" if mode == "pidns" else "session+pdeathsig"
    containment_for(mode)
    sup, tree, meta = start_mini_supervisor(tracker, tmp_path, mode)
    assert meta["mechanism"] == expected
    everything = pids_of(tree) + plat.tree_pids(int(meta["spawned"]))  # type: ignore[call-overload]
    assert all(running(p) for p in pids_of(tree))

    sup.send_signal(signal.SIGKILL)
    sup.wait(timeout=DEADLINE)

    # Includes the setsid + double-forked daemon, in both modes.
    wait_gone(everything)


def test_leftovers_cleaned_on_next_start_when_pvinit_could_not(
    tracker: Tracker, tmp_path: Path
) -> None:
    """Fallback mode, worst case: the shim's own cleanup never gets to run.

    Simulated by freezing both pvinit processes, killing the supervisor, then
    killing the inner pvinit outright (as the OOM killer might).  The direct
    plugin still dies (parent-death signal); its child and the setsid daemon
    survive, and the next start's LeftoverRecord.cleanup() finds them by
    session and by the pvinit tree tag.
    """
    containment_for("session")
    sup, tree, meta = start_mini_supervisor(tracker, tmp_path, "session")
    outer = int(meta["spawned"])  # type: ignore[call-overload]
    inner = [c.pid for c in psutil.Process(outer).children()]
    assert len(inner) == 1
    for p in (outer, *inner):
        os.kill(p, signal.SIGSTOP)
    sup.send_signal(signal.SIGKILL)
    sup.wait(timeout=DEADLINE)
    wait_gone([outer])
    os.kill(inner[0], signal.SIGKILL)

    wait_gone([inner[0], int(tree["plugin"])])  # type: ignore[call-overload]
    survivors = [int(tree["child"]), int(tree["daemon"])]  # type: ignore[call-overload]
    assert all(running(p) for p in survivors), "expected leftovers for this scenario"

    killed = plat.LeftoverRecord(tmp_path / "children.json").cleanup()
    assert set(survivors) <= set(killed)
    wait_gone(survivors)
    assert plat.LeftoverRecord(tmp_path / "children.json").entries() == {}


def test_without_shim_cleanup_catches_session_but_not_setsid_daemon(
    tracker: Tracker, tmp_path: Path
) -> None:
    """No shim (e.g. no C compiler): documented limits, pinned by a test.

    Nothing dies with the supervisor.  The next start kills the recorded plugin
    and everything still in its session; a daemon that called setsid cannot be
    recognised and survives (the tracker kills it at teardown).
    """
    env = {**os.environ, "PIPEVISOR_SHIM": "0"}
    sup, tree, meta = start_mini_supervisor(tracker, tmp_path, "auto", env=env)
    assert meta["mechanism"] == "session"
    assert meta["spawned"] == tree["plugin"]
    sup.send_signal(signal.SIGKILL)
    sup.wait(timeout=DEADLINE)
    assert all(running(p) for p in pids_of(tree))

    killed = plat.LeftoverRecord(tmp_path / "children.json").cleanup()
    same_session = [int(tree["plugin"]), int(tree["child"])]  # type: ignore[call-overload]
    assert set(same_session) <= set(killed)
    wait_gone(same_session)
    assert running(int(tree["daemon"]))  # type: ignore[call-overload]


def test_leftover_cleanup_is_pid_reuse_safe(tracker: Tracker, tmp_path: Path) -> None:
    bystander = tracker.popen([sys.executable, "-c", "import time; time.sleep(60)"])
    record = plat.LeftoverRecord(tmp_path / "children.json")
    started = psutil.Process(bystander.pid).create_time()
    record.record(bystander.pid, started - 100.0)  # same pid, different process
    assert record.cleanup() == []
    assert running(bystander.pid)

    record.record(bystander.pid)
    record.forget(bystander.pid)
    assert record.cleanup() == []
    assert running(bystander.pid)


# --------------------------------------------------------------------------- signals and status


def test_sigterm_reaches_every_process_of_the_tree(
    tracker: Tracker, tmp_path: Path, containment: plat.Containment
) -> None:
    pidfile, termlog = tmp_path / "tree.json", tmp_path / "term.log"
    proc = spawn(tracker, containment, [sys.executable, TREE_PLUGIN, str(pidfile), str(termlog)])
    tree = read_json(pidfile)
    tracker.track_tree(proc.pid)

    plat.signal_tree(proc.pid, signal.SIGTERM)

    assert proc.wait(timeout=DEADLINE) == 0
    got = {int(line) for line in termlog.read_text().split()}
    assert got == set(pids_of(tree))
    wait_gone(pids_of(tree))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("raise SystemExit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
    ],
)
def test_exit_status_passthrough(
    tracker: Tracker, containment: plat.Containment, code: str, expected: int
) -> None:
    proc = spawn(tracker, containment, [sys.executable, "-c", code])
    assert proc.wait(timeout=DEADLINE) == expected


def test_missing_executable_gives_127_and_clear_message(
    tracker: Tracker, tmp_path: Path, containment: plat.Containment
) -> None:
    missing = str(tmp_path / "no-such-plugin")
    proc = spawn(
        tracker, containment, [missing, "--flag"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 127
    assert out == b""
    assert err.decode() == f"pvinit: cannot exec {missing}: No such file or directory\n"


def test_pvinit_never_writes_stdout(tracker: Tracker, containment: plat.Containment) -> None:
    script = "import sys; sys.stdin.read(); sys.stderr.write('log line\\n')"
    proc = spawn(
        tracker,
        containment,
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=DEADLINE)
    assert (proc.returncode, out, err) == (0, b"", b"log line\n")

    shim = require_shim()
    probe = subprocess.run([shim, "--probe-ns"], capture_output=True, check=False)
    assert probe.stdout == b""


def test_plugin_stdio_is_passed_through_untouched(
    tracker: Tracker, containment: plat.Containment
) -> None:
    echo = "import sys; sys.stdout.write(sys.stdin.read().upper())"
    cmd, extra = plat.wrap_command([sys.executable, "-c", echo], containment)
    piped = tracker.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **extra)
    out, _ = piped.communicate(b'{"jsonrpc": "2.0"}\n', timeout=DEADLINE)
    assert out == b'{"JSONRPC": "2.0"}\n'
    assert piped.returncode == 0


# --------------------------------------------------------------------------- tree operations


def test_orphaned_children_are_reaped_no_zombies(
    tracker: Tracker, tmp_path: Path, containment: plat.Containment
) -> None:
    pidfile = tmp_path / "zombies.json"
    proc = spawn(tracker, containment, [sys.executable, ZOMBIE_PLUGIN, str(pidfile), "20"])
    info = read_json(pidfile)
    workers = [int(p) for p in info["workers"]]  # type: ignore[attr-defined]
    assert len(workers) == 20

    # Reaped means the pid disappears entirely, not merely turns into a zombie.
    wait_until(lambda: not any(psutil.pid_exists(p) for p in workers), "workers to be reaped")
    zombies = [
        p for p in plat.tree_pids(proc.pid) if psutil.Process(p).status() == psutil.STATUS_ZOMBIE
    ]
    assert zombies == []
    assert proc.poll() is None


def test_kill_tree_kills_everything(
    tracker: Tracker, tmp_path: Path, containment: plat.Containment
) -> None:
    pidfile = tmp_path / "tree.json"
    proc = spawn(tracker, containment, [sys.executable, TREE_PLUGIN, str(pidfile)])
    tree = read_json(pidfile)
    everything = tracker.track_tree(proc.pid)
    assert set(pids_of(tree)) <= set(everything)

    plat.kill_tree(proc.pid)

    assert proc.wait(timeout=DEADLINE) == -signal.SIGKILL
    wait_gone(everything)


def test_pause_and_resume_tree(
    tracker: Tracker, tmp_path: Path, containment: plat.Containment
) -> None:
    pidfile = tmp_path / "tree.json"
    proc = spawn(tracker, containment, [sys.executable, TREE_PLUGIN, str(pidfile)])
    tree = read_json(pidfile)
    tracker.track_tree(proc.pid)

    def states() -> dict[int, str]:
        return {p: psutil.Process(p).status() for p in pids_of(tree)}

    plat.pause_tree(proc.pid)
    wait_until(lambda: set(states().values()) == {psutil.STATUS_STOPPED}, "plugin tree to stop")
    # pvinit stays runnable: it must still be able to clean up if we die now.
    assert psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED

    plat.resume_tree(proc.pid)
    wait_until(lambda: psutil.STATUS_STOPPED not in states().values(), "plugin tree to continue")


def test_signal_tree_on_unwrapped_group(tracker: Tracker, tmp_path: Path) -> None:
    """Without the shim the tree is the plugin's session/process group."""
    pidfile, termlog = tmp_path / "tree.json", tmp_path / "term.log"
    proc = tracker.popen(
        [sys.executable, TREE_PLUGIN, str(pidfile), str(termlog)], start_new_session=True
    )
    tree = read_json(pidfile)
    tracker.track(*pids_of(tree))
    plat.signal_tree(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=DEADLINE) == 0
    got = {int(line) for line in termlog.read_text().split()}
    # The setsid daemon has left both the group and (without a subreaper) the tree.
    assert {int(tree["plugin"]), int(tree["child"])} <= got  # type: ignore[call-overload]


# --------------------------------------------------------------------------- host plumbing


def test_reap_adopted_leaves_known_children_alone(tmp_path: Path) -> None:
    """Runs in a child interpreter: making pytest itself a subreaper would leak."""
    script = f"""
import json, os, subprocess, sys, time
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
from pipevisor.supervisor.proc import containment as plat
assert plat.become_subreaper()
known = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
middle = os.fork()
if middle == 0:
    if os.fork() == 0:
        os._exit(7)
    os._exit(0)
os.waitpid(middle, 0)
deadline = time.monotonic() + 10
reaped = []
while not reaped and time.monotonic() < deadline:
    reaped = plat.reap_adopted({{known.pid}})
    time.sleep(0.01)
alive = known.poll() is None
known.kill(); known.wait()
print(json.dumps({{"reaped": reaped, "known_alive": alive}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=DEADLINE, check=True
    )
    result = json.loads(out.stdout)
    assert result["known_alive"] is True
    assert len(result["reaped"]) == 1
    assert result["reaped"][0][1] == 7


def test_detection_modes_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown containment mode"):
        plat.detect_containment(force="chroot")
    monkeypatch.setenv("PIPEVISOR_SHIM", "0")
    try:
        c = plat.detect_containment()
        assert (c.mechanism, c.shim) == ("session", None)
        assert "PIPEVISOR_SHIM=0" in c.detail
        with pytest.raises(RuntimeError, match="needs the pvinit shim"):
            plat.detect_containment(force="pidns")
        argv, kwargs = plat.wrap_command(["plugin", "--x"], c)
        assert argv == ["plugin", "--x"]
        assert kwargs == {"start_new_session": True}
    finally:
        monkeypatch.delenv("PIPEVISOR_SHIM")
        plat.reset_detection_cache()


def test_shim_is_compiled_once_into_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    require_shim()
    monkeypatch.setenv("PIPEVISOR_CACHE_DIR", str(tmp_path))
    plat.reset_detection_cache()
    try:
        first = plat.ensure_shim()
        assert first is not None
        assert Path(first).parent == tmp_path
        assert Path(first).name.startswith("pvinit-")
        mtime = os.stat(first).st_mtime_ns
        plat.reset_detection_cache()
        assert plat.ensure_shim() == first
        assert os.stat(first).st_mtime_ns == mtime
        assert [p.name for p in tmp_path.iterdir()] == [Path(first).name]  # no temp files
    finally:
        monkeypatch.delenv("PIPEVISOR_CACHE_DIR")
        plat.reset_detection_cache()
