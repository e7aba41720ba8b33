"""The real bundled model, trained for a few steps through the CLI, then chatted with."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "json_extraction"
sys.path.insert(0, str(EXAMPLES))

from generate import SYSTEM  # noqa: E402
from score import score_models  # noqa: E402


@pytest.fixture(scope="module")
def json_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("json")
    subprocess.run([sys.executable, str(EXAMPLES / "generate.py"), "--out", str(out), "--train", "40",
                    "--heldout", "20"], check=True)
    return out


@pytest.fixture(scope="module")
def tuned(json_data, smol_info):
    result = CliRunner().invoke(app, ["train", str(json_data / "train.jsonl"), "--validation",
                                      str(json_data / "heldout.jsonl"), "--suffix", "e2e", "--seed", "3",
                                      "--epochs", "2", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_train_reports_model_tokens_metrics_and_checkpoints(tuned):
    assert tuned["status"] == "succeeded"
    assert tuned["fine_tuned_model"].startswith("ft:smollm2-135m-instruct:local:e2e:")
    assert tuned["hyperparameters"]["n_epochs"] == 2
    assert tuned["hyperparameters"]["batch_size"] == 1  # auto: 40 examples → 40 steps an epoch
    assert len(tuned["checkpoints"]) == 2 and tuned["checkpoints"][0].endswith(":ckpt-step-40")
    assert tuned["trained_tokens"] > 40 * 2 * 80
    # Two epochs of 40 examples already pull the held-out loss far below the base model's.
    assert tuned["metrics"]["valid_loss"] < 0.5
    assert tuned["metrics"]["valid_mean_token_accuracy"] > 0.8


def test_tuned_model_beats_base_on_held_out_json(tuned, json_data):
    scores, _, _, _ = score_models(json_data / "heldout.jsonl", ["smollm2-135m-instruct", tuned["fine_tuned_model"]])
    assert scores["smollm2-135m-instruct"] <= 0.1
    assert scores[tuned["fine_tuned_model"]] >= 0.5


def test_chat_once_with_model_and_checkpoint(tuned):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    message = "Hi, I'm Ada Lovelace from London and I need 2 units of table lamp."
    for model in (tuned["fine_tuned_model"], tuned["checkpoints"][0]):
        done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "chat", model, "-m", message,
                               "--system", SYSTEM, "--max-tokens", "60"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["name"] == "Ada Lovelace"


def test_models_lists_the_tuned_model(tuned):
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0
    assert any(tuned["fine_tuned_model"] in line for line in result.output.splitlines())  # one line, unwrapped
    assert "ckpt-step-40" in result.output


def test_unknown_model_lists_known_ones(json_data):
    result = CliRunner().invoke(app, ["train", str(json_data / "train.jsonl"), "--model", "gpt-9"])
    assert result.exit_code == 1
    assert "unknown base model 'gpt-9'; known models: smollm2-135m-instruct, gemma-3-270m" in result.output


def test_ctrl_c_stops_cleanly_and_keeps_a_resumable_checkpoint(json_data, tmp_path):
    home = Path(os.environ["TUNESMITH_HOME"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "train", str(json_data / "train.jsonl"),
                             "--epochs", "1", "--batch-size", "1", "--seed", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    job_id = None
    for line in proc.stderr:  # not a terminal: plain progress lines
        if line.startswith("Job "):
            job_id = line.split()[1].rstrip(":")
        if line.startswith("step "):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Stopped at step" in err and "Traceback" not in err
    step = int(err.split("Stopped at step ")[1].split(";")[0])
    checkpoint = home / "jobs" / job_id / "checkpoints" / f"step-{step:06d}"
    assert (checkpoint / "adapter_model.safetensors").exists()
    assert (checkpoint / "trainer_state.pt").exists()
    assert out == ""  # no model was registered


def test_model_names_print_as_they_are(capsys):
    from tunesmith.cli import out

    out.print("ft:smollm2-135m-instruct:local:guard:0zrgnJoA", highlight=False)  # ":guard:" is an emoji code
    assert capsys.readouterr().out.strip() == "ft:smollm2-135m-instruct:local:guard:0zrgnJoA"
