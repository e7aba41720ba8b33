"""Where a training step's time goes: tunesmith's loop on the throughput bench's data, under torch.profiler.

    python bench/profile_train.py                       # LoRA, 64 examples (8 steps), fp32 or auto
    python bench/profile_train.py --method full
    python bench/profile_train.py --compile             # the same with the decoder under torch.compile

Prints the time and tokens/s of a profiled pass (after one untimed warm-up pass over the same
examples), the ops with the most self CPU time, and that time summed by kind (matrix products,
attention, everything else), which says how much a fused or compiled kernel could still win.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import _Quiet, make_dataset  # noqa: E402

KINDS = {  # self time of these ops, by what they are
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder (dynamic shapes)")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from tunesmith.config import enforce_offline, get_settings, quiet_libraries
    from tunesmith.data.formats import parse_example
    from tunesmith.models.loading import ensure_cached, load_renderer
    from tunesmith.train import hyper, loop
    from tunesmith.train.run import TrainSpec, build_model

    enforce_offline()
    quiet_libraries()
    settings = get_settings()
    torch.set_num_threads(settings.threads)
    info = ensure_cached(settings.default_model)
    renderer = load_renderer(info)

    def encode(row: dict):
        return renderer.encode(parse_example(row, 1)[0], 4096)

    train_set = [encode(row) for row in make_dataset(args.examples, 30, 600, seed=0,
                                                     count_tokens=lambda row: encode(row).n_tokens)]
    tokens = sum(t.n_tokens for t in train_set)
    hp = hyper.resolve(max(len(train_set), 10), args.method, n_epochs=1)
    model = build_model(info, None, TrainSpec(Path("unused"), method=args.method, n_epochs=1, seed=0))
    if args.compile:
        model.get_decoder().compile(dynamic=True)
    cfg = loop.LoopConfig(1, hp.batch_size, hp.learning_rate, 0, precision=settings.precision)
    pad_id = renderer.tokenizer.pad_token_id

    def one_pass() -> float:
        with tempfile.TemporaryDirectory() as workdir:
            began = time.perf_counter()
            loop.train(model, train_set, cfg, Path(workdir), _Quiet(), pad_id)
            return time.perf_counter() - began

    warmup = one_pass()  # compiles, when asked to; fills allocator caches
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds = one_pass()
    print(f"{args.method}{' compiled' if args.compile else ''}: {len(train_set)} examples, {tokens} tokens, "
          f"batch {hp.batch_size}; warm-up pass {warmup:.1f} s, profiled pass {seconds:.1f} s "
          f"({tokens / seconds:.0f} tok/s under the profiler)")
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.top))
    total = sum(e.self_cpu_time_total for e in averages)
    by_kind = {kind: sum(e.self_cpu_time_total for e in averages if e.key in names) for kind, names in KINDS.items()}
    by_kind["everything else"] = total - sum(by_kind.values())
    for kind, spent in by_kind.items():
        print(f"{kind:>16}: {spent / total:6.1%} of self CPU time")


if __name__ == "__main__":
    main()
