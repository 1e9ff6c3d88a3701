"""The peer cases of perf/ (issue #20) without the peers: pins, venv naming, skips.

Nothing here installs a peer or touches the network. The venv root is pointed
at an empty temporary folder, so every peer case must skip and say how to
install; the pin files must stay fully pinned; a venv's name must follow its
pins and nothing else; and the C child must announce its start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perf import peers_env

REPO = Path(__file__).resolve().parents[2]


def test_every_pin_file_parses_and_pins_its_peer() -> None:
    for peer in peers_env.PEERS:
        pins = peers_env.pins_for(peer)
        assert peer in pins, (peer, pins)
        assert all(v and v[0].isdigit() for v in pins.values()), pins


@pytest.mark.parametrize(
    "text",
    ["foo>=1.0\n", "foo\n", "foo==\n", "foo==1.0\nFoo==1.1\n", "-r other.txt\n",
     "foo==1.*\n", "foo[extra]==1.0\n", "# only a comment\n", "foo==1.0; python_version<'4'\n"],
)
def test_parse_pins_refuses_anything_but_exact_pins(text: str) -> None:
    with pytest.raises(ValueError):
        peers_env.parse_pins(text)


def test_parse_pins_normalises_names_and_skips_comments() -> None:
    pins = peers_env.parse_pins("# pins\n\nTyping_Extensions==4.1.0  # why\nzope.interface==7.0\n")
    assert pins == {"typing-extensions": "4.1.0", "zope-interface": "7.0"}


def test_venv_key_follows_the_pins_and_python_only() -> None:
    a = peers_env.parse_pins("x==1.0\ny==2.0\n")
    b = peers_env.parse_pins("# reordered\ny==2.0\n\nx==1.0\n")
    assert peers_env.venv_key(a, (3, 11)) == peers_env.venv_key(b, (3, 11))
    assert peers_env.venv_key(a, (3, 11)) == peers_env.venv_key(a, (3, 11, 9))
    assert peers_env.venv_key(a, (3, 11)) != peers_env.venv_key(a, (3, 12))
    bumped = peers_env.parse_pins("x==1.0\ny==2.1\n")
    assert peers_env.venv_key(a, (3, 11)) != peers_env.venv_key(bumped, (3, 11))
    assert len(peers_env.venv_key(a, (3, 11))) == 12


def test_venv_dir_and_python_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPEVISOR_PERF_VENVS", str(tmp_path))
    venv = peers_env.venv_dir("mcp")
    assert venv.parent == tmp_path
    assert venv.name == f"mcp-{peers_env.venv_key(peers_env.pins_for('mcp'))}"
    assert venv == peers_env.venv_dir("mcp")
    assert peers_env.python_for("mcp") is None
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    # an interpreter without the marker is a half-built venv: not used
    assert peers_env.python_for("mcp") is None
    (venv / peers_env.MARKER).write_text("done")
    assert peers_env.python_for("mcp") == venv / "bin" / "python"
    with pytest.raises(ValueError):
        peers_env.venv_dir("not-a-peer")


def test_xdg_cache_home_decides_the_default_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPEVISOR_PERF_VENVS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert peers_env.venv_root() == Path("/somewhere/cache/pipevisor-perf/venvs")


def test_peer_cases_are_grouped_and_left_out_of_quick() -> None:
    from perf.harness import REGISTRY, load_cases

    assert load_cases() == []
    peers = {name: c for name, c in REGISTRY.items() if c.group == "peers"}
    for wanted in ("peers-restart-supervisord", "peers-restart-circus", "peers-restart-pipevisor",
                   "peers-idle50-pipevisor-cpu", "peers-idle50-supervisord-threads",
                   "peers-idle50-circus-rss", "peers-seq-pylsp-jsonrpc",
                   "peers-pipelined-64-mcp-stdio"):
        assert wanted in peers, sorted(peers)
    assert all(not c.in_quick for c in peers.values())
    assert all(c.in_quick for c in REGISTRY.values() if c.group != "peers")


def test_peer_cases_skip_cleanly_without_venvs(tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    env = dict(os.environ, PIPEVISOR_PERF_VENVS=str(tmp_path / "no-venvs"))
    wanted = ["peers-seq-pylsp-jsonrpc", "peers-pipelined-64-mcp-stdio",
              "peers-restart-supervisord", "peers-idle50-circus-threads"]
    proc = subprocess.run(
        [sys.executable, "-m", "perf", "--quick", "--only", ",".join(wanted), "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["leftover_children"] == []
    rows = {row["name"]: row for row in data["cases"]}
    for name in wanted:
        row = rows[name]
        assert row["status"] == "skipped", row
        assert "python -m perf.peers_env install" in row["reason"], row
    assert not (tmp_path / "no-venvs").exists()  # a skip never creates anything


def test_restart_child_announces_its_start(tmp_path: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    binary = tmp_path / "restart_child"
    subprocess.run([cc, "-O2", "-o", str(binary), str(REPO / "perf/peers/restart_child.c")],
                   check=True, timeout=120)
    sock_path = str(tmp_path / "a.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(10)
    before = time.monotonic_ns()
    child = subprocess.Popen([str(binary), "idle", sock_path])
    try:
        pid, stamp = sock.recv(256).split()
        assert int(pid) == child.pid
        assert before <= int(stamp) <= time.monotonic_ns()
        assert child.poll() is None  # idle: still there
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        sock.close()
