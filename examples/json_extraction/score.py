"""Score models on held-out JSON-extraction lines: exact JSON equality of greedy answers.

    python examples/json_extraction/score.py data/json/heldout.jsonl smollm2-135m-instruct ft:… --show 5

Each model answers every held-out conversation exactly as `tunesmith chat MODEL -m …` would
(same engine, greedy), batched for speed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunesmith.config import quiet_libraries
from tunesmith.jobs import registry
from tunesmith.jobs.store import Store
from tunesmith.serve.engine import Engine, Sampling


def json_equal(reply: str, expected: str) -> bool:
    try:
        return json.loads(reply) == json.loads(expected)
    except json.JSONDecodeError:
        return False


def score_models(heldout: Path, models: list[str], limit: int | None = None, console: Console | None = None):
    """Greedy answers of each model to each held-out conversation, and the exact-JSON-equality rate."""
    rows = [json.loads(line) for line in heldout.read_text().splitlines() if line.strip()][:limit]
    prompts = [r["messages"][:-1] for r in rows]
    expected = [r["messages"][-1]["content"] for r in rows]
    engines: dict[str, Engine] = {}
    answers, scores = {}, {}
    for name in models:
        resolved = registry.resolve(name, Store())
        engine = engines.setdefault(resolved.base, Engine(resolved.base))
        started = time.perf_counter()
        answers[name] = [r.text for r in engine.generate(resolved, prompts, Sampling(max_tokens=64))]
        scores[name] = sum(json_equal(a, e) for a, e in zip(answers[name], expected)) / len(rows)
        if console:
            console.print(f"{name}: exact JSON equality {scores[name]:.0%} on {len(rows)} held-out lines "
                          f"({time.perf_counter() - started:.0f} s)")
    return scores, answers, prompts, expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("heldout", type=Path)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--show", type=int, default=0, help="print this many questions side by side")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N lines")
    parser.add_argument("--json", dest="json_out", type=Path, help="write the scores here")
    args = parser.parse_args()
    quiet_libraries()
    console = Console(emoji=False)  # model names hold colons: ft:…:local:guard:…
    scores, answers, prompts, expected = score_models(args.heldout, args.models, args.limit, console)
    if args.show:
        table = Table(title="Held-out questions", show_lines=True)
        table.add_column("message")
        table.add_column("expected")
        for name in args.models:
            table.add_column(name)
        for i in range(min(args.show, len(prompts))):
            cells = [("[green]✓ [/]" if json_equal(answers[n][i], expected[i]) else "[red]✗ [/]") + answers[n][i]
                     for n in args.models]
            table.add_row(prompts[i][-1]["content"], expected[i], *cells)
        console.print(table)
    if args.json_out:
        args.json_out.write_text(json.dumps({"lines": len(prompts), "exact_json_equality": scores}, indent=2))


if __name__ == "__main__":
    main()
