"""`make bench-serve`: many clients and many adapters against `tunesmith serve`, batched vs sequential.

    python bench/serve.py                          # 1, 4, 16, 64 clients; the baseline up to 16
    python bench/serve.py --clients 1 4 --no-baseline --max-tokens 16     # a quick look

Each scenario starts a server on 127.0.0.1 (a throwaway home sharing the converted base model) with
synthetic LoRA adapters (r=16 on every linear layer, random weights, SmolLM2's real adapter size)
registered as fine-tuned models, and drives it with the official client: every client sends its
requests one after another, streaming, greedy, `max_tokens` each, all clients at once. Scenarios:
(a) every client on one adapter; (b) clients spread over 8 adapters and the base model;
(c) 64 clients each on an adapter of its own (64 resident adapters: the server's peak memory).

The baseline is the sequential engine of the commit before continuous batching (BASELINE_REF), run
from a git worktree in the same run, on the same machine, with the same requests.

Reported per scenario and client count: aggregate output tokens/s (completion tokens from the usage
chunk, over the wall time from the first request sent to the last answer done), p50/p99 time to
first token and p50/p99 time between tokens (between streamed chunks that carry text). Also: the
time to read an adapter from disk and install it (cold) and to find a resident one, measured in this
process, and the server's peak resident memory against base + adapters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "load")]  # bench/load/run.py imports its neighbours as top-level modules
from load.run import ROOT, Server, machine, new_home, stop_servers_on_sigterm  # noqa: E402

sys.path.insert(0, str(ROOT))
MODEL = "smollm2-135m-instruct"
BASELINE_REF = "3a2b097"  # main before continuous batching: one request at a time per base model
PROMPTS = ["Write a long story about a lighthouse keeper.", "Explain in detail how bread is made.",
           "Describe a walk through a busy market.", "Tell me everything about the history of clocks.",
           "Write a letter to a friend about a summer holiday.", "Explain how rain forms, step by step.",
           "Describe the life of a honeybee.", "Write a long poem about the sea."]
LIMITS = {"TUNESMITH_MAX_QUEUED_REQUESTS": "4096"}  # measure speed, not the queue limit (429)


def make_adapters(settings, count: int, project: str, spread: float = 0.02) -> list[str]:
    """``count`` LoRA adapters over the real base model (``lora_B`` drawn from N(0, spread), seeded by
    their index), saved under ``settings``' jobs as ``ftjob-benchNN/model`` and registered in
    ``project``; their model names. The serving tests build their adapters with it too."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.jobs import registry
    from tunesmith.jobs.store import Store
    from tunesmith.models.finetuned import FineTunedModel
    from tunesmith.models.loading import ensure_cached, load_model

    peft = get_peft_model(load_model(ensure_cached(MODEL, settings)),
                          LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    store = Store(settings)
    names = []
    for i in range(count):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, spread)
        path = settings.jobs_dir / f"ftjob-bench{i:02d}" / "model"
        peft.save_pretrained(path)
        names.append(f"ft:{MODEL}:{project}:b{i}:Bench{i:03d}")
        with store.session() as s:
            record = FineTunedModel(id=f"Bench{i:03d}", name=names[-1], base=MODEL, job_id=f"ftjob-bench{i:02d}",
                                    method="lora", format="chat", path=str(path), created_at=1, trained_tokens=1)
            registry.register(s, record, store.project(s, project).id, job_id=None)
    store.engine.dispose()
    return names


def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    sent = time.perf_counter()
    stamps, tokens = [], 0
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"sent": sent, "done": time.perf_counter(), "tokens": tokens,
            "ttft": stamps[0] - sent if stamps else None, "gaps": [b - a for a, b in zip(stamps, stamps[1:])]}


def run_clients(url: str, key: str, models: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=3600)
    start = threading.Barrier(clients)

    def user(i: int) -> list[dict]:
        start.wait()
        return [one_request(client, models[i % len(models)], PROMPTS[(i + r) % len(PROMPTS)], max_tokens)
                for r in range(requests)]

    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(user, range(clients)) for r in rs]
    wall = max(r["done"] for r in results) - min(r["sent"] for r in results)
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
            "tbt_p50_ms": _ms(_pct(gaps, 50)), "tbt_p99_ms": _ms(_pct(gaps, 99))}


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 4)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 4)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def serve_and_measure(source: Path, workdir: Path, adapters: int, plan: list[tuple[str, str, list[int]]],
                      args) -> tuple[list[dict], float]:
    """Start a server from ``source``, run every (scenario, model set, client counts) of ``plan``."""
    from tunesmith.config import Settings

    server = Server(new_home(workdir), source=source, env=LIMITS)
    key = server.cli("keys", "create", "--project", "bench")
    names = make_adapters(Settings(home=server.home), adapters, "bench")
    models = {"a": names[:1], "b": [MODEL] + names[:8], "c": names[:64]}
    server.start()
    rows = []
    try:
        for scenario, _, counts in plan:
            run_clients(server.url, key, models[scenario][:1], 1, 1, 4)  # load the engine and warm up
            for clients in counts:
                print(f"  {source.name}: scenario {scenario}, {clients} clients…", file=sys.stderr, flush=True)
                row = run_clients(server.url, key, models[scenario], clients, args.requests, args.max_tokens)
                rows.append({"scenario": scenario, **row})
        return rows, peak_rss_mb(server.proc.pid)
    finally:
        server.stop()


def adapter_load_times(count: int) -> dict:
    """Cold (read and install) and resident lookups of SmolLM2 r=16 adapters, in this process."""
    from tunesmith.config import Settings, get_settings
    from tunesmith.models.loading import ensure_cached, load_model
    from tunesmith.serve.adapters import AdapterCache
    from tunesmith.serve.lora import MultiLoRA

    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-adapters-") as tmp:
        home = new_home(Path(tmp))
        make_adapters(Settings(home=home), count, "bench")
        paths = sorted((home / "jobs").glob("ftjob-bench*/model"))
        lora = MultiLoRA(load_model(ensure_cached(MODEL, get_settings())))
        cache = AdapterCache(lora, max_count=count, max_bytes=1 << 40)
        for p in paths:
            cache.acquire(p)
        started = time.perf_counter()
        for p in paths:
            cache.acquire(p)
        resident = (time.perf_counter() - started) / len(paths)
        return {"adapters": count, "adapter_mb": round(cache.nbytes / count / 2**20, 1),
                "cold_ms_mean": round(1000 * statistics.mean(cache.load_seconds), 1),
                "cold_ms_max": round(1000 * max(cache.load_seconds), 1), "resident_us": round(1e6 * resident, 1)}


def baseline_checkout(workdir: Path, ref: str) -> Path:
    path = workdir / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    return path


def render(rows: list[dict], baseline: list[dict]) -> str:
    base = {(r["scenario"], r["clients"]): r for r in baseline}
    lines = ["| scenario | clients | tok/s batched | tok/s sequential | speed-up | TTFT p50 / p99 s | "
             "TBT p50 / p99 ms | sequential TTFT p99 s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get((r["scenario"], r["clients"]))
        speedup = f"{r['tokens_per_s'] / b['tokens_per_s']:.1f}×" if b else "–"
        lines.append(f"| {r['scenario']} | {r['clients']} | {r['tokens_per_s']} | {b['tokens_per_s'] if b else '–'} | "
                     f"{speedup} | "
                     f"{r['ttft_p50_s']} / {r['ttft_p99_s']} | {r['tbt_p50_ms']} / {r['tbt_p99_ms']} | "
                     f"{b['ttft_p99_s'] if b else '–'} |")
    return "\n".join(lines)


def main() -> None:
    stop_servers_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=2, help="requests each client sends, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument("--baseline-max-clients", type=int, default=16,
                        help="the sequential engine takes minutes per 1,000 tokens: stop it at this many clients")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    info = {**machine(), "cpu_features": sorted(k for k, v in torch.cpu.get_capabilities().items() if v is True)
            if hasattr(torch.cpu, "get_capabilities") else [], "precision": "fp32 (both engines)"}
    print(f"CPU: {info['cpu']}, {info['cpus']} CPUs; features: {' '.join(info['cpu_features'])}; "
          f"precision: {info['precision']}", flush=True)
    plan = [("a", "one adapter", args.clients), ("b", "8 adapters + base", args.clients)]
    if 64 in args.clients:
        plan.append(("c", "64 adapters", [64]))
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-serve-") as tmp:
        tmp = Path(tmp)
        loads = adapter_load_times(8)
        print(f"adapters: {loads['adapter_mb']} MB each; cold load {loads['cold_ms_mean']} ms mean, "
              f"{loads['cold_ms_max']} ms max; resident lookup {loads['resident_us']} µs", flush=True)
        (tmp / "new").mkdir()
        rows, peak = serve_and_measure(ROOT, tmp / "new", 64 if 64 in args.clients else 8, plan, args)
        baseline, baseline_peak = [], None
        if not args.no_baseline:
            source = baseline_checkout(tmp, args.baseline_ref)
            try:
                (tmp / "old").mkdir()
                counts = [c for c in args.clients if c <= args.baseline_max_clients]
                baseline, baseline_peak = serve_and_measure(source, tmp / "old", 8,
                                                            [(s, n, counts) for s, n, _ in plan[:2]], args)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(source)],
                               capture_output=True)
    print(render(rows, baseline))
    print(f"server peak memory (VmHWM): batched {peak} MB"
          + (f" (with {64 if 64 in args.clients else 8} adapters resident)") +
          ("" if baseline_peak is None else f"; sequential {baseline_peak} MB (8 adapters)"))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "adapters": loads, "batched": rows, "sequential": baseline,
                                         "peak_rss_mb": {"batched": peak, "sequential": baseline_peak},
                                         "max_tokens": args.max_tokens, "requests_per_client": args.requests,
                                         "baseline_ref": args.baseline_ref}, indent=2) + "\n")


if __name__ == "__main__":
    main()
