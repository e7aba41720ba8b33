"""Packed rows on tiny random models: no attention or loss across examples, the same scores and the
same gradient as one example per row, chunked logits that match the model's own, in fp32 and bf16."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from test_loop import lora
from tunesmith.data.batching import Batch, collate, micro_batches, take
from tunesmith.data.formats import parse_example
from tunesmith.data.tokenize import IGNORE, Tokenized, with_prompt_loss
from tunesmith.train import losses
from tunesmith.train.losses import SFT, answer_logps, token_logps
from tunesmith.train.precision import resolve

# On summed log-probs; bf16's 8-bit mantissa errors mostly cancel in a sum.
TOLERANCE = {"fp32": dict(rtol=1e-5, atol=1e-4), "bf16": dict(rtol=1e-3, atol=1e-2)}


@pytest.fixture(scope="module")
def examples(renderer) -> list[Tokenized]:
    """Chat examples of unlike lengths, one trained from its first token (nothing may predict that one)."""
    rows = [{"user": "Hi", "assistant": "Hello!"},
            {"user": "List the planets, please.", "assistant": "Mercury, Venus, Earth, Mars, Jupiter, Saturn, "
                                                                "Uranus and Neptune."},
            {"user": "What is 2 + 2? Answer in a sentence.", "assistant": "Two plus two is four."},
            {"prompt": "Continue: one two", "completion": " three four five"}]
    encoded = [renderer.encode(parse_example(r, n)[0], 128) for n, r in enumerate(rows, 1)]
    return encoded + [Tokenized(encoded[2].input_ids, list(encoded[2].input_ids))]


def attentive(model):
    """At its random start a model barely looks at its context, so a leak would hardly move a score:
    sharpen its attention."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj", "o_proj"):
                p.mul_(8)
    return model


def scores(model, batch: Batch, precision: str) -> torch.Tensor:
    with torch.no_grad(), resolve(precision, torch.device("cpu")).autocast():
        return answer_logps(model, batch)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_example_scores_the_same_alone_and_packed(tiny_model_factory, examples, precision, attention):
    model = attentive(tiny_model_factory())
    model.set_attn_implementation(attention)
    alone = torch.cat([scores(model, collate([[t]], pad_id=2), precision) for t in examples])
    packed = collate([examples[:3], examples[3:]], pad_id=2)
    assert packed.n_sequences == len(examples)
    torch.testing.assert_close(scores(model, packed, precision), alone, **TOLERANCE[precision])
    # The same answers in other company: still their own scores.
    reordered = scores(model, collate([examples[::-1]], pad_id=2), precision).flip(0)
    torch.testing.assert_close(reordered, alone, **TOLERANCE[precision])
    # The tolerance is tight enough to see a leak: positions that run on let each example see the ones before.
    packed.position_ids = torch.arange(packed.position_ids.shape[1]).expand_as(packed.position_ids)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(scores(model, packed, precision), alone, **TOLERANCE[precision])


def test_scores_are_the_model_forward_ones(tiny_model_factory, examples):
    model = tiny_model_factory()
    with torch.no_grad():
        for t, packed in zip(examples, scores(model, collate([examples], pad_id=2), "fp32")):
            logps = model(input_ids=torch.tensor([t.input_ids])).logits[0, :-1].log_softmax(-1)
            labels = torch.tensor(t.labels[1:])
            trained = labels != IGNORE
            assert float(packed) == pytest.approx(float(logps[trained].gather(1, labels[trained, None]).sum()),
                                                  rel=1e-5)


def gradient(model, rows) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss, _ = SFT()(model, rows, pad_id=2)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def test_a_packed_step_gives_the_gradient_of_one_example_per_row(tiny_model_factory, examples):
    model = lora(tiny_model_factory())
    indices, lengths = list(range(len(examples))), [t.n_tokens for t in examples]
    [packed] = micro_batches(indices, lengths, max_tokens=4096)
    assert any(len(row) > 1 for row in packed)
    [padded] = micro_batches(indices, lengths, max_tokens=4096, row_tokens=1)
    a, b = gradient(model, take(packed, examples)), gradient(model, take(padded, examples))
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-7, msg=name)


def in_vocab(examples: list[Tokenized], token) -> list[Tokenized]:
    """The examples with every token id mapped by ``token``, into a tiny model's vocabulary."""
    return [Tokenized([token(i) for i in t.input_ids], [IGNORE if x == IGNORE else token(x) for x in t.labels])
            for t in examples]


def tiny_gemma(seed: int = 0) -> Gemma3ForCausalLM:
    """Sliding-window layers and logit soft-capping: the head path must apply what the model's forward does."""
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=30.0, pad_token_id=0))


@pytest.mark.parametrize("make", ["llama", "gemma"])
def test_chunked_logits_give_the_unchunked_values_and_gradient(make, tiny_model_factory, examples, monkeypatch):
    model = tiny_model_factory() if make == "llama" else tiny_gemma()
    vocab = model.config.vocab_size
    items = examples if make == "llama" else in_vocab(examples, lambda i: i % vocab)
    batch = collate([items[:2], items[2:]], pad_id=0)

    def run():
        model.zero_grad()
        logps, hits, sequence = token_logps(model, batch)
        (-logps.sum()).backward()
        return logps.detach(), hits, sequence, [p.grad.clone() for p in model.parameters()]

    whole = run()
    monkeypatch.setattr(losses, "LOGITS_CHUNK_ELEMENTS", vocab * 5)  # chunks of 5 positions, all recomputed but one
    chunked = run()
    assert batch.n_trained > 10
    torch.testing.assert_close(chunked[0], whole[0])
    assert torch.equal(chunked[1], whole[1]) and torch.equal(chunked[2], whole[2])
    for a, b in zip(chunked[3], whole[3]):  # equal up to the order of fp32 sums
        assert float((a - b).norm()) <= 1e-5 * float(b.norm())
    with torch.no_grad():  # and they are the model's own logits, soft-capping included
        reference = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                          use_cache=False).logits.float().log_softmax(-1)
    trained = batch.targets != IGNORE
    expected = reference[trained].gather(1, batch.targets[trained, None]).squeeze(1)
    torch.testing.assert_close(whole[0], expected, rtol=1e-5, atol=1e-5)


def test_added_token_rows_on_a_tied_head_score_and_train_as_in_peft(examples, renderer):
    """Gemma with our ChatML tokens: LoRA trains the two new rows, which the tied head shares. The
    head's own path (no copy of the whole weight) must give PEFT's logits and the same gradient."""
    added = [298, 299]
    model = get_peft_model(tiny_gemma(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                    task_type="CAUSAL_LM",
                                                    trainable_token_indices={"embed_tokens": added}))
    with torch.no_grad():  # moved off their start, as after some training, so a wrong row would show
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    # SmolLM2's <|im_start|>, <|im_end|> become the added ids: end-of-turn targets score on their columns.
    special = {renderer.tokenizer.convert_tokens_to_ids(t): i for t, i in zip(["<|im_start|>", "<|im_end|>"], added)}
    batch = collate([in_vocab(examples, lambda i: special.get(i, i % 298))], pad_id=0)
    trained = batch.targets != IGNORE
    assert set(added) <= set(batch.targets[trained].tolist())

    def run(score):
        model.zero_grad()
        logps = score()
        (-logps.sum()).backward()
        return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours = run(lambda: token_logps(model, batch)[0])
    peft = run(lambda: model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
               .logits.float().log_softmax(-1)[trained].gather(1, batch.targets[trained, None]).squeeze(1))
    torch.testing.assert_close(ours[0], peft[0], rtol=1e-5, atol=1e-5)
    assert any("trainable_tokens_delta" in n for n in ours[1])
    for name, grad in peft[1].items():
        assert float((ours[1][name] - grad).norm()) <= 1e-5 * float(grad.norm()), name


def test_a_prompt_loss_weight_adds_the_weighted_prompt_nll_and_counts_only_the_answer(tiny_model_factory, examples):
    model = tiny_model_factory()
    t = examples[3]  # prompt/completion
    weighted = with_prompt_loss(t, 0.25)
    assert weighted.n_trained == t.n_trained and weighted.n_tokens == t.n_tokens
    with torch.no_grad():
        logps = model(input_ids=torch.tensor([t.input_ids])).logits[0, :-1].log_softmax(-1)
        nll = -logps.gather(1, torch.tensor(t.input_ids[1:])[:, None])[:, 0]
        answer = torch.tensor([label != IGNORE for label in t.labels[1:]])
        loss, correct, counted = losses.sft_loss(model, collate([[weighted, examples[0]]], pad_id=2))
        plain, _, plain_counted = losses.sft_loss(model, collate([[t, examples[0]]], pad_id=2))
        other, _, _ = losses.sft_loss(model, collate([[examples[0]]], pad_id=2))
    # the answer's NLL at weight 1, the prompt's (from its second token: nothing predicts the first) at 0.25
    torch.testing.assert_close(loss - other, nll[answer].sum() + 0.25 * nll[~answer].sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(plain - other, nll[answer].sum(), rtol=1e-5, atol=1e-4)
    assert counted == plain_counted == t.n_trained + examples[0].n_trained
    assert SFT().weight(weighted) == t.n_trained
