"""One ``tunesmith serve`` per home: two would both run the queue and start the same jobs twice.

The lock is an advisory ``flock`` on a file in the home, held for the server's life and released
by the kernel when the process ends however it ends (kill -9 included), so a stale lock can't
outlive its server. The file holds the pid of its holder, for the message a second server prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from tunesmith.errors import TunesmithError

LOCK_FILE = "serve.lock"


class HomeInUse(TunesmithError):
    pass


def lock_home(home: Path) -> IO[str]:
    """Take the home's lock or raise ``HomeInUse`` naming the holder; keep the returned file open."""
    home.mkdir(parents=True, exist_ok=True)
    handle = open(home / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise HomeInUse(f"another tunesmith serve (pid {holder}) is already running on {home}; stop it first, "
                        "or give this one another home (TUNESMITH_HOME)") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
