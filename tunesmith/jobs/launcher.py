"""Starts, follows and stops job processes: ``python -m tunesmith.train.run JOB_DIR``, one per job.

A job process knows no database: it reads its order (``spec.json``) from its job directory and
leaves an event log and a result file there (``train/run.py``). This class is the worker's only
handle on those processes, so another way to run them (torchrun, a cluster) is another class with
the same four methods.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tunesmith.config import Settings
from tunesmith.atomic import write_atomic
from tunesmith.train.run import SPEC_FILE

LOG_FILE = "process.log"


class LocalLauncher:
    """Job processes on this machine, children of the service (they die with it: see run.py)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, job_id: str, job_dir: Path, order: dict) -> None:
        write_atomic(job_dir / SPEC_FILE, json.dumps(order).encode())
        with open(job_dir / LOG_FILE, "ab") as log:
            self.procs[job_id] = subprocess.Popen([sys.executable, "-m", "tunesmith.train.run", str(job_dir)],
                                                  stdout=log, stderr=subprocess.STDOUT, env=self._env())

    def running(self) -> list[str]:
        return list(self.procs)

    def poll(self, job_id: str) -> int | None:
        """None while the process runs; then its exit code (negative: the signal that ended it), once."""
        code = self.procs[job_id].poll()
        if code is not None:
            del self.procs[job_id]
        return code

    def stop(self, job_id: str) -> None:
        """Ask a job to stop: it finishes its step, writes a checkpoint and exits."""
        self.procs[job_id].send_signal(signal.SIGTERM)

    def stop_all(self, grace_seconds: float) -> dict[str, int]:
        """Stop every job, wait up to ``grace_seconds`` for their checkpoints, kill what is left;
        the exit code of each."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        codes = {}
        for job_id, proc in list(self.procs.items()):
            try:
                codes[job_id] = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[job_id] = proc.wait()
        self.procs.clear()
        return codes

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, TUNESMITH_HOME=str(self.settings.home), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def exit_reason(code: int) -> str:
    """What an exit code says about how a job process ended, in words a user can act on."""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        likely = (" — most likely the kernel's out-of-memory killer, or someone ran kill -9"
                  if -code == signal.SIGKILL else "")
        return f"the job process was killed by {name}{likely}"
    return f"the job process exited with code {code}"
