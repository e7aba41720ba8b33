"""Scores of greedy answers during training (train/answers.py): exact and field match, the questions
read off tokenized examples, and batched greedy generation on a tiny model."""

import json

import pytest

from tunesmith.data.formats import parse_example
from tunesmith.data.tokenize import Tokenized
from tunesmith.train.answers import answer_scorer, field_match, greedy, question, score_answers

REF = json.dumps({"name": "Olga Varga", "age": 31, "city": "Graz", "tags": ["a", "b"]})


@pytest.mark.parametrize("answer, expected", [
    (REF, 1.0),
    ('{"tags": ["a", "b"], "city": "Graz", "age": 31, "name": "Olga Varga"}', 1.0),  # key order does not count
    ('{"name": "Olga Varga", "age": "31", "city": "Graz", "tags": ["a", "b"]}', 0.75),  # "31" is not 31
    ('{"name": "Olga Varga", "age": 31, "city": "Graz"}', 0.75),  # a key missing
    ('{"name": "Olga Varga", "age": 31, "city": "Graz", "tags": ["a", "b"], "x": 1}', 0.8),  # one too many
    ('{"name": "Olga", "age": 30, "city": "Split", "tags": ["b", "a"]}', 0.0),
    ("not json", 0.0),
    ('["Olga Varga", 31]', 0.0),  # JSON, but no object
])
def test_field_match_is_the_share_of_keys_with_equal_values(answer, expected):
    assert field_match(answer, REF) == pytest.approx(expected)


def test_field_match_applies_only_to_json_object_references():
    assert field_match('{"a": 1}', "billing") is None
    assert field_match("[1]", "[1]") is None
    assert field_match("{}", "{}") == 1.0


def test_score_answers_exact_match_ignores_only_surrounding_whitespace():
    scores = score_answers([" billing\n", "Billing", "shipping"], ["billing", "billing", "shipping"])
    assert scores == {"valid_exact_match": pytest.approx(2 / 3)}  # no JSON reference: no field match


def test_score_answers_field_match_counts_json_references_only():
    scores = score_answers([REF, '{"name": "Olga Varga"}', "returns"], [REF, REF, "returns"])
    assert scores["valid_exact_match"] == pytest.approx(2 / 3)
    assert scores["valid_field_match"] == pytest.approx((1 + 0.25) / 2)


def _encode(renderer, row):
    return renderer.encode(parse_example(row, 1)[0], 512)


def decode(renderer):
    return lambda ids: renderer.tokenizer.decode(ids, skip_special_tokens=True)


def test_a_question_is_the_prompt_the_engine_would_send_and_the_trained_answer(renderer):
    messages = [{"role": "system", "content": "Reply with JSON."}, {"role": "user", "content": "Olga, 31, Graz"},
                {"role": "assistant", "content": "Noted."}, {"role": "user", "content": "Now as JSON."},
                {"role": "assistant", "content": REF}]
    q = question(_encode(renderer, {"messages": messages}), decode(renderer))
    assert q.reference == REF  # the last answer, not the first
    assert q.prompt == renderer.encode_prompt(messages[:-1])
    assert q.answer_tokens == len(renderer.tokenizer(REF)["input_ids"]) + 1  # and the end of turn


def test_truncated_or_untrained_examples_ask_no_question(renderer):
    assert question(Tokenized([1, 2, 3], [-100, 2, 3], truncated=True), decode(renderer)) is None
    assert question(Tokenized([1, 2, 3], [-100, -100, -100]), decode(renderer)) is None


def test_greedy_batched_answers_equal_one_at_a_time_and_the_mode_is_restored(tiny_model_factory, renderer):
    model = tiny_model_factory()
    model.train()
    prompts = [renderer.encode_prompt([{"role": "user", "content": text}])
               for text in ("Hi", "What is the capital of a country far away?", "Name three colours, please.")]
    pad, stops = renderer.tokenizer.pad_token_id, renderer.stop_ids
    together = greedy(model, prompts, 6, pad, stops, batch_size=3)
    assert model.training
    assert together == [greedy(model, [p], 6, pad, stops)[0] for p in prompts]
    assert all(len(a) <= 6 and not set(a) & set(stops) for a in together)


def test_the_scorer_asks_at_most_50_questions_with_short_answers(tiny_model_factory, renderer):
    long = [{"user": "Tell a story", "assistant": "once upon a time " * 40}] * 5
    rows = long + [{"user": f"Say {i}", "assistant": str(i)} for i in range(60)]
    scorer = answer_scorer([_encode(renderer, r) for r in rows], renderer)
    asked = []
    model = tiny_model_factory()
    real_generate = model.generate
    model.generate = lambda **kw: asked.append(len(kw["input_ids"])) or real_generate(**kw)
    assert set(scorer(model)) == {"valid_exact_match"}
    assert sum(asked) == 50
    assert answer_scorer([], renderer) is None
    assert answer_scorer([_encode(renderer, r) for r in long], renderer) is None


def test_the_model_under_autocast_still_answers(tiny_model_factory, renderer):
    """bf16 autocast (chosen where the CPU multiplies bf16 natively) also generates."""
    prompts = [renderer.encode_prompt([{"role": "user", "content": "Hi"}])]
    answer = greedy(tiny_model_factory(), prompts, 3, renderer.tokenizer.pad_token_id, renderer.stop_ids, "bf16")
    assert len(answer) == 1 and all(isinstance(t, int) for t in answer[0])
