"""Locust users for `make load`: API clients (files, jobs, events, models) and chat clients, 4 to 1.

    locust -f bench/load/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8000 \\
        --job-id ftjob-… --samples samples.json        # key: LOCUST_API_KEY

bench/load/run.py starts the server and the training job and runs this; it can also be pointed at a
server of your own. Requests are named by route ("/v1/files/{id}"), so each route is one row. Every
request is kept as (endpoint, status, ms) and written to --samples at the end: report.py's figures
come from those (Locust's own stats cannot tell a chat 429 from a 200, nor give one p99 for a subset
of routes).
"""

from __future__ import annotations

import json
import random

from locust import HttpUser, between, events, task
from report import acceptable

ROWS = 10
COLOURS = ["red", "blue", "green", "amber", "violet", "teal", "ochre", "ivory", "coral", "slate"]
PROMPTS = ["Name a colour.", "Say hello in three words.", "What is 2 + 2?", "Name a fruit.", "Give one word for joy."]

samples: list[tuple[str, int, float]] = []
peak_cpu = {"percent": 0.0}  # this Locust process's own CPU use: it shares the machine with the server


def upload_body() -> bytes:
    """A small valid chat-format training file, different each time (as many clients' files would be)."""
    nonce = random.randrange(1 << 30)
    rows = [{"messages": [{"role": "system", "content": "You are terse."},
                          {"role": "user", "content": f"Name a colour, number {nonce + i}."},
                          {"role": "assistant", "content": f"Colour {i}: {COLOURS[i % len(COLOURS)]}."}]}
            for i in range(ROWS)]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--api-key", env_var="LOCUST_API_KEY", default="", help="the server's API key")
    parser.add_argument("--job-id", default="", help="a fine-tuning job to retrieve and read the events of")
    parser.add_argument("--samples", default="", help="write every request's (endpoint, status, ms) here as JSON")


@events.request.add_listener
def _record(request_type, name, response_time, response, **_) -> None:
    samples.append((f"{request_type} {name}", getattr(response, "status_code", 0) or 0, response_time))


@events.usage_monitor.add_listener
def _cpu(cpu_usage, **_) -> None:
    peak_cpu["percent"] = max(peak_cpu["percent"], cpu_usage)


@events.quitting.add_listener
def _write_samples(environment, **_) -> None:
    if environment.parsed_options.samples:
        with open(environment.parsed_options.samples, "w") as out:
            json.dump({"samples": samples, "locust_peak_cpu_percent": peak_cpu["percent"]}, out)


class _Client(HttpUser):
    abstract = True
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {self.environment.parsed_options.api_key}"}

    def call(self, method: str, path: str, name: str, **kwargs):
        """One request, judged by report.acceptable, so Locust's own pass/fail counts agree with the report's."""
        with self.client.request(method, path, name=name, headers=self.headers, catch_response=True,
                                 **kwargs) as response:
            if acceptable(f"{method} {name}", response.status_code):
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            return response


class ApiUser(_Client):
    weight = 4

    def on_start(self) -> None:
        super().on_start()
        self.job_id = self.environment.parsed_options.job_id
        self.file_ids: list[str] = []
        self.upload()  # so that there is a file of its own to retrieve

    @task(1)
    def upload(self) -> None:
        response = self.call("POST", "/v1/files", "/v1/files", data={"purpose": "fine-tune"},
                             files={"file": ("load.jsonl", upload_body(), "application/jsonl")})
        if response.status_code == 200:
            self.file_ids.append(response.json()["id"])

    @task(3)
    def list_files(self) -> None:
        self.call("GET", "/v1/files", "/v1/files")

    @task(3)
    def retrieve_file(self) -> None:
        if self.file_ids:
            self.call("GET", f"/v1/files/{random.choice(self.file_ids)}", "/v1/files/{id}")

    @task(2)
    def list_jobs(self) -> None:
        self.call("GET", "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs")

    @task(3)
    def retrieve_job(self) -> None:
        if self.job_id:
            self.call("GET", f"/v1/fine_tuning/jobs/{self.job_id}", "/v1/fine_tuning/jobs/{id}")

    @task(3)
    def job_events(self) -> None:
        if self.job_id:
            self.call("GET", f"/v1/fine_tuning/jobs/{self.job_id}/events", "/v1/fine_tuning/jobs/{id}/events")

    @task(2)
    def list_models(self) -> None:
        self.call("GET", "/v1/models", "/v1/models")


class ChatUser(_Client):
    weight = 1

    @task
    def chat(self) -> None:
        body = {"model": "smollm2-135m-instruct", "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": random.choice(PROMPTS)}]}
        self.call("POST", "/v1/chat/completions", "/v1/chat/completions", json=body)
