"""Jobs on a Ray cluster: a local Ray head (2 CPUs, token authentication), a server with the ``ray``
launcher, one job cancelled mid-training and one (on two processes) trained to the end, all through
the API; the cluster is stopped at the end.

The head is a ``ray.init()`` in a child process: closing its stdin shuts down exactly the cluster it
started. Its dashboard process stays on: it serves Ray's Jobs API, which the launcher submits to.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import openai
import pytest

from live_server import LiveServer, free_port, new_home
from test_service import SMOL, all_events, dataset, finished, wait_for
from tunesmith.train.loop import STATE_FILE
from tunesmith.train.run import RESULT_FILE

pytestmark = pytest.mark.slow

HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=int(sys.argv[1]),
         _temp_dir=sys.argv[2], logging_level="warning")
print("ready", flush=True)
sys.stdin.read()
ray.shutdown()
"""

LIST_JOBS = """
import json, sys
from ray.job_submission import JobSubmissionClient
print(json.dumps([[j.metadata, str(j.status)] for j in JobSubmissionClient(sys.argv[1]).list_jobs()]))
"""


@pytest.fixture(scope="module")
def ray_cluster():
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    head = subprocess.Popen([sys.executable, "-c", HEAD, str(port), temp_dir], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **env})
    address = f"http://127.0.0.1:{port}"
    try:
        assert head.stdout.readline().strip() == "ready", head.stdout.read()
        wait_for(lambda: _answers(address), bool, timeout=120)
        yield {"address": address, "env": env}
    finally:
        head.stdin.close()
        try:
            head.wait(120)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _answers(address: str) -> bool:
    """Whether the dashboard (the Jobs API) answers HTTP yet; without the token it says 401."""
    try:
        urllib.request.urlopen(f"{address}/api/version", timeout=2)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def ray_jobs(cluster: dict) -> dict[str, list[str]]:
    """tunesmith job id → the statuses of its Ray jobs, as the cluster tells them."""
    out = subprocess.run([sys.executable, "-c", LIST_JOBS, cluster["address"]], capture_output=True, text=True,
                         check=True, env={**os.environ, **cluster["env"]}).stdout
    jobs: dict[str, list[str]] = {}
    for metadata, status in json.loads(out):
        jobs.setdefault(metadata.get("tunesmith_job"), []).append(status)
    return jobs


def test_jobs_run_on_a_ray_cluster_and_are_followed_cancelled_and_ingested(tmp_path, ray_cluster, monkeypatch):
    for name, value in {"TUNESMITH_LAUNCHER": "ray", "TUNESMITH_RAY_ADDRESS": ray_cluster["address"],
                        "TUNESMITH_RAY_PYTHON": sys.executable, **ray_cluster["env"]}.items():
        monkeypatch.setenv(name, value)
    srv = LiveServer(new_home(tmp_path)).start()
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0)
        train = client.files.create(file=dataset(tmp_path / "train.jsonl").open("rb"), purpose="fine-tune")
        with pytest.raises(openai.BadRequestError, match="nproc_per_node must be a whole number") as bad:
            client.fine_tuning.jobs.create(model=SMOL, training_file=train.id, metadata={"nproc_per_node": "two"})
        assert bad.value.code == "invalid_metadata"

        # 50 steps: cancelled after its first one, it stops after its current step with a checkpoint
        long = client.fine_tuning.jobs.create(model=SMOL, training_file=train.id, seed=1,
                                              hyperparameters={"n_epochs": 5, "batch_size": 2})
        wait_for(lambda: [e for e in all_events(client, long.id) if e.type == "metrics"], bool)
        assert client.fine_tuning.jobs.cancel(long.id).status == "cancelled"
        job_dir = srv.home / "jobs" / long.id
        wait_for(lambda: ray_jobs(ray_cluster).get(long.id), lambda s: s == ["STOPPED"], timeout=120)
        stopped = json.loads((job_dir / RESULT_FILE).read_text())
        assert stopped["status"] == "stopped" and stopped["metrics"]["step"] < 50
        assert list(job_dir.glob(f"checkpoints/step-*/{STATE_FILE}"))
        assert client.fine_tuning.jobs.retrieve(long.id).status == "cancelled"

        # 20 lines, one epoch of batch 4: 5 steps, on two processes (the cluster's two CPUs)
        short = client.fine_tuning.jobs.create(model=SMOL, training_file=train.id, seed=2, suffix="ray",
                                               hyperparameters={"n_epochs": 1, "batch_size": 4},
                                               metadata={"nproc_per_node": "2"})
        done = finished(client, short.id)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model.startswith(f"ft:{SMOL}:") and ":ray:" in done.fine_tuned_model
        steps = sorted(e.data["step"] for e in all_events(client, short.id) if e.type == "metrics")
        assert steps == [1, 2, 3, 4, 5]
        (ckpt,) = client.fine_tuning.jobs.checkpoints.list(short.id).data
        assert ckpt.step_number == 5
        assert ray_jobs(ray_cluster)[short.id] == ["SUCCEEDED"]
        assert any(e.message.endswith(", seed 2, on 2 processes (gloo)") for e in all_events(client, short.id))
        assert done.fine_tuned_model in [m.id for m in client.models.list().data]
    finally:
        srv.stop()
