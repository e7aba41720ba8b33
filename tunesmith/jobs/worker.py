"""The job worker: validates new jobs, starts their processes fairly, follows them, recovers at start.

It runs as a thread of ``tunesmith serve``. Job processes never touch the database: each writes an
event log and, when it ends, a result file into its job directory (``train/events.py``,
``train/run.py``); the worker ingests both and applies the outcome through ``lifecycle``. So a
``kill -9`` of the whole service loses nothing that was written: on restart, jobs that were running
are ingested to the last complete record and queued again, and their process resumes from the
newest checkpoint that holds trainer state.

No fault of one job stalls the others: everything the worker does for a job runs in its own
transaction, and any exception there fails that job (with the error in its events) instead of
escaping into the loop.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from sqlalchemy import func, select

from tunesmith.atomic import write_atomic
from tunesmith.config import Settings
from tunesmith.data.validate import DEFAULT_MAX_LENGTH, check_item_fields, validate_file
from tunesmith.graders import item_fields, parse_grader
from tunesmith.errors import TunesmithError
from tunesmith.jobs import lifecycle, registry
from tunesmith.jobs import store as st
from tunesmith.jobs.launcher import LOG_FILE, NPROC_KEY, Launcher, exit_reason, make_launcher, nproc_per_node
from tunesmith.jobs.lifecycle import add_event, attempt
from tunesmith.jobs.store import Checkpoint, Event, File, Job, Store
from tunesmith.models import finetuned
from tunesmith.models.loading import ensure_cached, load_renderer
from tunesmith.train import hyper
from tunesmith.train.events import EVENTS_FILE, read_new
from tunesmith.train.loop import resumable_checkpoint
from tunesmith.train.grpo import METRICS as GRPO_METRICS
from tunesmith.train.losses import DPO_METRICS
from tunesmith.train.run import RESULT_FILE

# An API job's method type → the training method of its job process (API jobs train LoRA adapters).
TRAIN_METHOD = {"supervised": "lora", "dpo": "dpo", "reinforcement": "reinforcement"}
# passed to the job as they were asked: the guard's settings, and the legacy API's prompt loss weight
PASSED_SETTINGS = ("early_stopping", "patience", "eval_steps", "prompt_loss_weight")
# The result file's columns → the metric each holds: OpenAI's for supervised jobs, TRL's names for DPO.
RESULT_COLUMNS = {
    "supervised": {"step": "step", "train_loss": "train_loss", "train_accuracy": "train_mean_token_accuracy",
                   "valid_loss": "valid_loss", "valid_mean_token_accuracy": "valid_mean_token_accuracy"},
    "dpo": {name: name for name in ("step", "train_loss", *DPO_METRICS, "valid_loss",
                                    *(f"valid_{m}" for m in DPO_METRICS))},
    "reinforcement": {name: name for name in ("step", "train_loss", *GRPO_METRICS, "valid_reward_mean")},
}

# The legacy API's result file (openai 0.28's `fine_tunes.results`); sequence accuracies are not measured.
LEGACY_RESULT_COLUMNS = {
    "step": "step", "elapsed_tokens": "elapsed_tokens", "elapsed_examples": "elapsed_examples",
    "training_loss": "train_loss", "training_sequence_accuracy": None,
    "training_token_accuracy": "train_mean_token_accuracy", "validation_loss": "valid_loss",
    "validation_sequence_accuracy": None, "validation_token_accuracy": "valid_mean_token_accuracy",
}


class Worker:
    def __init__(self, store: Store, poll_seconds: float = 0.5, launcher: Launcher | None = None):
        self.store = store
        self.settings: Settings = store.settings
        self.poll_seconds = poll_seconds
        self.launcher = launcher or make_launcher(self.settings)
        self._signalled: set[str] = set()
        self._renderers: dict[str, object] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._run, name="tunesmith-worker", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following jobs: running ones checkpoint and stop, are marked paused by the system,
        and go on by themselves at the next start."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        else:
            self._stop_jobs()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a fault outside any one job (the database is gone, …): logged, retried
                print(f"tunesmith worker:\n{traceback.format_exc()}", file=sys.stderr)
            self._stop.wait(self.poll_seconds)
        # On this thread: job processes die with the thread that started them (PR_SET_PDEATHSIG), so it
        # must outlive them.
        self._stop_jobs()

    def _stop_jobs(self) -> None:
        for job_id, code in self.launcher.stop_all(self.settings.shutdown_grace_seconds).items():
            self._for_job(job_id, lambda s, job, code=code: self._after_exit(s, job, code, shutting_down=True))

    def tick(self) -> None:
        self._validate_new()
        self._follow_running()
        self._start_queued()

    def recover(self) -> None:
        """At start: jobs still marked running lost their process with the last service (ingest and
        requeue them); jobs the system paused at shutdown go on."""
        with self.store.read() as s:
            running = s.scalars(select(Job.id).where(Job.status == st.RUNNING)).all()
            paused = s.scalars(select(Job.id).where(Job.status == st.PAUSED, Job.status_actor == "system")).all()
        for job_id in running:
            self._for_job(job_id, lambda s, job: self._after_exit(s, job, None))
        for job_id in paused:
            self._for_job(job_id, lambda s, job: attempt(
                s, job, st.QUEUED, "system", "The service started again; the job resumes from its last checkpoint."))

    def _for_job(self, job_id: str, work: Callable, fail_as: str = "internal error") -> None:
        """Run ``work(session, job)`` in a transaction of its own; if it raises, fail that job instead."""
        try:
            with self.store.session() as s:
                work(s, s.get(Job, job_id))
        except Exception as exc:
            if not isinstance(exc, TunesmithError):
                print(f"tunesmith worker: job {job_id}:\n{traceback.format_exc()}", file=sys.stderr)
            message = str(exc) if isinstance(exc, TunesmithError) else f"{fail_as}: {type(exc).__name__}: {exc}"
            self._fail_after_fault(job_id, message, getattr(exc, "param", None))

    def _fail_after_fault(self, job_id: str, message: str, param: str | None) -> None:
        try:
            with self.store.session() as s:
                job = s.get(Job, job_id)
                if job.status in (st.VALIDATING, st.QUEUED, st.RUNNING):
                    code = f"invalid_{param}" if param else "job_failed"
                    attempt(s, job, st.FAILED, "worker", f"Fine-tuning job failed: {message}", level="error",
                            error={"code": code, "message": message, "param": param})
        except Exception:
            print(f"tunesmith worker: cannot fail job {job_id}:\n{traceback.format_exc()}", file=sys.stderr)
        if job_id in self.launcher.running():
            self.launcher.stop(job_id)

    # --- validation --------------------------------------------------------------------------
    def _validate_new(self) -> None:
        with self.store.read() as s:
            jobs = s.scalars(select(Job).where(Job.status == st.VALIDATING).order_by(Job.created_at)).all()
        for job in jobs:
            try:  # outside any transaction: the first use of a base model converts it (seconds)
                values, notes = self._validate(job)
            except Exception as exc:
                if not isinstance(exc, TunesmithError):
                    print(f"tunesmith worker: job {job.id}:\n{traceback.format_exc()}", file=sys.stderr)
                reason = str(exc) if isinstance(exc, TunesmithError) else \
                    f"the files could not be validated: {type(exc).__name__}: {exc}"
                param = getattr(exc, "param", "training_file")
                self._for_job(job.id, lambda s, j: attempt(
                    s, j, st.FAILED, "worker", f"Validation failed: {reason}", level="error",
                    error={"code": f"invalid_{param}", "message": reason, "param": param}))
                continue

            def queue(s, j, values=values, notes=notes):
                for note in notes:
                    add_event(s, j.id, note)
                attempt(s, j, st.QUEUED, "worker", "Files validated; the job is queued.", **values)

            self._for_job(job.id, queue)

    def _validate(self, job: Job) -> tuple[dict, list[str]]:
        """The job's files checked and its "auto" hyperparameters resolved, once: both are stored on
        the job and the job process trains exactly these values."""
        base = registry.resolve(job.model, self.store, job.project_id).base
        if base not in self._renderers:
            self._renderers[base] = load_renderer(ensure_cached(base, self.settings))
        with self.store.read() as s:
            files = {param: s.get(File, file_id) for param, file_id in
                     (("training_file", job.training_file), ("validation_file", job.validation_file)) if file_id}
        notes, reports = [], {}
        for param, file in files.items():
            file_id = getattr(job, param)
            if file is None:
                raise _FileError(param, f"{param} {file_id}: the file was deleted")
            minimum = hyper.MIN_EXAMPLES if param == "training_file" else 1
            report = validate_file(Path(file.path), self._renderers[base], DEFAULT_MAX_LENGTH, minimum,
                                   preference=job.method == "dpo", prompts=job.method == "reinforcement")
            if job.grader is not None:  # each line must hold what the grader's templates read
                check_item_fields(report, item_fields(parse_grader(job.grader)))
            if report.errors:
                raise _FileError(param, f"{param} {file_id} ({file.filename}): {report.error_summary()}")
            reports[param] = report
            notes.append(f"Validated {param} {file_id}: {len(report.tokenized)} examples, "
                         f"{report.tokens.total:,} tokens ({report.format})")
        train = reports["training_file"]
        hp = job.hyperparameters
        resolved = hyper.resolve(len(train.tokenized), TRAIN_METHOD[job.method], hp.get("n_epochs", "auto"),
                                 hp.get("batch_size", "auto"), hp.get("learning_rate_multiplier", "auto"),
                                 hp.get("beta", "auto"), hp.get("rpo_alpha", "auto"),
                                 answer_tokens=hyper.mean_answer_tokens(train.tokenized),
                                 group_size=hp.get("group_size", "auto"),
                                 max_completion_tokens=hp.get("max_completion_tokens", "auto"))
        notes.append(f"Hyperparameters: {resolved.n_epochs} epochs, batch size {resolved.batch_size}, learning rate "
                     f"multiplier {resolved.learning_rate_multiplier:g} (learning rate "
                     f"{resolved.learning_rate:.2e}{resolved.rate_text}){resolved.dpo_text}")
        values = {"base": base, "data_format": train.format,
                  "hyperparameters": {**{k: v for k, v in resolved.as_dict().items() if k != "learning_rate"},
                                      **{k: hp[k] for k in PASSED_SETTINGS if k in hp}}}
        return values, notes

    # --- processes ---------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

    def _start_queued(self) -> None:
        """Fill the free slots; a job that cannot be started fails and the next one takes its slot."""
        while True:
            with self.store.session() as s:
                running = s.scalar(select(func.count()).select_from(Job).where(Job.status == st.RUNNING))
                free = self.settings.max_running_jobs - running
                # a job resumed while its last process is still stopping waits for that process to end
                running = self.launcher.running()
                claimed = [j.id for j in st.claim_queued(s, max(0, free)) if j.id not in running]
            for job_id in claimed:
                self._for_job(job_id, self._launch, fail_as="the job could not be started")
            if not claimed or all(job_id in self.launcher.running() for job_id in claimed):
                return

    def _launch(self, s, job: Job) -> None:
        if job.status != st.QUEUED:
            return
        project = s.get(st.Project, job.project_id)
        paths = {}
        for param in ("training_file", "validation_file"):
            file_id = getattr(job, param)
            file = s.get(File, file_id) if file_id else None
            if file_id and (file is None or not Path(file.path).is_file()):
                raise _FileError(param, f"{param} {file_id} was deleted before the job started")
            paths[param] = file.path if file else None
        spec = {**paths, "model": job.model, "method": TRAIN_METHOD[job.method], "suffix": job.suffix,
                "seed": job.seed, "org": project.name, **job.hyperparameters,
                **({"grader": job.grader} if job.grader is not None else {})}
        start = registry.lookup(s, job.model, job.project_id, self.settings.aliases)  # deleted since: fails the job
        start = {**asdict(start), "weights": str(start.weights) if start.weights else None}
        first = job.started_at is None
        lifecycle.transition(s, job, st.RUNNING, "worker",
                             "Fine-tuning job started" if first else "Fine-tuning job resumed",
                             started_at=job.started_at or st.now(), error=None, finished_at=None)
        job_dir = self.job_dir(job.id)
        job_dir.mkdir(parents=True, exist_ok=True)
        self.launcher.start(job.id, job_dir, {"spec": spec, "model_id": job.model_id, "start": start,
                                              NPROC_KEY: nproc_per_node(self.settings, job.meta)})

    def _follow_running(self) -> None:
        for job_id in self.launcher.running():
            self._for_job(job_id, self._follow)

    def _follow(self, s, job: Job) -> None:
        code = self.launcher.poll(job.id)  # first: an ended process is let go whatever fails below
        if code is None:
            self._ingest(s, job)
            if job.status in (st.CANCELLED, st.PAUSED, st.FAILED) and job.id not in self._signalled:
                self.launcher.stop(job.id)  # stops after the current step, with a checkpoint
                self._signalled.add(job.id)
            return
        self._signalled.discard(job.id)
        self._after_exit(s, job, code)

    def _after_exit(self, s, job: Job, code: int | None, shutting_down: bool = False) -> None:
        """Apply what an ended job process left behind. ``code`` None: it died with the last service."""
        self._ingest(s, job)
        result = self._result(job)
        status = result.get("status") if result else None
        if status == "succeeded":
            self._succeed(s, job, result)
        elif status == "failed":
            attempt(s, job, st.FAILED, "job", f"Fine-tuning job failed: {result['error']}", level="error",
                    error={"code": "job_failed", "message": result["error"], "param": None})
        elif job.status != st.RUNNING:
            pass  # it stopped because a client paused or cancelled it
        elif code is None:
            attempt(s, job, st.QUEUED, "system", "The job was interrupted by a restart of the service; it resumes "
                                                 "from its last checkpoint.")
        elif status == "stopped" or shutting_down:
            if status == "stopped":
                why = ("the service is shutting down" if shutting_down
                       else "its process was stopped from outside the service")
                where = f"at step {result['metrics'].get('step')}"
            else:
                why = f"it did not stop within {self.settings.shutdown_grace_seconds:g} s of the service's shutdown"
                where = "at its newest checkpoint"
            attempt(s, job, st.PAUSED, "system", f"Fine-tuning job paused {where}: {why}. It resumes by itself "
                                                 "when the service starts again.")
        else:
            self._fail_dead_process(s, job, code)

    def _fail_dead_process(self, s, job: Job, code: int) -> None:
        newest = resumable_checkpoint(self.job_dir(job.id) / "checkpoints")
        resume = (f"resume the job to continue from its newest checkpoint ({newest.name})" if newest
                  else "it had written no checkpoint yet, so resuming it starts over")
        message = f"{exit_reason(code)}; {resume}. Its log: {self.job_dir(job.id) / LOG_FILE}"
        attempt(s, job, st.FAILED, "worker", f"Fine-tuning job failed: {message}", level="error",
                error={"code": "job_failed", "message": message, "param": None})

    def _result(self, job: Job) -> dict | None:
        """The job process's result file, None if it wrote none; a torn or corrupt one is an error."""
        path = self.job_dir(job.id) / RESULT_FILE
        if not path.exists():
            return None
        try:
            result = json.loads(path.read_bytes())
            if not isinstance(result, dict) or result.get("status") not in ("succeeded", "failed", "stopped"):
                raise ValueError("no status")
            return result
        except (ValueError, UnicodeDecodeError) as exc:
            raise TunesmithError(f"the job's result file {path} is corrupt ({exc}); "
                                 "resume the job to run it again from its newest checkpoint") from None

    def _succeed(self, s, job: Job, result: dict) -> None:
        model = registry.record(result["model"])
        if job.legacy:
            model.name = self._legacy_name(s, job)
        results_file = self._results_csv(s, job)
        if not attempt(s, job, st.SUCCEEDED, "job", f"New fine-tuned model created: {model.name}",
                       fine_tuned_model=model.name, trained_tokens=result["trained_tokens"],
                       result_files=[results_file]):
            return
        registry.register(s, model, job.project_id, job.id)
        add_event(s, job.id, "The job has successfully completed")

    def _legacy_name(self, s, job: Job) -> str:
        """``curie:ft-org-suffix-2023-01-31-12-00-00``; a second apart from any model of that name."""
        org, finished = s.get(st.Project, job.project_id).name, st.now()
        while s.get(st.Model, name := finetuned.legacy_name(finetuned.family(job.model), org, job.suffix, finished)):
            finished += 1
        return name

    def _results_csv(self, s, job: Job) -> str:
        """The step metrics as a CSV file object of the job's project (OpenAI's result file)."""
        events = s.scalars(select(Event).where(Event.job_id == job.id, Event.type == "metrics")
                           .order_by(Event.seq)).all()
        ckpts = {c.step: c.metrics for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id))}
        columns = LEGACY_RESULT_COLUMNS if job.legacy else RESULT_COLUMNS[job.method]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for e in sorted(events, key=lambda e: e.data["step"]):
            metrics = {**ckpts.get(e.data["step"], {}), **e.data}  # validation metrics come with checkpoints
            writer.writerow([metrics.get(name, "") if name else "" for name in columns.values()])
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
        name_prefix = finetuned.model_name(finetuned.family(job.model), s.get(st.Project, job.project_id).name,
                                           job.suffix, job.model_id)
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
