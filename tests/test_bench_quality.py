"""bench/quality.py: its candidate settings, and `--quick` end to end on one task (the real model
trained a few steps through run_job, base and tuned scored on the test split, the JSON report's shape)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from quality import parse_candidate  # noqa: E402


def test_a_candidate_names_settings_of_a_training_job():
    assert parse_candidate("lr0.4:learning_rate_multiplier=0.4") == ("lr0.4", {"learning_rate_multiplier": 0.4})
    assert parse_candidate("e5:n_epochs=5,early_stopping=false,batch_size=auto") == (
        "e5", {"n_epochs": 5, "early_stopping": False, "batch_size": "auto"})
    assert parse_candidate("att:lora_targets=attention,neftune_alpha=5") == (
        "att", {"lora_targets": "attention", "neftune_alpha": 5})
    for bad in ("lr", "defaults:n_epochs=2", ":n_epochs=2", "x:seed=3", "x:nonsense=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_candidate(bad)


@pytest.mark.slow
def test_quick_run_reports_each_setting_per_task_and_the_suite(tmp_path, smol_info):
    out = tmp_path / "quality.json"
    # This checkout's tunesmith, whatever the venv's editable install points at.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "bench/quality.py", "--quick", "--tasks", "extraction", "--few-shot", "2",
                           "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Held-out exact score per task and setting" in done.stdout and "training precision" in done.stdout
    report = json.loads(out.read_text())
    assert report["quick"] and report["seeds"] == [0]
    assert report["model"] == "smollm2-135m-instruct"  # the base it trained and scored: the tests' default
    assert report["machine"]["precision"] in ("fp32", "bf16") and set(report["machine"]["matmul_gflops"]) == {
        "fp32", "bf16"}
    assert report["settings"] == {"defaults": {}}
    task = report["tasks"]["extraction"]
    assert task["sizes"] == {"train": 20, "validation": 8, "test": 8}
    assert set(task["settings"]) == {"base", "base 2-shot", "defaults"}
    assert task["settings"]["base 2-shot"]["train_seconds"] == []
    assert task["settings"]["base"]["train_seconds"] == [] and len(task["settings"]["base"]["scores"]) == 1
    tuned = task["settings"]["defaults"]
    assert len(tuned["scores"]) == 1 and 0 <= tuned["mean"] <= 1 and tuned["train_seconds"][0] > 0
    (run,) = tuned["runs"]
    (epoch,) = run["epochs"]  # one epoch in quick mode, with the guard's metrics on the validation split
    assert {"valid_loss", "valid_exact_match", "valid_field_match"} <= set(epoch)
    assert len(run["misses"]) == round((1 - run["score"]) * task["sizes"]["test"])  # every wrong answer
    assert all({"prompt", "expected", "answer"} == set(m) for m in run["misses"])
    assert set(report["summary"]) == {"base", "base 2-shot", "defaults"}
    assert all(s["worst_task"] == "extraction" and s["worst"] == s["mean"] for s in report["summary"].values())
