"""The job worker: validates new jobs, starts one process per job, follows it, recovers after a crash.

It runs as a thread of ``tunesmith serve`` and is the only writer of a job's progress to the store.
Job processes never touch the database: each writes an event log and, when it ends, a result file
into its job directory (``train/events.py``, ``train/run.py``); the worker ingests both. So a
``kill -9`` of the whole service loses nothing that was written: on restart, jobs that were running
are ingested to the last complete record and queued again, and their process resumes from the
newest checkpoint that holds trainer state.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import func, select, update

from tunesmith.config import Settings
from tunesmith.data.validate import DEFAULT_MAX_LENGTH, validate_file
from tunesmith.errors import TunesmithError
from tunesmith.jobs import store as st
from tunesmith.jobs.store import Checkpoint, Event, File, Job, Model, Store
from tunesmith.models import finetuned
from tunesmith.models.loading import ensure_cached, load_renderer
from tunesmith.train import hyper
from tunesmith.train.events import EVENTS_FILE, read_new
from tunesmith.train.losses import DPO_METRICS
from tunesmith.train.run import RESULT_FILE, SPEC_FILE

# An API job's method type → the training method of its job process (API jobs train LoRA adapters).
TRAIN_METHOD = {"supervised": "lora", "dpo": "dpo"}
GUARD_SETTINGS = ("early_stopping", "patience", "eval_steps")  # passed to the job as they were asked
# The result file's columns → the metric each holds: OpenAI's for supervised jobs, TRL's names for DPO.
RESULT_COLUMNS = {
    "supervised": {"step": "step", "train_loss": "train_loss", "train_accuracy": "train_mean_token_accuracy",
                   "valid_loss": "valid_loss", "valid_mean_token_accuracy": "valid_mean_token_accuracy"},
    "dpo": {name: name for name in ("step", "train_loss", *DPO_METRICS, "valid_loss",
                                    *(f"valid_{m}" for m in DPO_METRICS))},
}


def add_event(session, job_id: str, message: str, level: str = "info", key: str | None = None,
              type: str = "message", data: dict | None = None, created_at: int | None = None) -> None:
    """Insert an event unless one with the same key exists (keys make re-ingestion harmless)."""
    key = key or st.make_id("w-")
    if session.scalar(select(Event.seq).where(Event.job_id == job_id, Event.key == key)) is None:
        session.add(Event(id=st.make_id("ftevent-"), job_id=job_id, key=key, level=level, type=type,
                          message=message, data=data, created_at=created_at or st.now()))


def set_status(session, job_id: str, new: str, *, allowed: tuple[str, ...], **values) -> bool:
    """Move a job to ``new`` only if it is still in one of the ``allowed`` states (atomic)."""
    result = session.execute(update(Job).where(Job.id == job_id, Job.status.in_(allowed))
                             .values(status=new, **values))
    return result.rowcount == 1


class Worker:
    def __init__(self, store: Store, poll_seconds: float = 0.5):
        self.store = store
        self.settings: Settings = store.settings
        self.poll_seconds = poll_seconds
        self.procs: dict[str, subprocess.Popen] = {}
        self._signalled: set[str] = set()
        self._renderers: dict[str, object] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._run, name="tunesmith-worker", daemon=True)
        self._thread.start()

    def close(self, grace_seconds: float = 30.0) -> None:
        """Stop following jobs. Running ones checkpoint and stop; they resume at the next start."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.time() + grace_seconds
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
        with self.store.session() as s:
            for job_id in self.procs:
                self._ingest(s, s.get(Job, job_id))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # a bug must not stop the worker for good; it is logged and retried
                print(f"tunesmith worker: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._stop.wait(self.poll_seconds)

    def tick(self) -> None:
        self._validate_new()
        self._follow_running()
        self._start_queued()

    def recover(self) -> None:
        """After a restart: jobs marked running have no process any more; ingest and requeue them."""
        with self.store.session() as s:
            for job in s.scalars(select(Job).where(Job.status == st.RUNNING)).all():
                self._ingest(s, job)
                self._after_exit(s, job, returncode=None)

    # --- validation --------------------------------------------------------------------------
    def _validate_new(self) -> None:
        with self.store.session() as s:
            jobs = s.scalars(select(Job).where(Job.status == st.VALIDATING).order_by(Job.created_at)).all()
            files = {f.id: f for f in s.scalars(select(File).where(File.id.in_(
                [j.training_file for j in jobs] + [j.validation_file for j in jobs if j.validation_file])))}
        for job in jobs:
            notes: list[str] = []
            try:  # outside any transaction: the first use of a base model converts it (seconds)
                values = self._validate(job, files, notes)
            except TunesmithError as exc:
                param = getattr(exc, "param", "training_file")
                with self.store.session() as s:
                    if set_status(s, job.id, st.FAILED, allowed=(st.VALIDATING,), finished_at=st.now(),
                                  error={"code": f"invalid_{param}", "message": str(exc), "param": param}):
                        add_event(s, job.id, f"Validation failed: {exc}", level="error")
                continue
            with self.store.session() as s:
                if set_status(s, job.id, st.QUEUED, allowed=(st.VALIDATING,), **values):
                    for note in notes:
                        add_event(s, job.id, note)

    def _validate(self, job: Job, files: dict[str, File], notes: list[str]) -> dict:
        base = finetuned.resolve(job.model, self.settings).base
        if base not in self._renderers:
            self._renderers[base] = load_renderer(ensure_cached(base, self.settings))
        reports = {}
        for param, file_id, minimum in (("training_file", job.training_file, hyper.MIN_EXAMPLES),
                                        ("validation_file", job.validation_file, 1)):
            if file_id is None:
                continue
            file = files.get(file_id)
            if file is None:
                raise _FileError(param, f"{param} {file_id}: the file was deleted")
            report = validate_file(Path(file.path), self._renderers[base], DEFAULT_MAX_LENGTH, minimum,
                                   preference=job.method == "dpo")
            if report.errors:
                raise _FileError(param, f"{param} {file_id} ({file.filename}): {report.error_summary()}")
            reports[param] = report
            notes.append(f"Validated {param} {file_id}: {len(report.tokenized)} examples, "
                         f"{report.tokens.total:,} tokens ({report.format})")
        notes.append("Files validated; the job is queued.")
        train = reports["training_file"]
        hp = job.hyperparameters
        resolved = hyper.resolve(len(train.tokenized), TRAIN_METHOD[job.method], hp.get("n_epochs", "auto"),
                                 hp.get("batch_size", "auto"), hp.get("learning_rate_multiplier", "auto"),
                                 hp.get("beta", "auto"), hp.get("rpo_alpha", "auto"))
        return {"base": base, "data_format": train.format,
                "hyperparameters": {**{k: v for k, v in resolved.as_dict().items() if k != "learning_rate"},
                                    **{k: hp[k] for k in GUARD_SETTINGS if k in hp}}}

    # --- processes ---------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

    def _start_queued(self) -> None:
        with self.store.session() as s:
            running = s.scalar(select(func.count()).select_from(Job).where(Job.status == st.RUNNING))
            free = self.settings.max_running_jobs - running
            queued = s.scalars(select(Job).where(Job.status == st.QUEUED).order_by(Job.created_at)).all()
            for job in queued:
                if free <= 0:
                    break
                if job.id in self.procs:  # resumed while its last process is still stopping
                    continue
                self._launch(s, job)
                free -= 1

    def _launch(self, s, job: Job) -> None:
        project = s.get(st.Project, job.project_id)
        files = {f: s.get(File, getattr(job, f)) for f in ("training_file", "validation_file") if getattr(job, f)}
        spec = {"training_file": files["training_file"].path,
                "validation_file": files["validation_file"].path if "validation_file" in files else None,
                "model": job.model, "method": TRAIN_METHOD[job.method], "suffix": job.suffix, "seed": job.seed,
                "org": project.name, **job.hyperparameters}
        job_dir = self.job_dir(job.id)
        job_dir.mkdir(parents=True, exist_ok=True)
        tmp = job_dir / (SPEC_FILE + ".tmp")
        tmp.write_text(json.dumps({"spec": spec, "model_id": job.model_id}))
        os.replace(tmp, job_dir / SPEC_FILE)
        with open(job_dir / "process.log", "ab") as log:
            self.procs[job.id] = subprocess.Popen([sys.executable, "-m", "tunesmith.train.run", str(job_dir)],
                                                  stdout=log, stderr=subprocess.STDOUT, env=self._job_env())
        first = job.started_at is None
        set_status(s, job.id, st.RUNNING, allowed=(st.QUEUED,), started_at=job.started_at or st.now())
        add_event(s, job.id, "Fine-tuning job started" if first else "Fine-tuning job resumed")

    def _job_env(self) -> dict[str, str]:
        env = dict(os.environ, TUNESMITH_HOME=str(self.settings.home), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _follow_running(self) -> None:
        for job_id, proc in list(self.procs.items()):
            with self.store.session() as s:
                job = s.get(Job, job_id)
                self._ingest(s, job)
                if job.status in (st.CANCELLED, st.PAUSED) and job_id not in self._signalled:
                    proc.send_signal(signal.SIGTERM)  # stops after the current step, with a checkpoint
                    self._signalled.add(job_id)
                code = proc.poll()
                if code is None:
                    continue
                del self.procs[job_id]
                self._signalled.discard(job_id)
                self._ingest(s, job)
                self._after_exit(s, job, returncode=code)

    def _after_exit(self, s, job: Job, returncode: int | None) -> None:
        """Apply what an ended job process left behind. ``returncode`` None: it died with the service."""
        path = self.job_dir(job.id) / RESULT_FILE
        result = json.loads(path.read_text()) if path.exists() else {"status": None}
        if result["status"] == "succeeded":
            self._succeed(s, job, result)
        elif result["status"] == "failed":
            self._fail(s, job, result["error"])
        elif job.status != st.RUNNING:
            pass  # stopped because it was paused or cancelled
        elif returncode is None or result["status"] == "stopped":
            # The service stopped or died under it: continue from its last checkpoint.
            if set_status(s, job.id, st.QUEUED, allowed=(st.RUNNING,)):
                add_event(s, job.id, "The job was interrupted by a restart of the service; it resumes from "
                                     "its last checkpoint.")
        else:
            self._fail(s, job, f"The job process exited with code {returncode}; see "
                               f"{self.job_dir(job.id) / 'process.log'}")

    def _fail(self, s, job: Job, message: str) -> None:
        if set_status(s, job.id, st.FAILED, allowed=(st.RUNNING,), finished_at=st.now(), estimated_finish=None,
                      error={"code": "job_failed", "message": message, "param": None}):
            add_event(s, job.id, f"Fine-tuning job failed: {message}", level="error")

    def _succeed(self, s, job: Job, result: dict) -> None:
        name = result["fine_tuned_model"]
        results_file = self._results_csv(s, job)
        if not set_status(s, job.id, st.SUCCEEDED, allowed=(st.RUNNING,), finished_at=st.now(),
                          estimated_finish=None, fine_tuned_model=name, trained_tokens=result["trained_tokens"],
                          result_files=[results_file]):
            return
        if s.get(Model, name) is None:
            s.add(Model(name=name, project_id=job.project_id, job_id=job.id, created_at=st.now()))
        add_event(s, job.id, f"New fine-tuned model created: {name}")
        add_event(s, job.id, "The job has successfully completed")

    def _results_csv(self, s, job: Job) -> str:
        """The step metrics as a CSV file object of the job's project (OpenAI's result file)."""
        events = s.scalars(select(Event).where(Event.job_id == job.id, Event.type == "metrics")
                           .order_by(Event.seq)).all()
        ckpts = {c.step: c.metrics for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id))}
        columns = RESULT_COLUMNS[job.method]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for e in sorted(events, key=lambda e: e.data["step"]):
            metrics = {**ckpts.get(e.data["step"], {}), **e.data}  # validation metrics come with checkpoints
            writer.writerow([metrics.get(name, "") for name in columns.values()])
        file_id = "file-" + job.id.removeprefix("ftjob-")  # one per job, however often this runs
        path = self.settings.files_dir / file_id
        write_atomic(path, out.getvalue().encode())
        if s.get(File, file_id) is None:
            s.add(File(id=file_id, project_id=job.project_id, filename="step_metrics.csv",
                       purpose="fine-tune-results", bytes=path.stat().st_size, path=str(path), created_at=st.now()))
        return file_id

    # --- ingestion ---------------------------------------------------------------------------
    def _ingest(self, s, job: Job) -> None:
        records, offset = read_new(self.job_dir(job.id) / EVENTS_FILE, job.events_offset)
        if not records:
            return
        name_prefix = finetuned.model_name(job.base, s.get(st.Project, job.project_id).name, job.suffix, job.model_id)
        for r in records:
            if r["kind"] == "event":
                add_event(s, job.id, r["message"], level=r.get("level", "info"), key=r["key"],
                          type=r.get("type", "message"), data=r.get("data"), created_at=r["created_at"])
                if "estimated_finish" in r and job.status == st.RUNNING:
                    job.estimated_finish = r["estimated_finish"]
            elif r["kind"] == "checkpoint":
                self._add_checkpoint(s, job, r, f"{name_prefix}:ckpt-step-{r['step']}")
        job.events_offset = offset

    def _add_checkpoint(self, s, job: Job, r: dict, name: str) -> None:
        if s.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job.id, Checkpoint.step == r["step"])):
            return
        s.add(Checkpoint(id=st.make_id("ftckpt-"), job_id=job.id, project_id=job.project_id, step=r["step"],
                         name=name, path=r["path"], metrics=r["metrics"], created_at=r["created_at"]))
        add_event(s, job.id, f"Checkpoint created at step {r['step']} (epoch {r['epoch']})", key=r["key"],
                  created_at=r["created_at"])


class _FileError(TunesmithError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
