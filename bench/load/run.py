"""`make load`: Locust against a live `tunesmith serve` while one training job runs.

    python bench/load/run.py                                 # 50 users for 60 s
    python bench/load/run.py --users 10 --duration 15        # a short run

In a throwaway tunesmith home (sharing the converted base models, if any, so nothing is converted
again) it creates an API key, starts the server on 127.0.0.1 in a process group of its own, uploads a
training file and starts one fine-tuning job; once the job is running, Locust (bench/load/locustfile.py,
headless) runs the users for the duration; then it waits for the job to end and stops the server.

It prints and writes as JSON (--json) the CPU, per endpoint the requests, failures, 5xx, 429 and median,
p95 and p99 latency, the p99 of every non-chat request together against the 200 ms goal, how many
chat requests were answered (200) or turned away (429) and how the job ended. It exits 1 on any 5xx,
any failed non-chat request, or a job that did not succeed or did not outlast the load; the latency
goal is reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from report import problems, render, summarise

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
MODEL = "smollm2-135m-instruct"
FINISHED = ("succeeded", "failed", "cancelled")
STOP_TIMEOUT = 30  # seconds Locust lets users finish the request in flight once the duration is up
JOB_TIMEOUT = 900  # seconds a job may take to start, or to finish after the load


def machine() -> dict:
    """The CPU's model name and the CPUs this process may use (which the server's threads default to)."""
    model = platform.processor() or "unknown"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cpus": len(os.sched_getaffinity(0))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_home(tmp: Path) -> Path:
    """A fresh home whose base/ is the user's converted base-model cache, when there is one."""
    sys.path.insert(0, str(ROOT))
    from tunesmith.config import get_settings

    home = tmp / "home"
    home.mkdir()
    cache = get_settings().base_cache_dir
    if cache.is_dir():
        (home / "base").symlink_to(cache)
    return home


class Server:
    """`tunesmith serve` on 127.0.0.1 in its own process group, so stopping it stops its job processes too."""

    def __init__(self, home: Path, source: Path = ROOT, env: dict[str, str] | None = None):
        self.home, self.port, self.source = home, free_port(), source
        # This checkout's tunesmith (or ``source``'s), whatever an editable install in the venv points at
        # (run from that folder too: ``python -m`` puts the working directory first on the path).
        self.env = {**os.environ, "TUNESMITH_HOME": str(home), "HF_HUB_OFFLINE": "1", **(env or {}),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))}
        self.log = home / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "tunesmith.cli", *args], env=self.env, cwd=self.source,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"tunesmith {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tunesmith.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, cwd=self.source, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited at start:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(f"{self.url}/docs", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"the server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Ctrl-C (running jobs checkpoint and pause), then kill -9 of whatever is left in the group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"


def training_rows(n: int) -> str:
    colours = ["red", "blue", "green", "amber", "violet", "teal", "ochre", "ivory", "coral", "slate"]
    rows = [{"messages": [{"role": "system", "content": "You are terse."},
                          {"role": "user", "content": f"Name a colour, number {i}."},
                          {"role": "assistant", "content": f"Colour {i}: {colours[i % 10]}."}]} for i in range(n)]
    return "".join(json.dumps(row) + "\n" for row in rows)


def wait_for_job(client, job_id: str, until, timeout: float = JOB_TIMEOUT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if until(job):
            return job
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still {job.status} after {timeout:.0f} s")


def run_locust(args, server: Server, key: str, job_id: str, workdir: Path) -> dict:
    """Locust headless for the duration, in a process group of its own; its samples and CPU peak."""
    samples = workdir / "samples.json"
    log = workdir / "locust.log"
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.duration}s",
               "--stop-timeout", str(STOP_TIMEOUT), "--host", server.url, "--loglevel", "WARNING",
               "--exit-code-on-error", "0",  # failures are judged from the samples; non-zero means Locust broke
               "--job-id", job_id, "--samples", str(samples)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=workdir, env={**os.environ, "LOCUST_API_KEY": key}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        returncode = proc.wait(args.duration + STOP_TIMEOUT + 60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if returncode or not samples.exists():
        raise RuntimeError(f"locust failed (exit {returncode}):\n{log.read_text(errors='replace')[-3000:]}")
    return json.loads(samples.read_text())


def measure(args, workdir: Path) -> dict:
    import openai

    server = Server(new_home(workdir))
    key = server.cli("keys", "create", "--project", "load")
    server.start()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        data = workdir / "train.jsonl"
        data.write_text(training_rows(args.train_examples))
        upload = client.files.create(file=data.open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload.id, suffix="load", seed=0,
                                             hyperparameters={"n_epochs": args.epochs, "batch_size": 4})
        job = wait_for_job(client, job.id, lambda j: j.status in ("running", *FINISHED))
        if job.status != "running":
            raise RuntimeError(f"the training job ended {job.status} before the load began: {job.error}")
        print(f"job {job.id} running; {args.users} users for {args.duration} s…", file=sys.stderr)
        began = time.time()
        measured = run_locust(args, server, key, job.id, workdir)
        load_ended = time.time()
        print("load done; waiting for the training job to end…", file=sys.stderr)
        job = wait_for_job(client, job.id, lambda j: j.status in FINISHED)
        summary = summarise([tuple(s) for s in measured["samples"]])
        if summary["server_errors"]:
            print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
    finally:
        server.stop()
    # finished_at is in whole seconds: a job that ended in the load's last second counts as outlasting it
    after = None if job.finished_at is None else job.finished_at - int(load_ended)
    return {"summary": summary, "load_seconds": round(load_ended - began, 1),
            "locust_peak_cpu_percent": measured["locust_peak_cpu_percent"],
            "job": {"id": job.id, "status": job.status, "error": job.error and job.error.message,
                    "trained_tokens": job.trained_tokens, "examples": args.train_examples, "epochs": args.epochs,
                    "ended_s_after_load": after, "outlasted_load": after is not None and after >= 0}}


def _terminated(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def stop_servers_on_sigterm() -> None:
    """SIGTERM (from `timeout`, CI, a closed terminal) as an exception, so ``finally`` still stops the
    server: it runs in a session of its own, and would outlive this process and keep training."""
    signal.signal(signal.SIGTERM, _terminated)


def main() -> None:
    stop_servers_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50, help="simulated users (4 API clients to 1 chat client)")
    parser.add_argument("--duration", type=int, default=60, help="seconds of load")
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per second")
    parser.add_argument("--train-examples", type=int, help="training lines of the job (default: enough to outlast "
                                                          "the load on 2 CPU cores)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the training job")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    # 2 × duration examples over 2 epochs is `duration` steps of 4 short examples, each ~1 s on 2 free
    # CPU cores and longer under load: the job trains through the load and ends not long after.
    args.train_examples = args.train_examples or max(40, 2 * args.duration)

    info = machine()
    with tempfile.TemporaryDirectory(prefix="tunesmith-load-") as tmp:
        result = measure(args, Path(tmp))
    summary, job = result["summary"], result["job"]
    failed = problems(summary, job["status"], job["outlasted_load"])

    print(f"CPU: {info['cpu']}, {info['cpus']} CPUs; Locust on the same machine (its peak: "
          f"{result['locust_peak_cpu_percent']:.0f}% of one CPU)")
    print(f"{args.users} users for {args.duration} s (load ran {result['load_seconds']} s): "
          f"{summary['requests']} requests, {summary['server_errors']} 5xx")
    print(render(summary))
    after = job["ended_s_after_load"]
    epochs = f"{job['epochs']} epoch" + ("s" if job["epochs"] != 1 else "")
    print(f"training job {job['id']} ({job['examples']} examples × {epochs}): {job['status']}"
          + (f" ({job['error']})" if job["error"] else "")
          + ("" if after is None else f", {abs(after)} s {'after' if after >= 0 else 'before'} the load ended"))
    print("PASS" if not failed else "FAIL: " + "; ".join(failed))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "users": args.users, "duration_s": args.duration,
                                         "spawn_rate": args.spawn_rate, **result, "problems": failed}, indent=2) + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
