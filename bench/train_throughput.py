"""Training throughput: one epoch of SFT on the bundled SmolLM2, tunesmith against TRL's SFTTrainer,
and tunesmith on Gemma 3 270M.

    python bench/train_throughput.py --json bench.json          # 440 examples (400 + 40 held out)
    python bench/train_throughput.py --quick                     # a smoke run: 10 short examples
    python bench/train_throughput.py --method full               # full fine-tuning instead of LoRA
    python bench/train_throughput.py --trl-default-steps 10      # a shorter look at TRL's defaults
    python bench/train_throughput.py --configs tunesmith,tunesmith_unchunked,tunesmith_gemma,tunesmith_gemma_unchunked

The script writes a fixed chat dataset (seeded: list words, then sort, reverse or capitalise them;
lengths drawn evenly from 30–600 tokens, the template's ~40 the least) and a held-out set, then trains one epoch in each configuration, each in
a fresh process so that its peak RSS is its own:

- ``tunesmith``: tunesmith's trainer with its defaults (auto batch size and learning rate, precision
  "auto", packing), as ``run_job`` builds it;
- ``trl_default``: TRL's SFTTrainer with its defaults, made to run on CPU (``use_cpu=True``), for a
  fixed 40 optimizer steps of the full set (``--trl-default-steps``), not the epoch: see below;
- ``trl_best``: TRL at its best here: padding-free batches with per-example position ids,
  assistant-only loss (through a chat template with ``{% generation %}`` markers), no gradient
  checkpointing, bf16 only where the hardware has it. Padding-free without packing keeps TRL's
  steps the same examples as the other two; TRL's ``packing=True`` would make a step 8 rows of 1024;
- ``tunesmith_gemma``: tunesmith's trainer with its defaults on Gemma 3 270M (262k-token vocabulary,
  ChatML tokens added and trained), on the same text;
- ``tunesmith_unchunked``, ``tunesmith_gemma_unchunked`` (not run unless named): the same with the
  vocabulary projection and cross-entropy in one piece over the micro-batch, as before losses.py
  chunked it, to show what chunking saves in peak memory and costs in time.

All take the same optimizer steps: the same examples per step (tunesmith's auto batch size),
the same peak learning rate, LoRA r=16 α=32 on all linear layers. Reported for each: trained tokens
per second (every non-padding token of the steps taken over the time of ``train``; tunesmith's
includes writing its end-of-epoch checkpoint, TRL saves nothing), that time, peak RSS, and for the
runs that train the whole epoch the held-out loss after it (mean cross-entropy per assistant token,
in fp32, the same evaluation for all; comparable within one model only, since Gemma's tokens are
not SmolLM2's). tunesmith's model-FLOP utilisation is against the best matmul
rate (bf16 or fp32) measured in the same run; its FLOPs are the work the loss needs: linear layers
on every token, causal attention within each example, the vocabulary projection where trained.

TRL's defaults include bf16=True and gradient checkpointing: on a CPU without native bf16 (no AMX or
AVX-512 BF16) bf16 is emulated, many times slower than fp32, and a whole epoch of ``trl_default``
takes hours. Its row is therefore the tokens/s of its first 40 steps (counted by the Trainer's own
non-padding token count), marked as such; a loss after 40 of 50 steps at TRL's default learning rate
says nothing about the other two's, so it has none. The script prints the CPU features it found and
each side's precision: this machine kind differs from one run to the next.

TRL comes from the ``bench`` extra (``pip install -e '.[bench]'``); tunesmith never imports it.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CONFIGS = ("tunesmith", "trl_default", "trl_best", "tunesmith_gemma")
EXTRA_CONFIGS = ("tunesmith_unchunked", "tunesmith_gemma_unchunked")  # run only when named
MODELS = {"tunesmith_gemma": "gemma-3-270m", "tunesmith_gemma_unchunked": "gemma-3-270m"}  # others: SmolLM2
WORDS = ("apple river stone cloud garden window silver basket candle forest ladder mirror pocket rabbit "
         "shadow thunder velvet whistle anchor blanket copper dragon feather harbor island jacket kettle "
         "lantern marble needle orange pepper quartz ribbon saddle tunnel umbrella valley walnut yellow "
         "zebra bridge castle desert engine falcon glacier hammer igloo jungle koala lemon meadow nectar "
         "ocean parrot quiver rocket sunset tiger unicorn violin wagon xylophone yacht zipper").split()
TASKS = {  # instruction, answer from the word list
    "sort": ("Sort these words alphabetically:", sorted),
    "reverse": ("Write these words in reverse order:", lambda w: w[::-1]),
    "upper": ("Repeat these words in capital letters:", lambda w: [x.upper() for x in w]),
}
SYSTEM = "You are a precise assistant. Answer with the words only, separated by commas."
# SmolLM2's template (without tools) with {% generation %} around what tunesmith trains: each assistant
# reply through its <|im_end|>. TRL's assistant-only loss needs these markers; main() checks that it
# renders exactly what the model's own template does.
TRAINING_TEMPLATE = (
    "{%- if messages[0].role == 'system' -%}{%- set system = messages[0].content -%}"
    "{%- set rest = messages[1:] -%}{%- else -%}"
    "{%- set system = 'You are a helpful AI assistant named SmolLM, trained by Hugging Face' -%}"
    "{%- set rest = messages -%}{%- endif -%}"
    "{{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' -}}"
    "{%- for message in rest -%}{%- if message.role == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}{% generation %}{{- message.content + '<|im_end|>' -}}{% endgeneration %}"
    "{{- '\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass
class Run:
    config: str
    model: str
    tokens: int  # non-padding tokens trained in the steps taken
    seconds: float  # of the training call alone: no loading, tokenizing or evaluating
    peak_rss_mb: float  # after training (a high-water mark: loading and training)
    valid_loss: float | None  # None where the run stops before the epoch's end
    precision: str
    steps: int  # optimizer steps taken
    epoch: bool  # whether the steps were the whole epoch
    flops: float | None = None  # the useful work of the epoch (tunesmith only)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


# --- the dataset ----------------------------------------------------------------------------------

def _row(words: list[str], task: str, system: bool) -> dict:
    instruction, answer = TASKS[task]
    messages = [{"role": "system", "content": SYSTEM}] if system else []
    return {"messages": messages + [{"role": "user", "content": f"{instruction} {', '.join(words)}"},
                                    {"role": "assistant", "content": ", ".join(answer(words))}]}


def make_dataset(n: int, min_tokens: int, max_tokens: int, seed: int, count_tokens) -> list[dict]:
    """``n`` examples whose token counts spread evenly over [min_tokens, max_tokens]."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        target, task, system = rng.randint(min_tokens, max_tokens), rng.choice(list(TASKS)), rng.random() < 0.5
        words = rng.choices(WORDS, k=max_tokens)  # more than any example takes
        n_words = 1
        # Grow the list until the example is as long as its target (~4 tokens a word: question and answer).
        while (tokens := count_tokens(_row(words[:n_words], task, system))) < min(target, max_tokens):
            n_words += max(1, (target - tokens) // 5)
        while count_tokens(_row(words[:n_words], task, system)) > max_tokens and n_words > 1:
            n_words -= 1
        rows.append(_row(words[:n_words], task, system))
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- one configuration, in its own process --------------------------------------------------------

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Quiet:
    def on_start(self, total_steps: int, start_step: int) -> None: ...
    def on_step(self, metrics: dict) -> None: ...
    def on_checkpoint(self, checkpoint) -> None: ...


def cpu_features() -> dict[str, bool]:
    """The features that decide which precision is fast here (torch.cpu.get_capabilities() names)."""
    import torch

    capabilities = torch.cpu.get_capabilities()
    return {name: bool(capabilities.get(name)) for name in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16")}


def features_line(features: dict[str, bool]) -> str:
    return "CPU features: " + ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in features.items())


def child(config: str, method: str, train_path: Path, valid_path: Path, trl_default_steps: int) -> Run:
    import torch

    from tunesmith.config import enforce_offline, get_settings, quiet_libraries
    from tunesmith.data.batching import epoch_order
    from tunesmith.data.validate import validate_file
    from tunesmith.models.loading import ensure_cached, load_renderer
    from tunesmith.train import hyper, losses, loop
    from tunesmith.train.run import TrainSpec

    enforce_offline()
    quiet_libraries()
    settings = get_settings()
    if config.endswith("_unchunked"):  # one chunk, however large the micro-batch's logits
        losses.LOGITS_CHUNK_ELEMENTS = 1 << 62
    info = ensure_cached(MODELS.get(config, "smollm2-135m-instruct"))
    renderer = load_renderer(info)
    pad_id = renderer.tokenizer.pad_token_id
    train_set = validate_file(train_path, renderer).tokenized
    valid_set = validate_file(valid_path, renderer).tokenized
    hp = hyper.resolve(len(train_set), method, n_epochs=1)
    spec = TrainSpec(train_path, method=method, n_epochs=1, seed=0)
    torch.manual_seed(0)
    epoch_steps = len(epoch_order(len(train_set), hp.batch_size, 0, 0))  # as loop.train counts them
    max_steps = min(trl_default_steps, epoch_steps) if config == "trl_default" else epoch_steps
    with tempfile.TemporaryDirectory() as workdir:
        if config.startswith("tunesmith"):
            model, tokens, seconds, precision = _tunesmith(info, spec, hp, settings, train_set, pad_id, Path(workdir))
        else:
            model, tokens, seconds, precision = _trl(config, info, spec, hp, renderer.tokenizer, train_path, workdir,
                                                     max_steps)
    peak = _peak_rss_mb()
    epoch = max_steps == epoch_steps
    # The same evaluation (fp32) for every run that trained the whole epoch.
    valid_loss = loop.evaluate(model, valid_set, pad_id)["valid_loss"] if epoch else None
    flops = _useful_flops(model.config, train_set, method) if config.startswith("tunesmith") else None
    return Run(config, info.name, tokens, seconds, peak, valid_loss, precision, max_steps, epoch, flops)


def _tunesmith(info, spec, hp, settings, train_set, pad_id, workdir: Path):
    import torch

    from tunesmith.train import loop
    from tunesmith.train.precision import resolve, training_device
    from tunesmith.train.run import build_model

    torch.set_num_threads(settings.threads)  # as run_job does
    model = build_model(info, None, spec).to(training_device())
    cfg = loop.LoopConfig(hp.n_epochs, hp.batch_size, hp.learning_rate, spec.seed, precision=settings.precision)
    began = time.perf_counter()
    loop.train(model, train_set, cfg, workdir, _Quiet(), pad_id)
    seconds = time.perf_counter() - began
    return model, sum(t.n_tokens for t in train_set), seconds, resolve(settings.precision, training_device()).name


def _trl(config: str, info, spec, hp, tokenizer, train_path: Path, workdir: str, max_steps: int):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models.loading import load_model
    from tunesmith.train.precision import fast_bf16

    best = config == "trl_best"
    options = dict(padding_free=True, max_length=None, assistant_only_loss=True, gradient_checkpointing=False,
                   bf16=fast_bf16(torch.device("cpu"))) if best else {}
    if best:
        tokenizer.chat_template = TRAINING_TEMPLATE
    # The Trainer counts the non-padding tokens of the steps it takes (attention masks: TRL's default
    # collator pads and masks); padding-free batches have no mask, and there every example is trained.
    args = SFTConfig(output_dir=workdir, use_cpu=True, num_train_epochs=1, max_steps=max_steps,
                     per_device_train_batch_size=hp.batch_size, learning_rate=hp.learning_rate, seed=0,
                     report_to="none", save_strategy="no", disable_tqdm=True,
                     include_num_input_tokens_seen="no" if best else "non_padding", **options)
    lora = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM") if spec.method == "lora" else None
    rows = [json.loads(line) for line in train_path.read_text().splitlines()]
    trainer = SFTTrainer(model=load_model(info), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=lora)
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    tokens = sum(map(len, trainer.train_dataset["input_ids"])) if best else trainer.state.num_input_tokens_seen
    return trainer.model, tokens, seconds, "bf16" if args.bf16 else "fp32"


def _useful_flops(config, train_set, method: str) -> float:
    """FLOPs of one epoch's forward and backward, counting only what the loss needs.

    Forward: 2 per weight per token in the decoder's linear layers; causal attention within each
    example (QKᵀ and AV, 2·L(L+1)/2·d each); the vocabulary projection at trained positions. Backward
    costs twice the forward where weights get gradients (full fine-tuning) and once where only
    inputs do (LoRA's frozen weights; LoRA's own are negligible); attention's backward is twice its
    forward either way. Recomputation (chunked logits) is not useful work and is not counted."""
    from tunesmith.data.tokenize import IGNORE

    cfg = config.get_text_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    linear = cfg.num_hidden_layers * (cfg.hidden_size * (2 * q + 2 * kv) + 3 * cfg.hidden_size * cfg.intermediate_size)
    weight_passes = 3 if method == "full" else 2  # forward + input grads (+ weight grads)
    flops = 0.0
    for t in train_set:
        n = t.n_tokens
        trained = sum(1 for x in t.labels[1:] if x != IGNORE)
        attention = cfg.num_hidden_layers * 2 * 2 * (n * (n + 1) / 2) * q
        flops += weight_passes * 2 * (linear * n + cfg.hidden_size * cfg.vocab_size * trained) + 3 * attention
    return flops


def peak_child(size: int) -> dict[str, float]:
    """GFLOP/s of a square matmul in fp32 and in bf16, with tunesmith's thread count."""
    import torch

    from tunesmith.config import get_settings

    torch.set_num_threads(get_settings().threads)
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up: kernel choice, packing buffers
        count, began = 0, time.perf_counter()
        while count < 3 or time.perf_counter() - began < 1.0:
            a @ b
            count += 1
        rates[name] = 2 * size**3 * count / (time.perf_counter() - began) / 1e9
    return rates


# --- the parent: data, children, report -----------------------------------------------------------

def _in_child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(args[:2])} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_training_template(tokenizer, rows: list[dict]) -> None:
    for row in rows:
        own = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        marked = tokenizer.apply_chat_template(row["messages"], tokenize=False, chat_template=TRAINING_TEMPLATE)
        if own != marked:
            sys.exit(f"TRAINING_TEMPLATE renders differently from the model's template:\n{own!r}\n{marked!r}")


def report(runs: dict[str, Run], peaks: dict[str, float], features: dict[str, bool], method: str) -> dict:
    from rich.console import Console
    from rich.table import Table

    peak = max(peaks.values())
    mfus = {name: run.flops / run.seconds / (peak * 1e9) for name, run in runs.items() if run.flops}
    table = Table(title=f"One epoch of {method} SFT (held-out losses compare within a model only)")
    for column in ("config", "model", "precision", "steps", "tokens", "seconds", "tokens/s", "× TRL default", "× TRL best",
                   "peak RSS MB", "held-out loss"):
        table.add_column(column, justify="left" if column == "config" else "right")
    default, best = runs.get("trl_default"), runs.get("trl_best")
    for run in runs.values():
        table.add_row(run.config, run.model, run.precision, f"{run.steps}" if run.epoch else f"{run.steps} (not the epoch)",
                      str(run.tokens), f"{run.seconds:.1f}", f"{run.tok_s:.0f}",
                      f"{run.tok_s / default.tok_s:.2f}" if default else "–",
                      f"{run.tok_s / best.tok_s:.2f}" if best else "–", f"{run.peak_rss_mb:.0f}",
                      "–" if run.valid_loss is None else f"{run.valid_loss:.4f}")
    console = Console(width=180)  # the table's eleven columns, unwrapped in a log file or a narrow terminal
    console.print(table)
    console.print(features_line(features))
    console.print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
                  + (f"; MFU of {peak:.0f} GFLOP/s: " + ", ".join(f"{n} {m:.1%}" for n, m in mfus.items())
                     if mfus else ""))
    result = {"method": method, "cpu_features": features, "peak_gflops": peaks, "mfu": mfus.get("tunesmith"),
              "mfus": mfus,
              "runs": {name: {**asdict(run), "tok_s": run.tok_s} for name, run in runs.items()}}
    for name, run in runs.items():
        result[f"{name}_tok_s"] = run.tok_s
        result[f"{name}_peak_rss_mb"] = run.peak_rss_mb
        result[f"{name}_valid_loss"] = run.valid_loss
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=400, help="training examples (held out: a tenth more)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 short examples, a small matmul")
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS + EXTRA_CONFIGS)}; "
                                                                    "default: the first four")
    parser.add_argument("--trl-default-steps", type=int, default=40,
                        help="optimizer steps of trl_default (its emulated bf16 takes hours an epoch on AVX2)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "peak":
        print(json.dumps(peak_child(args.size)))
        return
    if args.child:
        run = child(args.child, args.method, *args.data, args.trl_default_steps)
        print(json.dumps(asdict(run)))
        return

    configs = args.configs.split(",")
    if unknown := set(configs) - set(CONFIGS) - set(EXTRA_CONFIGS):
        parser.error(f"unknown configs: {', '.join(sorted(unknown))}")
    n, (shortest, longest), size = (10, (30, 80), 1024) if args.quick else (args.examples, (30, 600), 2048)
    from tunesmith.config import enforce_offline, quiet_libraries
    from tunesmith.data.formats import parse_example
    from tunesmith.models.loading import ensure_cached, load_renderer

    enforce_offline()
    quiet_libraries()
    features = cpu_features()
    print(features_line(features), file=sys.stderr)
    renderer = load_renderer(ensure_cached("smollm2-135m-instruct"))
    for name in {MODELS[c] for c in configs if c in MODELS}:
        ensure_cached(name)  # a first use converts the GGUF: here, not inside a run's time and peak RSS

    def count_tokens(row: dict) -> int:
        return renderer.encode(parse_example(row, 1)[0], 4096).n_tokens

    rows = make_dataset(n + max(4, n // 10), shortest, longest, seed=0, count_tokens=count_tokens)
    _check_training_template(renderer.tokenizer, rows)
    with tempfile.TemporaryDirectory() as tmp:
        data = [write_jsonl(Path(tmp) / "train.jsonl", rows[:n]), write_jsonl(Path(tmp) / "heldout.jsonl", rows[n:])]
        runs = {}
        for config in configs:
            began = time.perf_counter()
            runs[config] = Run(**_in_child(["--child", config, "--method", args.method, "--data", *map(str, data),
                                            "--trl-default-steps", str(args.trl_default_steps)]))
            print(f"{config}: done in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    peaks = _in_child(["--child", "peak", "--size", str(size)])
    result = report(runs, peaks, features, args.method)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
