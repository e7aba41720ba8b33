"""The serving engine's parts on tiny random models over the real tokenizer: per-row LoRA against PEFT,
continuous batching against answering alone, the adapter LRU, cancellation, chunked prefill, grammars."""

from __future__ import annotations

import copy
import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunesmith.serve.adapters import AdapterCache, read_adapter
from tunesmith.serve.grammar import Grammars
from tunesmith.serve.lora import MultiLoRA, Routing
from tunesmith.serve.sampling import Answer, Reply, Row, Sampling
from tunesmith.serve.scheduler import Cancelled, Request, Scheduler

ADDED = [5, 77, 901]  # token rows an adapter trains, as Gemma's ChatML rows are trained


@pytest.fixture(scope="module")
def base(tiny_model_factory):
    return tiny_model_factory(0).eval()


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    """Four PEFT adapters with random (non-zero) weights: three of rank 8, the last of rank 16 that also
    trains three token rows."""
    root = tmp_path_factory.mktemp("adapters")
    paths = []
    for i in range(4):
        torch.manual_seed(100 + i)
        tokens = {"embed_tokens": ADDED} if i == 3 else None
        config = LoraConfig(r=8 if i < 3 else 16, lora_alpha=16, target_modules="all-linear", init_lora_weights=False,
                            trainable_token_indices=tokens)
        peft = get_peft_model(copy.deepcopy(base), config)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2)
                if "trainable_tokens_delta" in name:
                    p.normal_(0, 1.0)
        peft.save_pretrained(root / f"a{i}")
        paths.append(root / f"a{i}")
    return paths


@pytest.fixture()
def served(base, adapters, renderer):
    """A scheduler over a copy of the base with every adapter wrapped in; closed after the test."""
    model = copy.deepcopy(base)
    lora = MultiLoRA(model)
    cache = AdapterCache(lora, max_count=8, max_bytes=1 << 30)
    scheduler = Scheduler(model, lora, renderer.tokenizer, renderer.tokenizer.pad_token_id, max_batch=64,
                          prefill_tokens=256, name="tiny")
    yield scheduler, cache
    scheduler.close()


def peft_logits(base, path, ids):
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(base), path).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


# stacked: every adapter side by side; with no room for that, gathered per row (the one-rank batch) or
# grouped (mixed ranks)
@pytest.mark.parametrize("dense_max_rank", [256, 0], ids=["stacked", "gathered-or-grouped"])
@pytest.mark.parametrize("slots", [[0, None, 3, 1, 3, 2], [2, None, 1, 0, 1, 1]], ids=["ranks-8-16", "rank-8"])
def test_each_row_gets_its_own_adapter_as_peft_computes_it(base, adapters, dense_max_rank, slots, monkeypatch):
    monkeypatch.setattr("tunesmith.serve.lora.DENSE_MAX_RANK", dense_max_rank)
    model = copy.deepcopy(base)
    lora = MultiLoRA(model)
    for slot, path in enumerate(adapters):
        lora.install(slot, read_adapter(path, lora))
    # every trained token appears, so the adapter's embedding rows and output columns both count
    ids = torch.tensor([[1, ADDED[0], 300, ADDED[2], 42, 7]] * 6)
    with torch.no_grad(), lora.routed(Routing.of(slots)):
        mixed = model(input_ids=ids).logits
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    for row, slot in enumerate(slots):
        expected = plain[row] if slot is None else peft_logits(base, adapters[slot], ids[row : row + 1])[0]
        torch.testing.assert_close(mixed[row], expected, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(mixed[0], plain[0], atol=1e-3)  # the adapters do change the answer
    with torch.no_grad(), lora.routed(Routing.single(slots[2])):
        whole = model(input_ids=ids[:2]).logits
    torch.testing.assert_close(whole[0], mixed[2], atol=1e-5, rtol=1e-5)


def submit(scheduler, tokenizer, prompt, sampling, slot=None, seed=None, grammar=None, cancel=None):
    """Queue one answer; a function that waits for its Reply (and its pieces, joined)."""
    items: queue.SimpleQueue = queue.SimpleQueue()
    answer = Answer(tokenizer, [tokenizer.eos_token_id], sampling, len(prompt))
    scheduler.submit(Request(prompt, Row(sampling, seed, grammar), answer, slot, items.put,
                             cancel or threading.Event()))

    def wait():
        pieces = []
        while isinstance(item := items.get(timeout=120), str):
            pieces.append(item)
        if isinstance(item, Exception):
            raise item
        assert "".join(pieces) == item.text
        return item, answer.ids

    return wait


def prompts(tokenizer, n):
    words = ["apple", "river", "seven", "blue", "quiet", "market", "storm", "paper"]
    return [tokenizer(" ".join(words[: 1 + (i * 3) % 8]) + f" {i}", add_special_tokens=True)["input_ids"]
            for i in range(n)]


def test_a_batch_of_mixed_adapters_answers_exactly_as_each_alone(served, adapters, renderer):
    scheduler, cache = served
    tok = renderer.tokenizer
    slots = [None] + [cache.acquire(p) for p in adapters]
    asks = prompts(tok, 16)
    greedy = Sampling(max_tokens=24)
    sampled = Sampling(max_tokens=24, temperature=0.9, top_p=0.95)
    alone = [submit(scheduler, tok, p, greedy, slots[i % 5])()[1] for i, p in enumerate(asks)]
    alone_sampled = submit(scheduler, tok, asks[3], sampled, slots[2], seed=11)()[1]
    steps = scheduler.steps
    waits = [submit(scheduler, tok, p, greedy, slots[i % 5]) for i, p in enumerate(asks)]
    waits.append(submit(scheduler, tok, asks[3], sampled, slots[2], seed=11))
    together = [w()[1] for w in waits]
    assert together[:16] == alone and together[16] == alone_sampled
    assert scheduler.steps - steps < 2 * 24  # all in one batch: ~24 decode steps, not 17 × 24
    assert len({tuple(a) for a in alone[:5]}) == 5  # base and four adapters answer differently


def test_a_cancelled_answer_leaves_the_batch_and_the_others_go_on(served, renderer):
    scheduler, _ = served
    tok = renderer.tokenizer
    long_cancel = threading.Event()
    long = submit(scheduler, tok, prompts(tok, 1)[0], Sampling(max_tokens=500), cancel=long_cancel)
    short = submit(scheduler, tok, prompts(tok, 2)[1], Sampling(max_tokens=10))
    reply, _ = short()
    long_cancel.set()
    with pytest.raises(Cancelled):
        long()
    assert reply.completion_tokens == 10 and reply.finish_reason == "length"
    assert scheduler.load == 0


def test_a_long_prompt_is_read_in_chunks_between_decode_steps(served, renderer):
    scheduler, _ = served
    tok = renderer.tokenizer
    running = submit(scheduler, tok, prompts(tok, 1)[0], Sampling(max_tokens=40))
    long_prompt = tok(" ".join(["word"] * 900))["input_ids"]
    alone = submit(scheduler, tok, long_prompt, Sampling(max_tokens=8))()[1]
    running()
    first = submit(scheduler, tok, prompts(tok, 1)[0], Sampling(max_tokens=40))
    steps = scheduler.steps
    long = submit(scheduler, tok, long_prompt, Sampling(max_tokens=8))
    assert long()[1] == alone
    first()
    # 900 tokens at 256 a turn: four turns of prefill, each followed by a decode step of the running answer
    assert scheduler.steps - steps >= 4


def test_a_seeded_sample_is_the_same_alone_and_in_a_batch_and_seeds_differ(served, renderer):
    scheduler, _ = served
    tok = renderer.tokenizer
    sampled = Sampling(max_tokens=16, temperature=1.0)
    ask = prompts(tok, 3)[2]
    alone = submit(scheduler, tok, ask, sampled, seed=5)()[1]
    waits = [submit(scheduler, tok, ask, sampled, seed=s) for s in (5, 6, 5)]
    a, b, c = (w()[1] for w in waits)
    assert a == alone == c and b != a


def test_the_adapter_cache_evicts_the_least_recently_used_idle_adapter(base, adapters):
    lora = MultiLoRA(copy.deepcopy(base))
    cache = AdapterCache(lora, max_count=2, max_bytes=1 << 30)
    a0, a1, a2 = (cache.acquire(p) for p in adapters[:3])  # all pinned: three resident over a limit of two
    assert len(cache.resident()) == 3
    cache.release(adapters[0])
    assert cache.resident() == [str(adapters[1]), str(adapters[2])]
    assert all(a0 not in layer.weights for layer in lora.layers.values())
    cache.release(adapters[1])
    assert cache.acquire(adapters[1]) == a1  # resident: the same slot, nothing read
    cache.release(adapters[1])
    assert len(cache.load_seconds) == 3
    cache.release(adapters[2])
    cache.unload(adapters[2])
    assert cache.resident() == [str(adapters[1])] and all(a2 not in lw.weights for lw in lora.layers.values())
    by_bytes = AdapterCache(lora, max_count=8, max_bytes=1)  # no room at all: only pinned ones stay
    slot = by_bytes.acquire(adapters[0])
    by_bytes.release(adapters[0])
    assert by_bytes.resident() == [] and all(slot not in lw.weights for lw in lora.layers.values())


def test_requests_for_one_cold_adapter_read_it_once_and_leave_no_lock_behind(base, adapters, tmp_path):
    cache = AdapterCache(MultiLoRA(copy.deepcopy(base)), max_count=4, max_bytes=1 << 30)
    start = threading.Barrier(4)

    def acquire():
        start.wait()
        return cache.acquire(adapters[0])

    with ThreadPoolExecutor(4) as pool:
        slots = set(pool.map(lambda _: acquire(), range(4)))
    assert len(slots) == 1 and len(cache.load_seconds) == 1
    with pytest.raises(Exception):
        cache.acquire(tmp_path / "no-such-adapter")
    assert cache._loading == {}  # a lock per adapter ever asked for would grow without end


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "note": {"type": "string"},  # unbounded: only the closing reserve ends it in time
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
    "required": ["name", "note", "age", "tags"], "additionalProperties": False}


def test_a_json_schema_answer_from_a_random_model_always_parses_and_validates(served, renderer):
    scheduler, _ = served
    tok = renderer.tokenizer
    grammars = Grammars(tok, len(tok), [tok.eos_token_id])
    waits = [submit(scheduler, tok, p, Sampling(max_tokens=100, temperature=1.0), seed=i,
                    grammar=grammars.compile(SCHEMA)) for i, p in enumerate(prompts(tok, 6))]
    for wait in waits:
        reply, _ = wait()
        value = json.loads(reply.text)
        assert reply.finish_reason == "stop", reply.text
        assert set(value) == {"name", "note", "age", "tags"} and 0 <= value["age"] <= 120
        assert len(value["name"]) <= 12 and isinstance(value["note"], str)
        assert set(value["tags"]) <= {"a", "b"}
    free, _ = submit(scheduler, tok, prompts(tok, 1)[0], Sampling(max_tokens=60), grammar=grammars.compile(None))()
    assert isinstance(json.loads(free.text), dict)


def test_logprobs_are_the_models_own(served, base, renderer):
    scheduler, _ = served
    tok = renderer.tokenizer
    ask = prompts(tok, 1)[0]
    reply, ids = submit(scheduler, tok, ask, Sampling(max_tokens=3, top_logprobs=2))()
    with torch.no_grad():
        logits = base(input_ids=torch.tensor([ask + ids[:2]])).logits[0, len(ask) - 1 :]
    expected = torch.log_softmax(logits.float(), -1)
    for i, t in enumerate(reply.logprobs):
        assert t.logprob == pytest.approx(float(expected[i, ids[i]]), abs=1e-4)
        assert [a for a, _, _ in t.top][0] == t.token and len(t.top) == 2
        assert isinstance(reply, Reply)


@pytest.mark.parametrize("text", ["Grüße aus Köln 😀 — naïve 日本語 ok", " leading space, then\nnew lines  and  gaps"])
def test_an_answer_decoded_a_token_at_a_time_is_the_whole_decoding_and_shows_no_broken_character(renderer, text):
    tokenizer = renderer.tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False)
    answer = Answer(tokenizer, [tokenizer.eos_token_id], Sampling(max_tokens=len(ids) + 1), 0)
    pieces = [answer.add(token) for token in ids]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == answer.text == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize(("text", "stops", "shown"), [
    ("one two END three", ("ND t",), "one two E"),
    ("Grüße aus Köln 😀 — naïve", ("zzz", "😀 —"), "Grüße aus Köln "),  # a stop that begins mid-character
    (" ".join("abcdefghijklmnop") + " the end", ("he e", "q"), " ".join("abcdefghijklmnop") + " t"),  # late
])
def test_an_answer_stops_before_a_stop_string_split_across_tokens(renderer, text, stops, shown):
    tokenizer = renderer.tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False)
    answer = Answer(tokenizer, [tokenizer.eos_token_id], Sampling(max_tokens=64, stop=stops), 0)
    pieces = []
    for token in ids:
        pieces.append(answer.add(token))
        if answer.finish_reason:
            break
    assert "".join(pieces) == answer.text == shown and answer.finish_reason == "stop"
