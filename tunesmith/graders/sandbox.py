"""A python grader's source, run in a child process (sandbox_child.py) that is reused from sample to
sample and replaced when it hangs or dies.

The parent enforces each sample's wall-clock timeout: it waits on the child's pipes with a deadline,
never blocking on a read or a write, and kills the child when the deadline passes. What the child
sends is untrusted: a reply is one bounded JSON line whose score is checked again here.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = Path(__file__).with_name("sandbox_child.py")
START_S = 10.0  # Python's start and the standard library's imports on a busy machine, before the source runs
MAX_REPLY = 64 * 1024  # bytes of one reply line: a score, or an error message the child cut short
RUNTIME, SERVER = "python_grader_runtime_error", "python_grader_server_error"  # OpenAI's error flags


class _Stopped(Exception):
    """The child timed out, died or broke the protocol; it has been killed."""


class Sandbox:
    """One python grader's child process. Not thread-safe: one sample at a time."""

    def __init__(self, source: str, timeout_s: float = 2.0, memory_mb: int = 512):
        self.source, self.timeout_s, self.memory_mb = source, timeout_s, memory_mb
        self.cpu_s = math.ceil(timeout_s) + 1  # the CPU limit backs the timeout up if this process is gone
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self._dir: str | None = None
        # Set when the source itself fails (an error or a hang at its top level): every sample gets it.
        self._broken: tuple[str, str] | None = None

    def grade(self, sample: dict, item: dict) -> tuple[float | None, str | None, str | None]:
        """(score, None, None) or (None, error, the OpenAI error flag it sets)."""
        try:
            request = json.dumps({"sample": sample, "item": item})
        except (TypeError, ValueError) as exc:
            return None, f"the item is not JSON: {exc}", "other_error"
        if self._broken:
            return None, *self._broken
        try:
            if self._proc is None:
                self._start()
                if self._broken:
                    return None, *self._broken
            reply = self._exchange(request, self.timeout_s, "")
        except _Stopped as stopped:
            return None, str(stopped), RUNTIME
        except OSError as exc:  # no process could be started
            self._kill()
            return None, f"could not start the python grader's process: {exc}", SERVER
        score = reply.get("score")
        if type(score) in (int, float) and math.isfinite(score):
            return float(score), None, None
        return None, str(reply.get("error") or "the grader sent no score")[:MAX_REPLY], RUNTIME

    def _start(self) -> None:
        self._dir = self._dir or tempfile.mkdtemp(prefix="tunesmith-grader-")
        self._proc = subprocess.Popen(
            [sys.executable, "-I", str(CHILD), str(self.memory_mb), str(self.cpu_s)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=self._dir, env={}, start_new_session=True)
        os.set_blocking(self._proc.stdin.fileno(), False)
        self._buffer = b""
        try:
            reply = self._exchange(json.dumps({"source": self.source}), START_S + self.timeout_s,
                                   " while loading its source")
        except _Stopped as stopped:
            self._broken = (str(stopped), RUNTIME)
            return
        if "error" in reply:
            self._kill()
            self._broken = (f"the grader's source failed: {str(reply['error'])[:MAX_REPLY]}", RUNTIME)

    def _exchange(self, request: str, seconds: float, when: str) -> dict:
        """Sends one line and reads one back within ``seconds``; else kills the child and raises _Stopped."""
        proc, deadline = self._proc, time.monotonic() + seconds
        timed_out = f"timed out after {seconds:g} s{when}"
        data = (request + "\n").encode()
        try:
            while data:
                self._wait(proc.stdin.fileno(), selectors.EVENT_WRITE, deadline, timed_out)
                try:
                    data = data[os.write(proc.stdin.fileno(), data):]
                except BlockingIOError:
                    continue
            while b"\n" not in self._buffer:
                if len(self._buffer) > MAX_REPLY:
                    raise _Stopped("the grader's process sent a reply too long to be a score")
                self._wait(proc.stdout.fileno(), selectors.EVENT_READ, deadline, timed_out)
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise _Stopped(self._death(when))
                self._buffer += chunk
        except BrokenPipeError:
            raise self._stop(self._death(when)) from None
        except _Stopped as stopped:
            raise self._stop(str(stopped)) from None
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise self._stop("the grader's process sent a reply that is not a JSON object")
        return reply

    @staticmethod
    def _wait(fd: int, event: int, deadline: float, timed_out: str) -> None:
        with selectors.DefaultSelector() as selector:  # poll or epoll: no limit on the fd's number, unlike select
            selector.register(fd, event)
            while not selector.select(max(0.0, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise _Stopped(timed_out)

    def _death(self, when: str) -> str:
        try:
            code = self._proc.wait(1)
        except subprocess.TimeoutExpired:
            return f"the grader's process stopped answering{when}"
        if code == -signal.SIGXCPU:
            return f"used more than {self.cpu_s} s of CPU time{when}"
        if code < 0:
            return (f"grader process died{when} (signal {signal.Signals(-code).name}); it may have exceeded "
                    f"{self.memory_mb} MB memory")
        return f"grader process died{when} (exit code {code})"

    def _stop(self, message: str) -> _Stopped:
        self._kill()
        return _Stopped(message)

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc.stdin.close()
            self._proc.stdout.close()
            self._proc = None

    def close(self) -> None:
        self._kill()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
