"""Token-level SFT loss, computed only where there are labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.data.batching import Batch
from tunesmith.data.tokenize import IGNORE


def sft_loss(model, batch: Batch) -> tuple[torch.Tensor, int, int]:
    """Summed cross-entropy over trained tokens, plus (correct predictions, trained tokens).

    Logits are produced only at positions that predict a label (``logits_to_keep``): for
    assistant-only training most positions carry none, and the vocabulary-sized logits tensor
    is the largest activation of a small model.
    """
    targets = batch.labels[:, 1:]
    positions = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=positions)
    targets = targets[:, positions]
    selected = targets != IGNORE
    logits = out.logits[selected].float()
    targets = targets[selected]
    loss = F.cross_entropy(logits, targets, reduction="sum")
    correct = int((logits.argmax(-1) == targets).sum())
    return loss, correct, int(targets.numel())
