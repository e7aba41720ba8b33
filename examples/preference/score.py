"""Score models on held-out preference prompts: how often a greedy answer ends with the sign-off, and,
for a model DPO-tuned from the base model, the held-out reward accuracy.

    python examples/preference/score.py data/preference/heldout.jsonl smollm2-135m-instruct ft:… --show 3

Each model answers every held-out prompt exactly as `tunesmith chat MODEL -m …` would (same engine,
greedy). The reward accuracy is TRL's ``rewards/accuracies``: the share of held-out pairs whose
preferred answer gained more log-probability than the other relative to the reference model, here the
base model (right for a model tuned from the base; for SFT-then-DPO, train with `--validation` instead).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from generate import has_sign_off
from rich.console import Console

from tunesmith.config import quiet_libraries
from tunesmith.data.validate import validate_file
from tunesmith.jobs import registry
from tunesmith.jobs.store import Store
from tunesmith.models.loading import ensure_cached, load_model, load_renderer
from tunesmith.serve.engine import Engine, Sampling
from tunesmith.train.hyper import DEFAULT_BETA
from tunesmith.train.losses import DPO, attach_reference
from tunesmith.train.loop import evaluate


def sign_off_rates(heldout: Path, models: list[str], max_tokens: int = 160, console: Console | None = None):
    """Greedy answers of each model to each held-out prompt, and the share that end with the sign-off."""
    rows = [json.loads(line) for line in heldout.read_text().splitlines() if line.strip()]
    prompts = [r["input"]["messages"] for r in rows]
    engines: dict[str, Engine] = {}
    answers, rates = {}, {}
    for name in models:
        resolved = registry.resolve(name, Store())
        engine = engines.setdefault(resolved.base, Engine(resolved.base))
        started = time.perf_counter()
        answers[name] = [r.text for r in engine.generate(resolved, prompts, Sampling(max_tokens=max_tokens))]
        rates[name] = sum(map(has_sign_off, answers[name])) / len(rows)
        if console:
            console.print(f"{name}: sign-off in {rates[name]:.0%} of {len(rows)} held-out answers "
                          f"({time.perf_counter() - started:.0f} s)")
    return rates, answers, prompts


def reward_metrics(heldout: Path, model: str, beta: float = DEFAULT_BETA) -> dict[str, float]:
    """DPO's validation metrics of a LoRA model on held-out pairs, with the base model as reference."""
    from peft import PeftModel

    resolved = registry.resolve(model, Store())
    info = ensure_cached(resolved.base)
    renderer = load_renderer(info)
    report = validate_file(heldout, renderer, min_examples=1, preference=True)
    report.raise_for_errors()
    tuned = PeftModel.from_pretrained(load_model(info), resolved.weights)
    pad_id = renderer.tokenizer.pad_token_id
    with tuned.disable_adapter():
        attach_reference(tuned, report.tokenized, pad_id)
    return evaluate(tuned, report.tokenized, pad_id, objective=DPO(beta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("heldout", type=Path)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--show", type=int, default=0, help="print this many answers of each model")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--json", dest="json_out", type=Path, help="write the scores here")
    args = parser.parse_args()
    quiet_libraries()
    console = Console(emoji=False)  # model names hold colons: ft:…:local:guard:…
    rates, answers, prompts = sign_off_rates(args.heldout, args.models, args.max_tokens, console)
    rewards = {name: reward_metrics(args.heldout, name) for name in args.models if name.startswith("ft:")}
    for name, metrics in rewards.items():
        console.print(f"{name}: held-out reward accuracy {metrics['valid_rewards/accuracies']:.0%}, "
                      f"margin {metrics['valid_rewards/margins']:.3f}")
    for i in range(min(args.show, len(prompts))):
        console.rule(prompts[i][-1]["content"])
        for name in args.models:
            console.print(f"[bold]{name}[/]: {answers[name][i]}", highlight=False)
    if args.json_out:
        args.json_out.write_text(json.dumps({"prompts": len(prompts), "sign_off_rate": rates,
                                             "rewards": rewards}, indent=2))


if __name__ == "__main__":
    main()
