"""Token batches: epoch order, optimizer batches, and micro-batches of packed rows.

An optimizer step sees ``batch_size`` items. They are packed into rows of at most ``row_tokens``
tokens (several short sequences end to end in one row, so little compute goes to padding), and the
rows are split into micro-batches whose padded size stays under a token budget (bounded memory),
each run forward/backward in turn with the gradients accumulated. ``collate`` is the one place that
shapes training tensors; ``left_padded`` shapes prompts for generation.

Sequences packed in one row must not see each other: each one's ``position_ids`` restart at 0 and
no attention mask is passed. From that, transformers (``masking_utils.find_packed_sequence_indices``)
builds a block-diagonal causal mask for sdpa and eager attention; a row holding one sequence keeps
counting through its padding, so a batch without packing keeps the plain causal fast path. Labels
are shifted within each sequence, so no sequence's last token is trained to predict the next one's
first.
"""

from __future__ import annotations

from dataclasses import dataclass
from heapq import heappop, heappush

import numpy as np
import torch

from tunesmith.data.tokenize import IGNORE, Tokenized

DEFAULT_MICRO_BATCH_TOKENS = 4096
# On CPU, attention runs a dense (row × row) mask: in SmolLM2 a 4096-token row would spend more on
# attention than on all linear layers, most of it masked out; a 1024-token row at most a third of
# theirs, and it still holds a few typical chat examples (longer ones get a row of their own).
DEFAULT_ROW_TOKENS = 1024
# Rows are padded to a multiple of this: a bounded set of shapes (kernels cached per shape, e.g.
# oneDNN's bf16 primitives; whole AMX tiles) for 16 padding tokens per row on average.
ROW_ALIGN = 32
# Attention's cost per (query, key) pair, relative to one token's pass through the weights. From
# SmolLM2-135M's shape (2·hidden·layers / non-embedding parameters = 3.2e-4), times 1.6 for the
# masked sdpa path packed rows take on CPU: calibrated so that packing 8 chat examples of ~150 tokens
# comes out 22 % dearer than padding them, as measured here (135 against 165 tokens/s).
DEFAULT_ATTENTION_COST = 5e-4


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, width]
    targets: torch.Tensor  # [rows, width]: the token each position predicts, IGNORE where not trained
    position_ids: torch.Tensor  # [rows, width]: restart at 0 for every sequence
    sequence: torch.Tensor  # [rows, width]: index of the token's sequence in collate's order, -1 padding
    n_sequences: int
    weights: torch.Tensor | None = None  # [rows, width]: each target's weight in the loss; None: all 1

    @property
    def n_trained(self) -> int:
        return int((self.targets != IGNORE).sum())

    @property
    def n_tokens(self) -> int:
        return int((self.sequence >= 0).sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.targets.to(device), self.position_ids.to(device),
                     self.sequence.to(device), self.n_sequences,
                     None if self.weights is None else self.weights.to(device))


def epoch_order(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The example indices of each optimizer step of one epoch; a pure function of its arguments,
    so a resumed run replays exactly the order an uninterrupted run would have used."""
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return [order[i : i + batch_size].tolist() for i in range(0, n_examples, batch_size)]


def shard(indices: list[int], lengths: list[int], rank: int, world_size: int) -> list[int]:
    """The items of one optimizer step that process ``rank`` of ``world_size`` trains on (torchrun).

    Longest first, each item goes to the rank with the fewest tokens so far (ties: the lowest rank),
    so the ranks finish their share of a step at about the same time. Every rank computes the same
    split from the same arguments; with one process it is the whole step, in its order."""
    if world_size == 1:
        return indices
    fills = [(0, r) for r in range(world_size)]  # a heap of (tokens, rank)
    mine = []
    for i in sorted(indices, key=lambda i: -lengths[i]):  # stable: equal lengths keep the step's order
        fill, r = heappop(fills)
        if r == rank:
            mine.append(i)
        heappush(fills, (fill + lengths[i], r))
    return mine


def pack(indices: list[int], lengths: list[int], row_tokens: int) -> list[list[int]]:
    """Spread items over as few rows of at most ``row_tokens`` as they fill, evenly.

    Evenly, because a micro-batch's rows are padded to its fullest one: each item, longest first,
    goes into the emptiest row (LPT scheduling); a row more is opened only if that overflows one.
    An item longer than ``row_tokens`` gets a row of its own. Deterministic for given arguments."""
    alone = [[i] for i in indices if lengths[i] > row_tokens]
    rest = sorted((i for i in indices if lengths[i] <= row_tokens), key=lambda i: -lengths[i])
    n_rows = -(-sum(lengths[i] for i in rest) // row_tokens)
    while True:
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        fills = [(0, r) for r in range(n_rows)]  # a heap of (tokens, row)
        for i in rest:
            fill, r = heappop(fills)
            rows[r].append(i)
            heappush(fills, (fill + lengths[i], r))
        if all(fill <= row_tokens for fill, _ in fills):
            return alone + rows
        n_rows += 1


def padded_width(n_tokens: int) -> int:
    return -(-n_tokens // ROW_ALIGN) * ROW_ALIGN


def micro_batches(indices: list[int], lengths: list[int], max_tokens: int, row_tokens: int = DEFAULT_ROW_TOKENS,
                  attention_cost: float = DEFAULT_ATTENTION_COST) -> list[list[list[int]]]:
    """One step's items in rows, the rows grouped so that rows × padded width fits ``max_tokens``.

    The rows are packed (``pack``) or hold one item each, whichever ``cost`` says is cheaper: packing
    removes padding, but attention over a packed row covers the whole row. ``row_tokens=1`` forces one
    item per row."""
    plain = _grouped([[i] for i in indices], lengths, max_tokens)
    if row_tokens <= 1:
        return plain
    packed = _grouped(pack(indices, lengths, min(row_tokens, max_tokens)), lengths, max_tokens)
    return packed if cost(packed, lengths, attention_cost) < cost(plain, lengths, attention_cost) else plain


def _grouped(rows: list[list[int]], lengths: list[int], max_tokens: int) -> list[list[list[int]]]:
    """Fullest rows first, so a group's width is that of its first row."""
    widths = [padded_width(sum(lengths[i] for i in row)) for row in rows]
    groups: list[list[int]] = []
    for r in sorted(range(len(rows)), key=lambda r: -widths[r]):  # stable: ties keep packing order
        if groups and widths[groups[-1][0]] * (len(groups[-1]) + 1) <= max_tokens:
            groups[-1].append(r)
        else:
            groups.append([r])
    return [[rows[r] for r in group] for group in groups]


def cost(groups: list[list[list[int]]], lengths: list[int], attention_cost: float) -> float:
    """Relative compute of a step's micro-batches: every (padded) token through the weights, plus
    attention at ``attention_cost`` per (query, key) pair. A row of one sequence runs the causal
    kernel, which skips the masked half; a packed row's block mask is applied to the whole square."""
    total = 0.0
    for group in groups:
        width = padded_width(max(sum(lengths[i] for i in row) for row in group))
        square = 1.0 if any(len(row) > 1 for row in group) else 0.5
        total += len(group) * width * (1 + attention_cost * square * width)
    return total


def take(group: list[list[int]], items: list) -> list[list]:
    """The items of a micro-batch's rows (``micro_batches`` gives their indices)."""
    return [[items[i] for i in row] for row in group]


def collate(rows: list[list[Tokenized]], pad_id: int) -> Batch:
    """Lay each row's sequences end to end and right-pad every row to the padded width of the longest.

    Sequences are numbered in order, row by row: ``Batch.sequence`` tells each token's."""
    width = padded_width(max(sum(t.n_tokens for t in row) for row in rows))
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, IGNORE, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    sequence = torch.full(shape, -1, dtype=torch.long)
    weighted = any(t.label_weights is not None for row in rows for t in row)
    weights = torch.ones(shape) if weighted else None
    n = 0
    for r, row in enumerate(rows):
        start = 0
        for t in row:
            end = start + t.n_tokens
            ids[r, start:end] = torch.tensor(t.input_ids)
            targets[r, start : end - 1] = torch.tensor(t.labels[1:])
            if t.label_weights is not None:
                weights[r, start : end - 1] = torch.tensor(t.label_weights[1:])
            positions[r, start:end] = torch.arange(t.n_tokens)
            sequence[r, start:end] = n
            start, n = end, n + 1
        # Padding goes on counting from the row's last sequence: a row of one sequence is then no packed row.
        positions[r, start:] = torch.arange(start, width) - (start - row[-1].n_tokens)
    return Batch(ids, targets, positions, sequence, n, weights)


def left_padded(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompts to generate from, as ``generate`` takes them: left-padded (every row's next token goes in
    the same column), with the attention mask that hides the padding."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return {"input_ids": ids, "attention_mask": mask}
