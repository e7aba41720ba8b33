"""A job process's record of what happened: an append-only JSON-lines file in the job directory.

The job process knows no database. It appends one record per line and the service ingests the
file by byte offset, so a record is neither lost nor read twice when either side is killed: a
half-written last line is never read, and a restarted job process cuts it off before appending.
Records that a resumed job writes again (metrics of re-run steps, checkpoints) carry the same
``key`` as before, so the store keeps one of each.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

EVENTS_FILE = "events.jsonl"


class EventLog:
    def __init__(self, path: Path):
        self.path = path
        data = path.read_bytes() if path.exists() else b""
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(path, "r+b") as f:
                f.truncate(len(complete))
        self.count = complete.count(b"\n")

    def write(self, kind: str, key: str | None = None, **fields) -> None:
        record = {"kind": kind, "key": key or f"line-{self.count}", "created_at": int(time.time()), **fields}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.count += 1


def read_new(path: Path, offset: int) -> tuple[list[dict], int]:
    """Complete records after byte ``offset``, and the offset after the last of them."""
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()], offset + len(complete)
