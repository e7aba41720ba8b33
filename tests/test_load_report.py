"""bench/load/report.py: which responses count as failures, the percentiles, and when a load run fails.
(The load run itself, `make load`, is too heavy for the test suite.)"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "load"))
from report import CHAT, acceptable, percentile, problems, render, summarise  # noqa: E402

FILES = "GET /v1/files"
EVENTS = "GET /v1/fine_tuning/jobs/{id}/events"


def test_only_chat_may_answer_429_and_nothing_may_answer_5xx():
    assert acceptable(FILES, 200) and acceptable(CHAT, 200) and acceptable(CHAT, 429)
    for endpoint, status in ((FILES, 429), (FILES, 500), (CHAT, 503), (CHAT, 400), (FILES, 404), (FILES, 0)):
        assert not acceptable(endpoint, status)


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(100, 0, -1)]  # order does not matter
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7
    assert percentile([1.0, 2.0], 50) == 1 and percentile([1.0, 2.0], 51) == 2


def test_summary_per_endpoint_non_chat_together_and_chat_by_status():
    samples = ([(FILES, 200, float(ms)) for ms in range(1, 100)] + [(FILES, 429, 300.0)]
               + [(EVENTS, 200, 10.0)] * 9 + [(EVENTS, 502, 20.0)]
               + [(CHAT, 200, 900.0)] * 3 + [(CHAT, 429, 2.0)] * 2 + [(CHAT, 500, 5.0)])
    summary = summarise(samples)
    assert summary["requests"] == 116 and summary["server_errors"] == 2
    assert list(summary["endpoints"]) == sorted([FILES, EVENTS, CHAT])

    files = summary["endpoints"][FILES]
    assert (files["count"], files["failures"], files["server_errors"], files["throttled"]) == (100, 1, 0, 1)
    assert (files["median_ms"], files["p95_ms"], files["p99_ms"]) == (50, 95, 99)
    events = summary["endpoints"][EVENTS]
    assert (events["failures"], events["server_errors"], events["p99_ms"]) == (1, 1, 20)
    chat = summary["endpoints"][CHAT]
    assert (chat["failures"], chat["server_errors"], chat["throttled"]) == (1, 1, 2)  # its 429s are not failures

    non_chat = summary["non_chat"]  # chat's slow answers stay out of the non-chat p99
    assert (non_chat["count"], non_chat["failures"], non_chat["p99_ms"]) == (110, 2, 99)
    assert non_chat["goal_met"] and non_chat["goal_p99_ms"] == 200
    assert summary["chat"] == {"answered": 3, "throttled": 2, "other": 1}

    text = render(summary)
    assert "all non-chat" in text and "p99 of the non-chat endpoints: 99 ms (goal ≤ 200 ms: met)" in text
    assert "3 answered (200), 2 turned away (429), 1 other" in text


def test_the_goal_is_reported_not_enforced():
    slow = summarise([(FILES, 200, 250.0)] * 10 + [(CHAT, 429, 1.0)])
    assert not slow["non_chat"]["goal_met"] and "NOT met" in render(slow)
    assert problems(slow, "succeeded", job_outlasted_load=True) == []


@pytest.mark.parametrize(("samples", "status", "outlasted", "expected"), [
    ([(FILES, 500, 1.0)], "succeeded", True, ["1 responses were 5xx", "1 non-chat requests failed"]),
    ([(FILES, 429, 1.0)], "succeeded", True, ["1 non-chat requests failed"]),
    ([(CHAT, 502, 1.0)], "succeeded", True, ["1 responses were 5xx", "1 chat requests got neither 200 nor 429"]),
    ([(FILES, 200, 1.0)], "failed", True, ["the training job ended failed, not succeeded"]),
    ([(FILES, 200, 1.0)], "succeeded", False, ["the training job finished before the load did"]),
    ([], "succeeded", True, ["no requests were made"]),
])
def test_a_run_fails_on_5xx_non_chat_failures_a_failed_or_short_job_or_no_requests(samples, status, outlasted,
                                                                                   expected):
    found = problems(summarise(samples), status, outlasted)
    assert len(found) == len(expected) and all(f.startswith(e) for f, e in zip(found, expected))
