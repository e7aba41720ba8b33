"""The serving engine through the API with the official client, on the real SmolLM2: many users and
adapters in one batch answer exactly as alone; response_format; logprobs; deleting a model unloads it."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from live_server import new_home, serving
from tunesmith.api.app import create_app
from tunesmith.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from serve import make_adapters  # noqa: E402  (bench/serve.py: the serving bench's adapters)

pytestmark = pytest.mark.slow
SMOL = "smollm2-135m-instruct"
QUESTIONS = ["What is the capital of France?", "Name three fruits.", "Write a haiku about rain.",
             "How many legs has a spider?", "Say hello in Spanish.", "What colour is the sky?",
             "Give me a word that rhymes with cat.", "What is 12 times 3?"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A keyless server whose project owns four LoRA adapters (random, small weights) over the real model."""
    settings = Settings(home=new_home(tmp_path_factory.mktemp("serving")), keyless=True)
    names = make_adapters(settings, 4, settings.org, spread=0.04)
    app = create_app(settings, run_worker=False)
    with serving(app) as (host, port):
        yield app, openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="x", max_retries=0), names
    app.state.engines.close()


def ask(client, model: str, question: str, **extra) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           max_tokens=32, **extra)
    return reply.choices[0].message.content


def test_sixteen_users_on_four_adapters_and_the_base_answer_as_each_alone(served):
    app, client, names = served
    models = [SMOL] + names
    asks = [(models[i % 5], QUESTIONS[i // 5]) for i in range(16)]  # questions 0-2 go to all five models
    seeded = dict(temperature=1.0, seed=1234)
    alone = [ask(client, m, q, temperature=0) for m, q in asks]
    alone_sampled = ask(client, names[1], QUESTIONS[2], **seeded)
    steps = app.state.engines.engine(SMOL).scheduler.steps
    with ThreadPoolExecutor(17) as pool:
        together = list(pool.map(lambda mq: ask(client, *mq, temperature=0), asks))
        sampled = pool.submit(ask, client, names[1], QUESTIONS[2], **seeded).result()
    assert together == alone
    assert sampled == alone_sampled
    for k in range(1, 5):  # every adapter changes some answer
        assert any(alone[q * 5 + k] != alone[q * 5] for q in range(3)), k
    # batched: far fewer decode steps than 16 answers one after another
    assert app.state.engines.engine(SMOL).scheduler.steps - steps < 16 * 32 / 2


PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"], "additionalProperties": False}
BIOS = ["Ada Lovelace was 36 and lived in London.", "Meet Tomasz, a 52-year-old baker from Gdansk.",
        "Profile -- name: Esme; years: 29; town: Halifax", "Our new colleague Ravi (41) moved here from Pune."]


def test_a_json_schema_answer_always_parses_and_validates_on_a_model_not_tuned_for_json(served):
    _, client, names = served
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    system = {"role": "system", "content": "Reply with the person's name, age and city as JSON."}
    for model in (SMOL, names[0]):
        for bio in BIOS:
            reply = client.chat.completions.create(model=model, messages=[system, {"role": "user", "content": bio}],
                                                   response_format=fmt, max_tokens=200, temperature=0)
            # An answer that ends parses and validates; one cut by max_tokens could not (as at OpenAI).
            assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
            value = json.loads(reply.choices[0].message.content)
            assert set(value) == {"name", "age", "city"} and isinstance(value["age"], int)
            assert all(isinstance(value[k], str) for k in ("name", "city"))
    plain = client.chat.completions.create(model=SMOL, messages=[system, {"role": "user", "content": BIOS[0]}],
                                           max_tokens=200,
                                           response_format={"type": "json_object"}, temperature=0)
    assert isinstance(json.loads(plain.choices[0].message.content), dict)


def test_logprobs_come_back_in_openai_shape(served):
    _, client, _ = served
    reply = client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                           max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token  # greedy: the likeliest
        assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
    legacy = client.completions.create(model=SMOL, prompt="One, two,", max_tokens=4, temperature=0, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert "".join(lp.tokens) == legacy.choices[0].text and len(lp.top_logprobs[0]) == 2
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])


def test_deleting_a_model_unloads_its_adapter(served):
    app, client, names = served
    ask(client, names[3], QUESTIONS[1], temperature=0)
    adapters = app.state.engines.engine(SMOL).adapters
    path = str(app.state.engines.settings.jobs_dir / "ftjob-bench03" / "model")
    assert path in adapters.resident()
    client.models.delete(names[3])
    assert path not in adapters.resident()
    with pytest.raises(openai.NotFoundError):
        ask(client, names[3], QUESTIONS[1])
