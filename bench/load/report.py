"""What a load run measured, from its samples: per endpoint, for the non-chat endpoints together, for chat.

A sample is one request as the locustfile saw it: ``(endpoint, status, milliseconds)``, the endpoint
being ``"METHOD /path/{id}"`` and the status 0 where no response came (a refused or dropped connection).
Pure functions of the samples, so the rules are testable without a server or Locust.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

CHAT = "POST /v1/chat/completions"
GOAL_P99_MS = 200.0  # the non-chat endpoints' p99 goal, reported against, not enforced


def acceptable(endpoint: str, status: int) -> bool:
    """Any 2xx; and 429 from chat only, where a full per-model queue turns requests away (with
    Retry-After) by design. A 429 anywhere else, any 5xx, any other 4xx and no response are failures."""
    return 200 <= status < 300 or (status == 429 and endpoint == CHAT)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` percent of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Figures:
    count: int
    failures: int  # responses `acceptable` refuses, 5xx and 429 included
    server_errors: int  # 5xx
    throttled: int  # 429
    median_ms: float
    p95_ms: float
    p99_ms: float


def figures(samples: list[tuple[str, int, float]]) -> Figures:
    ms = [s[2] for s in samples]
    return Figures(count=len(samples), failures=sum(not acceptable(e, status) for e, status, _ in samples),
                   server_errors=sum(500 <= status < 600 for _, status, _ in samples),
                   throttled=sum(status == 429 for _, status, _ in samples),
                   median_ms=percentile(ms, 50), p95_ms=percentile(ms, 95), p99_ms=percentile(ms, 99))


def summarise(samples: list[tuple[str, int, float]]) -> dict:
    """Figures per endpoint (sorted by name) and for every non-chat request together; chat's answers by status."""
    by_endpoint: dict[str, list] = {}
    for sample in samples:
        by_endpoint.setdefault(sample[0], []).append(sample)
    non_chat = [s for s in samples if s[0] != CHAT]
    chat = by_endpoint.get(CHAT, [])
    return {
        "requests": len(samples),
        "server_errors": sum(500 <= s[1] < 600 for s in samples),
        "endpoints": {name: asdict(figures(by_endpoint[name])) for name in sorted(by_endpoint)},
        "non_chat": {**asdict(figures(non_chat)), "goal_p99_ms": GOAL_P99_MS,
                     "goal_met": percentile([s[2] for s in non_chat], 99) <= GOAL_P99_MS} if non_chat else None,
        "chat": {"answered": sum(s[1] == 200 for s in chat), "throttled": sum(s[1] == 429 for s in chat),
                 "other": sum(s[1] not in (200, 429) for s in chat)},
    }


def problems(summary: dict, job_status: str, job_outlasted_load: bool) -> list[str]:
    """Why the run fails, if it does: the latency goal is only reported; these are not."""
    found = []
    if summary["server_errors"]:
        found.append(f"{summary['server_errors']} responses were 5xx")
    if summary["non_chat"] and summary["non_chat"]["failures"]:
        found.append(f"{summary['non_chat']['failures']} non-chat requests failed")
    if summary["chat"]["other"]:
        found.append(f"{summary['chat']['other']} chat requests got neither 200 nor 429")
    if job_status != "succeeded":
        found.append(f"the training job ended {job_status}, not succeeded")
    if not job_outlasted_load:
        found.append("the training job finished before the load did, so part of the load ran without it "
                     "(give it more work: --train-examples)")
    if not summary["requests"]:
        found.append("no requests were made")
    return found


def render(summary: dict) -> str:
    """The per-endpoint table and the non-chat and chat lines, as plain text."""
    head = f"{'endpoint':<38} {'count':>6} {'fail':>5} {'5xx':>4} {'429':>5} {'median':>7} {'p95':>7} {'p99':>7}"
    lines = [head, "-" * len(head)]
    rows = list(summary["endpoints"].items())
    if summary["non_chat"]:
        rows.append(("all non-chat", summary["non_chat"]))
    for name, f in rows:
        lines.append(f"{name:<38} {f['count']:>6} {f['failures']:>5} {f['server_errors']:>4} {f['throttled']:>5} "
                     f"{f['median_ms']:>7.0f} {f['p95_ms']:>7.0f} {f['p99_ms']:>7.0f}")
    lines.append("(milliseconds)")
    if summary["non_chat"]:
        nc = summary["non_chat"]
        verdict = "met" if nc["goal_met"] else "NOT met"
        lines.append(f"p99 of the non-chat endpoints: {nc['p99_ms']:.0f} ms (goal ≤ {nc['goal_p99_ms']:.0f} ms: {verdict})")
    chat = summary["chat"]
    lines.append(f"chat completions: {chat['answered']} answered (200), {chat['throttled']} turned away (429), "
                 f"{chat['other']} other")
    return "\n".join(lines)
