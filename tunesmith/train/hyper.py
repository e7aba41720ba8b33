""""auto" hyperparameters and the learning-rate schedule.

Epochs follow OpenAI's published rule (cookbook: target 3 epochs, at least ~100 example passes,
at most ~25k). OpenAI does not publish its batch-size or learning-rate rules; ours aim at about
40 optimizer steps per epoch and a base learning rate per method that a multiplier scales.
DPO uses the same epoch and batch rules (as OpenAI does) and a beta, "auto" = 0.1; reinforcement
fine-tuning the same rules over its prompts, a group of answers for each, and a KL weight.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tunesmith.data.validate import MIN_EXAMPLES
from tunesmith.errors import TunesmithError

BASE_LEARNING_RATE = {"lora": 5e-4, "full": 3e-5, "dpo": 5e-5, "reinforcement": 2e-4}
DEFAULT_BETA = 0.1  # TRL's default, and OpenAI's "auto"
# Reinforcement fine-tuning (GRPO, train/grpo.py). The KL weight is DeepSeekMath's 0.04 (TRL's default
# until it moved to 0); 8 answers a prompt is TRL's num_generations; answers longer than 256 tokens are
# cut there (a grader scores what was written).
DEFAULT_KL_BETA = 0.04
DEFAULT_GROUP_SIZE = 8
DEFAULT_MAX_COMPLETION_TOKENS = 256
# Upper bounds a client may ask for: a step samples group_size × batch_size answers of up to
# max_completion_tokens each, all held in memory at once.
MAX_GROUP_SIZE = 64
MAX_COMPLETION_TOKENS = 4096
# DPO adds this times the chosen answers' mean token NLL (RPO; TRL's ``rpo_alpha``). Without it the
# model learns what *not* to say more than what to say: measured on the sign-off data, pure DPO
# pushed the end-of-turn token down everywhere and tuned answers ran on past their sign-off.
DEFAULT_RPO_ALPHA = 1.0  # the RPO paper's and TRL's recommended value
# Below this many answer tokens in a step, an SFT learning rate falls with the square root of their
# number: the loss is a mean over answer tokens, so with few of them a step's gradient is noisy, and
# Adam's square-root scaling rule (Malladi et al., 2022, "On the SDEs and Scaling Rules for Adaptive
# Gradient Algorithms") keeps the noise of the updates the same. Measured on the quality suite
# (README, "Quality benchmark"): a one-word classifier (about 10 answer tokens a step) at the full base
# rate got 69 % on one seed of three, the guard keeping its first epoch; at about 0.4 of it, 92 % on all
# three. The suite's other tasks have 120 or more answer tokens a step and keep the base rate.
SHORT_STEP_TOKENS = 64
WARMUP_FRACTION = 0.1
# The overfitting guard stops after this many epochs in a row without a better checkpoint (loop.best_checkpoint).
DEFAULT_PATIENCE = 2


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float  # the method's base rate x the multiplier x answer_token_scale
    beta: float | None = None  # DPO's, or the KL penalty's weight of reinforcement fine-tuning
    rpo_alpha: float | None = None  # DPO only
    group_size: int | None = None  # reinforcement only: answers sampled for each prompt
    max_completion_tokens: int | None = None  # reinforcement only
    # Where answer_token_scale lowered the learning rate: the factor and the answer tokens a step.
    # Not a hyperparameter a client sets, so not in as_dict (the API's job objects).
    short_answers: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "short_answers"}

    @property
    def rate_text(self) -> str:
        """", scaled by 0.43 for 12 answer tokens a step" where short answers lowered the learning rate; else ""."""
        if self.short_answers is None:
            return ""
        scale, tokens = self.short_answers
        return f", scaled by {scale:.2f} for {tokens:.0f} answer tokens a step"

    @property
    def dpo_text(self) -> str:
        """", beta 0.1, rpo_alpha 1" for DPO (", 8 answers a prompt, …" for reinforcement), to end a line
        that lists the hyperparameters; else ""."""
        if self.group_size is not None:
            return (f", {self.group_size} answers a prompt of at most {self.max_completion_tokens} tokens, "
                    f"KL beta {self.beta:g}")
        return f", beta {self.beta:g}, rpo_alpha {self.rpo_alpha:g}" if self.beta is not None else ""


def auto_epochs(n_examples: int) -> int:
    if n_examples * 3 < 100:
        return min(25, 100 // n_examples)
    if n_examples * 3 > 25_000:
        return max(1, 25_000 // n_examples)
    return 3


def auto_batch_size(n_examples: int) -> int:
    return int(min(256, max(1, 2 ** round(math.log2(n_examples / 40)))))


def mean_answer_tokens(examples) -> float:
    """The examples' mean number of answer tokens (what the SFT loss is a mean over)."""
    return sum(e.n_trained for e in examples) / max(1, len(examples))


def answer_token_scale(answer_tokens: float, batch_size: int) -> float:
    """The factor on an SFT learning rate for steps of ``batch_size`` examples with ``answer_tokens``
    answer tokens each: 1 from SHORT_STEP_TOKENS a step up, their square root's share below."""
    return min(1.0, math.sqrt(answer_tokens * batch_size / SHORT_STEP_TOKENS))


def _parse(value, name: str, cast, minimum):
    if value is None or value == "auto":
        return None
    try:
        parsed = cast(value)
    except (TypeError, ValueError):
        raise TunesmithError(f"{name} must be a number or \"auto\", got {value!r}") from None
    if parsed < minimum or (isinstance(parsed, float) and not math.isfinite(parsed)):
        raise TunesmithError(f"{name} must be at least {minimum}, got {value!r}")
    return parsed


def resolve(n_examples: int, method: str, n_epochs="auto", batch_size="auto",
            learning_rate_multiplier="auto", beta="auto", rpo_alpha="auto",
            answer_tokens: float | None = None, group_size="auto", max_completion_tokens="auto") -> Hyperparameters:
    """Turn user values (numbers, numeric strings or "auto") into concrete hyperparameters.

    ``answer_tokens``: the training examples' mean answer tokens (``mean_answer_tokens``); an SFT job's
    learning rate is scaled by ``answer_token_scale`` with it. None: not scaled (DPO never is: its loss
    is one per pair, not a mean over tokens)."""
    if n_examples < MIN_EXAMPLES:
        raise TunesmithError(f"at least {MIN_EXAMPLES} training examples are required, got {n_examples}")
    epochs = _parse(n_epochs, "n_epochs", int, 1) or auto_epochs(n_examples)
    batch = _parse(batch_size, "batch_size", int, 1) or auto_batch_size(n_examples)
    mult = _parse(learning_rate_multiplier, "learning_rate_multiplier", float, 1e-6) or 1.0
    rft = method == "reinforcement"
    # 0 is a KL weight (no reference), not a DPO beta
    given_beta = _parse(beta, "beta", float, 0.0 if rft else 1e-6)
    alpha = _parse(rpo_alpha, "rpo_alpha", float, 0.0)
    if method not in ("dpo", "reinforcement") and beta not in (None, "auto"):
        raise TunesmithError("beta applies only to the DPO and reinforcement methods")
    if method != "dpo" and rpo_alpha not in (None, "auto"):
        raise TunesmithError("rpo_alpha applies only to the DPO method")
    if not rft and (group_size not in (None, "auto") or max_completion_tokens not in (None, "auto")):
        raise TunesmithError("group_size and max_completion_tokens apply only to the reinforcement method")
    group = _parse(group_size, "group_size", int, 2) or DEFAULT_GROUP_SIZE
    completion = _parse(max_completion_tokens, "max_completion_tokens", int, 1) or DEFAULT_MAX_COMPLETION_TOKENS
    if group > MAX_GROUP_SIZE or completion > MAX_COMPLETION_TOKENS:
        raise TunesmithError(f"group_size may be at most {MAX_GROUP_SIZE} and max_completion_tokens at most "
                             f"{MAX_COMPLETION_TOKENS}; got {group} and {completion}")
    batch = min(batch, n_examples)
    scale = answer_token_scale(answer_tokens, batch) if answer_tokens is not None and method in ("lora", "full") else 1.0
    default_beta = {"dpo": DEFAULT_BETA, "reinforcement": DEFAULT_KL_BETA}.get(method)
    return Hyperparameters(epochs, batch, mult, BASE_LEARNING_RATE[method] * mult * scale,
                           (default_beta if given_beta is None else given_beta) if default_beta is not None else None,
                           (DEFAULT_RPO_ALPHA if alpha is None else alpha) if method == "dpo" else None,
                           group if rft else None, completion if rft else None,
                           (scale, answer_tokens * batch) if scale < 1 else None)


def lr_lambda(total_steps: int):
    """Linear warm-up over the first 10 % of steps, then linear decay to zero."""
    warmup = max(1, int(total_steps * WARMUP_FRACTION))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor
