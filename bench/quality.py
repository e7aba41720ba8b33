"""Quality suite: how well default settings (and candidates) teach tasks, on values and phrasings training never showed.

    python bench/quality.py --json bench-quality.json                       # 5 tasks × 3 seeds, hours on CPU
    python bench/quality.py --candidate lr0.4:learning_rate_multiplier=0.4 --candidate e5:n_epochs=5
    python bench/quality.py --candidates-only --candidate att:lora_targets=attention   # a sweep's next part
    python bench/quality.py --tasks extraction --few-shot 3                 # and the base model prompted with 3 lines
    python bench/quality.py --tasks extraction --train-lines 100            # half the training lines, same test
    python bench/quality.py --quick                                         # a smoke run: every task tiny

For each task of ``quality_tasks.py`` (generated from ``--data-seed``; train / validation / test splits
whose test values and sentence templates never occur in training) it scores greedy answers to the test
lines, by the task's exact rule, of:

- ``base``: the untuned model (once: greedy answers do not depend on a seed);
- ``base K-shot`` with ``--few-shot K``: the untuned model shown the first K training lines (questions
  and answers, after the system message) before each test question: what prompting alone reaches;
- ``defaults``: the model tuned by ``run_job`` with every setting at its default, the validation split
  given (so the overfitting guard picks the epoch);
- each ``--candidate NAME:FIELD=VALUE[,FIELD=VALUE…]`` (fields of ``TrainSpec``: learning_rate_multiplier,
  n_epochs, batch_size, lora_r, lora_alpha, lora_dropout, lora_targets, neftune_alpha, weight_decay, early_stopping,
  patience, method, …), tuned likewise,

each tuned one once per ``--seeds`` seed (``--candidates-only``: the candidates, and the ``--few-shot`` base, alone,
for a sweep split over runs whose base and default scores an earlier run measured; the seeds make the
runs comparable). It reports per task and setting the held-out score per seed, their mean and the
training time (the whole job: loading, epochs, validation), then each setting's mean over the tasks
and its worst task, as a table and, with ``--json``, as JSON (with every run's per-epoch validation
metrics and its wrong answers). ``--quick`` makes every split tiny (20
training, 8 validation, 8 test lines), trains one epoch in steps of 4 and, unless ``--seeds`` says
otherwise, one seed.

Jobs run in a throwaway tunesmith home whose base-model cache is the real one (no second conversion):
the suite leaves no jobs or models behind. It prints the CPU, the matmul rates (as ``make bench``) and
the precision training used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from quality_tasks import TASKS, Task, make_task, prompt_of

@dataclass
class Run:
    seed: int | None  # None: the base model, untrained
    score: float
    train_seconds: float | None = None
    epochs: list[dict] = field(default_factory=list)  # per-epoch checkpoint metrics
    best_checkpoint: str | None = None
    early_stopped: bool = False
    misses: list[dict] = field(default_factory=list)


def parse_candidate(text: str) -> tuple[str, dict]:
    """``NAME:FIELD=VALUE,…`` → (NAME, {FIELD: VALUE}); values are read as JSON where they are (numbers,
    true/false), else kept as text ("auto", "full")."""
    from tunesmith.train.run import TrainSpec

    name, _, assignments = text.partition(":")
    overrides = {}
    for assignment in filter(None, assignments.split(",")):
        key, _, raw = assignment.partition("=")
        if key not in TrainSpec.__dataclass_fields__ or key in ("training_file", "validation_file", "seed"):
            raise argparse.ArgumentTypeError(f"{key!r} is not a setting a candidate can change")
        try:
            overrides[key] = json.loads(raw)
        except ValueError:
            overrides[key] = raw
    if not name or name in ("base", "defaults") or not overrides:
        raise argparse.ArgumentTypeError(f"expected NAME:FIELD=VALUE[,FIELD=VALUE…] with a new NAME, got {text!r}")
    return name, overrides


class _Progress:
    """A job's reporter: its messages and per-epoch lines on stderr, its checkpoint metrics kept."""

    def __init__(self, label: str):
        self.label, self.epochs = label, []

    def on_message(self, message: str) -> None:
        print(f"  {self.label}: {message}", file=sys.stderr)

    def on_checkpoint(self, checkpoint) -> None:
        self.epochs.append({"epoch": checkpoint.epoch, "step": checkpoint.step, **checkpoint.metrics})
        shown = " ".join(f"{k} {v:.4f}" for k, v in checkpoint.metrics.items()
                         if k.startswith(("train_loss", "valid_")))
        print(f"  {self.label}: epoch {checkpoint.epoch}: {shown}", file=sys.stderr)

    def on_validated(self, report) -> None: ...
    def on_start(self, total_steps: int, start_step: int) -> None: ...
    def on_step(self, metrics: dict) -> None: ...


class Suite:
    def __init__(self, home: Path, quick: bool):
        from tunesmith.config import Settings, get_settings
        from tunesmith.serve.engine import Engine

        real = get_settings()
        real.base_cache_dir.mkdir(parents=True, exist_ok=True)
        home.mkdir()
        (home / "base").symlink_to(real.base_cache_dir, target_is_directory=True)
        self.settings = Settings(home=home)
        self.engine = Engine(self.settings.default_model, self.settings, status=lambda m: print(m, file=sys.stderr))
        self.quick = quick

    def prompts(self, task: Task, shots: Sequence[dict]) -> list:
        """What the engine is asked: the conversation (after the system message, each shot's question and
        answer first), or for lines with tools the prompt as the template renders it with them (the
        engine's conversations carry no tools; SmolLM2's tokenizer adds no BOS to a raw prompt, so the
        tokens are the same)."""
        render = self.engine.renderer.render
        examples = [m for shot in shots for m in shot["messages"] if m["role"] != "system"]

        def asked(row: dict) -> list[dict]:
            conversation = prompt_of(row)
            system = [m for m in conversation if m["role"] == "system"]
            return system + examples + conversation[len(system):]

        return [render(asked(row), row["tools"], generation_prompt=True) if row.get("tools") else asked(row)
                for row in task.splits["test"]]

    def score(self, task: Task, model, shots: Sequence[dict] = ()) -> tuple[float, list[dict]]:
        from tunesmith.serve.engine import Sampling

        rows = task.splits["test"]
        # every test question at once: the scheduler batches them (up to TUNESMITH_MAX_BATCH_SIZE)
        replies = self.engine.generate(model, self.prompts(task, shots), Sampling(max_tokens=task.max_tokens))
        right = [task.score(r.text, row) for r, row in zip(replies, rows)]
        misses = [{"prompt": row["messages"][-2]["content"], "expected": task.reference(row), "answer": r.text}
                  for r, row, ok in zip(replies, rows, right) if not ok]
        return sum(right) / len(rows), misses  # every one: the JSON report counts what goes wrong

    def base(self, task: Task, shots: int = 0) -> Run:
        """The untuned model; with ``shots``, shown the first that many training lines in its prompt
        (what prompting alone reaches, the bar a fine-tune should clear)."""
        from tunesmith.models.finetuned import ResolvedModel

        name = self.settings.default_model
        score, misses = self.score(task, ResolvedModel.of_base(name), task.splits["train"][:shots])
        return Run(None, score, misses=misses)

    def tuned(self, task: Task, data: dict[str, Path], setting: str, overrides: dict, seed: int) -> Run:
        from tunesmith.models.finetuned import ResolvedModel
        from tunesmith.train.run import TrainSpec, run_job

        # Quick: one epoch in steps of 4 (auto would take 5 epochs of 20 one-example steps, each far
        # slower per token on CPU).
        quick = {"n_epochs": 1, "batch_size": 4} if self.quick else {}
        spec = TrainSpec(data["train"], data["validation"], seed=seed, **quick | overrides)
        progress = _Progress(f"{task.name} / {setting} / seed {seed}")
        result = run_job(spec, progress, self.settings)
        weights = self.settings.jobs_dir / result.job_id / "model"  # the guard's choice, copied there
        model = ResolvedModel(result.fine_tuned_model, self.settings.default_model, weights, spec.method, "chat")
        score, misses = self.score(task, model)
        return Run(seed, score, result.seconds, progress.epochs, result.best_checkpoint, result.early_stopped, misses)


def machine(quick: bool) -> dict:
    """The CPU, its features that decide the precision, the matmul rates, and the precision training uses."""
    import torch
    from train_throughput import cpu_features, peak_child

    from tunesmith.config import get_settings
    from tunesmith.train.precision import resolve, training_device

    capabilities = torch.cpu.get_capabilities()
    return {"cpu": capabilities.get("cpu_name"), "cores": capabilities.get("num_physical_cores"),
            "threads": get_settings().threads, "features": cpu_features(), "device": str(training_device()),
            "matmul_gflops": peak_child(256 if quick else 1024),
            "precision": resolve(get_settings().precision, training_device()).name}


def write_splits(task: Task, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    paths = {}
    for split, rows in task.splits.items():
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


def summarise(results: dict[str, dict[str, list[Run]]]) -> dict[str, dict]:
    """Per setting: the mean over tasks of each task's mean score, and the worst task."""
    settings = dict.fromkeys(s for per_task in results.values() for s in per_task)
    summary = {}
    for setting in settings:
        means = {task: statistics.mean(r.score for r in runs[setting]) for task, runs in results.items()}
        worst = min(means, key=means.get)
        summary[setting] = {"mean": statistics.mean(means.values()), "worst_task": worst, "worst": means[worst]}
    return summary


def show(results: dict[str, dict[str, list[Run]]], summary: dict[str, dict], seeds: list[int], info: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from train_throughput import features_line

    console = Console(emoji=False)
    rates = ", ".join(f"{k} {v:.1f}" for k, v in info["matmul_gflops"].items())
    console.print(f"CPU: {info['cpu']}, {info['cores']} cores, {info['threads']} threads used; "
                  f"{features_line(info['features'])}; matmul GFLOP/s: {rates}; training precision: {info['precision']}",
                  soft_wrap=True)
    table = Table(title="Held-out exact score per task and setting")
    for column in ("task", "setting", *(f"seed {s}" for s in seeds), "mean", "train s"):
        table.add_column(column, justify="left" if column in ("task", "setting") else "right")
    for task, per_setting in results.items():
        for setting, runs in per_setting.items():
            by_seed = {r.seed: f"{r.score:.0%}" for r in runs}
            seconds = [r.train_seconds for r in runs if r.train_seconds is not None]
            table.add_row(task, setting, *(by_seed.get(s, "–") for s in seeds),
                          f"{statistics.mean(r.score for r in runs):.0%}",
                          f"{statistics.mean(seconds):.0f}" if seconds else "–")
        table.add_section()
    console.print(table)
    totals = Table(title="Suite")
    for column in ("setting", "mean over tasks", "worst task"):
        totals.add_column(column, justify="left" if column == "setting" else "right")
    for setting, s in summary.items():
        totals.add_row(setting, f"{s['mean']:.0%}", f"{s['worst_task']} {s['worst']:.0%}")
    console.print(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {', '.join(TASKS)}")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--candidate", type=parse_candidate, action="append", default=[],
                        help="NAME:FIELD=VALUE[,FIELD=VALUE…] settings to compare with the defaults (repeatable)")
    parser.add_argument("--data-seed", type=int, default=0, help="the seed the tasks' lines are generated from")
    parser.add_argument("--candidates-only", action="store_true",
                        help="only the candidates (and --few-shot), not the base model and defaults (a sweep split over runs)")
    parser.add_argument("--few-shot", type=int, default=0, metavar="K",
                        help="also score the base model shown K training lines in its prompt ('base K-shot')")
    parser.add_argument("--train-lines", type=int, metavar="N",
                        help="train on N generated lines instead of each task's usual 200 (json_extraction: 300); "
                             "validation and test lines stay the same")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny splits, one epoch, one seed")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    if unknown := set(tasks) - set(TASKS):
        parser.error(f"unknown tasks: {', '.join(sorted(unknown))}")
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    if args.few_shot < 0:
        parser.error("--few-shot must be 0 or more")
    if args.train_lines is not None and not 10 <= args.train_lines <= 10_000:
        parser.error("--train-lines must be between 10 and 10000")
    if args.candidates_only and not (args.candidate or args.few_shot):
        parser.error("--candidates-only needs a --candidate or --few-shot")
    settings = {**({} if args.candidates_only else {"defaults": {}}), **dict(args.candidate)}

    from tunesmith.config import enforce_offline, quiet_libraries

    enforce_offline()
    quiet_libraries()
    began = time.perf_counter()
    info = machine(args.quick)
    results: dict[str, dict[str, list[Run]]] = {}
    report_tasks = {}
    with tempfile.TemporaryDirectory(prefix="tunesmith-quality-") as tmp:
        suite = Suite(Path(tmp) / "home", args.quick)
        for name in tasks:
            task_began = time.perf_counter()
            task = make_task(name, args.data_seed, args.quick, args.train_lines)
            data = write_splits(task, Path(tmp) / "data" / name)
            results[name] = {} if args.candidates_only else {"base": [suite.base(task)]}
            if args.few_shot:
                results[name][f"base {args.few_shot}-shot"] = [suite.base(task, args.few_shot)]
            for setting, overrides in settings.items():
                results[name][setting] = [suite.tuned(task, data, setting, overrides, seed) for seed in seeds]
            report_tasks[name] = {"rule": task.rule, "sizes": {s: len(rows) for s, rows in task.splits.items()}}
            scores = ", ".join(f"{s} {statistics.mean(r.score for r in runs):.0%}" for s, runs in results[name].items())
            print(f"{name}: {scores} ({time.perf_counter() - task_began:.0f} s)", file=sys.stderr)
    summary = summarise(results)
    print(f"base model: {suite.settings.default_model} (TUNESMITH_DEFAULT_MODEL)")
    show(results, summary, seeds, info)
    seconds = time.perf_counter() - began
    print(f"{seconds:.0f} s in all", file=sys.stderr)
    if args.json:
        report = {"machine": info, "model": suite.settings.default_model, "quick": args.quick, "seeds": seeds,
                  "data_seed": args.data_seed,
                  "train_lines": args.train_lines,
                  "settings": settings, "seconds": seconds,
                  "tasks": {name: {**report_tasks[name], "settings": {
                      setting: {"scores": [r.score for r in runs], "mean": statistics.mean(r.score for r in runs),
                                "train_seconds": [r.train_seconds for r in runs if r.train_seconds is not None],
                                "runs": [vars(r) for r in runs]}
                      for setting, runs in results[name].items()}} for name in tasks},
                  "summary": summary}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
