"""An export directory as one download: a tar archive streamed file by file, never assembled in memory or on disk.

A tar is a header block per file, the file's bytes padded to 512, and two zero blocks at the end,
so its size is known before the first byte is sent (a Content-Length, and a progress bar in the
client) and each file can be read in chunks as the client takes them.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

BLOCK = 512
CHUNK = 1 << 20


def tar_stream(root: Path, folder: str) -> tuple[int, Iterator[bytes]]:
    """(size in bytes, the bytes) of a tar of every file under ``root``, inside the folder ``folder``."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        info = tarfile.TarInfo(f"{folder}/{path.relative_to(root).as_posix()}")
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        entries.append((info.tobuf(tarfile.PAX_FORMAT), path, info.size))
    size = sum(len(header) + _padded(n) for header, _, n in entries) + 2 * BLOCK

    def body() -> Iterator[bytes]:
        for header, path, n in entries:
            yield header
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
            yield b"\0" * (_padded(n) - n)
        yield b"\0" * (2 * BLOCK)

    return size, body()


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK
