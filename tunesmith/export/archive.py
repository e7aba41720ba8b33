"""An export as one download: its only file as it is (a GGUF), or a tar of its folder streamed file by file,
never assembled in memory or on disk.

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


def download(folder: Path, files: list[Path]) -> tuple[int, Iterator[bytes], str, str]:
    """(size, bytes, media type, file name) of the export in ``folder`` holding ``files``."""
    if len(files) == 1:
        path = folder / files[0]
        return path.stat().st_size, read_chunks(path), "application/octet-stream", path.name
    size, chunks = tar_stream(folder, folder.name)
    return size, chunks, "application/x-tar", f"{folder.name}.tar"


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
            yield from read_chunks(path)
            yield b"\0" * (_padded(n) - n)
        yield b"\0" * (2 * BLOCK)

    return size, body()


def read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK
