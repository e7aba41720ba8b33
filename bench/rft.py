"""Reinforcement fine-tuning benchmark: does GRPO against a grader lift a supervised start on unseen values?

    python bench/rft.py --json bench-rft.json            # 2 seeds: base, SFT, SFT→RFT (about an hour on 2 cores)
    python bench/rft.py --quick                           # a smoke run: tiny splits, a few steps, one seed

The task is the quality suite's ``extraction`` (``quality_tasks.py``): a sentence about a person →
JSON with name, age, occupation and city, whose test names, cities, occupations, ages and sentence
templates training never shows. The grader is a ``python`` grader (run in tunesmith's sandbox, as a
job's is) that gives the share of the four fields the answer gets right: partial credit, so a group
of sampled answers differs in reward and GRPO has something to learn from.

For each seed it measures the mean grade of greedy answers to the test lines of

- ``base``: the untuned model (once: greedy answers do not depend on a seed);
- ``sft``: a LoRA adapter trained with the defaults on the first ``--sft-lines`` training lines
  (few on purpose: a start with room above it, as a user with a handful of written answers has);
- ``sft→rft``: that adapter trained on by a ``reinforcement`` job over the next ``--rft-prompts``
  training lines as prompts (their answers unused: the grader reads the line's ``person`` field),
  with the validation split's prompts for the guard's checkpoint choice; the default learning rate,
  group size (8) and KL weight, but ``--rft-epochs`` (1), ``--rft-batch-size`` (4) and
  ``--max-completion-tokens`` (64) set for time: every step samples and grades 32 answers,

and prints the scores, the exact-JSON rate beside them, each run's training time, the CPU, its
features and the precision training used. Jobs run in a throwaway tunesmith home whose base-model
cache is the real one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from quality import Suite, _Progress, machine
from quality_tasks import make_task, prompt_of
from train_throughput import features_line

FIELDS = ("name", "age", "occupation", "city")
GRADER = {
    "type": "python", "name": "fields_right",
    "source": ("def grade(sample, item):\n"
               "    answer, person = sample['output_json'], item['person']\n"
               "    if not isinstance(answer, dict):\n"
               "        return 0.0\n"
               f"    return sum(answer.get(k) == person[k] for k in {FIELDS!r}) / {len(FIELDS)}\n"),
}


class _Steps(_Progress):
    """Also each reinforcement step's mean reward and KL, on stderr."""

    def on_step(self, metrics: dict) -> None:
        if "train_reward_mean" in metrics:
            print(f"  {self.label}: step {metrics['step']}/{metrics['total_steps']}: reward "
                  f"{metrics['train_reward_mean']:.3f} ± {metrics['train_reward_std']:.3f}, kl {metrics['train_kl']:.4f}, "
                  f"{metrics['train_completion_length']:.1f} tokens", file=sys.stderr)


def prompt_line(row: dict) -> dict:
    """A training line as a reinforcement job's prompt: the conversation up to the answer, and the
    person the answer should describe, for the grader."""
    return {"messages": prompt_of(row), "person": json.loads(row["messages"][-1]["content"])}


def grades(suite: Suite, rows: list[dict], model) -> tuple[float, float]:
    """The mean grade of the model's greedy answers to ``rows``, and their exact-JSON rate."""
    from tunesmith.graders import Scorer, make_sample, parse_grader
    from tunesmith.serve.engine import Sampling

    replies = suite.engine.generate(model, [prompt_of(r) for r in rows], Sampling(max_tokens=64))
    with Scorer(parse_grader(GRADER)) as scorer:
        graded = scorer.score([make_sample(r.text.strip()) for r in replies], [prompt_line(r) for r in rows])
    exact = [r.text.strip() == row["messages"][-1]["content"] for r, row in zip(replies, rows)]
    return statistics.mean(g.score for g in graded), sum(exact) / len(rows)


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: 0 1)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--sft-lines", type=int, default=20)
    parser.add_argument("--rft-prompts", type=int, default=48)
    parser.add_argument("--rft-epochs", type=int, default=1, help="epochs of the reinforcement job (a step "
                        "samples batch size × 8 answers: on 2 CPU cores about a minute)")
    parser.add_argument("--rft-batch-size", type=int, default=4)
    parser.add_argument("--rft-learning-rate-multiplier", default="auto", help="of the reinforcement job (auto: 1)")
    parser.add_argument("--max-completion-tokens", type=int, default=64, help="the answers are about 30 tokens")
    parser.add_argument("--test-lines", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    if args.quick:
        args.sft_lines, args.rft_prompts, args.test_lines, args.max_completion_tokens = 10, 10, 8, 48

    from tunesmith.models.finetuned import ResolvedModel
    from tunesmith.train.run import TrainSpec, run_job

    info = machine(args.quick)
    print(f"CPU {info['cpu']} ({info['cores']} cores, {info['threads']} threads); {features_line(info['features'])}; "
          f"training precision {info['precision']}", file=sys.stderr)
    task = make_task("extraction", args.data_seed, train_lines=args.sft_lines + args.rft_prompts)
    train, valid = task.splits["train"], task.splits["validation"]
    test = task.splits["test"][: args.test_lines]
    results: dict = {"machine": info, "grader": GRADER, "sft_lines": args.sft_lines, "rft_prompts": args.rft_prompts,
                     "test_lines": len(test), "runs": []}
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-rft-") as tmp:
        folder = Path(tmp)
        suite = Suite(folder / "home", args.quick)
        base = suite.settings.default_model
        sft_file = write(folder / "sft.jsonl", train[: args.sft_lines])
        sft_valid = write(folder / "sft-valid.jsonl", valid)
        rft_file = write(folder / "rft.jsonl", [prompt_line(r) for r in train[args.sft_lines :]])
        rft_valid = write(folder / "rft-valid.jsonl", [prompt_line(r) for r in valid])
        score, exact = grades(suite, test, ResolvedModel.of_base(base))
        results["base"] = {"score": score, "exact_json": exact}
        print(f"base: grade {score:.3f}, exact JSON {exact:.1%}", file=sys.stderr)
        quick = {"n_epochs": 1, "batch_size": 4} if args.quick else {}
        for seed in seeds:
            began = time.perf_counter()
            sft = run_job(TrainSpec(sft_file, sft_valid, seed=seed, **quick), _Progress(f"sft / seed {seed}"),
                          suite.settings)
            sft_model = ResolvedModel(sft.fine_tuned_model, base, suite.settings.jobs_dir / sft.job_id / "model",
                                      "lora", "chat")
            sft_seconds = time.perf_counter() - began
            sft_score, sft_exact = grades(suite, test, sft_model)
            print(f"sft / seed {seed}: grade {sft_score:.3f}, exact JSON {sft_exact:.1%}", file=sys.stderr)
            began = time.perf_counter()
            rft = run_job(TrainSpec(rft_file, rft_valid, model=sft.fine_tuned_model, method="reinforcement",
                                    grader=GRADER, seed=seed, n_epochs=args.rft_epochs, batch_size=args.rft_batch_size,
                                    learning_rate_multiplier=args.rft_learning_rate_multiplier,
                                    max_completion_tokens=args.max_completion_tokens),
                          _Steps(f"rft / seed {seed}"), suite.settings, start=sft_model)
            rft_model = ResolvedModel(rft.fine_tuned_model, base, suite.settings.jobs_dir / rft.job_id / "model",
                                      "reinforcement", "chat")
            rft_seconds = time.perf_counter() - began
            rft_score, rft_exact = grades(suite, test, rft_model)
            print(f"sft→rft / seed {seed}: grade {rft_score:.3f}, exact JSON {rft_exact:.1%}", file=sys.stderr)
            results["runs"].append({
                "seed": seed, "sft": {"score": sft_score, "exact_json": sft_exact, "seconds": sft_seconds},
                "rft": {"score": rft_score, "exact_json": rft_exact, "seconds": rft_seconds,
                        "hyperparameters": rft.hyperparameters, "best_checkpoint": rft.best_checkpoint}})
    show(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def show(results: dict) -> None:
    info = results["machine"]
    print(f"CPU {info['cpu']}, {info['cores']} cores; {features_line(info['features'])}; training precision "
          f"{info['precision']}")
    print(f"extraction, {results['test_lines']} test lines with unseen values and templates; grade = share of the "
          f"4 fields right (python grader)")
    print(f"{'model':<10} {'seed':>4} {'grade':>7} {'exact JSON':>11} {'train s':>8}")
    base = results["base"]
    print(f"{'base':<10} {'-':>4} {base['score']:>7.3f} {base['exact_json']:>11.1%} {'-':>8}")
    for run in results["runs"]:
        for name in ("sft", "rft"):
            r = run[name]
            label = "sft" if name == "sft" else "sft→rft"
            print(f"{label:<10} {run['seed']:>4} {r['score']:>7.3f} {r['exact_json']:>11.1%} {r['seconds']:>8.0f}")
    lifted = sum(run["rft"]["score"] > run["sft"]["score"] for run in results["runs"])
    print(f"RFT above its SFT start in {lifted} of {len(results['runs'])} seeds")


if __name__ == "__main__":
    main()
