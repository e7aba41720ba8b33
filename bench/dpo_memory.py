"""Peak memory of a LoRA DPO run against a LoRA SFT run on the same token sequences.

    python bench/dpo_memory.py --pairs 200

Each run is a fresh process (peak RSS is per process): DPO trains on preference pairs shaped like
examples/preference's (a support question, a ~60-token answer, with and without the sign-off); SFT
trains on the same sequences as separate examples (every chosen and every rejected conversation), with
twice the batch size, so that a step sees the same tokens. Both use the default micro-batch budget.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "preference"))


ANSWER_WORDS = ("please check the cable and the battery then restart your device and contact our support "
                "team if the problem stays we will help you quickly").split()


class _Quiet:
    def on_start(self, total_steps: int, start_step: int) -> None: ...
    def on_step(self, metrics: dict) -> None: ...
    def on_checkpoint(self, checkpoint) -> None: ...


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(method: str, data: Path, batch_size: int) -> dict:
    """Train one epoch in this process; the peak RSS after loading the model and after training."""
    import torch

    from tunesmith.config import get_settings
    from tunesmith.data.validate import validate_file
    from tunesmith.models.loading import ensure_cached, load_renderer
    from tunesmith.train import loop, losses
    from tunesmith.train.run import TrainSpec, build_model

    settings = get_settings()
    torch.set_num_threads(settings.threads)
    info = ensure_cached(settings.default_model)
    renderer = load_renderer(info)
    pairs = validate_file(data, renderer, preference=True).tokenized
    pad_id = renderer.tokenizer.pad_token_id
    model = build_model(info, None, TrainSpec(data))
    loaded = _peak_mib()
    started = time.perf_counter()
    if method == "dpo":
        losses.attach_reference(model, pairs, pad_id)
        items, objective = pairs, losses.DPO(0.1)
    else:
        items, objective = [s for p in pairs for s in (p.chosen, p.rejected)], losses.SFT()
        batch_size *= 2
    cfg = loop.LoopConfig(n_epochs=1, batch_size=batch_size, learning_rate=1e-4, seed=0, objective=objective)
    with tempfile.TemporaryDirectory() as tmp:
        loop.train(model, items, cfg, Path(tmp), _Quiet(), pad_id)
    return {"method": method, "peak_mib": _peak_mib(), "after_load_mib": loaded,
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per DPO step")
    parser.add_argument("--child", choices=("sft", "dpo"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.batch_size)))
        return

    from generate import QUESTIONS, TRAIN_PRODUCTS, pair, write

    rng = random.Random(0)
    rows = [pair(rng.choice(QUESTIONS).format(p=product), " ".join(rng.choices(ANSWER_WORDS, k=rng.randint(30, 60))))
            for product in rng.choices(TRAIN_PRODUCTS, k=args.pairs)]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        write(data, rows)
        runs = {}
        for method in ("sft", "dpo"):
            done = subprocess.run([sys.executable, __file__, "--child", method, "--data", str(data),
                                   "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
            runs[method] = json.loads(done.stdout.strip().splitlines()[-1])
    sft, dpo = runs["sft"], runs["dpo"]
    for r in (sft, dpo):
        print(f"{r['method']}: peak RSS {r['peak_mib']:.0f} MiB ({r['peak_mib'] - r['after_load_mib']:.0f} MiB "
              f"above the loaded model), {r['seconds']:.0f} s")
    print(f"DPO / SFT peak RSS: {dpo['peak_mib'] / sft['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
