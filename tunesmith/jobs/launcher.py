"""Starts, follows and stops job processes: ``python -m tunesmith.train.run JOB_DIR``, one per job.

A job process knows no database: it reads its order (``spec.json``) from its job directory and
leaves an event log and a result file there (``train/run.py``). A launcher is the worker's only
handle on those processes (the ``Launcher`` protocol); the setting ``launcher`` chooses where they
run: ``local``, children of the service on its machine, or ``ray``, jobs of a Ray cluster that sees
the same job directories (a shared file system). A job of N processes (``nproc_per_node``) is still
one entry point: ``train/run.py`` starts its ranks with torchrun.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from tunesmith.config import Settings
from tunesmith.atomic import write_atomic
from tunesmith.errors import TunesmithError
from tunesmith.train.run import EXIT_STOPPED, NPROC_KEY, SPEC_FILE

LOG_FILE = "process.log"


class Launcher(Protocol):
    def start(self, job_id: str, job_dir: Path, order: dict) -> None: ...

    def running(self) -> list[str]: ...

    def poll(self, job_id: str) -> int | None:
        """None while the job's process runs; then its exit code (negative: the signal that ended it), once."""

    def stop(self, job_id: str) -> None:
        """Ask a job to stop: it finishes its step, writes a checkpoint and exits."""

    def stop_all(self, grace_seconds: float) -> dict[str, int]:
        """Stop every job, wait up to ``grace_seconds`` for their checkpoints, kill what is left;
        the exit code of each."""


class InvalidProcessCount(TunesmithError):
    param = "metadata"
    code = "invalid_metadata"


def nproc_per_node(settings: Settings, metadata: dict[str, str] | None) -> int:
    """The processes a job trains on: its metadata's ``nproc_per_node`` (NPROC_KEY), else the server's setting.

    A metadata key, not a hyperparameter: ``hyperparameters`` stay OpenAI's, and the number of
    processes changes how fast a job trains, never what it trains (``train/distributed.py``)."""
    asked = (metadata or {}).get(NPROC_KEY)
    if asked is None:
        return settings.nproc_per_node
    if not asked.isdigit() or not 1 <= int(asked) <= settings.max_nproc_per_node:
        raise InvalidProcessCount(f"metadata {NPROC_KEY} must be a whole number from 1 to "
                                  f"{settings.max_nproc_per_node} (this server's max_nproc_per_node), got {asked!r}")
    return int(asked)


def make_launcher(settings: Settings) -> Launcher:
    return RayLauncher(settings) if settings.launcher == "ray" else LocalLauncher(settings)


def job_env(settings: Settings) -> dict[str, str]:
    """What a job process needs in its environment besides the server's: its home, and no hub."""
    return {"TUNESMITH_HOME": str(settings.home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


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
        code = self.procs[job_id].poll()
        if code is not None:
            del self.procs[job_id]
        return code

    def stop(self, job_id: str) -> None:
        self.procs[job_id].send_signal(signal.SIGTERM)

    def stop_all(self, grace_seconds: float) -> dict[str, int]:
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
        env = {**os.environ, **job_env(self.settings)}
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


class RayLauncher:
    """Job processes as jobs of a Ray cluster, submitted through Ray's Jobs API.

    The cluster runs the same entry point (``python -m tunesmith.train.run JOB_DIR``, its output
    appended to the job's ``process.log``) on a node with the resources the job asks for, and must
    see the service's home at the same path (a shared file system): the job process reads its order
    and the uploaded files there and leaves its events, checkpoints and result there, which the
    service ingests as it does a local job's. Stopping a job is Ray's ``stop_job``: SIGTERM to the
    job's processes, which finish their step and checkpoint; Ray kills them only after the service's
    ``shutdown_grace_seconds`` (RAY_JOB_STOP_WAIT_TIME_S, read by the job's supervisor).

    Ray jobs do not die with the service: a job still running on the cluster when the service starts
    it again (the service was killed) is stopped first, so two processes never share a job directory.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._client = None
        self.procs: dict[str, str] = {}  # job id → Ray submission id

    @property
    def client(self):
        if self._client is None:  # ray is an optional dependency: imported only when this launcher is used
            try:
                from ray.job_submission import JobSubmissionClient
            except ImportError:
                raise TunesmithError("the ray launcher needs Ray's Jobs API: pip install 'tunesmith[ray]'") from None
            self._client = JobSubmissionClient(self.settings.ray_address)
        return self._client

    def start(self, job_id: str, job_dir: Path, order: dict) -> None:
        write_atomic(job_dir / SPEC_FILE, json.dumps(order).encode())
        self._stop_leftovers(job_id)
        nproc = order.get(NPROC_KEY, 1)
        # exec: the job process itself gets Ray's SIGTERM, not a shell that would die before it checkpoints
        entrypoint = (f"exec {shlex.quote(self.settings.ray_python)} -m tunesmith.train.run {shlex.quote(str(job_dir))}"
                      f" >> {shlex.quote(str(job_dir / LOG_FILE))} 2>&1")
        env = {**{k: v for k, v in os.environ.items() if k.startswith("TUNESMITH_") and k != "TUNESMITH_DATABASE_URL"},
               **job_env(self.settings), "PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": str(int(self.settings.shutdown_grace_seconds))}
        self.procs[job_id] = self.client.submit_job(
            entrypoint=entrypoint, runtime_env={"env_vars": env}, metadata={"tunesmith_job": job_id},
            entrypoint_num_cpus=nproc * self.settings.ray_cpus_per_process,
            entrypoint_num_gpus=nproc * self.settings.ray_gpus_per_process or None)

    def running(self) -> list[str]:
        return list(self.procs)

    def poll(self, job_id: str) -> int | None:
        code = self._code(self.procs[job_id])
        if code is not None:
            del self.procs[job_id]
        return code

    def stop(self, job_id: str) -> None:
        self.client.stop_job(self.procs[job_id])

    def stop_all(self, grace_seconds: float) -> dict[str, int]:
        for submission in self.procs.values():
            self.client.stop_job(submission)
        # Ray kills what has not stopped after the grace period; a little longer for it to say so
        deadline = time.monotonic() + grace_seconds + 10
        codes: dict[str, int] = {}
        while self.procs and time.monotonic() < deadline:
            for job_id, submission in list(self.procs.items()):
                if (code := self._code(submission)) is not None:
                    codes[job_id] = code
                    del self.procs[job_id]
            time.sleep(0.5)
        codes |= dict.fromkeys(self.procs, -signal.SIGKILL)
        self.procs.clear()
        return codes

    def _code(self, submission: str) -> int | None:
        """The exit code of a Ray job's entry point; None while it is pending or running."""
        from ray.job_submission import JobStatus

        info = self.client.get_job_info(submission)
        if not info.status.is_terminal():
            return None
        if info.driver_exit_code is not None:
            return info.driver_exit_code
        # stopped through the Jobs API: the process checkpointed and said so in its result file
        return {JobStatus.SUCCEEDED: 0, JobStatus.STOPPED: EXIT_STOPPED}.get(info.status, 1)

    def _stop_leftovers(self, job_id: str) -> None:
        leftovers = [j.submission_id for j in self.client.list_jobs()
                     if (j.metadata or {}).get("tunesmith_job") == job_id and not j.status.is_terminal()]
        for submission in leftovers:
            self.client.stop_job(submission)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 10
        while leftovers and time.monotonic() < deadline:
            leftovers = [s for s in leftovers if not self.client.get_job_status(s).is_terminal()]
            time.sleep(0.5)


def exit_reason(code: int) -> str:
    """What an exit code says about how a job process ended, in words a user can act on."""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        likely = (" — most likely the kernel's out-of-memory killer, or someone ran kill -9"
                  if -code == signal.SIGKILL else "")
        return f"the job process was killed by {name}{likely}"
    return f"the job process exited with code {code}"
