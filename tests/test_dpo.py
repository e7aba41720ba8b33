"""Preference tuning (DPO): the two line shapes, their validation, the loss against a hand computation,
and short runs that must raise the held-out reward accuracy."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from conftest import write_jsonl
from test_loop import Recorder, lora, weights
from tunesmith.cli import app
from tunesmith.data.formats import PREFERENCE, parse_example
from tunesmith.data.tokenize import IGNORE
from tunesmith.errors import TunesmithError
from tunesmith.train.hyper import resolve
from tunesmith.train import loop
from tunesmith.train.losses import DPO, attach_reference
from tunesmith.train.run import REFERENCE_FILE, _attach_reference

SYSTEM = {"role": "system", "content": "Be brief."}


def openai_line(user: str, chosen: str, rejected: str, **extra) -> dict:
    return {"input": {"messages": [SYSTEM, {"role": "user", "content": user}]},
            "preferred_output": [{"role": "assistant", "content": chosen}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}], **extra}


GOOD = [json.dumps(openai_line(f"question {i}", f"good answer {i}", f"bad answer {i}")) for i in range(10)]


def test_openai_shape_normalises_to_the_chosen_conversation_plus_the_rejected_answer():
    obj = openai_line("u2", "yes", "no")
    obj["input"]["messages"][1:1] = [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}]
    ex, problems = parse_example(obj, 4)
    assert problems == [] and ex.format == PREFERENCE and ex.line == 4 and ex.has_system
    assert [(m["role"], m["content"], m.get("weight")) for m in ex.messages] == [
        ("system", "Be brief.", None), ("user", "u1", None), ("assistant", "a1", 0),  # context only
        ("user", "u2", None), ("assistant", "yes", 1)]
    assert ex.rejected == {"role": "assistant", "content": "no", "weight": 1}


def test_older_openai_names_and_trl_shapes_are_the_same_example():
    expected, _ = parse_example({"input": {"messages": [{"role": "user", "content": "q"}]},
                                 "preferred_output": [{"role": "assistant", "content": "y"}],
                                 "non_preferred_output": [{"role": "assistant", "content": "n"}]}, 1)
    older = {"input": {"messages": [{"role": "user", "content": "q"}]},
             "preferred_completion": [{"role": "assistant", "content": "y"}],
             "non_preferred_completion": [{"role": "assistant", "content": "n"}]}
    trl_plain = {"prompt": "q", "chosen": "y", "rejected": "n"}
    trl_chat = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "y"}],
                "rejected": [{"role": "assistant", "content": "n"}]}
    for obj in (older, trl_plain, trl_chat):
        ex, problems = parse_example(obj, 1)
        assert problems == [] and ex == expected


def test_pair_shares_the_prompt_and_labels_only_the_answers(renderer):
    ex, _ = parse_example({"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                      {"role": "user", "content": "Bye"}],
                           "chosen": "Goodbye!", "rejected": "Whatever."}, 1)
    pair = renderer.encode(ex, 512)
    decode = renderer.tokenizer.decode
    for side, answer in ((pair.chosen, "Goodbye!<|im_end|>"), (pair.rejected, "Whatever.<|im_end|>")):
        assert decode([t for t, lab in zip(side.input_ids, side.labels) if lab != IGNORE]) == answer
        assert side.input_ids[:pair.prompt_tokens] == pair.chosen.input_ids[:pair.prompt_tokens]
    assert decode(pair.chosen.input_ids[:pair.prompt_tokens]).endswith("Bye<|im_end|>\n<|im_start|>assistant\n")
    assert pair.n_tokens == pair.chosen.n_tokens + pair.rejected.n_tokens


OK_PREFERRED = [{"role": "assistant", "content": "a"}]
CASES = {
    "missing side": ({"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": OK_PREFERRED},
                     "line 11, non_preferred_output: missing"),
    "identical sides": (openai_line("q", "same", "same"),
                        "line 11, non_preferred_output: is identical to the preferred output"),
    "not the last assistant turn": (
        {"input": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
         "preferred_output": [{"role": "assistant", "content": "b"}],
         "non_preferred_output": [{"role": "assistant", "content": "c"}]},
        "line 11, input.messages: ends with an assistant message"),
    "output of two turns": (openai_line("q", "a", "b", preferred_output=[
        {"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}]),
        "line 11, preferred_output: must be a list holding one assistant message (or a string), got 2 messages"),
    "output from the user": (openai_line("q", "a", "b", non_preferred_output=[{"role": "user", "content": "b"}]),
                             "line 11, non_preferred_output[0].role: must be \"assistant\", got 'user'"),
    "empty answer": (openai_line("q", " ", "b"), "line 11, preferred_output[0].content: is empty"),
    "missing input": ({"preferred_output": OK_PREFERRED, "non_preferred_output": [{"role": "assistant",
                                                                                   "content": "b"}]},
                      "line 11, input: missing"),
    "bad message in input": (openai_line("q", "a", "b", input={"messages": [{"role": "bot", "content": "q"}]}),
                             "line 11, input.messages[0].role: unknown role 'bot'"),
    "both names for a side": (openai_line("q", "a", "b", preferred_completion=OK_PREFERRED),
                              "line 11, preferred_completion: give either preferred_output or "
                              "preferred_completion, not both"),
    "misspelt key": (openai_line("q", "a", "b", prefered_output=OK_PREFERRED),
                     "line 11, prefered_output: unrecognised key"),
    "trl without rejected": ({"prompt": "q", "chosen": "a"}, "line 11, rejected: missing"),
    "trl empty prompt": ({"prompt": "", "chosen": "a", "rejected": "b"}, "line 11, prompt: is empty"),
    "trl answer not text": ({"prompt": "q", "chosen": 3, "rejected": "b"},
                            "line 11, chosen: must be a list holding one assistant message (or a string), "
                            "got a number"),
    "mixed with chat lines": ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                              "mixed formats in one file"),
}


@pytest.mark.parametrize("case", CASES)
def test_broken_preference_file_reports_line_and_field(case, tmp_path, smol_info):
    line, expected = CASES[case]
    path = write_jsonl(tmp_path / "pairs.jsonl", GOOD + [json.dumps(line)])
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert expected in result.output


@pytest.mark.parametrize("rows, method, expected", [
    (GOOD, "lora", "this file holds preference pairs: they train only with the DPO method"),
    ([json.dumps({"user": f"q{i}", "assistant": "a"}) for i in range(10)], "dpo",
     "the DPO method needs preference pairs"),
])
def test_method_and_format_must_agree(rows, method, expected, tmp_path, smol_info):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    result = CliRunner().invoke(app, ["validate", str(path), "--method", method])
    assert result.exit_code == 1 and expected in result.output


def test_validate_reports_pair_statistics_and_dpo_hyperparameters(tmp_path, smol_info):
    trl = [json.dumps({"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": "no"}) for i in range(12)]
    path = write_jsonl(tmp_path / "pairs.jsonl", trl)
    result = CliRunner().invoke(app, ["validate", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["format"] == "preference" and report["examples"] == 12
    sides = report["pair_tokens"]
    assert sides["chosen"]["min"] == 5 and sides["rejected"]["max"] == 2  # "good answer N" / "no" + <|im_end|>
    # Each pair is two sequences: prompt + answer + the newline after <|im_end|> (not trained).
    assert report["tokens"]["total"] == (2 * sides["prompt"]["total"] + sides["chosen"]["total"]
                                         + sides["rejected"]["total"] + 2 * 12)
    assert report["hyperparameters"]["beta"] == 0.1 and report["hyperparameters"]["n_epochs"] == 8
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert "chosen tokens" in result.output and "beta 0.1" in result.output


def test_beta_is_a_dpo_hyperparameter():
    assert resolve(200, "dpo").beta == 0.1 and resolve(200, "dpo", beta="0.5").beta == 0.5
    assert resolve(200, "lora").beta is None and "beta" not in resolve(200, "lora").as_dict()
    with pytest.raises(TunesmithError, match="beta applies only to the DPO and reinforcement methods"):
        resolve(200, "lora", beta=0.2)
    with pytest.raises(TunesmithError, match="beta must be at least"):
        resolve(200, "dpo", beta=0)


# --- the loss -------------------------------------------------------------------------------------

def pairs_of(renderer, rows):
    return [renderer.encode(parse_example(r, n)[0], 128) for n, r in enumerate(rows, 1)]


def hand_logps(model, tokenized) -> float:
    """Summed log-probability of the labelled tokens, one unpadded sequence at a time."""
    ids = torch.tensor([tokenized.input_ids])
    logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    labels = torch.tensor(tokenized.labels[1:])
    trained = labels != IGNORE
    return float(logps[trained].gather(1, labels[trained].unsqueeze(1)).sum())


def test_dpo_loss_and_rewards_match_a_hand_computation(tiny_model_factory, renderer):
    policy, reference = tiny_model_factory(0), tiny_model_factory(1)
    pairs = pairs_of(renderer, [{"prompt": "What is 2+2?", "chosen": "Four.", "rejected": "I think it is five."},
                                {"prompt": "Name a colour in a longer prompt, please.", "chosen": "Blue",
                                 "rejected": "Red"},
                                {"prompt": "Hi", "chosen": "Hello there, how can I help?", "rejected": "What?"}])
    attach_reference(reference, pairs, pad_id=2)
    beta = 0.3
    with torch.no_grad():
        expected = []
        for p in pairs:
            ref_c, ref_r = hand_logps(reference, p.chosen), hand_logps(reference, p.rejected)
            assert p.reference == pytest.approx((ref_c, ref_r), abs=1e-4)
            chosen = beta * (hand_logps(policy, p.chosen) - ref_c)
            rejected = beta * (hand_logps(policy, p.rejected) - ref_r)
            expected.append((float(-F.logsigmoid(torch.tensor(chosen - rejected))), chosen, rejected))
    loss, stats = DPO(beta)(policy, [pairs[:2], pairs[2:]], pad_id=2)  # six sequences packed in two rows
    assert float(loss.detach()) == pytest.approx(sum(e[0] for e in expected), abs=1e-4)
    assert stats["train_loss"] == pytest.approx(float(loss.detach()))
    assert stats["rewards/chosen"] == pytest.approx(sum(e[1] for e in expected), abs=1e-4)
    assert stats["rewards/rejected"] == pytest.approx(sum(e[2] for e in expected), abs=1e-4)
    assert stats["rewards/margins"] == pytest.approx(sum(e[1] - e[2] for e in expected), abs=1e-4)
    assert stats["rewards/accuracies"] == sum(e[1] > e[2] for e in expected)
    with torch.no_grad():
        nll = sum(-hand_logps(policy, p.chosen) / p.chosen.n_trained for p in pairs)
    assert stats["nll_loss"] == pytest.approx(nll, abs=1e-4)
    # RPO: the chosen answers' mean token NLL, weighted, on top of the DPO loss.
    rpo, rpo_stats = DPO(beta, rpo_alpha=0.5)(policy, [pairs[:2], pairs[2:]], pad_id=2)
    assert float(rpo.detach()) == pytest.approx(float(loss.detach()) + 0.5 * nll, abs=1e-4)
    loss.backward()
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)


def test_at_the_start_the_policy_is_its_own_reference(tiny_model_factory, renderer):
    model = tiny_model_factory()
    pairs = pairs_of(renderer, [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(4)])
    attach_reference(model, pairs, pad_id=2)
    metrics = loop.evaluate(model, pairs, pad_id=2, objective=DPO(0.1))
    assert metrics["valid_loss"] == pytest.approx(0.6931, abs=1e-4)  # log 2
    assert metrics["valid_rewards/margins"] == pytest.approx(0, abs=1e-5)


# --- training -------------------------------------------------------------------------------------

NAMES = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo", "Kim", "Lu", "Max", "Ned", "Oz", "Pia"]


@pytest.fixture(scope="module")
def sign_off_pairs(renderer):
    """Chosen answers end with a sign-off, rejected ones do not; held-out prompts are new names."""
    def rows(names):
        return [{"prompt": f"Say hello to {n}.", "chosen": f"Hello {n}! -- Bot", "rejected": f"Hello {n}!"}
                for n in names]
    return pairs_of(renderer, rows(NAMES[:12])), pairs_of(renderer, rows(NAMES[12:]))


def dpo_run(model, train_set, valid_set, tmp, **kwargs):
    attach_reference(model, train_set + valid_set, pad_id=2)
    rec = Recorder()
    cfg = loop.LoopConfig(n_epochs=3, batch_size=4, learning_rate=2e-3, seed=3, objective=DPO(0.1))
    stop_at = kwargs.pop("stop_at", None)
    result = loop.train(model, train_set, cfg, tmp, rec, pad_id=2, valid_set=valid_set,
                        stop_requested=lambda: stop_at is not None and len(rec.steps) >= stop_at, **kwargs)
    return result, rec


def test_short_dpo_run_raises_held_out_reward_accuracy(tiny_model_factory, sign_off_pairs, tmp_path):
    train_set, heldout = sign_off_pairs
    model = lora(tiny_model_factory())
    result, rec = dpo_run(model, train_set, heldout, tmp_path)
    assert result.completed and result.step == 9
    assert {"train_loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(
        rec.steps[0])
    assert rec.steps[0]["train_loss"] == pytest.approx(0.6931, abs=0.01)  # the policy starts as its reference
    final = rec.checkpoints[-1].metrics
    assert final["valid_rewards/accuracies"] == 1.0 and final["valid_rewards/margins"] > 0.1
    assert final["valid_loss"] < 0.65
    assert result.trained_tokens == sum(p.n_tokens for p in train_set) * 3


def test_dpo_stop_then_resume_equals_uninterrupted(tiny_model_factory, sign_off_pairs, tmp_path, renderer):
    from peft import PeftModel

    train_set, _ = sign_off_pairs
    straight = lora(tiny_model_factory())
    dpo_run(straight, train_set, [], tmp_path / "straight")

    first = lora(tiny_model_factory())
    stopped, _ = dpo_run(first, train_set, [], tmp_path / "split", stop_at=2)
    ckpt = tmp_path / "split" / "step-000002"
    resumed = PeftModel.from_pretrained(tiny_model_factory(), ckpt, is_trainable=True)
    rec = Recorder()  # the references stay those of the start, attached before the stop
    cfg = loop.LoopConfig(n_epochs=3, batch_size=4, learning_rate=2e-3, seed=3, objective=DPO(0.1))
    loop.train(resumed, train_set, cfg, tmp_path / "split", rec, pad_id=2, resume_from=ckpt)
    ws, wr = weights(straight), weights(resumed)
    assert all(torch.allclose(ws[k], wr[k], atol=1e-6) for k in ws)


def test_references_are_computed_once_and_reloaded(tiny_model_factory, renderer, tmp_path):
    pairs = pairs_of(renderer, [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(3)])
    quiet = SimpleNamespace(on_message=lambda message: None)
    _attach_reference(tiny_model_factory(0), pairs, tmp_path / REFERENCE_FILE, 2, quiet)
    first = [p.reference for p in pairs]
    again = pairs_of(renderer, [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(3)])
    # A resumed job's model is no longer the starting one: the saved references win.
    _attach_reference(tiny_model_factory(1), again, tmp_path / REFERENCE_FILE, 2, quiet)
    assert [p.reference for p in again] == first
