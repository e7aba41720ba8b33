"""The web dashboard in headless Chromium (Playwright driving the system chromium, no browser
download), on a live `tunesmith serve` with keys and the real bundled model: the path a user walks —
key, upload, validation report, job, a loss curve that gains points while it trains, success, the
base-vs-tuned comparison, chat with the tuned model, votes, their export — asserting on the page.
Screenshots of each page go to $DASHBOARD_SCREENSHOTS (default: the test's temporary folder)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import chat_row
from live_server import LiveServer, new_home

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: the dashboard is not driven "
                                                "(apt-get install -y chromium; .ci/run does it)"),
]
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")

# a tiny job: 12 lines, 1 epoch of batch 4 (3 steps), with 4 held-out lines for the curves and the comparison
TRAIN = [chat_row(f"Colour of item {i}?", f"Item {i} is {c}.") for i, c in
         enumerate(["red", "blue", "green", "black", "white", "grey"] * 2)]
HELD_OUT = [chat_row(f"Colour of item {i}?", f"Item {i} is {c}.") for i, c in
            zip(range(20, 24), ["red", "blue", "green", "black"])]


@pytest.fixture(scope="module")
def server(tmp_path_factory, smol_info):
    srv = LiveServer(new_home(tmp_path_factory.mktemp("dashboard")), keyless=False)
    srv.keys = {p: srv.cli("keys", "create", "--project", p) for p in ("alpha", "beta")}
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def root(server: LiveServer) -> str:
    return server.base_url.removesuffix("/v1")


def signed_in(browser, server: LiveServer, project: str, phone: bool = False):
    viewport = {"width": 390, "height": 844} if phone else {"width": 1280, "height": 900}
    page = browser.new_context(viewport=viewport, accept_downloads=True).new_page()
    page.goto(root(server) + "/")
    page.fill("#key-input", server.keys[project])
    page.click("#key-form button")
    page.wait_for_selector("#content:not([hidden])")
    return page


# Conditions to wait for are written as functions: the pages' Content-Security-Policy forbids eval,
# which Playwright uses for a bare expression.


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_page_refuses_without_a_key_and_a_wrong_one(browser, server):
    page = browser.new_page()
    page.goto(root(server) + "/jobs")
    assert page.is_visible("#key-form") and page.is_hidden("#content")
    page.fill("#key-input", "sk-ts-wrong")
    page.click("#key-form button")
    page.wait_for_function("() => document.querySelector('#key-error').textContent.includes('Incorrect API key')")
    assert page.is_hidden("#content")
    page.close()


def test_one_tenant_never_sees_anothers_jobs(browser, server, tmp_path):
    import httpx2 as httpx

    alpha = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.keys['alpha']}"})
    file_id = alpha.post("/files", files={"file": ("t.jsonl", jsonl(tmp_path / "t.jsonl", TRAIN).read_bytes())},
                         data={"purpose": "fine-tune"}).json()["id"]
    job = alpha.post("/fine_tuning/jobs", json={"model": "smollm2-135m-instruct", "training_file": file_id,
                                                "suffix": "alphas"}).json()
    alpha.post(f"/fine_tuning/jobs/{job['id']}/cancel")
    page = signed_in(browser, server, "beta")
    page.goto(root(server) + "/jobs")
    page.wait_for_selector("#job-form select[name=model] option", state="attached")
    assert job["id"] not in page.content()
    page.goto(root(server) + f"/jobs/{job['id']}")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('No such fine-tuning job')")
    assert "alphas" not in page.inner_text("#content")
    page.context.close()


def test_the_whole_path_on_the_real_model(browser, server, tmp_path, shots):
    page = signed_in(browser, server, "alpha")
    # files: upload by the file input (what a drop does too), then the report before any job exists
    page.set_input_files("#file-input", str(jsonl(tmp_path / "colours.jsonl", TRAIN)))
    page.wait_for_selector("#report-tokens")
    assert "ready to train" in page.inner_text("#report-title")
    assert "12 usable examples" in page.inner_text("#report")
    assert "epochs" in page.inner_text("#report-hyperparameters")
    page.screenshot(path=shots / "files.png", full_page=True)
    training_file = page.inner_text("#report-title").split("(")[1].split(")")[0]
    # the held-out file by drag and drop: a drop event carrying the file, as a browser sends it
    page.evaluate("""text => { const dt = new DataTransfer(); dt.items.add(new File([text], "held-out.jsonl"));
        document.querySelector("#drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true,
                                                                             cancelable: true})); }""",
                  jsonl(tmp_path / "held-out.jsonl", HELD_OUT).read_text())
    page.wait_for_selector("#report-errors")  # too few lines to train on: the report says so, by line count
    assert "at least 10" in page.inner_text("#report-errors")

    # jobs: the API's own message for a bad value, then a job
    page.goto(root(server) + f"/jobs?training_file={training_file}")
    page.wait_for_selector("#job-form select[name=validation_file] option[value^=file-]", state="attached")
    held_out = page.eval_on_selector("select[name=validation_file] option:nth-child(2)", "o => o.value")
    page.select_option("select[name=validation_file]", held_out)
    page.fill("input[name=n_epochs]", "0")
    page.click("#job-form button")
    page.wait_for_function("() => document.querySelector('#job-error').textContent.includes('n_epochs')")
    page.fill("input[name=n_epochs]", "1")
    page.fill("input[name=batch_size]", "4")
    page.fill("input[name=suffix]", "colours")
    page.click("#job-form button")
    page.wait_for_url("**/jobs/ftjob-*", timeout=10_000)

    # one job: the curve gains points while it trains, without a reload
    points = lambda: int(page.get_attribute("#chart", "data-points") or 0)  # noqa: E731
    page.wait_for_function("() => Number(document.querySelector('#chart').dataset.points || 0) >= 1", timeout=240_000)
    first = points()
    page.wait_for_function(f"() => Number(document.querySelector('#chart').dataset.points || 0) > {first}"
                           " || document.querySelector('#job-status').textContent === 'succeeded'", timeout=240_000)
    page.wait_for_function("() => document.querySelector('#job-status').textContent === 'succeeded'", timeout=240_000)
    assert points() == 3 and points() > first
    assert page.is_visible(".u-legend") and "validation loss" in page.inner_text("#chart")
    assert "chosen" in page.inner_text("#checkpoints") and "valid_exact_match" in page.inner_text("#checkpoints")
    assert "Dashed line" in page.inner_text("#chart-note")
    assert "ft:smollm2-135m-instruct:alpha:colours:" in page.inner_text("#job-facts")
    assert "Training started" in page.inner_text("#events")
    with page.expect_download() as csv:
        page.click("#csv")
    assert csv.value.path().read_text().startswith("step,")
    page.screenshot(path=shots / "job.png", full_page=True)
    job_id = page.inner_text("#job-id")
    page.goto(root(server) + "/jobs")
    page.wait_for_selector(f"tr[data-job='{job_id}']")
    row = page.inner_text(f"tr[data-job='{job_id}']")
    assert "succeeded" in row and "100 %" in row and "colours" in row
    assert page.query_selector(f"tr[data-job='{job_id}'] button") is None  # nothing left to cancel, pause, resume
    page.screenshot(path=shots / "jobs.png", full_page=True)
    page.goto(root(server) + f"/jobs/{job_id}")
    page.wait_for_selector("#eval-form select[name=file] option", state="attached")

    # evaluate and compare, from the job
    page.select_option("#eval-form select[name=file]", held_out)
    page.fill("#eval-form input[name=limit]", "2")
    page.fill("#eval-form input[name=max_tokens]", "8")
    page.click("#eval-form button")
    page.wait_for_selector("#eval-report:not([hidden])", timeout=240_000)
    report = page.frame_locator("#eval-report").locator("body")
    assert "smollm2-135m-instruct" in report.inner_text() and "colours" in report.inner_text()
    page.locator("#eval-report").scroll_into_view_if_needed()  # else Chromium leaves an off-screen frame blank
    page.screenshot(path=shots / "compare.png", full_page=True)
    tuned = page.inner_text("#job-facts").split("Tuned model")[1].split()[0]

    # playground: the tuned model and the base side by side, streamed; a vote on each; the export
    page.goto(root(server) + "/playground")
    page.wait_for_selector("select[name=model_b] option[value=smollm2-135m-instruct]", state="attached")
    assert page.eval_on_selector("select[name=model_a]", "s => s.value") == tuned
    page.select_option("select[name=model_b]", "smollm2-135m-instruct")
    page.fill("textarea[name=prompt]", "Colour of item 3?")
    page.fill("input[name=max_tokens]", "12")
    page.click("#chat-form button")
    page.wait_for_selector("#answer-0[data-done] >> nth=0", timeout=120_000)
    page.wait_for_selector("#answer-1[data-done]", timeout=120_000)
    assert page.inner_text("#answer-0 pre").strip() and page.inner_text("#answer-1 pre").strip()
    page.click("#answer-0 [aria-label='thumbs up']")
    page.click("#answer-1 [aria-label='thumbs down']")
    page.wait_for_function("() => document.querySelector('#vote-count').textContent.includes('1 preference pair')")
    with page.expect_download() as votes:
        page.click("#export-votes")
    [line] = [json.loads(x) for x in votes.value.path().read_text().splitlines()]
    assert line["input"]["messages"] == [{"role": "user", "content": "Colour of item 3?"}]
    assert line["preferred_output"][0]["content"] == page.inner_text("#answer-0 pre")
    page.screenshot(path=shots / "playground.png", full_page=True)

    # models: base and tuned, on a phone's width
    phone = signed_in(browser, server, "alpha", phone=True)
    phone.goto(root(server) + "/models")
    phone.wait_for_selector(f"#models td:text-is('{tuned}')")
    assert "base model" in phone.inner_text("#models")
    phone.screenshot(path=shots / "models-phone.png", full_page=True)
    phone.context.close()
    page.context.close()


def test_keyless_mode_asks_for_no_key(browser, tmp_path, smol_info):
    srv = LiveServer(new_home(tmp_path)).start()  # --keyless
    try:
        page = browser.new_page()
        page.goto(root(srv) + "/models")
        page.wait_for_selector("#models td:text-is('smollm2-135m-instruct')")
        assert page.query_selector("#key-form") is None and page.is_visible("#content")
        page.close()
    finally:
        srv.stop()


def test_a_reinforcement_job_from_the_form_and_its_reward_curves(browser, server, tmp_path, shots):
    import httpx2 as httpx

    grader = {"type": "string_check", "name": "said", "input": "{{ sample.output_text }}",
              "reference": "{{ item.colour }}", "operation": "ilike"}
    prompts = [{"messages": [{"role": "user", "content": f"Repeat this colour: {c}."}], "colour": c}
               for c in ["red", "blue", "green", "black", "white", "grey", "teal", "pink", "gold", "navy"]]
    alpha = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.keys['alpha']}"})
    file_id = alpha.post("/files", files={"file": ("prompts.jsonl", jsonl(tmp_path / "p.jsonl", prompts).read_bytes())},
                         data={"purpose": "fine-tune"}).json()["id"]
    page = signed_in(browser, server, "alpha")
    page.goto(root(server) + f"/jobs?training_file={file_id}")
    page.wait_for_selector("#job-form select[name=model] option", state="attached")
    page.select_option("select[name=method]", "reinforcement")
    page.fill("textarea[name=grader]", "{not json")
    page.click("#job-form button")
    page.wait_for_function("() => document.querySelector('#job-error').textContent.includes('not JSON')")
    page.fill("textarea[name=grader]", json.dumps({**grader, "operation": "regex"}))
    page.click("#job-form button")  # the API's 400 names the grader's field
    page.wait_for_function("() => document.querySelector('#job-error').textContent"
                           ".includes('method.reinforcement.grader.operation')")
    page.fill("textarea[name=grader]", json.dumps(grader))
    page.click("#job-form button")
    page.wait_for_url("**/jobs/ftjob-*", timeout=10_000)
    formed = page.inner_text("#job-id")
    assert alpha.get(f"/fine_tuning/jobs/{formed}").json()["method"]["reinforcement"]["grader"] == grader
    alpha.post(f"/fine_tuning/jobs/{formed}/cancel")  # its defaults (8 answers of 256 tokens) are slow here

    job = alpha.post("/fine_tuning/jobs", json={"model": "smollm2-135m-instruct", "training_file": file_id,
                                                "method": {"type": "reinforcement", "reinforcement": {
                                                    "grader": grader, "hyperparameters": {
                                                        "n_epochs": 1, "batch_size": 5, "group_size": 2,
                                                        "max_completion_tokens": 8}}}}).json()
    page.goto(root(server) + f"/jobs/{job['id']}")
    page.wait_for_function("() => document.querySelector('#job-status').textContent === 'succeeded'", timeout=240_000)
    page.wait_for_function("() => Number(document.querySelector('#chart').dataset.points || 0) === 2")
    series = page.get_attribute("#chart", "data-series").split()
    assert {"train_reward_mean", "train_reward_std", "train_kl", "train_completion_length"} <= set(series)
    assert "reward mean" in page.inner_text("#chart") and "completion length" in page.inner_text("#chart")
    page.screenshot(path=shots / "job-reinforcement.png", full_page=True)
    page.context.close()
