"""One job on two processes (torchrun, gloo, on this CPU) trains what it trains on one, and a checkpoint
written by two processes resumes on one; a full fine-tune, whose layers two processes shard with
FSDP2, too, and its checkpoint written by one process resumes sharded on two.

The job processes are started as the local launcher starts them: ``python -m tunesmith.train.run
JOB_DIR`` with the order's ``nproc_per_node``, so the process that gets a stop signal is torchrun's agent.

They train in fp32 on every machine: agreement to 1e-4 per step is a property of fp32 sums. Under bf16
autocast (``precision: auto`` on an AMX or AVX-512 BF16 CPU) each rank rounds its own half of a step's
products, and the losses of 1 and 2 processes were measured 1.4-1.8 % apart after 8 steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import SMOL, chat_row, write_jsonl
from live_server import new_home
from tunesmith.data.batching import shard
from tunesmith.train.events import EVENTS_FILE, read_new
from tunesmith.train.run import RESULT_FILE, SPEC_FILE

# 13 lines in steps of 4: every epoch ends with a step of one line, which leaves the second rank nothing.
N_LINES, BATCH, EPOCHS = 13, 4, 2
TOTAL_STEPS = EPOCHS * -(-N_LINES // BATCH)
TOLERANCE = 1e-4  # relative, per step


def test_a_step_is_shared_out_whole_and_evenly():
    lengths = [50, 10, 40, 30, 30, 5]
    shares = [shard(list(range(6)), lengths, r, 2) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(6))
    assert [sum(lengths[i] for i in s) for s in shares] == [85, 80]
    assert shard([3], lengths, 1, 2) == [] and shard([3, 1], lengths, 0, 1) == [3, 1]


@pytest.fixture(scope="module")
def home(tmp_path_factory, smol_info) -> Path:
    return new_home(tmp_path_factory.mktemp("distributed"))


@pytest.fixture(scope="module")
def train_file(home) -> Path:
    colours = ["red", "blue", "green", "amber", "violet", "teal", "ochre"]
    return write_jsonl(home / "train.jsonl", [chat_row(f"Name colour number {i}.", f"Colour {i} is {colours[i % 7]}.")
                                              for i in range(N_LINES)])


def start(home: Path, job_id: str, train_file: Path, nproc: int, method: str = "lora") -> subprocess.Popen:
    """A LoRA job without validation, or a full fine-tune with it: rank 0 alone then answers the validation
    questions at each epoch's end, with the sharded layers gathered."""
    job_dir = home / "jobs" / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    spec = {"training_file": str(train_file), "model": SMOL, "method": method, "n_epochs": EPOCHS,
            "batch_size": BATCH, "learning_rate_multiplier": 2 if method == "lora" else 0.1, "seed": 11}
    if method == "full":
        valid = write_jsonl(home / "valid.jsonl", [chat_row(f"Name colour number {i}.", f"Colour {i} is red.")
                                                   for i in (20, 21, 22)])
        spec |= {"validation_file": str(valid)}
    order = {"spec": spec, "model_id": job_id[-8:], "start": None, "nproc_per_node": nproc}
    (job_dir / SPEC_FILE).write_text(json.dumps(order))
    env = {**os.environ, "TUNESMITH_HOME": str(home), "HF_HUB_OFFLINE": "1", "TUNESMITH_THREADS": "2",
           "TUNESMITH_PRECISION": "fp32"}
    with open(job_dir / "process.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "tunesmith.train.run", str(job_dir)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def losses(home: Path, job_id: str) -> dict[int, float]:
    records, _ = read_new(home / "jobs" / job_id / EVENTS_FILE, 0)
    return {r["data"]["step"]: r["data"]["train_loss"] for r in records if r.get("type") == "metrics"}


def result(home: Path, job_id: str) -> dict:
    return json.loads((home / "jobs" / job_id / RESULT_FILE).read_text())


def finish(home: Path, job_id: str, proc: subprocess.Popen) -> dict:
    assert proc.wait(600) == 0, (home / "jobs" / job_id / "process.log").read_text()[-3000:]
    return result(home, job_id)


def relative_gap(a: dict[int, float], b: dict[int, float]) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[s] - b[s]) / abs(a[s]) for s in a)


def same_on_one_and_two(home: Path, train_file: Path, method: str, weights_file: str) -> dict[int, float]:
    """Train the job on 1 and on 2 processes; assert the per-step losses and final weights agree. The
    1-process losses."""
    one, two = (f"ftjob-{method}-{n}" for n in (1, 2))
    assert finish(home, one, start(home, one, train_file, 1, method))["status"] == "succeeded"
    assert finish(home, two, start(home, two, train_file, 2, method))["status"] == "succeeded"
    reference = losses(home, one)
    assert sorted(reference) == list(range(1, TOTAL_STEPS + 1))
    gap = relative_gap(reference, losses(home, two))
    print(f"{method}, 1 vs 2 processes: max relative train_loss gap {gap:.2e} over {TOTAL_STEPS} steps")
    assert gap < TOLERANCE
    assert result(home, one)["trained_tokens"] == result(home, two)["trained_tokens"]
    # The 2-process model is whole on disk (rank 0 writes it; under FSDP2 gathered from both ranks).
    a, b = (load_file(home / "jobs" / job / "model" / weights_file) for job in (one, two))
    assert a.keys() == b.keys()
    # Per tensor, relative: Adam divides each update by its gradient's running scale, so a weight whose
    # gradient is only rounding noise moves by up to the learning rate either way (1.2e-3 apart, measured).
    assert max(((a[k] - b[k]).norm() / a[k].norm()).item() for k in a) < 1e-2
    return reference


def stopped_and_resumed(home: Path, train_file: Path, method: str, first: int, then: int,
                        reference: dict[int, float]) -> None:
    """Stop the job on ``first`` processes after a few steps (SIGTERM to torchrun's agent, as the launcher
    stops a job), finish it on ``then``; assert its losses are the uninterrupted run's."""
    job_id = f"ftjob-{method}-split"
    proc = start(home, job_id, train_file, first, method)
    deadline = time.time() + 300
    while len(losses(home, job_id)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(300)
    stopped = result(home, job_id)
    assert stopped["status"] == "stopped", stopped
    stopped_at = int(stopped["metrics"]["step"])
    assert 2 <= stopped_at < TOTAL_STEPS
    assert finish(home, job_id, start(home, job_id, train_file, then, method))["status"] == "succeeded"
    split = losses(home, job_id)
    assert sorted(split) == list(range(1, TOTAL_STEPS + 1))
    gap = relative_gap(reference, split)
    print(f"{method}, stopped at step {stopped_at} on {first} processes, resumed on {then}: max relative gap {gap:.2e}")
    assert gap < TOLERANCE


def opening_lines(home: Path, job_id: str) -> list[str]:
    return [r["message"] for r in read_new(home / "jobs" / job_id / EVENTS_FILE, 0)[0] if "message" in r]


@pytest.mark.slow
def test_two_processes_train_what_one_does_and_their_checkpoint_resumes_on_one(home, train_file):
    reference = same_on_one_and_two(home, train_file, "lora", "adapter_model.safetensors")
    said = opening_lines(home, "ftjob-lora-2")
    assert any(m.endswith(", seed 11, on 2 processes (gloo)") for m in said), said
    stopped_and_resumed(home, train_file, "lora", 2, 1, reference)


@pytest.mark.slow
def test_a_full_fine_tune_sharded_on_two_processes_trains_what_one_does_and_resumes_across_sizes(home, train_file):
    reference = same_on_one_and_two(home, train_file, "full", "model.safetensors")
    said = opening_lines(home, "ftjob-full-2")
    assert any(m.endswith(", seed 11, on 2 processes (gloo, layers sharded with FSDP2)") for m in said), said
    # Each epoch's answers, by rank 0 alone with the layers gathered, score as the single process's do.
    scores = [[r["metrics"]["valid_exact_match"] for r in read_new(home / "jobs" / job / EVENTS_FILE, 0)[0]
               if r.get("kind") == "checkpoint"] for job in ("ftjob-full-1", "ftjob-full-2")]
    assert len(scores[0]) == EPOCHS and scores[0] == scores[1]
    # Stopped on one process, resumed on two: they shard the whole optimizer state it wrote.
    stopped_and_resumed(home, train_file, "full", 1, 2, reference)
