"""``[daemon] plugin_log_dir``: each plugin's own lines in a file of its own, rotated,
in a folder nobody else can write; a real daemon end to end, and the handler alone."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pipevisor.supervisor.client import Client
from pipevisor.supervisor.daemon import plugin_log_files
from pipevisor.supervisor.daemon.config_file import DaemonSettings
from pipevisor.supervisor.paths import UnsafeRuntimeDir
from tests.daemon.daemon_helpers import fake_table, running_daemon

BASE = "[discovery]\nenabled = false\n\n"


def _record(logger: str, message: str) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.INFO, __file__, 1, message, None, None)


def test_lines_go_to_their_plugins_file_and_nothing_else_does(tmp_path: Path) -> None:
    folder = tmp_path / "plugin-logs"
    handler = plugin_log_files.PluginLogFiles(str(folder), 1 << 20, 2)
    try:
        handler.handle(_record("pipevisor.plugin.alpha", "hello from alpha"))
        handler.handle(_record("pipevisor.plugin.beta", "evil\n2000-01-01 forged line\x1b[2J"))
        handler.handle(_record("pipevisor.runner", "the daemon's own line"))
    finally:
        handler.close()
    assert oct(folder.stat().st_mode & 0o777) == "0o700"  # created private
    assert sorted(p.name for p in folder.iterdir()) == ["alpha.log", "beta.log"]
    assert (folder / "alpha.log").read_text().endswith("INFO    hello from alpha\n")
    beta = (folder / "beta.log").read_text()
    assert beta.count("\n") == 1 and "\x1b" not in beta  # one record, one escaped line


def test_files_rotate_at_the_size_and_keep_the_backups(tmp_path: Path) -> None:
    handler = plugin_log_files.PluginLogFiles(str(tmp_path / "logs"), 4096, 2)
    try:
        for i in range(400):
            handler.handle(_record("pipevisor.plugin.chatty", f"line {i:04d} " + "x" * 40))
    finally:
        handler.close()
    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert names == ["chatty.log", "chatty.log.1", "chatty.log.2"]
    assert all(p.stat().st_size <= 4096 for p in (tmp_path / "logs").iterdir())
    assert "line 0399" in (tmp_path / "logs" / "chatty.log").read_text()


def test_open_files_are_bounded(tmp_path: Path) -> None:
    handler = plugin_log_files.PluginLogFiles(str(tmp_path / "logs"), 1 << 20, 1, max_open=4)
    try:
        for i in range(20):
            handler.handle(_record(f"pipevisor.plugin.p{i}", "hi"))
        assert len(handler._files) == 4
        handler.handle(_record("pipevisor.plugin.p0", "again"))  # reopened, appended
    finally:
        handler.close()
    assert (tmp_path / "logs" / "p0.log").read_text().count("\n") == 2


def test_a_folder_others_can_write_or_a_symlink_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafeRuntimeDir, match="plugin_log_dir"):
        plugin_log_files.PluginLogFiles(str(shared), 1 << 20, 1)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafeRuntimeDir):
        plugin_log_files.PluginLogFiles(str(link), 1 << 20, 1)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="plugin_log_max_bytes"):
        DaemonSettings(plugin_log_max_bytes=10)
    with pytest.raises(ValueError, match="plugin_log_backups at least 1"):
        DaemonSettings(plugin_log_backups=0)  # no backups: logging would never rotate


def test_the_daemon_writes_each_plugins_lines_to_its_file(sock_dir: str) -> None:
    logs = os.path.join(sock_dir, "plugin-logs")
    config = (f'[daemon]\nplugin_log_dir = "{logs}"\nplugin_log_max_bytes = "64KiB"\n\n'
              + BASE + fake_table("alpha") + fake_table("beta"))
    with running_daemon(sock_dir, config) as d, Client(d.socket) as client:
        assert client.call("alpha", "stderr_flood", {"lines": 100}, timeout=10) == "flooded"
        with pytest.raises(Exception):  # noqa: B017 - any answer: it crashed on purpose
            client.call("beta", "crash", {"code": 3}, timeout=10)
        assert d.stop() == 0
    alpha = Path(logs, "alpha.log").read_text().splitlines()
    assert sum(1 for line in alpha if line.endswith("x" * 100)) == 100
    assert "crashing on purpose with code 3" in Path(logs, "beta.log").read_text()


def test_a_refused_folder_stops_the_daemon_with_exit_2(sock_dir: str) -> None:
    shared = os.path.join(sock_dir, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    config = f'[daemon]\nplugin_log_dir = "{shared}"\n\n' + BASE + fake_table("alpha")
    with running_daemon(sock_dir, config, wait_ready=False) as d:
        assert d.proc.wait(30) == 2
        assert "plugin_log_dir" in d.stderr()
