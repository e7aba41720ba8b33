"""A real ``tunesmith serve`` process on 127.0.0.1 for the API tests, in its own process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn


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
    def __init__(self, home: Path, database_url: str | None = None, keyless: bool = True):
        self.home = home
        self.database_url = database_url
        self.keyless = keyless  # `serve --keyless`: requests need no key
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
        keyless = ["--keyless"] if self.keyless else []
        self.proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", "--port", str(self.port),
                                      *keyless], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
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


@contextmanager
def serving(app) -> Iterator[tuple[str, int]]:
    """``app`` served by uvicorn on a thread of this process, at 127.0.0.1 and a free port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        yield sock.getsockname()
    finally:
        srv.should_exit = True
        thread.join(30)


@contextmanager
def worker_less(tmp: Path, path: str = "/v1", timeout: float = 30) -> Iterator:
    """A client of project ``alpha`` (with its key) on an in-process server without a worker: jobs
    are created and stay waiting, nothing loads a model."""
    import httpx2 as httpx

    from tunesmith.api.app import create_app
    from tunesmith.config import Settings
    from tunesmith.jobs.store import Store

    settings = Settings(home=new_home(tmp))
    store = Store(settings)
    key = store.create_key("alpha")[1]
    try:
        with serving(create_app(settings, run_worker=False)) as (host, port):
            yield httpx.Client(base_url=f"http://{host}:{port}{path}", headers={"Authorization": f"Bearer {key}"},
                               timeout=timeout)
    finally:
        store.engine.dispose()
