# gptcli developer tasks. `make install` then `make test` is all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch: on machines with a local wheel (see README) it never pulls the multi-GB
# CUDA build. `make install` still takes one to two minutes (1 min 39 s measured on a loaded
# 2-core machine), most of it pip unpacking torch. Override with TORCH_SPEC=torch on a GPU machine.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-fast lint format demo bench clean

install: $(BIN)/gptcli

$(BIN)/gptcli: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,serve,export,eval]"
	# The book's own code, as the independent reference in tests and benchmarks. Its declared
	# dependencies (TensorFlow, JupyterLab) are not needed for the parts we call.
	$(BIN)/pip install -q --no-deps llms-from-scratch==1.0.19
	$(BIN)/pip install -q tqdm
	# llama.cpp's Python bindings, for the tests that read gptcli's GGUF files with llama.cpp itself
	# (tests/test_gguf.py; they skip, saying so, without it). Built from source they take about an
	# hour on two cores, so only a prebuilt wheel beside the checkout is installed.
	if ls ../shared/wheels/llama_cpp_python-*.whl >/dev/null 2>&1; then \
		$(BIN)/pip install -q ../shared/wheels/llama_cpp_python-*.whl; fi
	touch $(BIN)/gptcli

# Two pytest workers: every test runs torch on one thread (tests/conftest.py), so two workers keep
# both cores busy; TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

lint: install
	$(BIN)/ruff check gptcli tests benchmarks examples
	$(BIN)/ruff format --check gptcli tests benchmarks examples

format: install
	$(BIN)/ruff format gptcli tests benchmarks examples
	$(BIN)/ruff check --fix gptcli tests benchmarks examples

# The main job on the bundled example: the book's chapter-5 run, then a sample and the plot.
# Each `make demo` is a new run directory: train never writes into one that holds a run.
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)
demo: install
	$(BIN)/gptcli train examples/the-verdict.txt --epochs 10 --out $(DEMO_RUN)
	$(BIN)/gptcli sample --checkpoint $(DEMO_RUN) --temperature 1.4 --top-k 25 --seed 123
	$(BIN)/gptcli plot $(DEMO_RUN) -o $(DEMO_RUN)/loss.png

bench: install
	$(BIN)/python benchmarks/run_cpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache
