"""One fine-tuning job: validate the data, build the model, run the loop, register the result."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from tunesmith.atomic import write_atomic
from tunesmith.config import PrecisionSetting, Settings, enforce_offline, get_settings
from tunesmith.data.formats import PROMPTS
from tunesmith.data.overlap import overlap
from tunesmith.data.tokenize import Pair, with_prompt_loss
from tunesmith.data.validate import DEFAULT_MAX_LENGTH, Report, check_item_fields, line_list, validate_file
from tunesmith.errors import TunesmithError
from tunesmith.graders import Scorer, item_fields, make_sample, parse_grader
from tunesmith.models import finetuned
from tunesmith.models.loading import BaseInfo, ensure_cached, load_model, load_renderer
from tunesmith.train import answers, distributed, grpo, hyper, loop, losses
from tunesmith.train.precision import training_device

# dpo: preference pairs, reinforcement: prompts and a grader (GRPO); both trained as a LoRA adapter
METHODS = ("lora", "full", "dpo", "reinforcement")
REFERENCE_FILE = "reference_logps.pt"
REFERENCE_WEIGHTS_FILE = "reference_weights.safetensors"  # reinforcement: the adapter's starting values
RUN_FILE = "run.json"  # the settings a job started with; a resumed run must have the same
DATA_FILE = "data.json"  # what the training data had in common (its system prompt), for exports
MIN_AUTO_SPLIT_EXAMPLES = 100  # below this, a held-out part is too small to say anything
MAX_AUTO_SPLIT = 0.5
# The linear layers an adapter goes on, by name, for the Llama and Gemma families tunesmith trains.
LORA_TARGETS = {"all-linear": "all-linear", "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "mlp": ["gate_proj", "up_proj", "down_proj"]}


@dataclass
class TrainSpec:
    training_file: Path
    validation_file: Path | None = None
    model: str | None = None  # None: the settings' default_model (TUNESMITH_DEFAULT_MODEL)
    method: str = "lora"
    n_epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"
    beta: float | str = "auto"  # DPO's, or reinforcement's KL weight
    rpo_alpha: float | str = "auto"  # DPO only
    grader: dict | None = None  # reinforcement only: an OpenAI grader object (tunesmith.graders)
    group_size: int | str = "auto"  # reinforcement only
    max_completion_tokens: int | str = "auto"  # reinforcement only
    suffix: str | None = None
    seed: int | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    lora_r: int = 16
    lora_alpha: int = 32
    # Dropout on the input of every adapted layer costs ~35 % of step time on CPU (measured).
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"  # which linear layers get an adapter: a key of LORA_TARGETS
    # NEFTune: uniform noise on the input embeddings while training (the paper's alpha; 0: off)
    neftune_alpha: float = 0.0
    weight_decay: float = 0.0  # AdamW's decoupled weight decay on the trained weights
    org: str | None = None  # the org part of the ft: name; the settings' org when not given
    # The overfitting guard, active when there is validation data (see loop.py).
    early_stopping: bool = True
    patience: int = hyper.DEFAULT_PATIENCE
    eval_steps: int | None = None
    auto_split: float | None = None  # hold out this fraction of the training file when no validation file
    # Prompt (non-answer) tokens trained too, at this weight: the legacy fine-tunes API's option
    prompt_loss_weight: float = 0.0


@dataclass
class JobResult:
    job_id: str
    status: str  # succeeded | stopped
    fine_tuned_model: str | None
    trained_tokens: int
    seed: int
    hyperparameters: dict
    metrics: dict[str, float]
    checkpoints: list[str] = field(default_factory=list)
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None  # the guard's choice, which the model is
    early_stopped: bool = False
    seconds: float = 0.0
    model: dict | None = None  # the new model's record (FineTunedModel), for the caller to register

    def as_dict(self) -> dict:
        return asdict(self)


class JobReporter(loop.Reporter):
    """The loop's reporter plus the job-level moments before training starts."""

    def on_message(self, message: str) -> None: ...
    def on_validated(self, report: Report) -> None: ...


def check_spec(spec: TrainSpec) -> None:
    if spec.method not in METHODS:
        raise TunesmithError(f"unknown method {spec.method!r}; expected one of {', '.join(METHODS)}")
    if spec.suffix is not None and (len(spec.suffix) > 64 or ":" in spec.suffix):
        raise TunesmithError("suffix must be at most 64 characters and contain no ':'")
    if spec.max_length < 16:
        raise TunesmithError("max_length must be at least 16 tokens")
    if spec.patience < 1 or (spec.eval_steps is not None and spec.eval_steps < 1):
        raise TunesmithError("patience and eval_steps must be at least 1")
    if spec.lora_targets not in LORA_TARGETS:
        raise TunesmithError(f"unknown lora_targets {spec.lora_targets!r}; expected one of {', '.join(LORA_TARGETS)}")
    for name in ("neftune_alpha", "weight_decay"):
        if getattr(spec, name) < 0:
            raise TunesmithError(f"{name} must be at least 0, got {getattr(spec, name)}")
    if not 0 <= spec.prompt_loss_weight <= 1:
        raise TunesmithError(f"prompt_loss_weight must be between 0 and 1, got {spec.prompt_loss_weight}")
    if spec.prompt_loss_weight and spec.method in ("dpo", "reinforcement"):
        raise TunesmithError(f"prompt_loss_weight applies to supervised training, not to {spec.method}")
    if (spec.grader is not None) != (spec.method == "reinforcement"):
        raise TunesmithError("the reinforcement method needs a grader" if spec.grader is None
                             else "a grader applies only to the reinforcement method")
    if spec.grader is not None:
        parse_grader(spec.grader)
    if spec.auto_split is not None:
        if not 0 < spec.auto_split <= MAX_AUTO_SPLIT:
            raise TunesmithError(f"auto_split must be a fraction above 0 and at most {MAX_AUTO_SPLIT}")
        if spec.validation_file is not None:
            raise TunesmithError("give either a validation file or auto_split, not both")


def _weights_kind(method: str | None) -> str:  # LoRA, DPO and reinforcement jobs all train adapters
    return "full" if method == "full" else "adapter"


def _validated(path: Path, spec: TrainSpec, renderer, reporter: JobReporter, min_examples: int) -> Report:
    report = validate_file(path, renderer, spec.max_length, min_examples, preference=spec.method == "dpo",
                           prompts=spec.method == "reinforcement")
    if spec.grader is not None:
        check_item_fields(report, item_fields(parse_grader(spec.grader)))
    reporter.on_validated(report)
    report.raise_for_errors()
    return report


def run_job(spec: TrainSpec, reporter: JobReporter, settings: Settings | None = None,
            stop_requested: Callable[[], bool] = lambda: False, job_id: str | None = None,
            model_id: str | None = None, start: finetuned.ResolvedModel | None = None) -> JobResult:
    """Run (or, when ``job_id``'s directory holds a resumable checkpoint, continue) one job.

    ``start`` is ``spec.model`` resolved by the caller (the trainer knows no registry); None for a
    base model. ``model_id`` fixes the short id of the resulting model, so a job that is re-run
    after a crash registers the same model again instead of a second one. The new model's record is
    returned in the result, and the caller registers it.

    Under torchrun every rank calls this with the same arguments; each trains its share of every step
    (``distributed.py``). Rank 0 alone reports, writes files and returns the new model's record."""
    enforce_offline()
    check_spec(spec)
    settings = settings or get_settings()
    spec = replace(spec, model=spec.model or settings.default_model)
    distributed.init()
    if not distributed.is_main():
        reporter = JobReporter()  # says nothing: rank 0 tells
    started = time.perf_counter()
    if start is None:
        if finetuned.is_tuned(spec.model):
            raise TunesmithError(f"{spec.model}: a fine-tuned model must be resolved before training starts")
        start = finetuned.ResolvedModel.of_base(spec.model)
    # LoRA and DPO models are both LoRA adapters: either continues the other (SFT, then DPO).
    if start.weights is not None and _weights_kind(start.method) != _weights_kind(spec.method):
        raise TunesmithError(f"{spec.model} was tuned with method {start.method}; method {spec.method} "
                             "cannot continue it (full fine-tuning and LoRA adapters do not mix)")
    if distributed.is_main():  # a first use converts the base model: once, before the other ranks read it
        ensure_cached(start.base, settings, status=reporter.on_message)
    distributed.barrier()
    info = ensure_cached(start.base, settings)
    renderer = load_renderer(info)
    train_report = _validated(spec.training_file, spec, renderer, reporter, hyper.MIN_EXAMPLES)
    job_id = distributed.from_main(job_id or f"ftjob-{finetuned.new_id(24)}")
    job_dir = settings.jobs_dir / job_id
    resume_from = loop.resumable_checkpoint(job_dir / "checkpoints")
    first_run = _read_run(job_dir) if resume_from is not None else None
    seed = distributed.from_main(
        next(s for s in (spec.seed, (first_run or {}).get("seed"), random.randrange(2**31)) if s is not None))
    train_examples, train_set = train_report.examples, train_report.tokenized
    valid_examples, valid_set = [], []
    if spec.validation_file:
        valid_report = _validated(spec.validation_file, spec, renderer, reporter, 1)
        valid_examples, valid_set = valid_report.examples, valid_report.tokenized
    elif spec.auto_split:
        (train_examples, train_set), (valid_examples, valid_set) = _split(train_report, spec.auto_split, seed)
        reporter.on_message(f"Holding out {len(valid_set)} of {len(train_report.tokenized)} examples "
                            f"({spec.auto_split:.0%}) of {spec.training_file.name} for validation")
    _warn_leakage(train_examples, valid_examples, reporter)
    if spec.method != "reinforcement":  # prompts have no answers whose words to compare
        _warn_lookalike(train_examples, valid_examples, reporter)
    hp = hyper.resolve(len(train_set), spec.method, spec.n_epochs, spec.batch_size,
                       spec.learning_rate_multiplier, spec.beta, spec.rpo_alpha,
                       answer_tokens=hyper.mean_answer_tokens(train_set), group_size=spec.group_size,
                       max_completion_tokens=spec.max_completion_tokens)
    if spec.prompt_loss_weight:  # training only: validation loss stays the answers', comparable across jobs
        train_set = [with_prompt_loss(t, spec.prompt_loss_weight) for t in train_set]
    run = _run_settings(spec, hp, seed)
    if first_run is not None:
        _check_same_run(job_id, first_run, run)
    elif resume_from is not None:
        reporter.on_message("No record of the settings this job started with (it was started by an older "
                            "tunesmith): resuming with the current ones")
    if resume_from is not None:
        reporter.on_message(f"Resuming from checkpoint {resume_from.name}")
    if first_run is None and distributed.is_main():
        write_atomic(job_dir / RUN_FILE, json.dumps(run, indent=1).encode())
        write_atomic(job_dir / DATA_FILE, json.dumps({"system": shared_system(train_examples)}).encode())

    # Intra-op threads do all the work of eager training. The inter-op pool only runs forked tasks
    # (torch.jit.fork), which training has none of, so its size is left alone. The job's processes on
    # one machine share its CPUs.
    torch.set_num_threads(max(1, settings.threads // distributed.local_world_size()))
    torch.manual_seed(seed)
    try:
        model = build_model(info, resume_from or start.weights, spec).to(training_device())
    except Exception as exc:
        if resume_from is None:
            raise
        raise loop.CorruptCheckpoint(resume_from, exc) from exc
    pad_id = renderer.tokenizer.pad_token_id
    objective: losses.Objective = losses.SFT()
    scorer = Scorer(parse_grader(spec.grader)) if spec.grader is not None else None
    if spec.method == "dpo":
        _attach_reference(model, train_set + valid_set, job_dir / REFERENCE_FILE, pad_id, reporter,
                          settings.precision)
        objective = losses.DPO(hp.beta, hp.rpo_alpha)
    elif scorer is not None:
        objective = _grpo(model, renderer, scorer, hp, job_dir / REFERENCE_WEIGHTS_FILE, settings.precision)

    reporter.on_message(f"Job {job_id}: {len(train_set)} examples, {hp.n_epochs} epochs, "
                        f"batch size {hp.batch_size}, learning rate {hp.learning_rate:.2e}{hp.rate_text}{hp.dpo_text}, "
                        f"seed {seed}"
                        f"{_processes_text(spec.method)}")
    # DPO's validation pairs have two answers each: the reward accuracy already says which one the model prefers.
    # A reinforcement job's validation is its objective's: the grader's mean over greedy answers.
    answer_scorer = None
    if valid_set and spec.method in ("lora", "full"):
        answer_scorer = answers.answer_scorer(valid_set, renderer, settings.precision)
    cfg = loop.LoopConfig(hp.n_epochs, hp.batch_size, hp.learning_rate, seed, objective=objective,
                          eval_steps=spec.eval_steps, patience=spec.patience if spec.early_stopping else None,
                          precision=settings.precision, answer_scorer=answer_scorer,
                          shard_layers=spec.method == "full", neftune_alpha=spec.neftune_alpha,
                          weight_decay=spec.weight_decay)
    try:
        result = loop.train(model, train_set, cfg, job_dir / "checkpoints", reporter,
                            pad_id=pad_id, valid_set=valid_set, resume_from=resume_from,
                            stop_requested=stop_requested)
    finally:
        if scorer is not None:
            scorer.close()
    outcome = JobResult(job_id, "succeeded" if result.completed else "stopped", None, result.trained_tokens,
                        seed, hp.as_dict(), result.metrics)
    if not distributed.is_main():
        return outcome
    last = max(job_dir.glob("checkpoints/step-*"), default=None)
    outcome.last_checkpoint = str(last) if last else None
    if not result.completed:
        outcome.seconds = time.perf_counter() - started
        return outcome

    chosen = result.best or result.checkpoints[-1]
    if result.best is not None:
        _report_choice(result, spec.patience, reporter)
        outcome.best_checkpoint, outcome.early_stopped = str(chosen.path), result.early_stopped
    short_id = model_id or finetuned.new_id()
    # named after what the client asked for: an alias (OpenAI's model name) or the model it continues
    shown = info.name if start.name == start.base else finetuned.family(start.name)
    name = finetuned.model_name(shown, spec.org or settings.org, spec.suffix, short_id)
    final_dir = job_dir / "model"
    shutil.rmtree(final_dir, ignore_errors=True)
    shutil.copytree(chosen.path, final_dir, ignore=shutil.ignore_patterns(loop.STATE_FILE))
    outcome.model = asdict(finetuned.FineTunedModel(
        id=short_id, name=name, base=info.name, job_id=job_id, method=spec.method,
        format=_served_format(train_report.format), path=str(final_dir), created_at=int(time.time()),
        trained_tokens=result.trained_tokens, metrics=chosen.metrics,
        checkpoints={c.step: str(c.path) for c in result.checkpoints}))
    outcome.fine_tuned_model = name
    outcome.checkpoints = [f"{name}:ckpt-step-{c.step}" for c in result.checkpoints]
    outcome.seconds = time.perf_counter() - started
    return outcome


def _served_format(data_format: str | None) -> str:
    """How the new model is prompted: as its training lines were (a reinforcement job's prompts are chats)."""
    return "chat" if data_format in (None, PROMPTS) else data_format


def _grpo(model, renderer, scorer: Scorer, hp: hyper.Hyperparameters, reference_file: Path,
          precision: PrecisionSetting) -> grpo.GRPO:
    """The reinforcement objective over this job's grader; its KL reference is the adapter as the job
    first started (kept in the job directory: a resumed job's weights are no longer the starting ones)."""
    from safetensors.torch import load_file, save

    if not reference_file.exists() and distributed.is_main():
        write_atomic(reference_file, save(grpo.snapshot(model)))
    distributed.barrier()
    reference = load_file(reference_file) if hp.beta else None
    tokenizer = renderer.tokenizer

    def grade(texts: list[str], items: list[dict]) -> list[tuple[float, str | None]]:
        return [(g.score, g.error) for g in scorer.score([make_sample(t) for t in texts], items)]

    return grpo.GRPO(grade, lambda ids: tokenizer.decode(ids, skip_special_tokens=True), renderer.stop_ids,
                     renderer.end_of_turn_id, hp.group_size, hp.max_completion_tokens, hp.beta,
                     reference=reference, precision=precision)


def _processes_text(method: str) -> str:
    world = distributed.world_size()
    sharded = ", layers sharded with FSDP2" if method == "full" else ""  # as loop.train shards them
    return f", on {world} processes ({torch.distributed.get_backend()}{sharded})" if world > 1 else ""


def shared_system(examples: list) -> str | None:
    """The system prompt that more than half of the examples open with, if one does: a model trained so
    expects it, and an export (Ollama's SYSTEM) can make it the default."""
    counts = Counter(ex.messages[0]["content"] for ex in examples if ex.has_system)
    system, n = counts.most_common(1)[0] if counts else (None, 0)
    return system if n * 2 > len(examples) else None


def job_data(job_dir: Path) -> dict:
    """What ``DATA_FILE`` recorded of a job's training data; empty for a job trained before it existed."""
    try:
        return json.loads((job_dir / DATA_FILE).read_text())
    except FileNotFoundError:
        return {}


def _run_settings(spec: TrainSpec, hp: hyper.Hyperparameters, seed: int) -> dict:
    """What a run's result depends on: a resumed run must have the same, or it would train another model
    on top of the first one's checkpoint."""
    def digest(path: Path | None) -> str | None:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path else None

    return {"model": spec.model, "method": spec.method, "training_file sha256": digest(spec.training_file),
            "validation_file sha256": digest(spec.validation_file), "auto_split": spec.auto_split, "seed": seed,
            **hp.as_dict(), "max_length": spec.max_length, "lora_r": spec.lora_r, "lora_alpha": spec.lora_alpha,
            "lora_dropout": spec.lora_dropout, "suffix": spec.suffix, "early_stopping": spec.early_stopping,
            "patience": spec.patience, "eval_steps": spec.eval_steps,
            # only when not the default: a run from before these options resumes as the same run
            **{name: value for name, value, default in (
                ("prompt_loss_weight", spec.prompt_loss_weight, 0.0), ("lora_targets", spec.lora_targets, "all-linear"),
                ("neftune_alpha", spec.neftune_alpha, 0.0), ("weight_decay", spec.weight_decay, 0.0),
                ("grader", spec.grader, None))
            if value != default}}


def _read_run(job_dir: Path) -> dict | None:
    """The settings a run started with; None for a job that an older tunesmith started (it kept none)."""
    try:
        return json.loads((job_dir / RUN_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TunesmithError(f"{job_dir / RUN_FILE} cannot be read ({exc}): the settings this job started with "
                             "are unknown, so it cannot be resumed") from None


def _check_same_run(job_id: str, first: dict, now: dict) -> None:
    differ = [f"{k} {first.get(k)!r} → {now.get(k)!r}" for k in sorted(first.keys() | now.keys())
              if first.get(k) != now.get(k)]
    if differ:
        raise TunesmithError(f"job {job_id} cannot be resumed with other settings than it started with: "
                             f"{'; '.join(differ)}. Start a new job instead")


def _split(report: Report, fraction: float, seed: int):
    """(examples, tokenized) for training and for validation: a seeded random ``fraction`` held out."""
    n = len(report.tokenized)
    if n < MIN_AUTO_SPLIT_EXAMPLES:
        raise TunesmithError(f"{report.path}: auto_split needs at least {MIN_AUTO_SPLIT_EXAMPLES} examples, "
                             f"the file has {n}; give a validation file instead")
    held = set(random.Random(seed).sample(range(n), max(1, round(n * fraction))))
    parts = [[i for i in range(n) if (i in held) == side] for side in (False, True)]
    return [([report.examples[i] for i in part], [report.tokenized[i] for i in part]) for part in parts]


def _warn_leakage(train: list, valid: list, reporter: JobReporter) -> None:
    """Validation examples that are also training examples make the validation loss lie."""
    seen = {ex.content_key for ex in train}
    lines = [ex.line for ex in valid if ex.content_key in seen]
    if lines:
        reporter.on_message(f"Warning: {len(lines)} of {len(valid)} validation examples (lines {line_list(lines)}) also "
                            "appear in the training data: the validation loss will look better than it is")


def _warn_lookalike(train: list, valid: list, reporter: JobReporter) -> None:
    """A validation set phrased like the training set cannot show that the model memorised it."""
    found = overlap(train, valid)
    if found is None or not found.lookalike:
        return
    words = "names and phrasings" if found.same_words else "phrasings"
    reporter.on_message(f"Warning: {found.phrasing:.0%} of the validation prompts' wording (word triples, answer "
                        f"values masked) and {found.answer_words:.0%} of the validation answers' words also occur in "
                        f"the training data: the validation set looks like the training set, so it cannot reveal "
                        f"memorisation; hold out examples with unseen {words}")


def _report_choice(result: loop.LoopResult, patience: int, reporter: JobReporter) -> None:
    """Say which epoch the model is, when that is not simply the last one, and why."""
    best, last = result.best, result.checkpoints[-1]
    lowest = min((c for c in result.checkpoints if "valid_loss" in c.metrics),
                 key=lambda c: (c.metrics["valid_loss"], c.step), default=best)
    why = _described(best)
    if lowest is not best:
        why += (f"; chosen by valid_exact_match (greedy answers to validation questions), which disagrees with the "
                f"validation loss: epoch {lowest.epoch} had the lowest, {_described(lowest)}")
    if result.early_stopped:
        reporter.on_message(f"Early stop at epoch {last.epoch}: no better epoch for {patience} epochs. "
                            f"Best epoch {best.epoch}, {why}; the model is its checkpoint (step {best.step})")
    elif best is not last:
        reporter.on_message(f"Best epoch {best.epoch}, {why} (last epoch: {_described(last)}); "
                            f"the model is its checkpoint (step {best.step}), not the last one")
    elif lowest is not best:
        reporter.on_message(f"Best epoch {best.epoch} (the last), {why}")


def _described(ckpt: loop.Checkpoint) -> str:
    if "valid_loss" not in ckpt.metrics:
        return f"valid_reward_mean {ckpt.metrics['valid_reward_mean']:.3f}"
    exact = ckpt.metrics.get("valid_exact_match")
    loss = f"valid_loss {ckpt.metrics['valid_loss']:.4f}"
    return loss if exact is None else f"{loss}, valid_exact_match {exact:.2f}"


def _attach_reference(model, pairs: list[Pair], path: Path, pad_id: int, reporter: JobReporter,
                      precision: PrecisionSetting = "fp32") -> None:
    """DPO's reference: the starting weights' log-probs of every answer, computed once before the first step.

    Precomputed (TRL's ``precompute_ref_log_probs``) rather than recomputed every step with the
    adapter disabled, because that is right for every start: a base model, an ``ft:`` model whose
    adapter goes on training (its reference is that model, adapter included, not the bare base), a
    full model; it needs no second model in memory and one forward pass in all instead of one per
    step. Kept in the job directory: a resumed job's weights are no longer the starting ones."""
    if not path.exists() and distributed.is_main():  # under torchrun: rank 0 computes, the others read
        reporter.on_message(f"Computing the reference log-probabilities of {len(pairs)} preference pairs")
        losses.attach_reference(model, pairs, pad_id, precision=precision)
        buffer = io.BytesIO()
        torch.save(torch.tensor([p.reference for p in pairs], dtype=torch.float64), buffer)
        write_atomic(path, buffer.getvalue())
    distributed.barrier()
    for pair, reference in zip(pairs, torch.load(path).tolist(), strict=True):
        pair.reference = tuple(reference)


def build_model(info: BaseInfo, previous: Path | None, spec: TrainSpec):
    if spec.method == "full":
        return load_model(BaseInfo(info.name, previous, info.end_of_turn) if previous else info)
    from peft import LoraConfig, PeftModel, get_peft_model

    base = load_model(info)
    if previous is not None:
        return PeftModel.from_pretrained(base, previous, is_trainable=True)
    config = LoraConfig(
        r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
        target_modules=LORA_TARGETS[spec.lora_targets], task_type="CAUSAL_LM",
        # Tokens we added for the chat template start untrained; train just their rows.
        trainable_token_indices={"embed_tokens": info.added_token_ids} if info.added_token_ids else None,
    )
    return get_peft_model(base, config)


# --- the job process: `python -m tunesmith.train.run JOB_DIR` -------------------------------------

SPEC_FILE, RESULT_FILE = "spec.json", "result.json"
NPROC_KEY = "nproc_per_node"  # the order's number of processes to train on (one machine, torchrun)
EXIT_STOPPED = 3


class EventReporter(JobReporter):
    """Writes the job's progress to its event log, with the metric names OpenAI uses."""

    def __init__(self, log):
        self.log = log
        self.started = time.time()
        self.first_step: int | None = None

    def on_message(self, message: str) -> None:
        # Keyed by content: a job re-run after a crash repeats its opening lines, once in the store.
        self.log.write("event", key="msg-" + hashlib.sha1(message.encode()).hexdigest()[:16], message=message)

    def on_validated(self, report: Report) -> None:
        for warning in report.warnings[:20]:
            self.on_message(f"Warning: {Path(report.path).name}: {warning}")

    def on_start(self, total_steps: int, start_step: int) -> None:
        self.started, self.first_step = time.time(), start_step
        self.log.write("event", message=f"Training started at step {start_step} of {total_steps}")

    def on_step(self, m: dict) -> None:
        done = m["step"] - self.first_step
        eta = time.time() + (time.time() - self.started) / done * (m["total_steps"] - m["step"])
        data = {k: m[k] for k in ("step", "total_steps", "elapsed_tokens", "elapsed_examples", *_CHECKPOINT_METRICS)
                if k in m}
        valid = f", validation loss={m['valid_loss']:.4f}" if "valid_loss" in m else ""
        self.log.write("event", key=f"step-{m['step']}", type="metrics", message=f"Step {m['step']}/{m['total_steps']}: "
                       f"training loss={m['train_loss']:.4f}{valid}", data=data, estimated_finish=int(eta))

    def on_checkpoint(self, ckpt: loop.Checkpoint) -> None:
        metrics = {"step": ckpt.step, **{k: v for k, v in ckpt.metrics.items() if k in _CHECKPOINT_METRICS}}
        # Evaluated on the whole validation file; answers are scored on its first answers.MAX_QUESTIONS only.
        for name in [k for k in metrics if k.startswith("valid_") and k not in answers.METRICS]:
            metrics[f"full_{name}"] = metrics[name]
        self.log.write("checkpoint", key=f"ckpt-{ckpt.step}", step=ckpt.step, epoch=ckpt.epoch,
                       path=str(ckpt.path), metrics=metrics)


# Step metrics as OpenAI names them (supervised) and as TRL names them (DPO, GRPO); validation ones are
# "valid_" + the name without "train_".
_STEP_METRICS = ("train_loss", "train_mean_token_accuracy", *losses.DPO_METRICS, *grpo.METRICS)
_CHECKPOINT_METRICS = (*_STEP_METRICS, *("valid_" + m.removeprefix("train_") for m in _STEP_METRICS), *answers.METRICS)


def _die_with_parent() -> None:
    """Linux: end this process when the service that started it dies, even by kill -9.

    The kernel sends the signal when the *thread* that started this process ends, so the worker
    keeps its thread alive until its job processes have stopped."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    from tunesmith.config import quiet_libraries
    from tunesmith.train.events import EVENTS_FILE, EventLog

    job_dir = Path((argv or sys.argv[1:])[0])
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 1
    try:
        nproc = json.loads((job_dir / SPEC_FILE).read_text()).get(NPROC_KEY, 1)
    except (OSError, ValueError, AttributeError):
        nproc = 1  # the run below fails the job with what is wrong with its order
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet under torchrun: become its agent
        return distributed.start_ranks(nproc, ["-m", "tunesmith.train.run", str(job_dir)],
                                       get_settings().shutdown_grace_seconds)
    stop = {"requested": False}
    # SIGTERM is the worker's way to stop a job; Ctrl-C on a terminal running `tunesmith serve`
    # reaches its job processes too, and must checkpoint the same way rather than tear a step.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.update(requested=True))
    quiet_libraries()
    if distributed.is_main():
        (job_dir / RESULT_FILE).unlink(missing_ok=True)  # a result is only ever this run's
    try:
        order = json.loads((job_dir / SPEC_FILE).read_text())
        spec = TrainSpec(**order["spec"])
        spec.training_file = Path(spec.training_file)
        spec.validation_file = Path(spec.validation_file) if spec.validation_file else None
        start = order.get("start")
        if start is not None:
            start = finetuned.ResolvedModel(**{**start, "weights": start["weights"] and Path(start["weights"])})
        result = run_job(spec, EventReporter(EventLog(job_dir / EVENTS_FILE)), stop_requested=lambda: stop["requested"],
                         job_id=job_dir.name, model_id=order["model_id"], start=start)
        outcome = result.as_dict()
    except TunesmithError as exc:
        outcome = {"status": "failed", "error": str(exc)}
    except Exception as exc:  # a bug: its traceback goes to the job's log, the job fails with its gist
        traceback.print_exc()
        outcome = {"status": "failed", "error": f"internal error: {type(exc).__name__}: {exc} "
                                                f"(traceback in {job_dir / 'process.log'})"}
    if distributed.is_main():
        write_atomic(job_dir / RESULT_FILE, json.dumps(outcome).encode())
    distributed.close()
    return {"succeeded": 0, "stopped": EXIT_STOPPED}.get(outcome["status"], 1)


if __name__ == "__main__":
    sys.exit(main())
