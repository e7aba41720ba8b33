"""A throwaway PostgreSQL server for the tests, from the binaries of Debian's ``postgresql`` package.

One server per test session: initdb into a temporary directory, started on a free port of
127.0.0.1 (its unix socket in that directory too), one new database per test that asks for one;
stopped and deleted when the session ends. PostgreSQL refuses to run as root, so as root (CI) the
server runs as the package's ``postgres`` user. Where there are no binaries the tests that need
them skip and say why; the others still run.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

BIN_GLOB = "/usr/lib/postgresql/*/bin"  # Debian installs each major version in a directory of its own
USER = "postgres"


def find_bin() -> Path | None:
    found = sorted(glob.glob(f"{BIN_GLOB}/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="tunesmith-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_user = os.geteuid() == 0
        if self.as_user:
            user = pwd.getpwnam(USER)  # KeyError: no such user
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_user:
            cmd = ["runuser", "-u", USER, "--", *cmd]
        # cwd: the postgres user may not be allowed into the directory the tests run from.
        result = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.root / "server.log"
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}"
                               + (log.read_text() if log.exists() else ""))

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "--no-sync", "-E", "UTF8",
                  "--locale=C")
        # Durability is of no use to a throwaway server; without it each test's DDL is much faster.
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():  # else it never started
                self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.data))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres():
    """The session's PostgreSQL server; the test skips where PostgreSQL or its driver is missing."""
    bin_dir = find_bin()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL not installed: no {BIN_GLOB}/pg_ctl (Debian package `postgresql`)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            pytest.skip(f"PostgreSQL will not run as root and there is no `{USER}` user to run it as")
    server = Server(bin_dir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()
