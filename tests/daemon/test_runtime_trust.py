"""Issue #14 items 1 and 3 against real processes: run-time folders the daemon and its
clients use must be ours, the control socket serves only whom the access rule admits,
and a client checks who serves the socket before it sends anything.

"Another user" is uid 65534 (nobody): a folder chowned to it stands for root started
with another user's ``$XDG_RUNTIME_DIR`` (``sudo -E``), and peers run as it through
``subprocess(user=...)``. Those tests need root and skip with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipevisor.supervisor import paths
from pipevisor.supervisor.cli.control import EXIT_FORBIDDEN
from pipevisor.supervisor.client import Client
from pipevisor.supervisor.client.wire import UntrustedDaemon
from pipevisor.supervisor.paths import UnsafeRuntimeDir, secure_dir
from tests.daemon.daemon_helpers import ROOT, fake_table, running_daemon

NOBODY = 65534
USERS_GID = 100
PEER = str(Path(__file__).with_name("trust_peer.py"))
BASE = "[discovery]\nenabled = false\n\n"
DEADLINE = 30.0

PY = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
           if os.access(p, os.X_OK)), sys.executable)
"""A Python uid 65534 may run (ours may sit in root's 0700 home); trust_peer.py needs
only the standard library."""

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="acting as another user (uid 65534) needs root")


def wait_for(predicate: object, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def shared() -> Iterator[str]:
    """A short folder under /tmp whose entries tests chown or open up."""
    d = tempfile.mkdtemp(prefix="pvt-", dir="/tmp")
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", d], check=False)


def as_nobody(argv: list[str], *, gid: int = NOBODY, groups: tuple[int, ...] = (),
              **kw: object) -> subprocess.Popen[str]:
    kw.setdefault("env", {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    return subprocess.Popen(argv, user=NOBODY, group=gid, extra_groups=list(groups),
                            cwd="/", text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def probe(path: str, *, gid: int = NOBODY, groups: tuple[int, ...] = ()) -> dict[str, object]:
    """What a peer running as uid 65534 gets for a ``status`` request."""
    proc = as_nobody([PY, PEER, "probe", path], gid=gid, groups=groups)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    answer: dict[str, object] = json.loads(out)
    return answer


def run_daemon(argv: list[str], env: dict[str, str], cwd: str) -> subprocess.CompletedProcess[str]:
    """``pipevisor run`` expected to refuse at once; killed (and failed) if it starts."""
    proc = subprocess.Popen([sys.executable, "-m", "pipevisor.supervisor", "run", *argv],
                            env={**os.environ, **env}, cwd=cwd, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=DEADLINE)
        raise AssertionError(f"pipevisor run started instead of refusing:\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


# ============================================================ item 3: run-time folders


@needs_root
def test_another_users_xdg_runtime_dir_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                  shared: str) -> None:
    xdg = os.path.join(shared, "xdg")
    os.mkdir(xdg, 0o700)
    os.chown(xdg, NOBODY, NOBODY)
    monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
    with pytest.raises(UnsafeRuntimeDir, match=f"{xdg}: refusing \\$XDG_RUNTIME_DIR: it is "
                                               f"owned by uid {NOBODY}, not by us"):
        paths.runtime_dir()


@needs_root
def test_pipevisor_run_under_another_users_runtime_dir_refuses_and_kills_nothing(
        shared: str) -> None:
    """The finding: a planted children.json made root SIGKILL a process of the other
    user's choice. Now the folder is refused (exit 2, naming it) before any record is
    read, and the chosen process lives."""
    xdg = os.path.join(shared, "xdg")
    planted = os.path.join(xdg, "pipevisor")
    os.makedirs(planted, 0o700)
    victim = as_nobody([PY, "-c", "import time; time.sleep(120)"])
    try:
        import psutil

        started = psutil.Process(victim.pid).create_time()
        for record in ({"version": 1, "children": {str(victim.pid): started}},):
            Path(planted, "children.json").write_text(json.dumps(record))
        for p in (xdg, planted, os.path.join(planted, "children.json")):
            os.chown(p, NOBODY, NOBODY)
        sock_dir = tempfile.mkdtemp(prefix="pvs-", dir="/tmp")
        try:
            config = os.path.join(sock_dir, "p.toml")
            Path(config).write_text(BASE)
            done = run_daemon(["--config", config, "--socket", os.path.join(sock_dir, "s")],
                              {"XDG_RUNTIME_DIR": xdg}, sock_dir)
        finally:
            subprocess.run(["rm", "-rf", sock_dir], check=False)
        assert done.returncode == 2, done.stderr
        assert f"{xdg}: refusing $XDG_RUNTIME_DIR: it is owned by uid {NOBODY}" in done.stderr
        assert victim.poll() is None, "the planted record's process was killed"
    finally:
        victim.kill()
        victim.wait(DEADLINE)


def test_a_symlinked_state_dir_is_refused(shared: str) -> None:
    real = os.path.join(shared, "real")
    os.mkdir(real, 0o700)
    link = os.path.join(shared, "state")
    os.symlink(real, link)
    config = os.path.join(shared, "p.toml")
    Path(config).write_text(f'{BASE}[supervisor]\nstate_dir = "{link}"\n')
    done = run_daemon(["--config", config, "--socket", os.path.join(shared, "s")],
                      {"XDG_RUNTIME_DIR": shared}, shared)
    assert done.returncode == 2, done.stderr
    assert f"{link}: refusing the state directory: it is a symbolic link" in done.stderr
    assert os.listdir(real) == []


def test_a_socket_in_a_folder_others_may_write_is_refused(shared: str) -> None:
    """``--socket /tmp/x.sock``: anyone may put a file there first, or swap the folder's
    entries; refused, naming the folder."""
    public = os.path.join(shared, "public")
    os.mkdir(public)
    os.chmod(public, 0o1777)
    config = os.path.join(shared, "p.toml")
    Path(config).write_text(BASE)
    done = run_daemon(["--config", config, "--socket", os.path.join(public, "c.sock")],
                      {"XDG_RUNTIME_DIR": shared}, shared)
    assert done.returncode == 2, done.stderr
    assert (f"{public}: refusing the control socket's folder: it has mode 1777: group or "
            "others may write it") in done.stderr
    assert os.listdir(public) == []


def test_a_folder_above_that_others_may_write_is_refused(shared: str) -> None:
    """Whoever may write a folder above can rename ours away and put theirs in its
    place; a sticky folder (``/tmp``) is the exception: only an entry's owner may."""
    open_ = os.path.join(shared, "open")
    os.mkdir(open_)
    os.chmod(open_, 0o777)
    with pytest.raises(UnsafeRuntimeDir, match=f"is below {open_} \\(mode 0777\\), which "
                                               "others may write"):
        secure_dir(os.path.join(open_, "rt"))
    os.chmod(open_, 0o1777)
    assert secure_dir(os.path.join(open_, "rt")) == os.path.join(open_, "rt")


def test_missing_folders_are_created_0700_and_checked(shared: str) -> None:
    deep = os.path.join(shared, "a", "b", "c")
    assert secure_dir(deep, what="the state directory") == deep
    for p in (os.path.join(shared, "a"), os.path.join(shared, "a", "b"), deep):
        assert stat.S_IMODE(os.lstat(p).st_mode) == 0o700
    os.chmod(deep, 0o770)
    with pytest.raises(UnsafeRuntimeDir, match="refusing the state directory: it has mode "
                                               "0770: group or others may write it"):
        secure_dir(deep, what="the state directory")


# ============================================================ item 1: who may connect


def _open_up(folder: str, sock: str) -> None:
    """Let other uids reach the socket file, as a careless chmod would: from here on
    only the daemon's peer check stands between them and the plugins."""
    os.chmod(folder, 0o711)
    os.chmod(sock, 0o666)


@needs_root
def test_another_uid_is_refused_even_when_the_socket_mode_lets_it_in(sock_dir: str) -> None:
    with running_daemon(sock_dir, BASE + fake_table("a")) as d:
        _open_up(sock_dir, d.socket)
        answer = probe(d.socket)
        error = answer["error"]
        assert isinstance(error, dict), answer
        assert error["data"]["reason"] == "forbidden", answer
        assert "not allowed to use this control socket" in error["message"]
        assert f"uid {NOBODY} is not root, not the daemon's uid 0" in d.stderr()
        with Client(d.socket) as c:  # the daemon's own uid is served
            assert [p["name"] for p in c.status()["plugins"]] == ["a"]


@needs_root
def test_socket_group_admits_its_members_and_nobody_else(sock_dir: str) -> None:
    os.chmod(sock_dir, 0o711)  # the group must be able to reach the socket
    with running_daemon(sock_dir, '[daemon]\nsocket_group = "users"\n\n' + BASE
                        + fake_table("a")) as d:
        st = os.stat(d.socket)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == USERS_GID
        primary = probe(d.socket, gid=USERS_GID)
        assert "result" in primary, primary
        supplementary = probe(d.socket, groups=(USERS_GID,))
        assert "result" in supplementary, supplementary
        outsider = probe(d.socket)
        assert "connect_error" in outsider, outsider  # 0660: the file mode keeps it out
        os.chmod(d.socket, 0o666)
        outsider = probe(d.socket)
        assert outsider["error"]["data"]["reason"] == "forbidden", outsider  # type: ignore[index]
        assert f"uid {NOBODY} is not root, not the daemon's uid 0 nor in group 100" \
            in d.stderr()


def test_an_unknown_socket_group_is_a_configuration_error(shared: str) -> None:
    config = os.path.join(shared, "p.toml")
    Path(config).write_text('[daemon]\nsocket_group = "no-such-group-pv"\n' + BASE)
    done = run_daemon(["--config", config, "--socket", os.path.join(shared, "s")],
                      {"XDG_RUNTIME_DIR": shared}, shared)
    assert done.returncode == 2, done.stderr
    assert "socket_group: no group named 'no-such-group-pv'" in done.stderr


_HAND_OVER = """
import socket, sys
back = socket.socket(fileno=int(sys.argv[2]))
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
socket.send_fds(back, [b"x"], [conn.fileno()])
"""


def test_a_peer_gone_before_it_is_checked_is_refused(sock_dir: str) -> None:
    """A process connects, hands its socket to another and exits: SO_PEERCRED names the
    dead one, whose tree can no longer be checked (a plugin could launder its
    connection this way). Made deterministic by stopping the daemon until the
    connecting process is gone."""
    with running_daemon(sock_dir, BASE + fake_table("a")) as d:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            d.proc.send_signal(signal.SIGSTOP)
            try:
                helper = subprocess.run([sys.executable, "-c", _HAND_OVER, d.socket,
                                         str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                        timeout=DEADLINE, check=True)
                assert helper.returncode == 0
                _, fds, _, _ = socket.recv_fds(ours, 16, 1)
            finally:
                d.proc.send_signal(signal.SIGCONT)
        with socket.socket(fileno=fds[0]) as conn:
            conn.settimeout(DEADLINE)
            try:
                conn.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
            except OSError:
                pass
            buf = b""
            while b"\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
        answer = json.loads(buf.split(b"\n", 1)[0])
        assert answer["error"]["data"]["reason"] == "forbidden", answer
        assert "connecting process is gone" in answer["error"]["message"]


@needs_root
def test_a_process_inside_a_plugins_pid_namespace_is_refused(sock_dir: str) -> None:
    """Not a descendant of the plugin (nsenter is the test's child) but inside its pid
    namespace: refused by the namespace check, the tree walk alone would serve it."""
    import psutil

    with running_daemon(sock_dir, BASE + fake_table("a")) as d:
        with Client(d.socket) as c:
            status = c.status()
        if status["daemon"]["containment"] != "pidns":
            pytest.skip(f"plugins run without a pid namespace here "
                        f"({status['daemon']['containment']})")
        outer = int(status["plugins"][0]["shim_pid"])
        inner = psutil.Process(outer).children()[0].pid
        done = subprocess.run(["nsenter", f"--target={inner}", "--pid", "--",
                               sys.executable, PEER, "probe", d.socket],
                              capture_output=True, text=True, timeout=DEADLINE, check=False)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["error"]["data"]["reason"] == "forbidden", answer
        assert "refused a connection from inside plugin a's process tree" in d.stderr()


# ============================================================ item 1: clients check the server


def fake_daemon(folder: str, name: str) -> tuple[subprocess.Popen[str], str, str]:
    """A socket served by uid 65534: (process, socket path, file its first client's
    bytes are written to)."""
    os.chmod(folder, 0o777)
    sock, ready, log = (os.path.join(folder, f"{name}{x}") for x in (".sock", ".ready", ".log"))
    proc = as_nobody([PY, PEER, "serve", sock, ready, log])
    wait_for(lambda: os.path.exists(ready) or proc.poll() is not None, "the fake daemon")
    assert proc.poll() is None, proc.communicate()[1]
    return proc, sock, log


@needs_root
def test_a_client_sends_nothing_to_a_socket_served_by_another_uid(shared: str) -> None:
    """The finding: a fake socket captured root's ``call`` params. The client now asks
    the kernel who listens (SO_PEERCRED) and refuses before writing a byte."""
    proc, sock, log = fake_daemon(shared, "fake")
    try:
        refused = f"refusing the control socket {sock}: it is served by uid {NOBODY}"
        with pytest.raises(UntrustedDaemon, match=refused), Client(sock) as c:
            c.call("p", "login", {"password": "hunter2"})
        proc.communicate(timeout=DEADLINE)
        assert Path(log).read_bytes() == b""
    finally:
        proc.kill()
        proc.wait(DEADLINE)


@needs_root
def test_the_cli_refuses_a_socket_served_by_another_uid(shared: str) -> None:
    proc, sock, log = fake_daemon(shared, "fake")
    try:
        done = subprocess.run([sys.executable, "-m", "pipevisor.supervisor", "call",
                               "--socket", sock, "p", "login", '{"password": "hunter2"}'],
                              capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT,
                              check=False)
        assert done.returncode == EXIT_FORBIDDEN, (done.returncode, done.stderr)
        assert f"served by uid {NOBODY}" in done.stderr
        proc.communicate(timeout=DEADLINE)
        assert b"hunter2" not in Path(log).read_bytes()
    finally:
        proc.kill()
        proc.wait(DEADLINE)


@needs_root
@pytest.mark.anyio
async def test_the_async_client_refuses_too_unless_that_uid_is_expected(shared: str) -> None:
    from pipevisor.supervisor.client import AsyncClient, DaemonNotRunning

    proc, sock, log = fake_daemon(shared, "one")
    try:
        with pytest.raises(UntrustedDaemon):
            async with AsyncClient(sock) as c:
                await c.status()
        proc.communicate(timeout=DEADLINE)
        assert Path(log).read_bytes() == b""
        proc, sock, log = fake_daemon(shared, "two")
        with pytest.raises(DaemonNotRunning):  # accepted: it reads, then just closes
            async with AsyncClient(sock, daemon_uid="nobody") as c:
                await c.status()
        proc.communicate(timeout=DEADLINE)
        assert b'"status"' in Path(log).read_bytes()
    finally:
        proc.kill()
        proc.wait(DEADLINE)
