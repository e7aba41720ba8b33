"""Training objectives: the token-level SFT loss and DPO's sigmoid preference loss (GRPO's is ``grpo.py``).

An objective turns a micro-batch (rows of items, packed by ``batching.micro_batches``) into a summed
loss and summed statistics (named as the step metrics they become). The loop divides both by the
step's total ``weight`` (trained tokens for SFT, pairs for DPO), so accumulating micro-batches gives
the update of one large batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunesmith.config import PrecisionSetting
from tunesmith.data.batching import DEFAULT_MICRO_BATCH_TOKENS, Batch, collate, micro_batches, take
from tunesmith.data.tokenize import IGNORE, Pair, Tokenized
from tunesmith.train.precision import device_of, resolve

DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "nll_loss")  # TRL's names
# Logits of at most this many elements exist at once (128 MiB in fp32): 682 positions of SmolLM2's
# 49k vocabulary, 128 of Gemma 3's 262k.
LOGITS_CHUNK_ELEMENTS = 1 << 25


class _Head:
    """Hidden states to fp32 logits, as the model's own forward does it after its decoder."""

    def __init__(self, model):
        config = model.config.get_text_config()
        self.projection = model.get_output_embeddings()  # the adapted module, when PEFT wrapped it
        self.tokens = getattr(self.projection, "token_adapter", None)  # PEFT's trained rows of added tokens
        self.softcap = getattr(config, "final_logit_softcapping", None)  # set by Gemma 2, for one
        self.chunk = max(1, LOGITS_CHUNK_ELEMENTS // config.vocab_size)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens
        if tokens is None or tokens.merged or tokens.disable_adapters or not tokens.active_adapters:
            return self.projection(hidden)
        # The rows of tokens we added (Gemma's ChatML tokens) are trained on a tied head. PEFT's own
        # forward copies the whole weight (262k x 640 for Gemma) to put them in, and its backward
        # then computes the gradient of that whole copy to keep two rows: 1.7x the head's time
        # (measured). The frozen weight's logits with the trained rows' columns put in are the same.
        logits = F.linear(hidden, tokens.base_layer.weight)
        for name in tokens.active_adapters:
            index = torch.tensor(tokens.token_indices[name], device=hidden.device)
            logits = logits.index_copy(-1, index, hidden @ tokens.trainable_tokens_delta[name].to(hidden).T)
        return logits

    def score(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each target's log-probability, and whether it was the top prediction."""
        logits = self.logits(hidden).float()  # the softmax and the loss in fp32, even under autocast
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return -F.cross_entropy(logits, targets, reduction="none"), logits.argmax(-1) == targets


def token_logps(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every trained target: its log-probability, whether it was the top prediction, its sequence.

    The decoder runs once over the batch; the vocabulary projection and softmax run only at trained
    positions, a chunk at a time. Every chunk but the last is recomputed in backward (checkpoint)
    instead of kept, so the vocabulary-sized logits exist for one chunk at a time, never for the batch.
    """
    batch = batch.to(device_of(model))
    # No attention mask: the restarting position ids keep packed sequences apart (batching.py). No
    # cache either: with one, transformers would not look for packed sequences.
    hidden = model.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids,
                                 use_cache=False).last_hidden_state
    trained = batch.targets != IGNORE
    hidden, targets = hidden[trained], batch.targets[trained]
    head = _Head(model)
    starts = range(0, max(len(targets), 1), head.chunk)  # one (empty) chunk at least keeps the graph
    parts = []
    for start in starts:
        chunk = hidden[start : start + head.chunk], targets[start : start + head.chunk]
        # The last chunk's backward runs first, so keeping it costs one chunk of memory, as recomputing does.
        recompute = torch.is_grad_enabled() and start != starts[-1]
        # No randomness in the head: no RNG state to save and restore.
        parts.append(checkpoint(head.score, *chunk, use_reentrant=False, preserve_rng_state=False)
                     if recompute else head.score(*chunk))
    logps, hits = (torch.cat(p) for p in zip(*parts))
    return logps, hits, batch.sequence[trained]


def sft_loss(model, batch: Batch) -> tuple[torch.Tensor, int, int]:
    """Summed cross-entropy over trained tokens (each times its weight, when the batch has weights),
    plus (correct predictions, trained tokens) among the answer tokens (weight 1)."""
    logps, hits, _ = token_logps(model, batch)
    if batch.weights is None:
        return -logps.sum(), int(hits.sum()), int(logps.numel())
    weights = batch.weights[batch.targets != IGNORE].to(logps.device)
    answer = weights == 1.0
    return -(logps * weights).sum(), int(hits[answer].sum()), int(answer.sum())


def answer_logps(model, batch: Batch) -> torch.Tensor:
    """Each sequence's summed log-probability of its trained tokens (the answer through end-of-turn)."""
    logps, _, sequence = token_logps(model, batch)
    return logps.new_zeros(batch.n_sequences).index_add(0, sequence, logps)


def _pair_logps(model, rows: list[list[Pair]], pad_id: int) -> torch.Tensor:
    """[pairs, 2]: the summed answer log-probs of each pair's chosen and rejected answer.

    A row of several pairs is packed, each pair's two answers side by side; a row of one pair becomes
    two rows of one sequence each, which run the cheaper causal attention (``batching.cost``). Either
    way the sequences come in pair order, chosen before rejected."""
    sequences = [[[s] for s in (row[0].chosen, row[0].rejected)] if len(row) == 1
                 else [[s for p in row for s in (p.chosen, p.rejected)]] for row in rows]
    return answer_logps(model, collate([r for rs in sequences for r in rs], pad_id)).view(-1, 2)


class Objective(Protocol):
    def weight(self, item) -> int: ...  # the item's share of a step's mean
    def length(self, item) -> int: ...  # the tokens it costs a step (micro-batches are cut by these)
    def __call__(self, model, rows: list[list], pad_id: int) -> tuple[torch.Tensor, dict[str, float]]: ...


class SFT:
    """Mean cross-entropy per trained token."""

    def weight(self, item: Tokenized) -> int:
        return item.n_trained

    def length(self, item: Tokenized) -> int:
        return item.n_tokens

    def __call__(self, model, rows: list[list[Tokenized]], pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss, correct, _ = sft_loss(model, collate(rows, pad_id))
        return loss, {"train_loss": float(loss.detach()), "train_mean_token_accuracy": correct}


@dataclass(frozen=True)
class DPO:
    """Sigmoid DPO loss per pair: -log σ(β · ((π_c − ref_c) − (π_r − ref_r))), log-probs summed over
    each answer's trained tokens; the references are the pairs' precomputed ``reference``."""

    beta: float
    rpo_alpha: float = 0.0  # plus this times the chosen answer's mean token NLL (RPO), per pair

    def weight(self, item: Pair) -> int:
        return 1

    def length(self, item: Pair) -> int:
        return item.n_tokens

    def __call__(self, model, rows: list[list[Pair]], pad_id: int) -> tuple[torch.Tensor, dict[str, float]]:
        logps = _pair_logps(model, rows, pad_id)
        reference = torch.tensor([p.reference for row in rows for p in row], dtype=logps.dtype, device=logps.device)
        chosen, rejected = (self.beta * (logps - reference)).unbind(1)  # implicit rewards
        losses = -F.logsigmoid(chosen - rejected)
        nll = -logps[:, 0] / torch.tensor([p.chosen.n_trained for row in rows for p in row], device=logps.device)
        if self.rpo_alpha:
            losses = losses + self.rpo_alpha * nll
        chosen, rejected = chosen.detach(), rejected.detach()
        margins = chosen - rejected
        return losses.sum(), {"train_loss": float(losses.detach().sum()), "rewards/chosen": float(chosen.sum()),
                              "rewards/rejected": float(rejected.sum()), "rewards/margins": float(margins.sum()),
                              "rewards/accuracies": float((margins > 0).sum()), "nll_loss": float(nll.detach().sum())}


@torch.no_grad()
def attach_reference(model, pairs: list[Pair], pad_id: int, micro_batch_tokens: int = DEFAULT_MICRO_BATCH_TOKENS,
                     precision: PrecisionSetting = "fp32") -> None:
    """Set each pair's ``reference``: the log-probs of its answers under the model as it is now, in the
    precision training will use (so that at the start the policy is exactly its own reference)."""
    model.eval()
    amp = resolve(precision, device_of(model))
    for group in micro_batches(list(range(len(pairs))), [p.n_tokens for p in pairs], micro_batch_tokens):
        with amp.autocast():
            logps = _pair_logps(model, take(group, pairs), pad_id)
        for i, (chosen, rejected) in zip((i for row in group for i in row), logps.tolist(), strict=True):
            pairs[i].reference = (chosen, rejected)
