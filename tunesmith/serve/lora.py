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


@dataclass
class Routing:
    # (slot, rows): the rows of the batch that use adapter ``slot``; rows is ALL_ROWS or a LongTensor
    groups: list[tuple[int, torch.Tensor | None]] = field(default_factory=list)

    @classmethod
    def of(cls, slots: list[int | None]) -> "Routing":
        """The routing of a batch whose row i uses ``slots[i]`` (None: the base model)."""
        used = {s for s in slots if s is not None}
        if len(used) == 1 and None not in slots:
            return cls([(used.pop(), ALL_ROWS)])
        return cls([(s, torch.tensor([i for i, x in enumerate(slots) if x == s])) for s in sorted(used)])

    @classmethod
    def single(cls, slot: int | None) -> "Routing":
        """Every row of any batch on ``slot``."""
        return cls([] if slot is None else [(slot, ALL_ROWS)])


class _Routed(nn.Module):
    def __init__(self, base: nn.Module, routing: "MultiLoRA"):
        super().__init__()
        self.base = base
        object.__setattr__(self, "_owner", routing)  # not a submodule: no cycle in the module tree

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for slot, rows in self.groups:
            pair = self.weights.get(slot)
            if pair is None:
                continue
            a, b = pair
            if rows is ALL_ROWS:
                out = out + (x @ a.T) @ b.T
            else:
                out = out.index_add(0, rows, (x.index_select(0, rows) @ a.T) @ b.T)
        return out


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
