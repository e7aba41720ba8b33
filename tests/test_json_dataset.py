"""The JSON-extraction acceptance data: held-out values and phrasings never appear in training."""

import json
import re
import subprocess
import sys
from pathlib import Path

GENERATOR = Path(__file__).resolve().parent.parent / "examples" / "json_extraction" / "generate.py"


def test_held_out_values_and_phrasings_never_appear_in_training(tmp_path):
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)], check=True, capture_output=True)
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert (len(train), len(held)) == (300, 100)
    train_text = " ".join(r["messages"][1]["content"] + " " + r["messages"][2]["content"] for r in train).lower()
    for row in held:
        for value in json.loads(row["messages"][2]["content"]).values():
            for word in str(value).lower().split():
                assert not re.search(rf"\b{re.escape(word)}\b", train_text), word
    train_users = {r["messages"][1]["content"] for r in train}
    for row in held:
        assert row["messages"][1]["content"] not in train_users
    for marker in ("Greetings from", "Quick one", "is asking for", "Regards", "Dear shop", "delivery address",
                   "I wish to purchase", "would like to get"):
        assert marker.lower() not in train_text
