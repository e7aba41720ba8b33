"""The one training loop: steps, validation, per-epoch checkpoints, early stop, clean stop, resume.

What a step minimises is the config's ``objective`` (``losses.py``): SFT on tokenized examples, DPO
on preference pairs whose reference log-probs were attached before training, or GRPO on prompts
(``grpo.py``: it samples and grades its own answers inside the step). A step's items are
packed into rows (``batching.py``) and run in the config's ``precision`` (``precision.py``).

It knows nothing of files, databases or terminals: progress goes to a ``Reporter`` and a stop is
asked through ``stop_requested`` (checked between optimizer steps, so a stop never leaves a
half-applied update). With a validation set, the overfitting guard evaluates every epoch (and every
``eval_steps`` steps when set); at each epoch's end it may also score the model's greedy answers to
validation questions (the config's ``answer_scorer``, which the job builds: the loop knows no
tokenizer). The best checkpoint is the one whose answers are most often exactly right, then the one
with the lowest validation loss (``best_checkpoint``); the guard stops once ``patience`` epochs in a
row brought no better one, and names the best as the result. A checkpoint holds everything
needed to continue bit-for-bit: trained weights, optimizer, schedule, step and RNG state; the
data order is a function of (seed, epoch).
"""

from __future__ import annotations

import math
import shutil
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from tunesmith.atomic import fsync_dir, fsync_tree
from tunesmith.config import PrecisionSetting
from tunesmith.data.batching import DEFAULT_MICRO_BATCH_TOKENS, epoch_order, micro_batches, shard, take
from tunesmith.data.tokenize import Pair, Tokenized
from tunesmith.errors import TunesmithError
from tunesmith.train import distributed
from tunesmith.train.hyper import DEFAULT_PATIENCE, lr_lambda
from tunesmith.train.losses import SFT, Objective
from tunesmith.train.precision import device_of, resolve

STATE_FILE = "trainer_state.pt"


@dataclass
class LoopConfig:
    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    micro_batch_tokens: int = DEFAULT_MICRO_BATCH_TOKENS
    objective: Objective = field(default_factory=SFT)  # SFT on examples, or DPO on preference pairs
    eval_steps: int | None = None  # also evaluate every N steps (reported with that step's metrics)
    patience: int | None = DEFAULT_PATIENCE  # epochs without a better checkpoint before stopping; None: guard off
    precision: PrecisionSetting = "fp32"  # the job passes the settings' choice ("auto" unless set)
    # On many processes, shard the decoder's layers (FSDP2, distributed.shard_layers): for full
    # fine-tuning, where every weight trains; an adapter's few weights are cheaper kept whole.
    shard_layers: bool = False
    # Scores of greedy answers to validation questions (valid_exact_match, …), added to each epoch's
    # validation metrics; None: the validation loss alone judges the epochs.
    answer_scorer: Callable[[torch.nn.Module], dict[str, float]] | None = None
    neftune_alpha: float = 0.0  # noise on the input embeddings while training (noisy_embeddings); 0: none


@dataclass
class Checkpoint:
    step: int
    epoch: int
    path: Path
    metrics: dict[str, float]


@dataclass
class LoopResult:
    completed: bool  # False: stopped on request before the last step
    step: int
    trained_tokens: int
    metrics: dict[str, float]
    checkpoints: list[Checkpoint] = field(default_factory=list)
    best: Checkpoint | None = None  # the guard's choice, see best_checkpoint (None: guard off or no validation)
    early_stopped: bool = False  # ended by the guard before the last epoch


class NonFiniteLoss(TunesmithError):
    """Training diverged: the step's loss or gradient is NaN or infinite; no update was applied."""

    def __init__(self, step: int, loss: float, grad_norm: float, last_good: Checkpoint | None):
        where = (f"the last good checkpoint is step {last_good.step} (epoch {last_good.epoch}): {last_good.path}"
                 if last_good else "there is no checkpoint yet")
        super().__init__(f"training stopped at step {step}: the loss is {loss:g} and the gradient norm "
                         f"{grad_norm:g}, not finite numbers; {where}. A lower learning rate (multiplier) "
                         "usually avoids this")
        self.step, self.last_good = step, last_good


class CorruptCheckpoint(TunesmithError):
    def __init__(self, path: Path, exc: Exception):
        super().__init__(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); the job cannot resume "
                         "from it (deleting that directory makes the job start over)")


class Reporter(Protocol):
    def on_start(self, total_steps: int, start_step: int) -> None: ...
    def on_step(self, metrics: dict[str, float]) -> None: ...
    def on_checkpoint(self, checkpoint: Checkpoint) -> None: ...


def train(model, train_set: list[Tokenized] | list[Pair], cfg: LoopConfig, checkpoint_dir: Path,
          reporter: Reporter, pad_id: int, valid_set: list[Tokenized] | list[Pair] | None = None,
          resume_from: Path | None = None, stop_requested: Callable[[], bool] = lambda: False) -> LoopResult:
    with noisy_embeddings(model, cfg.neftune_alpha):
        return _train(model, train_set, cfg, checkpoint_dir, reporter, pad_id, valid_set, resume_from, stop_requested)


@contextmanager
def noisy_embeddings(model, alpha: float):
    """NEFTune (Jain et al. 2023; transformers' ``neftune_noise_alpha``): while the model trains, add
    uniform noise of magnitude alpha / sqrt(length × width) to its input embeddings, so it cannot lean
    on the exact vectors of the training lines' words. Validation (eval mode) sees clean embeddings.
    Our rows are packed, so "length" is the packed row's, not one example's, as in transformers."""
    if not alpha:
        yield
        return

    def add_noise(module, inputs, output):
        if not module.training:
            return output
        bound = alpha / math.sqrt(output.size(1) * output.size(2))
        return output + torch.empty_like(output).uniform_(-bound, bound)

    handle = model.get_input_embeddings().register_forward_hook(add_noise)
    try:
        yield
    finally:
        handle.remove()


def _train(model, train_set, cfg: LoopConfig, checkpoint_dir: Path, reporter: Reporter, pad_id: int,
           valid_set, resume_from: Path | None, stop_requested: Callable[[], bool]) -> LoopResult:
    objective = cfg.objective
    amp = resolve(cfg.precision, device_of(model))
    # Once per run, not per step: what the data order does not change.
    lengths = [objective.length(t) for t in train_set]
    weights = [objective.weight(t) for t in train_set]
    steps_per_epoch = len(epoch_order(len(train_set), cfg.batch_size, cfg.seed, 0))
    total_steps = steps_per_epoch * cfg.n_epochs
    distributed.broadcast_params(model)
    sharded = cfg.shard_layers and distributed.shard_layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    rank, world_size = distributed.rank(), distributed.world_size()
    # One tensor at a time where shards and whole tensors mix: the multi-tensor kernels take one kind.
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  foreach=False if sharded else None)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps))

    step, trained_tokens, checkpoints = 0, 0, []
    torch.manual_seed(cfg.seed)
    if resume_from is not None:
        try:
            state = torch.load(resume_from / STATE_FILE, weights_only=False)
        except Exception as exc:
            raise CorruptCheckpoint(resume_from, exc) from exc
        optimizer.load_state_dict(state["optimizer"])
        distributed.shard_optimizer_state(optimizer)
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        step, trained_tokens = state["step"], state["trained_tokens"]
        checkpoints = [Checkpoint(c["step"], c["epoch"], Path(c["path"]), c["metrics"])
                       for c in state["checkpoints"]]

    reporter.on_start(total_steps, step)
    model.train()
    started, tokens_seen, metrics = time.perf_counter(), 0, {}
    evaluating = 0.0  # seconds spent on validation, left out of tokens/s

    def validate(answers: bool = False) -> dict[str, float]:
        nonlocal evaluating
        began = time.perf_counter()
        result = evaluate(model, valid_set, pad_id, cfg.micro_batch_tokens, objective, cfg.precision)
        if answers and cfg.answer_scorer is not None:  # generation: rank 0 alone, the others take its scores
            with distributed.gathered(model):
                result |= distributed.from_main(cfg.answer_scorer(model) if distributed.is_main() else None)
        model.train()
        evaluating += time.perf_counter() - began
        return result

    def guarded_best() -> Checkpoint | None:
        return best_checkpoint(checkpoints) if cfg.patience is not None else None

    def guard_says_stop(epochs_done: int) -> bool:
        best = guarded_best()
        return best is not None and epochs_done - best.epoch >= cfg.patience and epochs_done < cfg.n_epochs

    # A run killed right after the checkpoint that made the guard stop must not train another epoch.
    if step and step % steps_per_epoch == 0 and guard_says_stop(step // steps_per_epoch):
        return LoopResult(True, step, trained_tokens, checkpoints[-1].metrics, checkpoints, guarded_best(),
                          early_stopped=True)
    for epoch in range(step // steps_per_epoch, cfg.n_epochs):
        order = epoch_order(len(train_set), cfg.batch_size, cfg.seed, epoch)
        for indices in order[step - epoch * steps_per_epoch :]:
            weight = sum(weights[i] for i in indices)  # the whole step's, on every rank
            sums: Counter[str] = Counter()
            groups = micro_batches(shard(indices, lengths, rank, world_size), lengths, cfg.micro_batch_tokens)
            filler = [[min(indices, key=lengths.__getitem__)]]  # the step's shortest item, not counted
            for group, counts in distributed.lockstep(groups, filler, sharded):
                with amp.autocast():
                    loss, stats = objective(model, take(group, train_set), pad_id)
                (loss / weight * counts).backward()
                if counts:
                    sums.update(stats)
            distributed.all_reduce_grads(params)
            sums = distributed.summed(sums)
            tokens_seen += sum(lengths[i] for i in indices)
            grad_norm = distributed.clip_grad_norm(params, cfg.max_grad_norm)
            # Checked before the update: one NaN or inf step would poison every weight it touches.
            if not (math.isfinite(sums.get("train_loss", 0.0)) and torch.isfinite(grad_norm)):
                raise NonFiniteLoss(step + 1, sums.get("train_loss", 0.0) / weight, grad_norm.item(),
                                    checkpoints[-1] if checkpoints else None)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            trained_tokens += sum(lengths[i] for i in indices)
            elapsed = time.perf_counter() - started - evaluating
            # every step of an epoch takes batch_size examples but its last, which takes the rest
            examples = (step // steps_per_epoch) * len(train_set) + min(
                (step % steps_per_epoch) * cfg.batch_size, len(train_set))
            metrics = {"step": step, "total_steps": total_steps, "epoch": epoch + 1,
                       "elapsed_tokens": trained_tokens, "elapsed_examples": examples,
                       **{name: total / weight for name, total in sums.items()},
                       "learning_rate": schedule.get_last_lr()[0], "tokens_per_second": tokens_seen / elapsed}
            if valid_set and cfg.eval_steps and step % cfg.eval_steps == 0 and step % steps_per_epoch:
                metrics.update(validate())
            reporter.on_step(metrics)
            if distributed.any_rank(stop_requested()) and step % steps_per_epoch:
                _save(model, optimizer, schedule, checkpoint_dir, step, epoch + 1, metrics,
                      trained_tokens, checkpoints, reporter, keep=False)
                return LoopResult(False, step, trained_tokens, metrics, checkpoints)
        if valid_set:
            metrics = {**metrics, **validate(answers=True)}  # a new dict: the reporter may keep the step's
        _save(model, optimizer, schedule, checkpoint_dir, step, epoch + 1, metrics, trained_tokens,
              checkpoints, reporter, keep=True)
        if guard_says_stop(epoch + 1):
            return LoopResult(True, step, trained_tokens, metrics, checkpoints, guarded_best(), early_stopped=True)
        if distributed.any_rank(stop_requested()) and step < total_steps:
            return LoopResult(False, step, trained_tokens, metrics, checkpoints)
    return LoopResult(True, step, trained_tokens, metrics, checkpoints, guarded_best())


def best_checkpoint(checkpoints: list[Checkpoint]) -> Checkpoint | None:
    """The checkpoint with the highest ``valid_exact_match``, then the lowest validation loss, then the
    earliest; None without validation. Without answer scores (DPO, no scorer) the loss alone decides;
    a reinforcement job's checkpoints have no loss to compare but the grader's mean on the validation
    prompts (``valid_reward_mean``), the highest of which wins.

    Exact answers come first because they are what the model is used for, and the two can disagree:
    the loss averages over every reference token, so it can fall while answers to unseen names and
    phrasings get worse (the model grows surer of the tokens it had right), or rise on a few confident
    mistakes while more answers come out right.

    Derived from the checkpoints' own metrics, so a resumed run needs no extra state to go on guarding."""
    scored = [c for c in checkpoints if "valid_loss" in c.metrics or "valid_reward_mean" in c.metrics]
    return min(scored, key=lambda c: (-c.metrics.get("valid_exact_match", 0.0), -c.metrics.get("valid_reward_mean", 0.0),
                                      c.metrics.get("valid_loss", 0.0), c.step), default=None)


def _save(model, optimizer, schedule, checkpoint_dir: Path, step: int, epoch: int, metrics: dict,
          trained_tokens: int, checkpoints: list[Checkpoint], reporter: Reporter, keep: bool) -> None:
    """Write a checkpoint; only the newest keeps the (large) optimizer state needed to resume.

    ``keep=False`` marks a stop checkpoint: resumable, but not listed as a per-epoch checkpoint. Under
    torchrun rank 0 alone writes it (every rank holds the same weights and optimizer state) and every
    rank lists it."""
    path = checkpoint_dir / f"step-{step:06d}"
    ckpt = Checkpoint(step, epoch, path, {k: float(v) for k, v in metrics.items()})
    weights, optimizer_state = distributed.full_state(model, optimizer)  # every rank: gathers shards
    if distributed.is_main():
        listed = checkpoints + [ckpt] if keep else checkpoints
        _write(model, weights, optimizer_state, schedule, checkpoint_dir, ckpt, trained_tokens, listed)
    if keep:
        checkpoints.append(ckpt)
        reporter.on_checkpoint(ckpt)


def _write(model, weights: dict | None, optimizer_state: dict, schedule, checkpoint_dir: Path, ckpt: Checkpoint,
           trained_tokens: int, listed: list[Checkpoint]) -> None:
    path = ckpt.path
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, **({} if weights is None else {"state_dict": weights}))
    torch.save({"optimizer": optimizer_state, "schedule": schedule.state_dict(),
                "rng": torch.get_rng_state(), "step": ckpt.step, "trained_tokens": trained_tokens,
                "checkpoints": [{"step": c.step, "epoch": c.epoch, "path": str(c.path), "metrics": c.metrics}
                                for c in listed]}, tmp / STATE_FILE)
    fsync_tree(tmp)  # a checkpoint that a later run resumes from must be whole on disk, not only in cache
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    fsync_dir(checkpoint_dir)
    for older in checkpoint_dir.glob(f"step-*/{STATE_FILE}"):
        if older.parent != path:
            older.unlink()


def resumable_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint that holds trainer state (only the newest one ever does)."""
    found = [p.parent for p in checkpoint_dir.glob(f"step-*/{STATE_FILE}") if p.parent.suffix != ".tmp"]
    return max(found, default=None)


@torch.no_grad()
def evaluate(model, dataset: list[Tokenized] | list[Pair], pad_id: int,
             micro_batch_tokens: int = DEFAULT_MICRO_BATCH_TOKENS, objective: Objective = SFT(),
             precision: PrecisionSetting = "fp32") -> dict[str, float]:
    """The objective's step metrics over a whole dataset, each named ``valid_`` + its name without
    ``train_`` (valid_loss, valid_mean_token_accuracy, valid_rewards/accuracies, …)."""
    model.eval()
    amp = resolve(precision, device_of(model))
    sums: Counter[str] = Counter()
    lengths = [objective.length(t) for t in dataset]
    mine = shard(list(range(len(dataset))), lengths, distributed.rank(), distributed.world_size())
    filler = [[min(range(len(dataset)), key=lengths.__getitem__, default=0)]]
    for group, counts in distributed.lockstep(micro_batches(mine, lengths, micro_batch_tokens), filler,
                                              distributed.is_sharded(model)):
        with amp.autocast():
            stats = objective(model, take(group, dataset), pad_id)[1]
        if counts:
            sums.update(stats)
    sums = distributed.summed(sums)
    weight = max(sum(objective.weight(t) for t in dataset), 1)
    return {"valid_" + name.removeprefix("train_"): total / weight for name, total in sums.items()}
