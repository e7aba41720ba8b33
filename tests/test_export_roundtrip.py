"""Round trips of a model trained for a few steps: each export, loaded by the tool that consumes it, gives
tunesmith's own greedy answers (token ids) to the same prompts.

Beside "same answers" the tests report teacher-forced token agreement: the share of the reference
answer's tokens that a model predicts (top-1) when fed the reference answer so far. It does not
cascade from one early difference, so it measures how close a quantised export stays (q8_0).
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from conftest import SMOL, chat_row, write_jsonl

pytestmark = pytest.mark.slow
SYSTEM = "You name colours."
COLOURS = ["red", "blue", "green", "amber", "violet", "teal", "ochre", "ivory", "coral", "slate"]
PROMPTS = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a colour, number 23."}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a colour, number 7."}],
    [{"role": "user", "content": "Name a colour, number 41."}],
    [{"role": "user", "content": "What is the capital of France?"}],
]
MAX_TOKENS = 24


class Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, smol_info) -> str:
    """A LoRA adapter trained for 10 steps (20 examples, 2 epochs of batch 4), registered as `tunesmith train` does."""
    from tunesmith.jobs import registry
    from tunesmith.jobs.store import Store
    from tunesmith.train.run import TrainSpec, run_job

    data = write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl",
                       [chat_row(f"Name a colour, number {i}.", f"Colour {i}: {COLOURS[i % 10]}.", system=SYSTEM)
                        for i in range(20)])
    started = time.perf_counter()
    result = run_job(TrainSpec(data, n_epochs=2, batch_size=4, learning_rate_multiplier=2, seed=5, suffix="export"),
                     Quiet())
    print(f"\ntrained {result.fine_tuned_model} in {time.perf_counter() - started:.0f} s")
    store = Store()
    with store.session() as s:
        registry.register(s, registry.record(result.model), store.project(s, "local").id, job_id=None)
    return result.fine_tuned_model


@pytest.fixture(scope="module")
def engine():
    from tunesmith.serve.engine import Engine

    return Engine(SMOL)


@pytest.fixture(scope="module")
def reference(tuned, engine) -> list[list[int]]:
    """tunesmith's own greedy answers, as token ids (through the end-of-turn token)."""
    from tunesmith.jobs import registry
    from tunesmith.jobs.store import Store
    from tunesmith.serve.engine import Sampling

    def answered_by(model):
        return engine.exclusive(model, lambda m: [greedy(m, engine.renderer, p) for p in PROMPTS])

    resolved = registry.resolve(tuned, Store())
    answers = answered_by(resolved)
    for prompt, ids in zip(PROMPTS, answers):  # the helper answers as the engine's own generate does
        [reply] = engine.generate(resolved, [prompt], Sampling(max_tokens=MAX_TOKENS))
        assert reply.text == engine.tokenizer.decode(ids, skip_special_tokens=True)
    assert answers != answered_by(registry.resolve(SMOL, Store()))  # the adapter matters
    return answers


@pytest.fixture(scope="module")
def exported(tuned, tmp_path_factory):
    """export(fmt, **options) → the export's folder, each one written once for the module."""
    from tunesmith.export import export
    from tunesmith.export.source import source_of
    from tunesmith.jobs import registry
    from tunesmith.jobs.store import Store

    source = source_of(registry.resolve(tuned, Store()))
    root, done = tmp_path_factory.mktemp("exports"), {}

    def get(fmt: str, **options):
        key = json.dumps([fmt, options], sort_keys=True)
        if key not in done:
            started = time.perf_counter()
            done[key] = export(source, fmt, root / f"{fmt}-{len(done)}", **options)
            print(f"\nexport {fmt} {options}: {time.perf_counter() - started:.1f} s")
        return done[key]

    return get


def greedy(model, renderer, prompt: list[dict]) -> list[int]:
    ids = torch.tensor([renderer.encode_prompt(prompt)])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS,
                             do_sample=False, eos_token_id=renderer.stop_ids,
                             pad_token_id=renderer.tokenizer.pad_token_id)
    return cut(out[0, ids.shape[1]:].tolist(), renderer.stop_ids)


def cut(ids: list[int], stops: list[int]) -> list[int]:
    end = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
    return ids[:end]


def forced(renderer, reference: list[list[int]]):
    """(prompt + reference answer ids, the answer, the positions whose outputs predict the answer) per prompt."""
    for prompt, answer in zip(PROMPTS, reference):
        ids = renderer.encode_prompt(prompt)
        yield ids + answer, answer, slice(len(ids) - 1, len(ids) - 1 + len(answer))


def teacher_forced(predict, renderer, reference: list[list[int]]) -> float:
    """Share of reference answer tokens that ``predict(ids) → top-1 ids per position`` gets right."""
    right = total = 0
    for ids, answer, at in forced(renderer, reference):
        top = predict(ids)[at]
        right += sum(int(a == b) for a, b in zip(top, answer))
        total += len(answer)
    return right / total


def hf_top1(model):
    def predict(ids: list[int]) -> list[int]:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()
    return predict


def report(label: str, answers: list[list[int]], reference: list[list[int]], agreement: float) -> int:
    same = sum(a == r for a, r in zip(answers, reference))
    print(f"\n{label}: {same}/{len(reference)} answers identical, teacher-forced token agreement {agreement:.1%}")
    return same


def test_peft_export_reloaded_with_peft_answers_as_tunesmith(exported, reference, engine):
    from peft import PeftModel

    done = exported("peft", include_base=True)
    config = json.loads((done.path / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, done.path).eval()
    answers = [greedy(model, engine.renderer, p) for p in PROMPTS]
    report("peft (with its base)", answers, reference, teacher_forced(hf_top1(model), engine.renderer, reference))
    assert answers == reference


def test_merged_hf_export_answers_as_tunesmith(exported, reference, engine):
    model = AutoModelForCausalLM.from_pretrained(exported("hf").path, dtype=torch.float32).eval()
    answers = [greedy(model, engine.renderer, p) for p in PROMPTS]
    report("hf (merged, fp32)", answers, reference, teacher_forced(hf_top1(model), engine.renderer, reference))
    assert answers == reference


def gguf_model(done):
    [name] = [f for f in done.files if f.suffix == ".gguf"]
    return AutoModelForCausalLM.from_pretrained(done.path, gguf_file=str(name), dtype=torch.float32).eval()


def reference_logprobs(model, renderer, reference: list[list[int]]) -> torch.Tensor:
    """log p(reference token) at each position of the reference answers, fed the reference so far."""
    out = []
    for ids, answer, at in forced(renderer, reference):
        with torch.inference_mode():
            steps = model(input_ids=torch.tensor([ids])).logits[0, at].float().log_softmax(-1)
        out.append(steps[torch.arange(len(answer)), torch.tensor(answer)])
    return torch.cat(out)


def test_gguf_f16_export_through_transformers_gguf_loader_answers_as_tunesmith(exported, reference, tuned, engine):
    """f16 rounds every weight to 11 significant bits, so where the tuned model is torn between two tokens
    its greedy answer may flip (seen once: number 23, never trained, guessed " ochre" by the model and
    " slate" by its f16 export). What must hold: the export's probabilities are the model's, to within
    f16's rounding."""
    from tunesmith.jobs import registry
    from tunesmith.jobs.store import Store

    model = gguf_model(exported("gguf", quant="f16"))
    answers = [greedy(model, engine.renderer, p) for p in PROMPTS]
    agreement = teacher_forced(hf_top1(model), engine.renderer, reference)
    report("gguf f16 (transformers' GGUF loader)", answers, reference, agreement)
    ours = engine.exclusive(registry.resolve(tuned, Store()),
                            lambda m: reference_logprobs(m, engine.renderer, reference))
    gap = (reference_logprobs(model, engine.renderer, reference) - ours).abs().max().item()
    print(f"gguf f16: largest log-probability gap on the reference answers {gap:.4f}")
    assert gap < 0.05
    assert agreement >= 0.9


def test_gguf_q8_0_export_token_agreement(exported, reference, engine):
    model = gguf_model(exported("gguf", quant="q8_0"))
    answers = [greedy(model, engine.renderer, p) for p in PROMPTS]
    agreement = teacher_forced(hf_top1(model), engine.renderer, reference)
    report("gguf q8_0 (transformers' GGUF loader)", answers, reference, agreement)
    assert agreement >= 0.9


def test_llama_cpp_runs_the_gguf_and_the_lora_gguf_on_the_bundled_base(exported, reference, engine):
    """llama.cpp itself (llama-cpp-python): the merged f16 GGUF, and the LoRA GGUF over the bundled Q4_1 GGUF."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (a source build: pip install llama-cpp-python==0.3.36, "
                            "about 8 minutes on 2 cores; see the README's Export section)")
    renderer = engine.renderer

    def run(label: str, **kwargs) -> tuple[int, float]:
        llm = llama_cpp.Llama(n_ctx=512, logits_all=True, verbose=False, n_threads=2, **kwargs)

        def predict(ids: list[int]) -> list[int]:
            llm.reset()
            llm.eval(ids)
            return llm.scores[: len(ids)].argmax(-1).tolist()

        answers = []
        for prompt in PROMPTS:
            llm.reset()
            ids = []
            for token in llm.generate(renderer.encode_prompt(prompt), top_k=1, top_p=1.0, temp=0.0,
                                      repeat_penalty=1.0):
                ids.append(token)
                if token in renderer.stop_ids or len(ids) == MAX_TOKENS:
                    break
            answers.append(ids)
        agreement = teacher_forced(predict, renderer, reference)
        return report(label, answers, reference, agreement), agreement

    merged = exported("gguf", quant="f16")
    same, agreement = run("llama.cpp, gguf f16", model_path=str(merged.path / merged.files[0]))
    assert agreement >= 0.9
    lora = exported("gguf-lora")
    from tunesmith.models.registry import BUNDLED

    base_gguf = BUNDLED[SMOL].locate(lora.path)
    same, agreement = run("llama.cpp, LoRA GGUF over the bundled Q4_1 GGUF", model_path=str(base_gguf),
                          lora_path=str(lora.path / lora.files[0]))
    assert agreement >= 0.9


def test_cli_export_ollama_prints_the_command_and_sets_the_datas_system_prompt(tuned, tmp_path):
    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["export", tuned, "--format", "ollama", "--quant", "q8_0",
                                      "--out", str(tmp_path / "ollama")])
    assert result.exit_code == 0, result.output
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert f'SYSTEM """{SYSTEM}"""' in modelfile
    name = tuned.removeprefix("ft:").replace(":", "-").lower()
    assert f"ollama create {name} -f {tmp_path / 'ollama' / 'Modelfile'}" in result.stdout
