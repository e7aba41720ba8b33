"""GRPO (train/grpo.py) on tiny models over the real tokenizer: the loss and its gradient against a hand
computation, the KL reference, the step metrics, and a short run that must raise the mean reward;
plus the prompt lines reinforcement jobs read and their hyperparameters."""

import json

import pytest
import torch

from test_loop import Recorder, lora, weights
from tunesmith.data.formats import PROMPTS, parse_example, parse_prompt
from tunesmith.data.tokenize import Prompt, Tokenized
from tunesmith.errors import TunesmithError
from tunesmith.train import grpo, loop
from tunesmith.data.batching import collate
from tunesmith.train.hyper import DEFAULT_GROUP_SIZE, DEFAULT_KL_BETA, resolve
from tunesmith.train.losses import token_logps

LOW = 24_576  # half SmolLM2's vocabulary: about half of a random model's tokens are below it


def low_share(texts: list[str], items: list[dict]) -> list[tuple[float, str | None]]:
    """The share of an answer's tokens (decoded as their ids, in JSON) below LOW: every group's rewards
    differ from the start, and raising them is one direction of the output embeddings to learn."""
    scores = []
    for text in texts:
        ids = json.loads(text)
        scores.append((sum(i < LOW for i in ids) / max(1, len(ids)), None))
    return scores


def objective(renderer, beta=0.0, reference=None, group_size=4, max_tokens=6, grade=low_share):
    return grpo.GRPO(grade, json.dumps, renderer.stop_ids, renderer.end_of_turn_id, group_size, max_tokens, beta,
                     reference=reference)


@pytest.fixture(scope="module")
def prompts(renderer):
    lines = [{"messages": [{"role": "user", "content": f"Say something about {i}."}], "n": i} for i in range(8)]
    return [renderer.encode(parse_prompt(line, n)[0], 128) for n, line in enumerate(lines, 1)]


def test_a_prompt_line_is_its_conversation_and_the_whole_line_is_the_item(renderer):
    line = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                         {"role": "user", "content": "Name a city"}], "city": "Ghent"}
    example, problems = parse_prompt(line, 3)
    assert problems == [] and example.format == PROMPTS and example.item == line
    assert example.messages[1]["weight"] == 0  # an earlier answer is context, never trained
    prompt = renderer.encode(example, 512)
    assert isinstance(prompt, Prompt) and prompt.n_trained == 0 and prompt.trainable
    # rendered up to the assistant's header: what the model continues
    assert renderer.tokenizer.decode(prompt.input_ids).rstrip().endswith("assistant")


@pytest.mark.parametrize("line, field", [
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages[1].role"),
    ({"prompt": "q"}, "messages"),
    ({"messages": "q"}, "messages"),
])
def test_a_prompt_line_that_is_not_one_names_its_field(line, field):
    example, problems = parse_prompt(line, 7)
    assert example is None and problems[0].line == 7 and problems[0].field == field


def test_reinforcement_hyperparameters_and_their_limits():
    hp = resolve(40, "reinforcement")
    assert (hp.group_size, hp.beta, hp.max_completion_tokens) == (DEFAULT_GROUP_SIZE, DEFAULT_KL_BETA, 256)
    assert hp.rpo_alpha is None and "answers a prompt" in hp.dpo_text
    assert resolve(40, "reinforcement", beta=0).beta == 0  # no KL penalty at all: allowed
    assert resolve(40, "reinforcement", group_size="4", max_completion_tokens=32).group_size == 4
    with pytest.raises(TunesmithError, match="group_size"):
        resolve(40, "lora", group_size=4)
    with pytest.raises(TunesmithError, match="group_size"):
        resolve(40, "reinforcement", group_size=1)
    with pytest.raises(TunesmithError, match="at most"):
        resolve(40, "reinforcement", group_size=1000)
    with pytest.raises(TunesmithError, match="rpo_alpha"):
        resolve(40, "reinforcement", rpo_alpha=1)


def test_the_loss_gradient_is_the_group_normalised_policy_gradient(renderer, tiny_model_factory, prompts,
                                                                  monkeypatch):
    model = tiny_model_factory()
    rng = torch.Generator().manual_seed(0)
    answers = [torch.randint(0, 2000, (n,), generator=rng).tolist() for n in (3, 5, 6, 2, 6, 4, 1, 6)]
    monkeypatch.setattr(grpo, "greedy", lambda *a, **k: answers)
    obj = objective(renderer, group_size=4)
    loss, stats = obj(model, [prompts[:2]], renderer.tokenizer.pad_token_id)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    # by hand: advantages normalised within each prompt's group; each answer's log-likelihood is a
    # mean over its tokens (finished answers also train their end of turn), the group's a mean
    rewards = torch.tensor([s for s, _ in low_share([json.dumps(a) for a in answers], [])]).view(2, 4)
    adv = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True, correction=0) + 1e-4)).view(-1)
    expected = 0.0
    for i, answer in enumerate(answers):
        prompt = prompts[i // 4]
        completion = answer + [renderer.end_of_turn_id] if len(answer) < 6 else answer
        seq = Tokenized(prompt.input_ids + completion, [-100] * prompt.n_tokens + completion)
        logps, _, _ = token_logps(model, collate([[seq]], renderer.tokenizer.pad_token_id))
        expected = expected - adv[i] * logps.mean() / 4
    expected.backward()
    for name, p in model.named_parameters():
        # batched against one at a time: float sums in another order, so equal to a small share of the scale
        assert (got[name] - p.grad).abs().max() <= 1e-4 * p.grad.abs().max(), name
    assert abs(loss.item()) < 1e-5  # advantages sum to 0 in each group: the loss's value is ~0, its gradient not
    assert stats["train_reward_mean"] == pytest.approx(float(rewards.mean(1).sum()))
    assert stats["train_completion_length"] == pytest.approx(sum(map(len, answers)) / 4)
    assert stats["train_kl"] == 0 and stats["train_grader_errors"] == 0


def test_kl_to_the_reference_is_zero_at_the_start_and_the_weights_come_back(renderer, tiny_model_factory, prompts):
    model = lora(tiny_model_factory())
    reference = grpo.snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)  # the adapter moved away from where the job began
    moved = weights(model)
    obj = objective(renderer, beta=0.5, reference=grpo.snapshot(model))
    _, stats = obj(model, [prompts[:2]], renderer.tokenizer.pad_token_id)
    assert stats["train_kl"] == pytest.approx(0, abs=1e-6)  # the policy is its reference
    far = objective(renderer, beta=0.5, reference=reference)
    _, stats = far(model, [prompts[:2]], renderer.tokenizer.pad_token_id)
    assert stats["train_kl"] > 0
    assert all(torch.equal(moved[n], p) for n, p in model.named_parameters() if p.requires_grad)


def test_grader_errors_are_counted_as_zero_rewards(renderer, tiny_model_factory, prompts):
    def failing(texts, items):
        return [(0.0, "grader raised") for _ in texts]

    _, stats = objective(renderer, grade=failing)(tiny_model_factory(), [prompts[:1]], 0)
    assert stats["train_grader_errors"] == 1 and stats["train_reward_mean"] == 0


def test_validation_grades_greedy_answers_once_per_prompt(renderer, tiny_model_factory, prompts):
    seen = []

    def grade(texts, items):
        seen.extend(items)
        return low_share(texts, items)

    metrics = loop.evaluate(tiny_model_factory(), prompts[:3], renderer.tokenizer.pad_token_id,
                            objective=objective(renderer, grade=grade))
    assert set(metrics) == {"valid_reward_mean", "valid_completion_length"}
    assert [item["n"] for item in seen] == [0, 1, 2] and 0 <= metrics["valid_reward_mean"] <= 1


def test_a_short_run_raises_the_grader_score_on_held_out_prompts(renderer, tiny_model_factory, tmp_path):
    """A tiny model first taught to answer "yes" or "no" alike, then trained against a grader that wants
    "yes": on questions it never trained on, the probability of "yes" must rise (a random model's answers
    spread over the whole vocabulary, too thin for a few sampled groups to move; a trained start is
    what RFT is for)."""
    pad = renderer.tokenizer.pad_token_id
    questions = [f"Is {i} a number?" for i in range(8)]
    held_out = [renderer.encode(parse_prompt({"messages": [{"role": "user", "content": f"Is {w} a number?"}]}, 1)[0],
                                128) for w in ("twelve", "x", "3.5", "ten")]
    both = [renderer.encode(parse_example({"user": q, "assistant": a}, 1)[0], 128) for q in questions for a in ("yes", "no")]
    model = tiny_model_factory()
    loop.train(model, both, loop.LoopConfig(n_epochs=20, batch_size=8, learning_rate=1e-2, seed=1, patience=None),
               tmp_path / "sft", Recorder(), pad_id=pad)
    model = lora(model)
    prompts = [renderer.encode(parse_prompt({"messages": [{"role": "user", "content": q}]}, n)[0], 128)
               for n, q in enumerate(questions, 1)]
    yes = renderer.tokenizer.encode("yes", add_special_tokens=False)[0]

    @torch.no_grad()
    def p_yes(asked=held_out) -> float:
        return sum(model(torch.tensor([p.input_ids])).logits[0, -1].softmax(-1)[yes].item()
                   for p in asked) / len(asked)

    def wants_yes(texts, items):
        return [(float(t.strip() == "yes"), None) for t in texts]

    before = p_yes()
    obj = grpo.GRPO(wants_yes, lambda ids: renderer.tokenizer.decode(ids, skip_special_tokens=True),
                    renderer.stop_ids, renderer.end_of_turn_id, 8, 4, 0.04, reference=grpo.snapshot(model))
    rec = Recorder()
    cfg = loop.LoopConfig(n_epochs=6, batch_size=4, learning_rate=1e-2, seed=3, objective=obj, patience=None)
    result = loop.train(model, prompts, cfg, tmp_path / "rft", rec, pad_id=pad, valid_set=prompts[:4])
    assert 0.2 < before < 0.8  # the start answers either way
    assert result.completed and len(rec.steps) == 12 and all(k in rec.steps[0] for k in grpo.METRICS)
    assert p_yes() > before + 0.1, (before, p_yes(), [m["train_reward_mean"] for m in rec.steps])
    assert rec.steps[-1]["train_kl"] > 0  # it moved away from its reference
    assert "valid_reward_mean" in result.checkpoints[-1].metrics
    assert loop.best_checkpoint(result.checkpoints) is not None
