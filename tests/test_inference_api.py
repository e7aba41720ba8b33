"""Chat completions and completions, driven by the official ``openai`` client (and raw HTTP where the
wire format itself is the point) against the inference router served by uvicorn in this process."""

from __future__ import annotations

import http.client
import json
import time

import openai
import pytest

from live_server import new_home, serving
from tunesmith.api.app import create_app
from tunesmith.config import Settings

pytestmark = pytest.mark.slow
SMOL = "smollm2-135m-instruct"
FRUITS = [{"role": "user", "content": "List three fruits, one per line."}]


@pytest.fixture(scope="module")
def app(tmp_path_factory, smol_info):
    app = create_app(Settings(home=new_home(tmp_path_factory.mktemp("inference")), keyless=True), run_worker=False)
    yield app
    app.state.engines.close()


@pytest.fixture(scope="module")
def server(app):
    with serving(app) as address:
        yield address


@pytest.fixture(scope="module")
def client(server):
    host, port = server
    return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="x", max_retries=0)


def post(server, path: str, body: dict, conn: http.client.HTTPConnection | None = None) -> http.client.HTTPResponse:
    conn = conn or http.client.HTTPConnection(*server, timeout=120)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return conn.getresponse()


def events(server, path: str, body: dict) -> list:
    """The server-sent events of a streamed answer: parsed chunks, and the final "[DONE]" as is."""
    resp = post(server, path, body)
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
    raw = resp.read().decode()
    assert raw.endswith("\n\n")
    data = [e.removeprefix("data: ") for e in raw.split("\n\n")[:-1]]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


def test_chat_completion_has_openai_shape_and_exact_usage(server, renderer):
    resp = post(server, "/v1/chat/completions", {"model": SMOL, "messages": FRUITS, "temperature": 0,
                                                  "max_tokens": 12})
    assert resp.status == 200
    body = json.loads(resp.read())
    assert list(body) == ["id", "object", "created", "model", "choices", "usage", "system_fingerprint"]
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and body["model"] == SMOL
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] in ("stop", "length")
    assert choice["message"]["role"] == "assistant" and choice["message"]["refusal"] is None
    assert choice["message"]["content"].strip()
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(renderer.encode_prompt(FRUITS))
    assert 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_ends_with_length(client):
    reply = client.chat.completions.create(model=SMOL, messages=FRUITS, temperature=0, max_completion_tokens=3)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_stream_joins_up_to_the_plain_reply_and_ends_with_usage(client, server):
    plain = client.chat.completions.create(model=SMOL, messages=FRUITS, temperature=0, max_tokens=12)
    chunks = list(client.chat.completions.create(model=SMOL, messages=FRUITS, temperature=0, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == plain.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == plain.choices[0].finish_reason
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert len({c.id for c in chunks}) == 1

    raw = events(server, "/v1/chat/completions", {"model": SMOL, "messages": FRUITS, "max_tokens": 2, "stream": True})
    assert raw[-1] == "[DONE]" and "usage" not in raw[0]  # no usage chunk unless asked
    assert raw[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert raw[-2]["choices"][0]["delta"] == {} and raw[-2]["choices"][0]["finish_reason"] == "length"


def test_stop_strings_cut_the_reply_plain_and_streamed(client):
    plain = client.chat.completions.create(model=SMOL, messages=FRUITS, temperature=0, max_tokens=20, stop="\n")
    streamed = client.chat.completions.create(model=SMOL, messages=FRUITS, temperature=0, max_tokens=20,
                                              stop=["\n", "zzz"], stream=True)
    text = plain.choices[0].message.content
    assert text and "\n" not in text and plain.choices[0].finish_reason == "stop"
    assert plain.usage.completion_tokens < 20
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text


def test_n_answers_one_prompt_several_times(client, renderer):
    reply = client.chat.completions.create(model=SMOL, messages=FRUITS, temperature=0, max_tokens=6, n=2)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].message.content == reply.choices[1].message.content  # greedy
    assert reply.usage.prompt_tokens == len(renderer.encode_prompt(FRUITS))
    assert reply.usage.completion_tokens == 2 * 6 or reply.choices[0].finish_reason == "stop"


def test_completions_plain_and_streamed(client, server, renderer):
    prompts = ["The capital of France is", "1, 2, 3,"]
    reply = client.completions.create(model=SMOL, prompt=prompts, temperature=0, max_tokens=4)
    assert reply.object == "text_completion" and [c.index for c in reply.choices] == [0, 1]
    assert all(c.text and c.finish_reason == "length" for c in reply.choices)
    prompt_tokens = sum(len(renderer.tokenizer(p)["input_ids"]) for p in prompts)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, 8)

    raw = events(server, "/v1/completions", {"model": SMOL, "prompt": prompts[0], "temperature": 0, "max_tokens": 4,
                                             "stream": True, "stream_options": {"include_usage": True}})
    assert raw[-1] == "[DONE]" and all(e["object"] == "text_completion" for e in raw[:-1])
    assert "".join(e["choices"][0]["text"] for e in raw[:-2]) == reply.choices[0].text
    assert raw[-3]["choices"][0]["finish_reason"] == "length"
    assert raw[-2]["choices"] == [] and raw[-2]["usage"]["completion_tokens"] == 4


def test_unknown_model_and_bad_parameters_are_openai_errors(client, server):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=FRUITS)
    assert err.value.body == {"message": "The model `no-such-model` does not exist or you do not have access to it.",
                              "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    resp = post(server, "/v1/completions", {"model": "ft:no:such:model:x", "prompt": "hi"})
    assert resp.status == 404 and json.loads(resp.read())["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=FRUITS, temperature=3)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=FRUITS, n=2, stream=True)
    assert err.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=SMOL, prompt="hi", stop=["a", "b", "c", "d", "e"])
    assert err.value.body["param"] == "stop"


def test_event_loop_stays_free_and_a_dropped_stream_frees_the_engine(client, server):
    conn = http.client.HTTPConnection(*server, timeout=120)
    long = post(server, "/v1/completions", {"model": SMOL, "prompt": "1, 2, 3, 4,", "temperature": 0,
                                            "max_tokens": 2000, "stream": True}, conn)
    assert long.status == 200 and long.readline().startswith(b"data: ")

    started = time.monotonic()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=FRUITS)
    assert time.monotonic() - started < 5
    assert long.readline() == b"\n" and long.readline().startswith(b"data: ")  # still generating

    conn.close()  # the client goes away mid-generation
    started = time.monotonic()
    reply = client.completions.create(model=SMOL, prompt="Hello", max_tokens=2)
    assert reply.usage.completion_tokens == 2
    assert time.monotonic() - started < 30  # had the dropped stream kept the engine: 2000 tokens, minutes


def wait_for(condition, seconds: float) -> float:
    """How long ``condition()`` took to become true; fails after ``seconds``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "timed out"
        time.sleep(0.02)
    return time.monotonic() - started


def test_limits_on_what_a_request_asks_for(server):
    chat = {"model": SMOL, "messages": FRUITS}
    cases = [
        ("/v1/chat/completions", {**chat, "stop": ["x" * 257]}, "stop", "invalid_value"),
        ("/v1/chat/completions", {**chat, "messages": FRUITS * 1025}, "messages", "invalid_value"),
        ("/v1/chat/completions", {**chat, "messages": []}, "messages", "invalid_value"),
        ("/v1/chat/completions", {**chat, "top_logprobs": 2}, "top_logprobs", None),
        ("/v1/chat/completions", {**chat, "logprobs": True, "stream": True}, "logprobs", "unsupported_parameter"),
        ("/v1/chat/completions", {**chat, "response_format": {"type": "json_schema"}}, "response_format.json_schema",
         None),
        ("/v1/chat/completions", {**chat, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}},
         "response_format", "invalid_value"),
        ("/v1/chat/completions", {**chat, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
        ("/v1/chat/completions", {**chat, "seed": 2**64}, "seed", "invalid_value"),
        ("/v1/completions", {"model": SMOL, "prompt": ["hi"] * 33}, "prompt", "invalid_value"),
        ("/v1/completions", {"model": SMOL, "prompt": ["hi"] * 9, "n": 8}, "n", None),
        ("/v1/completions", {"model": SMOL, "prompt": "hi", "logprobs": 6}, "logprobs", "invalid_value"),
        ("/v1/completions", {"model": SMOL, "prompt": "hi", "suffix": "!"}, "suffix", "unsupported_parameter"),
    ]
    echoed = json.loads(post(server, "/v1/completions", {"model": SMOL, "prompt": "Hello there", "max_tokens": 2,
                                                          "echo": True, "temperature": 0}).read())
    plain = json.loads(post(server, "/v1/completions", {"model": SMOL, "prompt": "Hello there", "max_tokens": 2,
                                                         "temperature": 0}).read())
    assert echoed["choices"][0]["text"] == "Hello there" + plain["choices"][0]["text"]
    for path, body, param, code in cases:
        resp = post(server, path, body)
        error = json.loads(resp.read())["error"]
        assert (resp.status, error["param"], error["code"]) == (400, param, code), (param, error)
    assert post(server, "/v1/completions", {"model": SMOL, "prompt": "hi", "max_tokens": 1}).status == 200


def test_a_prompt_over_the_context_is_refused_as_openai_does(client, renderer):
    long = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=long)
    assert err.value.body["code"] == "context_length_exceeded" and err.value.body["param"] == "messages"
    assert err.value.body["message"].startswith("This model's maximum context length is 8192 tokens. However, you "
                                                "requested ")
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=SMOL, prompt="hi", max_tokens=8192)
    assert err.value.body["code"] == "context_length_exceeded" and err.value.body["param"] == "prompt"
    prompt_tokens = len(renderer.tokenizer("hi", add_special_tokens=True)["input_ids"])
    assert f"({prompt_tokens} in the prompt, 8192 in the completion)" in err.value.body["message"]
    assert client.completions.create(model=SMOL, prompt="hi", max_tokens=1).usage.completion_tokens == 1


def test_a_client_that_leaves_stops_its_generation(app, server, client):
    engines = app.state.engines
    conn = http.client.HTTPConnection(*server, timeout=120)
    conn.request("POST", "/v1/completions", json.dumps({"model": SMOL, "prompt": "1, 2, 3, 4,", "max_tokens": 2000}),
                 {"Content-Type": "application/json"})
    wait_for(lambda: engines.admitted(SMOL) == 1, 30)
    time.sleep(1)  # generating by now
    conn.close()
    assert wait_for(lambda: engines.admitted(SMOL) == 0, 5) < 5
    started = time.monotonic()
    assert client.completions.create(model=SMOL, prompt="Hello", max_tokens=2).usage.completion_tokens == 2
    assert time.monotonic() - started < 30  # 2000 tokens left on the engine would take minutes


def test_past_the_queue_limit_a_request_gets_429_with_retry_after(app, server, client, monkeypatch):
    engines = app.state.engines
    monkeypatch.setattr(engines.settings, "max_queued_requests", 1)
    conn = http.client.HTTPConnection(*server, timeout=120)
    long = post(server, "/v1/completions", {"model": SMOL, "prompt": "1, 2, 3, 4,", "max_tokens": 2000,
                                            "stream": True}, conn)
    assert long.status == 200 and engines.admitted(SMOL) == 1
    for path, body in (("/v1/completions", {"model": SMOL, "prompt": "hi"}),
                       ("/v1/chat/completions", {"model": SMOL, "messages": FRUITS, "stream": True})):
        busy = post(server, path, body)
        error = json.loads(busy.read())["error"]
        assert busy.status == 429 and error["code"] == "rate_limit_exceeded"
        assert int(busy.headers["Retry-After"]) >= 1
    conn.close()
    wait_for(lambda: engines.admitted(SMOL) == 0, 5)
    assert client.completions.create(model=SMOL, prompt="Hello", max_tokens=2).usage.completion_tokens == 2
