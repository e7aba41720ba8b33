"""Gemma 3 270M: a base model without a chat template gets ChatML plus the tokens it needs."""

import json

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from tunesmith.cli import app

pytestmark = pytest.mark.slow
GEMMA = "gemma-3-270m"


@pytest.fixture(scope="module")
def gemma_renderer():
    from tunesmith.models.loading import ensure_cached, load_renderer

    info = ensure_cached(GEMMA)
    return info, load_renderer(info)


def test_gemma_gets_chatml_with_new_special_tokens(gemma_renderer):
    info, renderer = gemma_renderer
    tok = renderer.tokenizer
    assert len(info.added_token_ids) == 2
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == info.added_token_ids
    ids = renderer.encode_prompt([{"role": "user", "content": "hi"}])
    assert ids[:2] == [tok.bos_token_id, info.added_token_ids[0]]  # <bos><|im_start|>
    assert tok.decode(ids) == "<bos><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_gemma_lora_trains_new_token_rows_and_chats(gemma_renderer, tmp_path):
    rows = [{"user": f"Say the word number {i}.", "assistant": f"Word {i}."} for i in range(10)]
    data = write_jsonl(tmp_path / "g.jsonl", [json.dumps(r) for r in rows])
    result = CliRunner().invoke(app, ["train", str(data), "--model", GEMMA, "--epochs", "1",
                                      "--batch-size", "10", "--max-length", "64", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    assert out["fine_tuned_model"].startswith("ft:gemma-3-270m:local::")

    from tunesmith.jobs import registry
    from tunesmith.jobs.store import Store
    from tunesmith.serve.engine import Engine, Sampling

    engine = Engine(GEMMA)
    reply = engine.generate(registry.resolve(out["fine_tuned_model"], Store()), [[{"role": "user", "content": "Say the word number 3."}]],
                            Sampling(max_tokens=8))[0]
    assert isinstance(reply.text, str) and 1 <= reply.completion_tokens <= 8
