"""Exact label positions: only trained assistant turns, through their end-of-turn token."""

from pathlib import Path

import gguf
import pytest

from tunesmith.data.formats import parse_example
from tunesmith.data.tokenize import IGNORE
from tunesmith.errors import TemplateError
from tunesmith.models.registry import BUNDLED


def labelled_pieces(renderer, tokenized) -> list[str]:
    """Decode each contiguous run of labelled tokens."""
    runs, current = [], []
    for tok, lab in zip(tokenized.input_ids, tokenized.labels):
        if lab != IGNORE:
            assert lab == tok
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [renderer.tokenizer.decode(r) for r in runs]


def example(obj):
    ex, problems = parse_example(obj, 1)
    assert not problems
    return ex


def test_labels_cover_trained_assistant_turns_and_end_of_turn(renderer):
    ex = example({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there", "weight": 0},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye!"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "See you"},
    ]})
    tok = renderer.encode(ex, 512)
    assert labelled_pieces(renderer, tok) == ["Goodbye!<|im_end|>", "See you<|im_end|>"]
    # The first labelled position is the first token after "<|im_start|>assistant\n".
    first = next(i for i, lab in enumerate(tok.labels) if lab != IGNORE)
    assert renderer.tokenizer.decode(tok.input_ids[:first]).endswith("Bye<|im_end|>\n<|im_start|>assistant\n")
    assert tok.labels[-1] == IGNORE  # the newline after the last <|im_end|> is not trained


def test_pairs_train_the_last_turn_and_template_adds_default_system(renderer):
    ex = example({"user": "2+2?", "assistant": "4"})
    tok = renderer.encode(ex, 512)
    text = renderer.tokenizer.decode(tok.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert labelled_pieces(renderer, tok) == ["4<|im_end|>"]


def test_completion_labels_completion_and_eos(renderer):
    tok = renderer.encode(example({"prompt": "Capital of France:", "completion": " Paris"}), 512)
    assert labelled_pieces(renderer, tok) == [" Paris<|im_end|>"]
    assert renderer.tokenizer.decode(tok.input_ids).startswith("Capital of France:")


def test_tool_calls_are_rendered_and_trained(renderer):
    ex = example({"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]})
    tok = renderer.encode(ex, 1024)
    text = renderer.tokenizer.decode(tok.input_ids)
    assert '"name": "get_weather"' in text.split("<tools>")[1]
    assert labelled_pieces(renderer, tok) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "Sunny.<|im_end|>",
    ]


def test_truncation_keeps_the_start(renderer):
    ex = example({"user": "word " * 200, "assistant": "ok"})
    tok = renderer.encode(ex, 32)
    assert tok.truncated and tok.n_tokens == 32 and tok.n_trained == 0


def test_assistant_first_is_a_template_error(renderer):
    ex = example({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"},
                               {"role": "assistant", "content": "b"}]})
    with pytest.raises(TemplateError, match="starts with an assistant"):
        renderer.encode(ex, 512)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    [{"role": "system", "content": "It's 'quoted'"}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_our_chatml_matches_smollm2_gguf_template(renderer, messages, generation_prompt):
    gguf_path = BUNDLED["smollm2-135m-instruct"].locate(Path("."))
    field = gguf.GGUFReader(gguf_path).fields["tokenizer.chat_template"]
    original = bytes(field.parts[field.data[0]]).decode()
    theirs = renderer.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=original,
                                                    add_generation_prompt=generation_prompt)
    assert renderer.render(messages, generation_prompt=generation_prompt) == theirs
