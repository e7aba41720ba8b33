"""Generate a preference dataset with a property a program can check: the preferred answer ends with a
fixed sign-off line, the non-preferred one is the same answer without it.

Support questions about audio products, in OpenAI's DPO format. The answers are the model's own
(greedy, as `tunesmith chat` gives them; unfinished ones are left out), as preference data usually is:
sampled from the model to be tuned, then judged. So the pairs differ exactly where the model itself
would stop, which is what it must learn; with hand-written answers it learns to go on rather than to
sign off its own answers. Held-out prompts are about products that no training line mentions, so
every held-out prompt is new to the model; they come as pairs too, for the held-out reward accuracy.

    python examples/preference/generate.py --out data/preference --train 200 --heldout 50

About 300 answers at ~25 answers a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

SYSTEM = "You are the customer support assistant of Tunesmith Audio. Answer in one or two sentences."
SIGN_OFF = "— Tunesmith Support"
MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 160

TRAIN_PRODUCTS = ["Aria headphones", "Bolt speaker", "Cadence turntable", "Drift earbuds", "Echo soundbar",
                  "Flux amplifier", "Glide microphone", "Halo subwoofer", "Iris DAC", "Jet radio", "Kite headset",
                  "Lumen mixer"]
HELDOUT_PRODUCTS = ["Nova earphones", "Orbit speaker", "Pulse receiver", "Quill microphone", "Ripple soundbar"]
QUESTIONS = [  # {p} is the product
    "My {p} won't turn on. What should I do?", "The {p} doesn't power up anymore, any ideas?",
    "How do I pair my {p} with my phone?", "Bluetooth pairing keeps failing on the {p}.",
    "There's a crackling noise from my {p}.", "Why does my {p} crackle at high volume?",
    "How do I update the firmware on my {p}?", "Is there a software update for the {p}?",
    "Can I return my {p}?", "What is your return policy for the {p}?",
    "Is my {p} still under warranty?", "What does the {p} warranty cover?",
    "The battery on my {p} drains really fast.", "How can I make the battery of my {p} last longer?",
    "My {p} is on but there's no sound.", "Why is my {p} silent?",
    "When will my {p} arrive?", "How can I track my {p} order?",
    "How do I factory reset the {p}?", "What's the reset procedure for the {p}?",
    "How should I clean my {p}?", "Can I wash the {p}?",
    "My {p} keeps disconnecting.", "Why does my {p} lose its connection?",
]


def has_sign_off(answer: str) -> bool:
    """The checkable property: the answer's last line is the sign-off."""
    return answer.rstrip().endswith(SIGN_OFF)


def prompt(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def pair(question: str, answer: str) -> dict:
    return {"input": {"messages": prompt(question)},
            "preferred_output": [{"role": "assistant", "content": f"{answer}\n\n{SIGN_OFF}"}],
            "non_preferred_output": [{"role": "assistant", "content": answer}]}


def make(engine, products: list[str], n: int, rng: random.Random) -> list[dict]:
    """``n`` pairs over distinct (product, question) prompts that the model answered within MAX_TOKENS."""
    from tunesmith.models.finetuned import ResolvedModel
    from tunesmith.serve.engine import Sampling

    questions = [q.format(p=p) for p, q in itertools.product(products, QUESTIONS)]
    rng.shuffle(questions)
    rows: list[dict] = []
    while len(rows) < n and questions:
        batch, questions = questions[: n - len(rows) + 8], questions[n - len(rows) + 8 :]
        replies = engine.generate(ResolvedModel.of_base(MODEL), [prompt(q) for q in batch], Sampling(max_tokens=MAX_TOKENS))
        rows += [pair(q, r.text.strip()) for q, r in zip(batch, replies)
                 if r.finish_reason == "stop" and r.text.strip()]
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} finished answers for {len(products)} products; ask for fewer")
    return rows[:n]


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main() -> None:
    from tunesmith.config import quiet_libraries
    from tunesmith.serve.engine import Engine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/preference"))
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--heldout", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet_libraries()
    rng, engine = random.Random(args.seed), Engine(MODEL)
    write(args.out / "train.jsonl", make(engine, TRAIN_PRODUCTS, args.train, rng))
    write(args.out / "heldout.jsonl", make(engine, HELDOUT_PRODUCTS, args.heldout, rng))
    print(f"wrote {args.train} training and {args.heldout} held-out pairs to {args.out}")


if __name__ == "__main__":
    main()
