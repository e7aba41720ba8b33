import json
import os
import tempfile
from pathlib import Path

# Before anything reads settings: never reach a hub, and keep all state in a throwaway home
# (TUNESMITH_TEST_HOME reuses one between local runs to skip the one-off model conversion).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TUNESMITH_HOME"] = os.environ.get("TUNESMITH_TEST_HOME") or tempfile.mkdtemp(prefix="tunesmith-test-")
# Tests that name no base train SmolLM2, a third of Gemma's weights, so that `make test` fits 2 cores;
# test_aliases.py checks what ships as the default without this.
os.environ["TUNESMITH_DEFAULT_MODEL"] = "smollm2-135m-instruct"

import pytest  # noqa: E402
from pg import postgres  # noqa: E402,F401  (the session's throwaway PostgreSQL server)

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smol_info():
    from tunesmith.models.loading import ensure_cached

    return ensure_cached(SMOL)


@pytest.fixture(scope="session")
def renderer(smol_info):
    from tunesmith.models.loading import load_renderer

    return load_renderer(smol_info)


@pytest.fixture(scope="session")
def tiny_model_factory(renderer):
    """Tiny random Llama models over the real SmolLM2 tokenizer: fast, but real shapes and ids."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(seed: int = 0):
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(renderer.tokenizer), hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=1024, tie_word_embeddings=True,
                             pad_token_id=renderer.tokenizer.pad_token_id)
        return LlamaForCausalLM(config)

    return make


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat_row(user: str, assistant: str, system: str | None = "You are terse.") -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str | None:
    """Each store-backed test runs on both databases: SQLite in the home (None), and a fresh database
    on the session's throwaway PostgreSQL server (skipped where PostgreSQL is not installed)."""
    return request.getfixturevalue("postgres").create_database() if request.param == "postgresql" else None
