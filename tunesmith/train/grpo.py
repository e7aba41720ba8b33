"""Reinforcement fine-tuning: GRPO (Shao et al., 2024, DeepSeekMath) against a grader, as a loop objective.

A step's items are prompts. For each, the objective samples a group of answers from the model being
trained, has the job's grader score them (``tunesmith.graders``), and turns each score into an
advantage relative to its group: (reward − group mean) / (group std + ε), so no value model is
needed. The loss raises the log-probability of the answers that beat their group and lowers the
others', token by token, plus ``beta`` times the KL divergence from the reference model (the
weights the job started from; the k3 estimator, exp(ref − π) − (ref − π) − 1, as TRL computes it).

One optimizer step per group of samples (TRL's ``num_iterations=1``), so the policy that sampled is
the one being updated: the importance ratio is exp(π − π.detach()) = 1 with π's gradient, and PPO's
clipping never binds. Each answer's loss is its mean over its tokens, a prompt's the mean over its
group (TRL's ``loss_type="grpo"``); the loop averages over the step's prompts (``weight`` 1 each).

Everything else is the supervised loop's: the data order, checkpoints with the RNG state (sampling
draws from torch's generator, so a resumed job samples what an uninterrupted one would have), stop
and resume, events. Under no_grad (the loop's validation) the objective answers each prompt greedily
and reports the mean grade, which the loop names ``valid_reward_mean``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tunesmith.config import PrecisionSetting
from tunesmith.data.batching import collate
from tunesmith.data.tokenize import IGNORE, Prompt, Tokenized
from tunesmith.train.answers import greedy
from tunesmith.train.losses import token_logps

# Step metrics (OpenAI's RFT dashboards show reward; TRL logs the same four as reward, reward_std, kl,
# completion_length). Validation adds valid_reward_mean.
METRICS = ("train_reward_mean", "train_reward_std", "train_kl", "train_completion_length", "train_grader_errors")
ADVANTAGE_EPS = 1e-4  # TRL's: a group whose answers all scored alike gets advantages of 0, not 0/0

Grade = Callable[[list[str], list[dict]], list[tuple[float, str | None]]]  # (answers, items) → (score, error)


@dataclass
class GRPO:
    grade: Grade
    decode: Callable[[list[int]], str]
    stop_ids: list[int]
    end_id: int  # the token that closes an answer the model finished (the end of its turn), trained too
    group_size: int
    max_completion_tokens: int
    beta: float  # weight of the KL penalty to the reference; 0: no reference forward at all
    temperature: float = 1.0
    reference: dict[str, torch.Tensor] | None = None  # the trained weights' starting values, by name
    precision: PrecisionSetting = "fp32"

    def weight(self, item: Prompt) -> int:
        return 1

    def length(self, item: Prompt) -> int:
        """What a prompt costs a step, at most: its group's prompts and answers."""
        return self.group_size * (item.n_tokens + self.max_completion_tokens)

    def __call__(self, model, rows: list[list[Prompt]], pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
        prompts = [p for row in rows for p in row]
        if not torch.is_grad_enabled():
            return self._validate(model, prompts, pad_id)
        repeated = [p for p in prompts for _ in range(self.group_size)]
        answers = greedy(model, [p.input_ids for p in repeated], self.max_completion_tokens, pad_id, self.stop_ids,
                         self.precision, batch_size=len(repeated), temperature=self.temperature)
        graded = self.grade([self.decode(a) for a in answers], [p.item for p in repeated])
        rewards = torch.tensor([score for score, _ in graded]).view(len(prompts), self.group_size)
        mean, std = rewards.mean(1, keepdim=True), rewards.std(1, keepdim=True, correction=0)
        advantages = ((rewards - mean) / (std + ADVANTAGE_EPS)).view(-1)

        sequences = [self._sequence(p, a) for p, a in zip(repeated, answers, strict=True)]
        batch = collate([[s] for s in sequences], pad_id)
        if self.beta:
            with torch.no_grad(), reference_weights(model, self.reference):
                reference, _, _ = token_logps(model, batch)
        logps, _, sequence = token_logps(model, batch)
        sequence = sequence.to(logps.device)
        tokens = torch.bincount(sequence, minlength=len(sequences)).clamp(min=1).to(logps.dtype)
        # exp(π − π.detach()) is 1 with π's gradient: the policy-gradient term of PPO's ratio, unclipped.
        per_token = -torch.exp(logps - logps.detach()) * advantages.to(logps)[sequence]
        kl = torch.zeros_like(logps)
        if self.beta:
            delta = reference - logps
            kl = torch.exp(delta) - delta - 1
            per_token = per_token + self.beta * kl
        per_answer = logps.new_zeros(len(sequences)).index_add(0, sequence, per_token) / tokens
        loss = per_answer.view(len(prompts), self.group_size).mean(1).sum()
        answer_kl = logps.new_zeros(len(sequences)).index_add(0, sequence, kl.detach()) / tokens
        stats = {"train_loss": float(loss.detach()), "train_reward_mean": float(mean.sum()),
                 "train_reward_std": float(std.sum()),
                 "train_kl": float(answer_kl.view(len(prompts), self.group_size).mean(1).sum()),
                 "train_completion_length": sum(map(len, answers)) / self.group_size,
                 "train_grader_errors": sum(error is not None for _, error in graded) / self.group_size}
        return loss, stats

    def _sequence(self, prompt: Prompt, answer: list[int]) -> Tokenized:
        finished = len(answer) < self.max_completion_tokens  # greedy() cut it at a stop token
        completion = answer + [self.end_id] if finished else answer
        ids = prompt.input_ids + completion
        return Tokenized(ids, [IGNORE] * prompt.n_tokens + completion)

    def _validate(self, model, prompts: list[Prompt], pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
        answers = greedy(model, [p.input_ids for p in prompts], self.max_completion_tokens, pad_id, self.stop_ids,
                         self.precision, batch_size=len(prompts))
        graded = self.grade([self.decode(a) for a in answers], [p.item for p in prompts])
        return torch.zeros(()), {"train_reward_mean": sum(score for score, _ in graded),
                                 "train_completion_length": float(sum(map(len, answers)))}


def snapshot(model) -> dict[str, torch.Tensor]:
    """The values of the weights that train, by name: the reference GRPO's KL term is measured against."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@contextmanager
def reference_weights(model, reference: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """The model with its trained weights set to the reference's for a while (under no_grad).

    Swapping the few trained tensors (an adapter's) in place needs no second model in memory, and is
    right for any start: from a base model the reference is the base (a new adapter's B is zero), from
    an ``ft:`` adapter it is that adapter as it was when this job began."""
    if reference is None:
        raise ValueError("a KL penalty needs the reference weights")
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    current = {name: p.detach().clone() for name, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(reference[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(current[name])
