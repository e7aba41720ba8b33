"""Schemathesis against a live server with a valid (admin) key: every operation of the OpenAPI
document, generated requests valid and invalid, each answer checked against what the document
declares (status codes, content types, headers, bodies) and for server errors.

`make fuzz` runs this test alone; FUZZ_SEED and FUZZ_EXAMPLES change the seed and the examples per
operation. Settings, and the one check left out and why: tests/fuzz/schemathesis.toml.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from live_server import LiveServer, new_home

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).parent / "fuzz" / "schemathesis.toml"


# smol_info: the server's home links to the session's converted base model, which the validate route loads
def test_generated_requests_get_no_server_error_and_answers_as_declared(tmp_path, smol_info):
    seed, examples = os.environ.get("FUZZ_SEED", "1"), os.environ.get("FUZZ_EXAMPLES", "30")
    srv = LiveServer(new_home(tmp_path), keyless=False)
    key = srv.cli("keys", "create", "--project", "fuzz", "--admin")
    srv.start()
    try:
        run = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(CONFIG), "run",
             f"http://127.0.0.1:{srv.port}/openapi.json", "--header", f"Authorization: Bearer {key}",
             "--seed", seed, "--max-examples", examples, "--workers", "1", "--report", "ndjson",
             "--report-dir", str(tmp_path / "report"), "--no-color"],
            capture_output=True, text=True, timeout=1200, cwd=tmp_path)  # its cache stays out of the checkout
    finally:
        srv.stop()
    statuses, failed = collections.Counter(), []
    for line in next((tmp_path / "report").glob("*.ndjson")).read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if event is None:
            continue
        for interaction in event["recorder"].get("interactions", {}).values():
            statuses[(interaction.get("response") or {}).get("status_code")] += 1
        failed += [(event["recorder"]["label"], c["name"]) for checks in event["recorder"].get("checks", {}).values()
                   for c in checks if c["status"] == "failure"]
    print(f"schemathesis seed {seed}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert run.returncode == 0 and not failed, run.stdout[-6000:]
    assert sum(statuses.values()) >= 1000
    assert not [s for s in statuses if s is None or s >= 500]
