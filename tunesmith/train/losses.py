"""Training objectives: the token-level SFT loss and DPO's sigmoid preference loss.

An objective turns a micro-batch of items into a summed loss and summed statistics (named as the
step metrics they become). The loop divides both by the step's total ``weight`` (trained tokens
for SFT, pairs for DPO), so accumulating micro-batches gives the update of one large batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from tunesmith.data.batching import DEFAULT_MICRO_BATCH_TOKENS, Batch, collate, micro_batches
from tunesmith.data.tokenize import IGNORE, Pair, Tokenized

DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")  # TRL's names


def _answer_logits(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at every position that predicts a label, those labels, and the row of each.

    Logits are produced only at positions that predict a label (``logits_to_keep``): for
    assistant-only training most positions carry none, and the vocabulary-sized logits tensor
    is the largest activation of a small model.
    """
    targets = batch.labels[:, 1:]
    positions = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=positions)
    targets = targets[:, positions]
    selected = targets != IGNORE
    return out.logits[selected].float(), targets[selected], selected.nonzero()[:, 0]


def sft_loss(model, batch: Batch) -> tuple[torch.Tensor, int, int]:
    """Summed cross-entropy over trained tokens, plus (correct predictions, trained tokens)."""
    logits, targets, _ = _answer_logits(model, batch)
    loss = F.cross_entropy(logits, targets, reduction="sum")
    correct = int((logits.argmax(-1) == targets).sum())
    return loss, correct, int(targets.numel())


def answer_logps(model, batch: Batch) -> torch.Tensor:
    """Each row's summed log-probability of its trained tokens (the answer through end-of-turn)."""
    logits, targets, rows = _answer_logits(model, batch)
    token_logps = -F.cross_entropy(logits, targets, reduction="none")
    return torch.zeros(batch.labels.shape[0], dtype=token_logps.dtype).index_add(0, rows, token_logps)


def _pair_logps(model, pairs: list[Pair], pad_id: int) -> torch.Tensor:
    """Summed answer log-probs of every chosen answer, then of every rejected one: one forward pass."""
    return answer_logps(model, collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id))


def _pair_width(pair: Pair) -> int:
    # Both answers run in the same forward pass, padded to the longer one.
    return 2 * max(pair.chosen.n_tokens, pair.rejected.n_tokens)


class Objective(Protocol):
    def weight(self, item) -> int: ...  # the item's share of a step's mean
    def width(self, item) -> int: ...  # padded tokens it takes in a micro-batch
    def __call__(self, model, items: list, pad_id: int) -> tuple[torch.Tensor, dict[str, float]]: ...


class SFT:
    """Mean cross-entropy per trained token."""

    def weight(self, item: Tokenized) -> int:
        return item.n_trained

    def width(self, item: Tokenized) -> int:
        return item.n_tokens

    def __call__(self, model, items: list[Tokenized], pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss, correct, _ = sft_loss(model, collate(items, pad_id))
        return loss, {"train_loss": float(loss.detach()), "train_mean_token_accuracy": correct}


@dataclass(frozen=True)
class DPO:
    """Sigmoid DPO loss per pair: -log σ(β · ((π_c − ref_c) − (π_r − ref_r))), log-probs summed over
    each answer's trained tokens; the references are the pairs' precomputed ``reference``."""

    beta: float

    def weight(self, item: Pair) -> int:
        return 1

    def width(self, item: Pair) -> int:
        return _pair_width(item)

    def __call__(self, model, items: list[Pair], pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
        n = len(items)
        logps = _pair_logps(model, items, pad_id)
        reference = torch.tensor([p.reference for p in items], dtype=logps.dtype)
        chosen = self.beta * (logps[:n] - reference[:, 0])  # implicit rewards
        rejected = self.beta * (logps[n:] - reference[:, 1])
        losses = -F.logsigmoid(chosen - rejected)
        chosen, rejected = chosen.detach(), rejected.detach()
        margins = chosen - rejected
        return losses.sum(), {"train_loss": float(losses.detach().sum()), "rewards/chosen": float(chosen.sum()),
                              "rewards/rejected": float(rejected.sum()), "rewards/margins": float(margins.sum()),
                              "rewards/accuracies": float((margins > 0).sum())}


@torch.no_grad()
def attach_reference(model, pairs: list[Pair], pad_id: int,
                     micro_batch_tokens: int = DEFAULT_MICRO_BATCH_TOKENS) -> None:
    """Set each pair's ``reference``: the log-probs of its answers under the model as it is now."""
    model.eval()
    for group in micro_batches(list(range(len(pairs))), [_pair_width(p) for p in pairs], micro_batch_tokens):
        chunk = [pairs[i] for i in group]
        logps = _pair_logps(model, chunk, pad_id)
        for k, pair in enumerate(chunk):
            pair.reference = (float(logps[k]), float(logps[k + len(chunk)]))
