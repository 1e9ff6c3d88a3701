"""The systemd unit works as shipped (#15): `systemd-analyze verify` finds nothing in
it, and the daemon runs the way the unit runs it, as far as a machine without systemd
as PID 1 allows: the shipped config, no HOME, systemd's PATH, XDG_RUNTIME_DIR=/run,
and a file system that is read-only except the unit's RuntimeDirectory= and
StateDirectory= (a private mount namespace: the remount is undone when it ends)."""

from __future__ import annotations

import configparser
import grp
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipevisor.supervisor.client import Client
from tests.daemon.daemon_helpers import ECHO, ROOT, NotifyListener

UNIT = ROOT / "examples" / "systemd" / "pipevisor.service"
CONFIG = ROOT / "examples" / "systemd" / "pipevisor.toml"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_and_config_agree() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].endswith("run --config /etc/pipevisor/pipevisor.toml")
    assert service["RuntimeDirectory"] == "pipevisor"
    assert service["StateDirectory"] == "pipevisor"
    assert service["Environment"] == "XDG_RUNTIME_DIR=/run"
    text = CONFIG.read_text()
    assert 'socket = "/run/pipevisor/control.sock"' in text
    assert 'state_dir = "/var/lib/pipevisor"' in text
    group = next(line.split('"')[1] for line in text.splitlines()
                 if line.startswith("socket_group"))
    assert service["SupplementaryGroups"] == group  # the daemon may give it the socket


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd)")
    copy = tmp_path / "pipevisor.service"  # ExecStart= must name a file that exists here
    copy.write_text(UNIT.read_text().replace(
        "ExecStart=/usr/local/bin/pipevisor", f"ExecStart={sys.executable} -m pipevisor"))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=60, check=False)
    about_it = [line for line in (done.stdout + done.stderr).splitlines()
                if copy.name in line]
    assert done.returncode == 0 and not about_it, done.stdout + done.stderr


@pytest.fixture
def as_the_unit_runs(tmp_path: Path) -> Iterator[tuple[list[str], dict[str, str], Path]]:
    """(argv, env, runtime folder) for `pipevisor run` as pipevisor.service starts it."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a read-only file system in a private mount namespace needs root")
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespaces here: {probe.stderr.decode().strip()}")
    run, state, plugins = tmp_path / "run", tmp_path / "state", tmp_path / "plugins"
    run.mkdir(mode=0o755)
    (run / "pipevisor").mkdir(mode=0o711)   # RuntimeDirectory=, RuntimeDirectoryMode=
    state.mkdir(mode=0o700)                  # StateDirectory=, StateDirectoryMode=
    plugins.mkdir(mode=0o755)
    shutil.copy(ECHO, plugins / "pipevisor-echo")
    group = grp.getgrgid(os.getegid()).gr_name  # pipevisor-admin does not exist here
    config = tmp_path / "pipevisor.toml"
    config.write_text(CONFIG.read_text()
                      .replace("/run/pipevisor", str(run / "pipevisor"))
                      .replace("/var/lib/pipevisor", str(state))
                      .replace("/usr/local/lib/pipevisor/plugins", str(plugins))
                      .replace('"pipevisor-admin"', f'"{group}"'))
    env = {"PATH": SYSTEMD_PATH, "XDG_RUNTIME_DIR": str(run), "LANG": "C.UTF-8"}
    if "PIPEVISOR_SHIM" in os.environ:  # --no-shim runs
        env["PIPEVISOR_SHIM"] = os.environ["PIPEVISOR_SHIM"]
    # the probe file outside the two folders must not be writable, or nothing is tested
    read_only = ('mount --bind "$1" "$1" && mount --bind "$2" "$2" && '
                 'mount -o remount,ro,bind / && { ! touch "$3" 2>/dev/null || exit 99; } && '
                 'shift 3 && exec "$@"')
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", read_only, "sh",
            str(run), str(state), str(tmp_path / "outside"), sys.executable, "-m",
            "pipevisor.supervisor", "run", "--config", str(config)]
    yield argv, env, run / "pipevisor"


def test_the_daemon_runs_as_the_unit_runs_it(
        as_the_unit_runs: tuple[list[str], dict[str, str], Path], tmp_path: Path) -> None:
    argv, env, runtime = as_the_unit_runs
    notify = NotifyListener(str(tmp_path / "notify.sock"))
    err = tmp_path / "stderr.log"
    with open(err, "wb") as log:
        proc = subprocess.Popen(argv, env={**env, "NOTIFY_SOCKET": notify.path},
                                stdout=subprocess.DEVNULL, stderr=log, cwd="/")
    try:
        try:
            notify.wait_for("READY", 60)
        except TimeoutError:
            raise AssertionError(f"not ready; stderr:\n{err.read_text()}") from None
        socket_path = str(runtime / "control.sock")
        st = os.stat(socket_path)
        assert st.st_mode & 0o777 == 0o660  # socket_group
        with Client(socket_path) as c:
            assert c.call("echo", "echo", {"text": "unit"}, timeout=10) == {"text": "unit"}
            assert c.status()["plugins"][0]["state"] == "ready"
        assert (tmp_path / "state" / "pipevisor.lock").exists()
        text = err.read_text()
        assert "Read-only file system" not in text and "Traceback" not in text, text
        assert not (tmp_path / "outside").exists()
    finally:
        proc.terminate()
        proc.wait(30)
        notify.close()
    assert proc.returncode == 0, err.read_text()
