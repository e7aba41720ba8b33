"""Token batches: epoch order, optimizer batches, and micro-batches bounded in tokens.

An optimizer step sees ``batch_size`` examples. They are split into micro-batches whose padded
size stays under a token budget (bounded memory), each run forward/backward in turn with the
gradients accumulated. ``collate`` is the one place that shapes tensors, so a packing collator can
replace it without touching the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tunesmith.data.tokenize import IGNORE, Tokenized

DEFAULT_MICRO_BATCH_TOKENS = 4096


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], IGNORE where not trained
    attention_mask: torch.Tensor  # [B, T]

    @property
    def n_trained(self) -> int:
        return int((self.labels != IGNORE).sum())

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def epoch_order(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The example indices of each optimizer step of one epoch; a pure function of its arguments,
    so a resumed run replays exactly the order an uninterrupted run would have used."""
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return [order[i : i + batch_size].tolist() for i in range(0, n_examples, batch_size)]


def micro_batches(indices: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Split one step's examples into groups whose padded size (rows × longest) fits ``max_tokens``.

    Sorting by length first keeps similar lengths together, which keeps padding low."""
    groups: list[list[int]] = []
    current: list[int] = []
    for i in sorted(indices, key=lambda i: -lengths[i]):
        # Longest first, so a group's padded width is the length of its first member.
        if current and lengths[current[0]] * (len(current) + 1) > max_tokens:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def collate(items: list[Tokenized], pad_id: int) -> Batch:
    """Right-pad to the longest item."""
    width = max(t.n_tokens for t in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, t in enumerate(items):
        n = t.n_tokens
        ids[row, :n] = torch.tensor(t.input_ids)
        labels[row, :n] = torch.tensor(t.labels)
        mask[row, :n] = 1
    return Batch(ids, labels, mask)
