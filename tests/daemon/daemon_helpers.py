"""Run the real ``pipevisor run`` in a process of its own, watched through a
NOTIFY_SOCKET the test binds (READY=1 tells when it is up, no sleeping)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE = str(ROOT / "tests" / "plugins" / "fake_plugin.py")
ECHO = str(ROOT / "examples" / "python-stdlib" / "pipevisor-echo")


class NotifyListener:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.seen: list[dict[str, str]] = []

    def next(self, timeout: float) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536).decode()
        msg = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        self.seen.append(msg)
        return msg

    def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        """The next message carrying ``key`` (earlier ones are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {key}= notification within {timeout}s: {self.seen}")
            msg = self.next(left)
            if key in msg:
                return msg

    def close(self) -> None:
        self.sock.close()


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: str
    config: str
    notify: NotifyListener
    stderr_path: str

    def stderr(self) -> str:
        return Path(self.stderr_path).read_text()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def write_config(path: str, text: str) -> None:
    """Replace the file in one step, as an editor saving it would."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def fake_table(name: str, *flags: str, extra: str = "") -> str:
    command = ", ".join(f'"{a}"' for a in (sys.executable, FAKE, *flags))
    return f'[plugins.{name}]\ncommand = [{command}]\n{extra}\n'


@contextmanager
def running_daemon(folder: str, config_text: str | None, *args: str,
                   env: Mapping[str, str] | None = None,
                   wait_ready: bool = True) -> Iterator[Daemon]:
    sock = os.path.join(folder, "control.sock")
    cfg = os.path.join(folder, "pipevisor.toml")
    if config_text is not None:
        write_config(cfg, config_text)
    notify = NotifyListener(os.path.join(folder, "notify.sock"))
    err_path = os.path.join(folder, "stderr.log")
    full_env = {**os.environ, "NOTIFY_SOCKET": notify.path, "PIPEVISOR_SOCKET": sock,
                "XDG_RUNTIME_DIR": folder}
    full_env.pop("JOURNAL_STREAM", None)
    full_env.update(env or {})
    command = [sys.executable, "-m", "pipevisor.supervisor", "run",
               *(["--config", cfg] if config_text is not None else []), *args]
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(command, stderr=err, stdout=subprocess.DEVNULL, env=full_env,
                                cwd=folder)
    daemon = Daemon(proc, sock, cfg, notify, err_path)
    try:
        if wait_ready:
            try:
                daemon.notify.wait_for("READY", 60)
            except TimeoutError:
                raise AssertionError(f"daemon not ready; stderr:\n{daemon.stderr()}") from None
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        notify.close()
