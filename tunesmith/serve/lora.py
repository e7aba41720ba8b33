"""Many LoRA adapters over one base model, chosen per row of a batch.

Every adapted ``nn.Linear`` of the base model is wrapped once: it computes the base output for the
whole batch, then adds ``(x @ A[s].T) @ B[s].T`` for each group of rows that uses adapter slot ``s``
(PEFT's mixed-batch ``adapter_names=`` and vLLM's punica CPU path do the same: gather rows by
adapter, one pair of small matmuls per group). Rows with no adapter add nothing, base weights are
never merged or copied, and switching a row from one resident adapter to another is a different
slot number: no weight work at all.

Adapters that train added tokens (Gemma's ChatML rows, PEFT's trainable tokens) also replace those
rows of the embedding and the matching columns of the tied output layer, per row group.

``Routing`` says which rows use which slot for the next forward; the scheduler sets it before each
step, and ``routed`` runs a whole forward (an evaluation's loss) on one adapter.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

ALL_ROWS = None  # a group that covers the whole batch: no gather, no scatter
# How a layer adds the adapters of a batch, fewest torch calls first (each call costs microseconds of
# Python on top of its work, and a layer runs 210 times a step on SmolLM2):
# - up to DENSE_MAX_RANK ranks in all: two matmuls over the active adapters side by side, and a mask
#   that keeps each row's own columns (the stacked copy is kept while the batch's adapters stay);
# - more adapters, all of one rank: each row's A and B gathered into a batch, two batched matmuls
#   (punica's BGMV, as vLLM's punica_cpu.py does it with torch);
# - otherwise a pair of small matmuls per group of rows that share an adapter.
DENSE_MAX_RANK = 256


@dataclass(eq=False)
class Routing:
    # (slot, rows): the rows of the batch that use adapter ``slot``; rows is ALL_ROWS or a LongTensor
    groups: list[tuple[int, torch.Tensor | None]] = field(default_factory=list)
    rows: int | None = None  # the batch's rows; None: any batch, every row in the one group
    slots: tuple[int | None, ...] = ()  # each row's slot (of a batch of known rows)
    _masks: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, slots: list[int | None]) -> "Routing":
        """The routing of a batch whose row i uses ``slots[i]`` (None: the base model)."""
        used = {s for s in slots if s is not None}
        if len(used) == 1 and None not in slots:
            return cls([(used.pop(), ALL_ROWS)], len(slots), tuple(slots))
        return cls([(s, torch.tensor([i for i, x in enumerate(slots) if x == s])) for s in sorted(used)], len(slots),
                   tuple(slots))

    @classmethod
    def single(cls, slot: int | None) -> "Routing":
        """Every row of any batch on ``slot``."""
        return cls([] if slot is None else [(slot, ALL_ROWS)])

    def mask(self, layout: tuple[tuple[int, int], ...]) -> torch.Tensor | None:
        """For stacked adapters of ``layout`` ((slot, rank) in column order): 1 where a row's own adapter's
        columns are, else 0; [rows, 1, sum of ranks]. None when every row uses the one adapter."""
        if len(self.groups) == 1 and self.groups[0][1] is ALL_ROWS:
            return None
        if layout not in self._masks:
            rows = dict(self.groups)
            mask = torch.zeros(self.rows, 1, sum(r for _, r in layout))
            start = 0
            for slot, rank in layout:
                mask[rows[slot], :, start : start + rank] = 1.0
                start += rank
            self._masks[layout] = mask
        return self._masks[layout]


class _Routed(nn.Module):
    def __init__(self, base: nn.Module, routing: "MultiLoRA"):
        super().__init__()
        self.base = base
        object.__setattr__(self, "_owner", routing)  # not a submodule: no cycle in the module tree

    @property
    def routing(self) -> Routing:
        return self._owner.routing

    @property
    def groups(self):
        return self._owner.routing.groups

    @property
    def weight(self) -> torch.Tensor:  # transformers reads the embedding's and head's weight
        return self.base.weight


class LoRALinear(_Routed):
    def __init__(self, base: nn.Linear, owner: "MultiLoRA"):
        super().__init__(base, owner)
        self.weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # slot → (A, B already scaled)
        self.stacks: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # layout → (A's, B's) stacked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        routing = self.routing
        layout = tuple((slot, self.weights[slot][0].shape[0]) for slot, _ in routing.groups if slot in self.weights)
        if not layout:
            return out
        ranks = {r for _, r in layout}
        if sum(r for _, r in layout) <= DENSE_MAX_RANK:
            a, b = self._stacked(layout)
            h = x @ a.T
            mask = routing.mask(layout)
            return out + (h if mask is None else h * mask) @ b.T
        if len(ranks) == 1 and routing.slots:
            a, b = self._gathered(routing.slots, ranks.pop(), x)
            return out + torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))
        for slot, rows in routing.groups:
            if slot not in self.weights:
                continue
            a, b = self.weights[slot]
            if rows is ALL_ROWS:
                out = out + (x @ a.T) @ b.T
            else:
                out = out.index_add(0, rows, (x.index_select(0, rows) @ a.T) @ b.T)
        return out

    def _stacked(self, layout: tuple[tuple[int, int], ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapters of ``layout`` side by side, kept while that set of adapters is in the batch (one set
        at a time: a copy of at most DENSE_MAX_RANK ranks per layer)."""
        if layout not in self.stacks:
            self.stacks.clear()
            pairs = [self.weights[slot] for slot, _ in layout]
            self.stacks[layout] = (torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs], dim=1))
        return self.stacks[layout]

    def _gathered(self, slots: tuple[int | None, ...], rank: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's A [rows, rank, in] and B [rows, out, rank]; zeros for a row without an adapter here."""
        none = (x.new_zeros(rank, self.base.in_features), x.new_zeros(self.base.out_features, rank))
        pairs = [self.weights.get(s, none) if s is not None else none for s in slots]
        return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


class TokenEmbedding(_Routed):
    """The embedding, with an adapter's trained rows in place of the base rows for its row group."""

    def __init__(self, base: nn.Embedding, owner: "MultiLoRA"):
        super().__init__(base, owner)
        self.tokens: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # slot → (token ids, their rows)
        # Gemma scales embeddings inside the module; the trained rows must be scaled the same way.
        self.scale = getattr(base, "embed_scale", None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids)
        for slot, rows in self.groups:
            if slot not in self.tokens:
                continue
            token_ids, values = self.tokens[slot]
            values = values if self.scale is None else values * self.scale.to(values.dtype)
            picked = ids if rows is ALL_ROWS else ids.index_select(0, rows)
            where = torch.isin(picked, token_ids)
            if not where.any():
                continue
            part = out if rows is ALL_ROWS else out.index_select(0, rows)
            lookup = torch.searchsorted(token_ids, picked[where])
            part = part.index_put((*where.nonzero(as_tuple=True),), values[lookup])
            out = part if rows is ALL_ROWS else out.index_copy(0, rows, part)
        return out


class TokenHead(_Routed):
    """The output layer, tied to the embedding: an adapter's trained rows give their tokens' logits."""

    def __init__(self, base: nn.Linear, embedding: TokenEmbedding, owner: "MultiLoRA"):
        super().__init__(base, owner)
        object.__setattr__(self, "_embedding", embedding)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.base(hidden)
        for slot, rows in self.groups:
            if slot not in self._embedding.tokens:
                continue
            token_ids, values = self._embedding.tokens[slot]
            part = out if rows is ALL_ROWS else out.index_select(0, rows)
            h = hidden if rows is ALL_ROWS else hidden.index_select(0, rows)
            part = part.index_copy(-1, token_ids, h @ values.to(h.dtype).T)
            out = part if rows is ALL_ROWS else out.index_copy(0, rows, part)
        return out


class MultiLoRA:
    """The wrapped layers of one base model, and the routing of its next forward."""

    def __init__(self, model: nn.Module):
        self.routing = Routing()
        self.layers: dict[str, LoRALinear] = {}
        head = model.get_output_embeddings()
        # Every linear layer but the output layer: what PEFT's "all-linear" (our trainer's choice) adapts.
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and child is not head:
                    wrapped = LoRALinear(child, self)
                    setattr(module, child_name, wrapped)
                    self.layers[f"{name}.{child_name}" if name else child_name] = wrapped
        embedding = model.get_input_embeddings()
        self.embedding = TokenEmbedding(embedding, self)
        model.set_input_embeddings(self.embedding)
        tied = head is not None and head.weight is embedding.weight
        self.head = TokenHead(head, self.embedding, self) if tied else None
        if self.head is not None:
            model.set_output_embeddings(self.head)

    def install(self, slot: int, weights: "AdapterWeights") -> None:
        for name, pair in weights.lora.items():
            self.layers[name].weights[slot] = pair
        if weights.tokens is not None:
            if self.head is None:
                raise ValueError("an adapter with trained token rows needs a model whose output layer is tied")
            self.embedding.tokens[slot] = weights.tokens

    def remove(self, slot: int) -> None:
        for layer in self.layers.values():
            layer.weights.pop(slot, None)
            layer.stacks.clear()
        self.embedding.tokens.pop(slot, None)

    @contextmanager
    def routed(self, routing: Routing):
        previous, self.routing = self.routing, routing
        try:
            yield
        finally:
            self.routing = previous


@dataclass
class AdapterWeights:
    """One adapter, read from disk: per wrapped layer (A, B × scale); trained token rows if any."""

    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]
    tokens: tuple[torch.Tensor, torch.Tensor] | None  # sorted token ids, their embedding rows
    nbytes: int
