"""A real ``tunesmith serve`` process on 127.0.0.1 for the API tests, in its own process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_home(tmp: Path) -> Path:
    """A fresh tunesmith home that shares the session's converted base models (no re-conversion)."""
    home = tmp / "home"
    home.mkdir(parents=True)
    (home / "base").symlink_to(Path(os.environ["TUNESMITH_HOME"]) / "base")
    return home


class LiveServer:
    def __init__(self, home: Path, database_url: str | None = None):
        self.home = home
        self.database_url = database_url
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "TUNESMITH_HOME": str(self.home), "HF_HUB_OFFLINE": "1"}
        return {**env, "TUNESMITH_DATABASE_URL": self.database_url} if self.database_url else env

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "tunesmith.cli", *args], env=self.env, capture_output=True,
                              text=True, check=True)
        return done.stdout.strip()

    def start(self, timeout: float = 60) -> "LiveServer":
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", "--port", str(self.port)],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.home / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/docs", timeout=1)
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("server did not start")

    def kill_group(self) -> None:
        """kill -9 of the server's whole process group: the server, its worker and its job processes."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill_group()
