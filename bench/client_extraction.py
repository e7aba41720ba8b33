"""`make bench-client`: the default job, end to end through the official openai client, on extraction with
unseen names, occupations, cities and templates (the quality suite's extraction task, bench/quality_tasks.py).

    python bench/client_extraction.py                  # 200 training lines, 30 validation, 100 test
    python bench/client_extraction.py --quick          # 20 / 8 / 8: a smoke run
    python bench/client_extraction.py --model smollm2-135m-instruct     # a named base instead

It starts `tunesmith serve` on 127.0.0.1 (a throwaway home sharing the converted base models), uploads the
training and validation files with ``client.files.create``, creates a job on ``gpt-4o-mini-2024-07-18``
with every hyperparameter left to "auto" (the name a migrating user's code already sends; it stands for
the default base model), follows its events until it ends, then asks the tuned model every test
question through ``client.chat.completions.create`` (temperature 0) and counts the answers whose JSON
equals the reference exactly. The test lines' values and phrasings are drawn from pools training never
sees, so the figure says whether the model learned to copy, not to recall.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "load")]  # bench/load/run.py imports its neighbours as top-level modules
from load.run import Server, new_home, stop_servers_on_sigterm  # noqa: E402
from quality import machine, write_splits  # noqa: E402
from quality_tasks import QUICK_SIZES, SIZES, extraction  # noqa: E402

ALIAS = "gpt-4o-mini-2024-07-18"
TERMINAL = {"succeeded", "failed", "cancelled"}


def follow(client, job_id: str, timeout: float) -> object:
    """Print the job's events as they come; return the job once it ends."""
    seen: set[str] = set()
    deadline = time.time() + timeout
    while True:
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        for event in reversed(events):  # newest first on the wire
            if event.id not in seen:
                seen.add(event.id)
                print(f"  {event.message}", file=sys.stderr)
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in TERMINAL:
            return job
        if time.time() > deadline:
            raise TimeoutError(f"{job_id} still {job.status} after {timeout:.0f} s")
        time.sleep(5)


def ask(client, model: str, row: dict, max_tokens: int) -> str:
    prompt = row["messages"][:-1]  # system and user; the last message is the reference answer
    reply = client.chat.completions.create(model=model, messages=prompt, temperature=0, max_tokens=max_tokens)
    return reply.choices[0].message.content or ""


def main() -> None:
    stop_servers_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=ALIAS, help=f"the job's base model (default {ALIAS}: the default base)")
    parser.add_argument("--seed", type=int, default=0, help="the job's training seed")
    parser.add_argument("--data-seed", type=int, default=0, help="the seed the lines are generated from")
    parser.add_argument("--quick", action="store_true", help="20 training lines, 8 validation, 8 test")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds the job may take")
    parser.add_argument("--show", type=int, default=5, help="misses to print")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()

    from openai import OpenAI
    from train_throughput import features_line

    info = machine(args.quick)
    print(f"CPU: {info['cpu']}, {info['threads']} threads; {features_line(info['features'])}; "
          f"training precision: {info['precision']}")
    task = extraction(QUICK_SIZES if args.quick else SIZES, args.data_seed)
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-client-") as tmp:
        data = write_splits(task, Path(tmp) / "data")
        server = Server(new_home(Path(tmp)))
        key = server.cli("keys", "create", "--project", "bench")
        server.start()
        try:
            client = OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=600)
            files = {split: client.files.create(file=data[split].open("rb"), purpose="fine-tune").id
                     for split in ("train", "validation")}
            started = time.perf_counter()
            job = client.fine_tuning.jobs.create(model=args.model, training_file=files["train"],
                                                 validation_file=files["validation"], seed=args.seed)
            print(f"{job.id} on {args.model}: {len(task.splits['train'])} training lines", file=sys.stderr)
            job = follow(client, job.id, args.timeout)
            seconds = time.perf_counter() - started
            if job.status != "succeeded":
                raise SystemExit(f"{job.id} {job.status}: {job.error.message if job.error else 'no error given'}")
            rows = task.splits["test"]
            with ThreadPoolExecutor(8) as pool:  # the server batches concurrent requests
                answers = list(pool.map(lambda row: ask(client, job.fine_tuned_model, row, task.max_tokens), rows))
        finally:
            server.stop()
    right = [task.score(answer, row) for answer, row in zip(answers, rows)]
    misses = [{"prompt": row["messages"][-2]["content"], "expected": task.reference(row), "answer": answer}
              for answer, row, ok in zip(answers, rows, right) if not ok]
    exact = sum(right) / len(rows)
    print(f"{job.fine_tuned_model}: exact JSON on {len(rows)} unseen test lines {sum(right)}/{len(rows)} "
          f"({exact:.0%}); job {seconds:.0f} s, {job.trained_tokens} trained tokens, "
          f"hyperparameters {job.hyperparameters.model_dump(exclude_none=True)}")
    for miss in misses[:args.show]:
        print(f"  miss: {miss['prompt']!r}\n    expected {miss['expected']}\n    answered {miss['answer']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "model": args.model, "fine_tuned_model": job.fine_tuned_model,
                                         "exact": exact, "test_lines": len(rows), "job_seconds": seconds,
                                         "misses": misses}, indent=2))


if __name__ == "__main__":
    main()
