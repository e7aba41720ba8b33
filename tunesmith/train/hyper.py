""""auto" hyperparameters and the learning-rate schedule.

Epochs follow OpenAI's published rule (cookbook: target 3 epochs, at least ~100 example passes,
at most ~25k). OpenAI does not publish its batch-size or learning-rate rules; ours aim at about
40 optimizer steps per epoch and a base learning rate per method that a multiplier scales.
DPO uses the same epoch and batch rules (as OpenAI does) and a beta, "auto" = 0.1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tunesmith.data.validate import MIN_EXAMPLES
from tunesmith.errors import TunesmithError

BASE_LEARNING_RATE = {"lora": 5e-4, "full": 3e-5, "dpo": 5e-5}
DEFAULT_BETA = 0.1  # TRL's default, and OpenAI's "auto"
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
    beta: float | None = None  # DPO only
    rpo_alpha: float | None = None  # DPO only
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
        """", beta 0.1, rpo_alpha 1" for DPO, to end a line that lists the hyperparameters; else ""."""
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
            answer_tokens: float | None = None) -> Hyperparameters:
    """Turn user values (numbers, numeric strings or "auto") into concrete hyperparameters.

    ``answer_tokens``: the training examples' mean answer tokens (``mean_answer_tokens``); an SFT job's
    learning rate is scaled by ``answer_token_scale`` with it. None: not scaled (DPO never is: its loss
    is one per pair, not a mean over tokens)."""
    if n_examples < MIN_EXAMPLES:
        raise TunesmithError(f"at least {MIN_EXAMPLES} training examples are required, got {n_examples}")
    epochs = _parse(n_epochs, "n_epochs", int, 1) or auto_epochs(n_examples)
    batch = _parse(batch_size, "batch_size", int, 1) or auto_batch_size(n_examples)
    mult = _parse(learning_rate_multiplier, "learning_rate_multiplier", float, 1e-6) or 1.0
    dpo_beta = _parse(beta, "beta", float, 1e-6) or DEFAULT_BETA
    alpha = _parse(rpo_alpha, "rpo_alpha", float, 0.0)
    if method != "dpo" and (beta not in (None, "auto") or rpo_alpha not in (None, "auto")):
        raise TunesmithError("beta and rpo_alpha apply only to the DPO method")
    batch = min(batch, n_examples)
    scale = answer_token_scale(answer_tokens, batch) if answer_tokens is not None and method != "dpo" else 1.0
    return Hyperparameters(epochs, batch, mult, BASE_LEARNING_RATE[method] * mult * scale,
                           dpo_beta if method == "dpo" else None,
                           (DEFAULT_RPO_ALPHA if alpha is None else alpha) if method == "dpo" else None,
                           (scale, answer_tokens * batch) if scale < 1 else None)


def lr_lambda(total_steps: int):
    """Linear warm-up over the first 10 % of steps, then linear decay to zero."""
    warmup = max(1, int(total_steps * WARMUP_FRACTION))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor
