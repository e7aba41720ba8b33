"""A job as a Kubeflow Trainer v2 ``TrainJob``: the manifest a Kubernetes launcher would apply.

Not a launcher yet: ``tunesmith jobs manifest JOB --kubernetes`` prints it, to adapt and apply by
hand. It runs the same entry point as every launcher (``train/run.py``, under the runtime's torchrun)
on a volume that holds the server's home at the same path, so the job process finds its order
(``spec.json``, which a launcher writes before it starts a job) and the uploaded files, and the
server ingests its events, checkpoints and result as it does a local job's. A launcher built on it
would apply this with the Kubernetes API in ``start``, read the TrainJob's status in ``poll`` and
delete it in ``stop`` (Kubernetes sends the pods SIGTERM: the job checkpoints, as with local jobs).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

# The runtime that Kubeflow Trainer installs for PyTorch; it sets torchrun's PET_* variables
# (nodes, processes per node, node rank, master address) in each node's container.
RUNTIME = "torch-distributed"


def train_job(job_id: str, home: Path, nproc_per_node: int, image: str, volume_claim: str, gpus: bool) -> str:
    """The TrainJob's YAML. JSON strings are valid YAML scalars: every value is quoted with json.dumps."""
    job_dir = home / "jobs" / job_id
    q = json.dumps
    resources = (f"""
    resourcesPerNode:
      limits:
        nvidia.com/gpu: {nproc_per_node}""" if gpus else "")
    return f"""\
# tunesmith job {job_id} as a Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1).
# The volume {volume_claim!r} holds the server's home ({home}) and is mounted at the same path, so
# the job process reads its order ({job_dir}/spec.json) and writes its events, checkpoints and result
# where the server ingests them. The image must have tunesmith (this repository) installed.
apiVersion: trainer.kubeflow.org/v1alpha1
kind: TrainJob
metadata:
  name: {q(_k8s_name(job_id))}
  labels:
    tunesmith/job: {q(job_id)}
spec:
  runtimeRef:
    name: {RUNTIME}
  trainer:
    image: {q(image)}
    command: ["torchrun", "-m", "tunesmith.train.run", {q(str(job_dir))}]
    numNodes: 1
    numProcPerNode: {nproc_per_node}{resources}
    env:
      - {{name: TUNESMITH_HOME, value: {q(str(home))}}}
      - {{name: HF_HUB_OFFLINE, value: "1"}}
      - {{name: TRANSFORMERS_OFFLINE, value: "1"}}
  podTemplateOverrides:
    - targetJobs:
        - name: node
      spec:
        volumes:
          - name: tunesmith-home
            persistentVolumeClaim:
              claimName: {q(volume_claim)}
        containers:
          - name: node
            volumeMounts:
              - name: tunesmith-home
                mountPath: {q(str(home))}
"""


def _k8s_name(job_id: str) -> str:
    """A Kubernetes object name (lowercase, digits and '-', at most 63): job ids are mixed-case, so the
    name is made unique by the id's lowercase form plus a short hash of the original."""
    digest = hashlib.sha1(job_id.encode()).hexdigest()[:6]
    return f"{re.sub(r'[^a-z0-9-]', '-', job_id.lower())[:50]}-{digest}"
