"""Files that survive a crash at any instant: written whole or not at all.

A reader (the worker after a restart, a resumed job) sees either the old file or the new one,
never a torn one: the data goes to a temporary file, is fsynced, renamed over the target, and the
directory is fsynced so that the rename itself is on disk.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file below ``root``, then every folder, on disk (before ``root`` is renamed into place)."""
    for path in sorted(root.rglob("*"), key=lambda p: p.is_dir()):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        else:
            fsync_dir(path)
    fsync_dir(root)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
