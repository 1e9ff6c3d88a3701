"""The runtime directory: ``$XDG_RUNTIME_DIR/pipevisor``, else a private
``/tmp/pipevisor-$UID`` that is refused when it could be someone else's."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipevisor.supervisor import paths
from pipevisor.supervisor.daemon import service as daemon
from pipevisor.supervisor.paths import UnsafeRuntimeDir, private_dir


def test_xdg_runtime_dir_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert paths.runtime_dir() == str(tmp_path / "pipevisor")
    assert paths.default_socket_path() == str(tmp_path / "pipevisor" / "control.sock")


def test_the_tmp_fallback_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    path = paths.runtime_dir()
    assert path == f"/tmp/pipevisor-{os.getuid()}"
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0


def test_a_missing_dir_is_created_0700(tmp_path: Path) -> None:
    path = str(tmp_path / "rt")
    assert private_dir(path) == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert private_dir(path) == path  # and accepted as it is the next time


def test_a_symlink_is_refused_even_to_a_private_dir(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UnsafeRuntimeDir, match="link: refusing the runtime directory: it is "
                                               "a symbolic link"):
        private_dir(str(tmp_path / "link"))


def test_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rt").write_text("")
    with pytest.raises(UnsafeRuntimeDir, match="is not a directory"):
        private_dir(str(tmp_path / "rt"))


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o777, 0o1777])
def test_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "rt"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(UnsafeRuntimeDir, match=f"has mode {mode:04o}.*chmod 700"):
        private_dir(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == mode  # reported, not repaired


def test_someone_elses_dir_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    path = tmp_path / "rt"
    path.mkdir(0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(UnsafeRuntimeDir, match="owned by uid 65534, not by us"):
        private_dir(str(path))


def test_pipevisor_run_refuses_an_unsafe_runtime_dir(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Before anything starts: exit 2 and the reason, as for a bad configuration file."""
    unsafe = tmp_path / "rt"
    unsafe.mkdir()
    unsafe.chmod(0o755)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(paths, "runtime_dir", lambda: private_dir(str(unsafe)))
    config = tmp_path / "p.toml"
    config.write_text("[discovery]\nenabled = false\n")
    assert daemon.run_daemon(str(config), str(tmp_path / "s.sock"), None) == 2
    err = capsys.readouterr().err
    assert f"{unsafe}: refusing the runtime directory: it has mode 0755" in err
    assert not (tmp_path / "s.sock").exists()
